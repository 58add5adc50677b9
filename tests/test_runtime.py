"""Device and dtype resolution, CPU capabilities and the inference plan."""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import subprocess
import sys

import pytest
import torch

from mobilevideogpt import runtime
from mobilevideogpt.errors import ModelLoadError
from mobilevideogpt.engine import int8_matmul, linear_cpu
from mobilevideogpt.runtime import CpuFeatures, cpu_features, cpuinfo_flags, plan_inference, resolve_device, resolve_dtype


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype("fp16") == torch.float16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("int3")
    if torch.cuda.is_available():
        cuda = resolve_device("auto")
        assert cuda.type == "cuda"
        assert resolve_dtype("auto", cuda) in (torch.bfloat16, torch.float16)
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")


# ---------------------------------------------------------------- CPU capabilities and the inference plan

XEON_AMX = CpuFeatures("x86_64", "AVX512", frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_int8"}), "", True)
EPYC_AVX2 = CpuFeatures("x86_64", "AVX2", frozenset({"avx2", "fma"}))
ARM = CpuFeatures("aarch64", "DEFAULT", frozenset({"asimd"}))


def test_cpuinfo_flags_are_read_from_the_first_processor():
    text = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t: fpu\n"
    assert cpuinfo_flags(text) == {"fpu", "avx2", "amx_bf16"}
    assert cpuinfo_flags("Features\t: fp asimd\n") == {"fp", "asimd"}
    assert cpuinfo_flags("") == frozenset()
    features = cpu_features()  # this machine: whatever it is, described without error
    assert features.isa == torch.backends.cpu.get_cpu_capability() and features.describe()


def test_cpu_features_decide_bf16_and_the_kernel():
    assert XEON_AMX.bf16_matmul and XEON_AMX.vector_kernels
    assert not EPYC_AVX2.bf16_matmul and EPYC_AVX2.vector_kernels
    assert CpuFeatures("x86_64", "AVX512", frozenset({"avx512_bf16"})).bf16_matmul
    assert not ARM.bf16_matmul and not ARM.vector_kernels
    # torch's bf16 attention runs under AVX512 kernels, or without AMX (whose block packing needs them).
    assert XEON_AMX.bf16_attention and EPYC_AVX2.bf16_attention and ARM.bf16_attention
    assert not dataclasses.replace(XEON_AMX, isa="AVX2").bf16_attention
    assert cpu_features().amx_tiles == torch.cpu._is_amx_tile_supported()


def plan_on(monkeypatch, features, kernel=True, **kwargs):
    monkeypatch.setattr(runtime, "cpu_features", lambda: features)
    monkeypatch.setattr(linear_cpu, "load_kernel", (lambda: print) if kernel else (lambda: None))
    return plan_inference("cpu", **kwargs)


def test_auto_plan_per_cpu(monkeypatch):
    amx = plan_on(monkeypatch, XEON_AMX)
    assert (amx.encoder_dtype, amx.llm_dtype, amx.llm_weights, amx.prefill_dtype) == (
        torch.bfloat16, torch.float32, "bf16", torch.bfloat16)  # fmt: skip
    avx2 = plan_on(monkeypatch, EPYC_AVX2)
    assert (avx2.encoder_dtype, avx2.llm_dtype, avx2.llm_weights, avx2.prefill_dtype) == (
        torch.float32, torch.float32, "bf16", torch.float32)  # fmt: skip
    assert "LLM bf16 weights" in avx2.describe()
    # No vector kernel (another architecture) or no compiler: today's fp32, never something slower.
    for plan in (plan_on(monkeypatch, ARM), plan_on(monkeypatch, EPYC_AVX2, kernel=False)):
        assert (plan.encoder_dtype, plan.llm_dtype, plan.llm_weights) == (torch.float32, torch.float32, None)
    assert plan_on(monkeypatch, XEON_AMX, kernel=False).encoder_dtype == torch.bfloat16
    # A Xeon with AMX told to run torch's AVX2 kernels (ATEN_CPU_CAPABILITY=avx2) gets the fp32 plan: there torch's
    # bf16 attention raises.
    forced = plan_on(monkeypatch, dataclasses.replace(XEON_AMX, isa="AVX2"))
    assert (forced.encoder_dtype, forced.prefill_dtype, forced.llm_weights) == (torch.float32, torch.float32, "bf16")


def test_explicit_dtype_and_int8(monkeypatch):
    fp32 = plan_on(monkeypatch, XEON_AMX, dtype="fp32")
    assert (fp32.encoder_dtype, fp32.llm_dtype, fp32.llm_weights) == (torch.float32, torch.float32, None)
    assert fp32.describe() == "cpu (float32)"
    bf16 = plan_on(monkeypatch, EPYC_AVX2, dtype="bf16")
    assert (bf16.encoder_dtype, bf16.llm_dtype, bf16.llm_weights) == (torch.bfloat16, torch.bfloat16, None)
    int8 = plan_on(monkeypatch, EPYC_AVX2, quantize="int8")
    assert int8.llm_weights == "int8" and int8.to_dict()["llm_weights"] == "int8"
    assert plan_on(monkeypatch, EPYC_AVX2, dtype="fp32", quantize="int8").llm_weights == "int8"
    assert plan_on(monkeypatch, EPYC_AVX2, quantize="none").llm_weights == "bf16"
    with pytest.raises(ModelLoadError, match="int8 computes in fp32"):
        plan_on(monkeypatch, EPYC_AVX2, dtype="bf16", quantize="int8")
    with pytest.raises(ModelLoadError, match="not possible here.*AVX2"):
        plan_on(monkeypatch, ARM, quantize="int8")
    with pytest.raises(ModelLoadError, match="unknown quantization"):
        plan_on(monkeypatch, EPYC_AVX2, quantize="int4")


def test_w8a8_plan(monkeypatch):
    w8a8 = plan_on(monkeypatch, EPYC_AVX2, quantize="w8a8")
    assert (w8a8.llm_weights, w8a8.int8_matmul, w8a8.prefill_dtype) == ("int8", True, torch.float32)
    assert w8a8.to_dict()["int8_matmul"] is True and "prefill int8 x int8" in w8a8.describe()
    assert "encoders float32 with int8 x int8" in w8a8.describe()
    # On a CPU with bf16 units the int8 x int8 products are what was asked for, not bf16 ones.
    amx = plan_on(monkeypatch, XEON_AMX, quantize="w8a8")
    assert (amx.encoder_dtype, amx.prefill_dtype, amx.int8_matmul) == (torch.float32, torch.float32, True)
    assert not plan_on(monkeypatch, EPYC_AVX2, quantize="int8").int8_matmul
    with pytest.raises(ModelLoadError, match="w8a8 is not possible here.*AVX2"):
        plan_on(monkeypatch, ARM, quantize="w8a8")
    monkeypatch.setattr(int8_matmul, "problem", lambda: "torch has no fbgemm engine on this CPU")
    with pytest.raises(ModelLoadError, match="w8a8 is not possible here: torch has no fbgemm"):
        plan_on(monkeypatch, EPYC_AVX2, quantize="w8a8")


# ---------------------------------------------------------------- the C allocator during CPU inference

# In a fresh process: place a tiny model for CPU inference (or not), then free and re-allocate a 64 MiB buffer and
# count the page faults of each new round: the fewest of four, since now and then one round's block is mapped afresh
# even with the setting (seen in 1 of 3 single-round runs). Prints "<whether the setting is in force> <faults>".
ALLOCATOR_PROBE = """
import resource, sys, torch
from mobilevideogpt import runtime
from mobilevideogpt.model.assemble import place_for_inference
from mobilevideogpt.model.tiny import build_tiny_model
if sys.argv[1] == "place":
    place_for_inference(build_tiny_model(seed=0), runtime.plan_inference("cpu", "fp32"))
torch.empty(2**24).fill_(1.0)
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(2**24).fill_(2.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
called = runtime.reuse_freed_memory.cache_info().currsize > 0
print(called and runtime.reuse_freed_memory(), min(faults))
"""


def allocator_probe(mode: str, **env: str) -> tuple[str, int]:
    environment = {k: v for k, v in os.environ.items() if k not in runtime.MALLOC_ENV}
    done = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, mode], env={**environment, **env},
                          capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")
def test_cpu_inference_reuses_large_freed_blocks():
    pages = 2**26 // resource.getpagesize()  # of the 64 MiB buffer
    applied, faults = allocator_probe("place")
    assert applied == "True" and faults < pages // 100  # the freed block came back from the heap
    applied, faults = allocator_probe("bare")  # nothing placed: glibc's own behaviour, the block is mapped afresh
    assert applied == "False" and faults > pages // 2
    applied, faults = allocator_probe("place", MALLOC_MMAP_THRESHOLD_="131072")  # the user's own setting wins
    assert applied == "False" and faults > pages // 2
