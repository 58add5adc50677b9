"""Where and in what precision a model runs: device and dtype resolution, CPU capabilities, the inference plan."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from dataclasses import dataclass

import torch

from .constants import QUANTIZE_CHOICES
from .errors import ModelLoadError

DTYPE_NAMES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" → CUDA when available, else CPU. An explicit CUDA device must exist."""
    if isinstance(device, torch.device):
        resolved = device
    elif device in (None, "", "auto"):
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """ "auto" → bf16 on CUDA devices that support it, fp16 on other CUDA devices, fp32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "", "auto"):
        if device is not None and device.type == "cuda":
            with torch.cuda.device(device):
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return DTYPE_NAMES[str(dtype).lower()]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, fp32, bf16 or fp16") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------- CPU capabilities and the inference plan

BF16_MATMUL_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs whose bf16 GEMM beats fp32


@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU offers the inference path."""

    machine: str  # platform.machine(), e.g. "x86_64"
    isa: str  # the vector ISA torch dispatches to: torch.backends.cpu.get_cpu_capability() ("AVX2", "AVX512", ...)
    flags: frozenset[str]  # /proc/cpuinfo "flags" of the first CPU (empty where that file is not readable)
    model: str = ""  # /proc/cpuinfo "model name", e.g. "AMD EPYC 7B13" (empty where it does not say)
    amx_tiles: bool = False  # AMX as torch's oneDNN sees it: the hardware, whatever $MVGPT_CPU_FEATURES hides

    @property
    def bf16_matmul(self) -> bool:
        """AMX-bf16 or AVX512-bf16: oneDNN multiplies bf16 matrices several times faster than fp32 (a (2460×896)
        by (896×4864) product measured ~4× on a Xeon with AMX). Without them bf16 is emulated and slower than fp32."""
        return any(flag in self.flags for flag in BF16_MATMUL_FLAGS)

    @property
    def bf16_attention(self) -> bool:
        """Whether torch's CPU flash attention runs in bf16 here. With AMX it packs its blocks with AVX512 code, and
        under a lower ATEN_CPU_CAPABILITY it raises instead ("pack_vnni2 is only supported when avx512 is supported";
        torch 2.13 on a Xeon with AMX run as AVX2)."""
        return self.isa == "AVX512" or not self.amx_tiles

    @property
    def vector_kernels(self) -> bool:
        """x86-64 with at least AVX2 + FMA: the compiled low-precision linear kernel's vector path."""
        return self.machine.lower() in ("x86_64", "amd64") and self.isa in ("AVX2", "AVX512")

    def describe(self) -> str:
        extra = [flag for flag in BF16_MATMUL_FLAGS if flag in self.flags]
        return f"{self.machine} {self.isa}" + (f" + {', '.join(extra)}" if extra else "")

    def describe_machine(self) -> str:
        """What a benchmark names beside its figures: the CPU's model, the cores and `describe()`."""
        return f"{self.model or platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores, {self.describe()}"


def cpuinfo_value(text: str, keys: tuple[str, ...]) -> str | None:
    """The value of the first of `keys` in the first processor of /proc/cpuinfo text, or None."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpuinfo_flags(text: str) -> frozenset[str]:
    """The `flags` (x86) or `Features` (ARM) of the first processor in /proc/cpuinfo text."""
    return frozenset((cpuinfo_value(text, ("flags", "Features")) or "").split())


# Edits of the detected flags, e.g. "-bf16" (the AVX2 plan on a CPU with bf16 units) or "+bf16" (the bf16 plan on
# one without: torch then emulates bf16 matrix products, slowly but with bf16's rounding — for tests, not for speed).
CPU_FEATURES_ENV = "MVGPT_CPU_FEATURES"
FLAG_GROUPS = {"bf16": BF16_MATMUL_FLAGS}


def edit_flags(flags: frozenset[str], edits: str) -> frozenset[str]:
    """Apply `edits` ("+flag" adds, "-flag" removes; "bf16" stands for every bf16 matrix-unit flag), separated by
    commas or spaces, to `flags`."""
    result = set(flags)
    for edit in edits.replace(",", " ").split():
        sign, name = edit[0], edit[1:]
        if sign not in "+-" or not name:
            raise ValueError(
                f"{CPU_FEATURES_ENV}={edits!r}: {edit!r} is not +FLAG or -FLAG (e.g. -bf16 hides the bf16 units)"
            )
        names = FLAG_GROUPS.get(name, (name,))
        result.update(names) if sign == "+" else result.difference_update(names)
    return frozenset(result)


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This CPU's features, with the edits of $MVGPT_CPU_FEATURES applied (read once per process)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    flags = edit_flags(cpuinfo_flags(text), os.environ.get(CPU_FEATURES_ENV, ""))
    model = cpuinfo_value(text, ("model name",)) or ""
    amx = torch.cpu._is_amx_tile_supported()
    return CpuFeatures(platform.machine(), torch.backends.cpu.get_cpu_capability(), flags, model, amx)


@dataclass(frozen=True)
class InferencePlan:
    """How a model runs for inference.

    encoder_dtype: CLIP, VideoMamba and both projectors (the selective scan keeps fp32 state in any case).
    llm_dtype: the language model's hidden states, and its weights unless `llm_weights` packs them.
    llm_weights: None, or "bf16" / "int8": the LLM's linear and embedding weights stored that way and computed with
      in fp32 (`engine/lowp.py`): decode steps through the compiled kernel, prefills widened to `prefill_dtype`.
    int8_matmul: the prefill and the encoders' large linear layers multiply int8 activations (quantized per token)
      by int8 weights (`engine/int8_matmul.py`, `--quantize w8a8`); needs llm_weights "int8".
    """

    device: torch.device
    encoder_dtype: torch.dtype
    llm_dtype: torch.dtype
    llm_weights: str | None = None
    prefill_dtype: torch.dtype = torch.float32
    int8_matmul: bool = False

    @property
    def llm_matmul_dtype(self) -> torch.dtype:
        """The dtype the language model's prefill products run in: `prefill_dtype` where its weights are packed,
        else its own dtype (an unpacked LLM multiplies in the dtype it is stored in)."""
        return self.prefill_dtype if self.llm_weights else self.llm_dtype

    def describe(self) -> str:
        if self.llm_weights is None and self.encoder_dtype == self.llm_dtype:
            return f"{self.device} ({dtype_name(self.llm_dtype)})"
        prefill = "int8 x int8" if self.int8_matmul else dtype_name(self.prefill_dtype)
        llm = (
            f"LLM {self.llm_weights} weights (prefill {prefill}, decode fp32 kernel)"
            if self.llm_weights
            else f"LLM {dtype_name(self.llm_dtype)}"
        )
        encoders = dtype_name(self.encoder_dtype) + (" with int8 x int8 linear layers" if self.int8_matmul else "")
        return f"{self.device} (encoders {encoders}, {llm})"

    def to_dict(self) -> dict:
        return {
            "device": str(self.device),
            "encoder_dtype": dtype_name(self.encoder_dtype),
            "llm_dtype": dtype_name(self.llm_dtype),
            "llm_weights": self.llm_weights,
            "prefill_dtype": dtype_name(self.prefill_dtype),
            "int8_matmul": self.int8_matmul,
        }


def _lowp_kernel_problem() -> str | None:
    """Why LLM weights cannot be packed here (no vector path, kernel not buildable), or None."""
    features = cpu_features()
    if not features.vector_kernels:
        return f"the compiled low-precision kernel needs an x86-64 CPU with AVX2 (this one: {features.describe()})"
    from .engine import linear_cpu

    if linear_cpu.load_kernel() is None:
        return f"the compiled low-precision kernel is unavailable ({linear_cpu.build_error()})"
    return None


def plan_inference(
    device: str | torch.device = "auto", dtype: str | torch.dtype = "auto", quantize: str | None = None
) -> InferencePlan:
    """The fastest plan that keeps quality for `device`, or the one asked for.

    On the CPU, dtype "auto" is decided per stage from what the CPU offers (`cpu_features`):
    - encoders and prefill in bf16 where bf16 matrix units exist (AMX-bf16 / AVX512-bf16), else fp32;
    - the LLM's weights stored in bf16 and decode steps computed by the compiled kernel in fp32 (half the memory
      traffic of fp32, exact for bf16-published weights); where that kernel cannot run, fp32 as before;
    - quantize "int8": int8 weights instead (a quarter of fp32's traffic; changes the numbers slightly);
    - quantize "w8a8": int8 weights, and the prefill and the encoders' large linear layers multiply int8 activations
      by int8 weights (faster than fp32 where there are no bf16 units; changes the numbers more than "int8").
    An explicit dtype ("fp32", "bf16", "fp16") runs the whole model in it, as it always did (int8 needs fp32).
    Elsewhere (CUDA), "auto" is bf16 where supported, else fp16; int8 is a CPU feature.
    """
    resolved = resolve_device(device)
    quantize = None if quantize in (None, "", "none") else str(quantize).lower()
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ModelLoadError(f"unknown quantization {quantize!r}; use none, int8 or w8a8")
    automatic = dtype in (None, "", "auto")
    if resolved.type != "cpu":
        if quantize:
            raise ModelLoadError(f"--quantize {quantize} is for the CPU (its kernels are CPU kernels); drop it on a GPU")
        uniform = resolve_dtype(dtype, resolved)
        return InferencePlan(resolved, uniform, uniform)
    if not automatic:
        uniform = resolve_dtype(dtype, resolved)
        if quantize and uniform != torch.float32:
            raise ModelLoadError(
                f"--quantize {quantize} computes in fp32; use --dtype auto or fp32, not {dtype_name(uniform)}"
            )
    int8_matmul = quantize == "w8a8"
    # int8 x int8 replaces bf16 matrix units where a CPU has both: the plan asked for is the plan run. bf16 also
    # needs torch's bf16 attention (CLIP's, the prefill's) to run.
    features = cpu_features()
    bf16 = features.bf16_matmul and features.bf16_attention
    fast = torch.bfloat16 if automatic and bf16 and not int8_matmul else torch.float32
    weights = "int8" if quantize else ("bf16" if automatic else None)
    if weights is not None:
        problem = _lowp_kernel_problem()
        if problem is None and int8_matmul:
            from .engine import int8_matmul as int8

            problem = int8.problem()
        if problem is not None:
            if quantize:
                raise ModelLoadError(f"--quantize {quantize} is not possible here: {problem}; drop --quantize")
            weights = None
    if not automatic:
        return InferencePlan(resolved, uniform, uniform, weights, uniform, int8_matmul)
    return InferencePlan(resolved, fast, torch.float32, weights, fast, int8_matmul)


# ---------------------------------------------------------------- the C allocator during CPU inference

# glibc hands every block above its mmap threshold (dynamic, at most 32 MiB) straight back to the kernel when it is
# freed, so each large temporary of a prefill or an encoder (an MLP's 2432 x 4864 fp32 activations: 47 MB; a CLIP
# layer's 39 MB) is mapped afresh and every page of it faulted in and zeroed on first touch. Measured on 2 loaded
# cores of an AVX2 EPYC, the 24 silu(gate) * up products of a full-size prefill: 554k page faults and 1.4 s of
# system time -> none, 3.5 -> 0.95 s wall; ten 2432 x 896 by 896 x 4864 matmuls 4.1 -> 2.7 s.
MALLOC_REUSE_BYTES = 256 * 2**20  # blocks up to this size come from (and go back to) the heap
MALLOC_KEEP_FREE_BYTES = 1024 * 2**20  # free memory the heap's top may hold before it is returned to the kernel
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


@functools.lru_cache(maxsize=1)
def reuse_freed_memory() -> bool:
    """Make glibc keep large freed blocks for reuse instead of unmapping them (see MALLOC_REUSE_BYTES), once per
    process; True when the setting is in force. A process whose environment sets glibc's malloc variables keeps
    them (the setting is theirs), and other C libraries are left alone. The cost: up to MALLOC_KEEP_FREE_BYTES of
    freed memory may stay resident after a prefill instead of going back to the system at once."""
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in MALLOC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    reuse = mallopt(_M_MMAP_THRESHOLD, MALLOC_REUSE_BYTES)
    return bool(reuse) and bool(mallopt(_M_TRIM_THRESHOLD, MALLOC_KEEP_FREE_BYTES))
