"""Benchmark the selective scan at VideoMamba-M size on CPU: per-step reference loop vs the pure-PyTorch fast path vs
the compiled CPU kernel, forward and backward, plus the depthwise causal conv.

    PYTHONPATH=. python benchmarks/bench_selective_scan.py [--reps 9] [--threads N] [--no-ref-backward]
        [--default-malloc]

One scan: batch 1, L = 1569 (8 frames x 196 patches + CLS), D = 1152, N = 16, with z, D, delta_bias and
softplus, values as in a freshly initialised VideoMamba-M layer; fp32, and bf16 as a bf16 mixer passes it (u, delta,
z, B, C in bf16; A, D, delta_bias in fp32). Repetitions of the implementations are interleaved (round-robin) so that
load from other processes hits all of them alike; the median and the minimum are printed, and the forward times
relative to the fp32 compiled kernel. bf16 rows are checked against the reference on the same bf16-rounded inputs.

On a machine shared with other busy processes, OpenMP threads that spin-wait stall every parallel op for
milliseconds; the pure-PyTorch path and the conv then slow down 10-20x. The package spins only briefly, and only where
nothing else runs when it is imported (mobilevideogpt/openmp_wait.py); OMP_WAIT_POLICY=PASSIVE (set before Python
starts) or --threads 1 rules spinning out. The compiled kernels run on the same OpenMP threads. The header prints the
load average so such runs can be recognised.

glibc hands large freed blocks back to the kernel and moves its mmap threshold with every such free, so in a
round-robin one implementation can, depending only on the order, pay ~1800 fresh zeroed pages per call (measured:
20 ms on this VM, a 40 % "slowdown" of the bf16 kernel that vanished when the order changed). Unless
--default-malloc is given, glibc is told to keep freed memory (mallopt), so every row gets its output from reused
memory, as in a running model.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import platform
import statistics
import time
from typing import Callable

import mobilevideogpt  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
import torch

from mobilevideogpt.engine import scan_cpu
from mobilevideogpt.model import scan

L, DIM, N = 1569, 1152, 16
SCANS_PER_CLIP = 64  # 32 layers x 2 directions


def make_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """u, z ~ N(0, 1); B, C ~ N(0, 1); dt_proj output ~ N(0, 0.5) plus the dt bias of Mamba's init (inverse
    softplus of dt log-uniform in [1e-3, 1e-1]), so softplus(delta + bias) lands in ~0.001..0.1; A = -(1..16)."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(DIM, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return {
        "u": torch.randn(1, DIM, L, generator=g),
        "delta": torch.randn(1, DIM, L, generator=g) * 0.5,
        "A": -torch.arange(1, N + 1, dtype=torch.float32).repeat(DIM, 1),
        "B": torch.randn(1, N, L, generator=g),
        "C": torch.randn(1, N, L, generator=g),
        "D": torch.ones(DIM),
        "z": torch.randn(1, DIM, L, generator=g),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }


def keep_freed_memory() -> bool:
    """glibc only: keep freed memory instead of returning it to the kernel (M_TRIM_THRESHOLD) and serve blocks up
    to 32 MiB from the heap (M_MMAP_THRESHOLD, glibc's maximum); whether it applied."""
    if platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(-1, 1 << 30)) and bool(mallopt(-3, 32 << 20))


def time_round_robin(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    for fn in fns.values():  # warm-up (and the one-time kernel build)
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=9, help="timed repetitions per implementation (forward)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--no-ref-backward", action="store_true", help="skip the slow reference backward")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc settings alone")
    args = parser.parse_args()
    malloc = "default" if args.default_malloc or not keep_freed_memory() else "freed memory kept"
    if args.threads:
        torch.set_num_threads(args.threads)

    x = make_inputs()
    x16 = {k: v.to(torch.bfloat16) if k in ("u", "delta", "z", "B", "C") else v for k, v in x.items()}
    kw = dict(delta_softplus=True)
    load_before = os.getloadavg()[0]
    kernel = scan_cpu.load_kernel()

    def via_fp32_copies():
        """bf16 through the fp32 kernel with conversions around it (what the kernel did before it read bf16)."""
        return scan_cpu.selective_scan_cpu(**{k: v.float() for k, v in x16.items()}, **kw).to(torch.bfloat16)

    with torch.no_grad():
        ref = scan.selective_scan_ref(**x, **kw)
        ref16 = scan.selective_scan_ref(**{k: v.float() for k, v in x16.items()}, **kw)
        fwd = {
            "per-step reference loop": lambda: scan.selective_scan_ref(**x, **kw),
            "pure-PyTorch fast path": lambda: scan.selective_scan_torch(**x, **kw),
            "pure-PyTorch fast path, bf16": lambda: scan.selective_scan_torch(**x16, **kw),
        }
        if kernel is not None:
            fwd["compiled CPU kernel"] = lambda: scan_cpu.selective_scan_cpu(**x, **kw)
            fwd["compiled CPU kernel, bf16"] = lambda: scan_cpu.selective_scan_cpu(**x16, **kw)
            fwd["compiled kernel, bf16 via fp32"] = via_fp32_copies
        errors = {name: rel_err(fn(), ref16 if "bf16" in name else ref) for name, fn in fwd.items()}
        fwd_times = time_round_robin(fwd, args.reps)

    def backward(impl):
        leaves = {k: v.clone().requires_grad_() for k, v in x.items()}

        def run():
            impl(**leaves, **kw).sum().backward()

        return run

    bwd = {"pure-PyTorch fast path": backward(scan.selective_scan_torch)}
    if not args.no_ref_backward:
        bwd["per-step reference loop"] = backward(scan.selective_scan_ref)
    bwd_times = time_round_robin(bwd, max(3, args.reps // 3))

    conv_x = torch.randn(1, DIM, L)
    mixer_x = torch.randn(1, L, 2 * DIM).transpose(1, 2)[:, :DIM]  # as the mixer passes it: half of in_proj's output
    conv_w, conv_b = torch.randn(DIM, 4), torch.randn(DIM)
    convs = {
        "causal_conv1d reference (per tap)": lambda: scan.causal_conv1d_ref(conv_x, conv_w, conv_b, "silu"),
        "PyTorch path (F.conv1d)": lambda: scan.causal_conv1d_torch(conv_x, conv_w, conv_b, "silu"),
        "PyTorch path, mixer layout": lambda: scan.causal_conv1d_torch(mixer_x, conv_w, conv_b, "silu"),
    }
    if kernel is not None:
        convs["compiled CPU kernel"] = lambda: scan_cpu.causal_conv1d_cpu(conv_x, conv_w, conv_b, silu=True)
        convs["compiled kernel, mixer layout"] = lambda: scan_cpu.causal_conv1d_cpu(mixer_x, conv_w, conv_b, silu=True)
    with torch.no_grad():
        conv_times = time_round_robin(convs, args.reps)
    load_after = os.getloadavg()[0]

    print(f"selective scan, CPU fp32 and bf16, batch 1, L={L}, D={DIM}, N={N}, z + D + delta_bias + softplus")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
        f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', '(unset)')}, {platform.machine()}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, malloc {malloc}, load average "
        f"{load_before:.2f} -> {load_after:.2f}"
    )
    if kernel is None:
        print(f"compiled CPU kernel unavailable: {scan_cpu.build_error()}")
    print()
    header = f"{'forward':<36}{'median ms':>11}{'min ms':>9}{'speed-up':>10}{'rel. err':>10}"
    print(header)
    print("-" * len(header))
    base = statistics.median(fwd_times["per-step reference loop"])
    for name, ts in fwd_times.items():
        med = statistics.median(ts)
        print(f"{name:<36}{med * 1e3:>11.1f}{min(ts) * 1e3:>9.1f}{base / med:>9.1f}x{errors[name]:>10.1e}")
    if kernel is not None:
        unit = statistics.median(fwd_times["compiled CPU kernel"])
        print()
        print("forward time / fp32 compiled kernel (medians): " + ", ".join(
            f"{name} {statistics.median(ts) / unit:.2f}" for name, ts in fwd_times.items()
            if name != "per-step reference loop"))
    print()
    header = f"{'forward + backward':<36}{'median ms':>11}{'min ms':>9}{'speed-up':>10}"
    print(header)
    print("-" * len(header))
    ref_name = "per-step reference loop"
    bwd_base = statistics.median(bwd_times[ref_name]) if ref_name in bwd_times else None
    for name, ts in sorted(bwd_times.items(), key=lambda kv: kv[0] != ref_name):
        med = statistics.median(ts)
        ratio = f"{bwd_base / med:>9.1f}x" if bwd_base else f"{'-':>10}"
        print(f"{name:<36}{med * 1e3:>11.1f}{min(ts) * 1e3:>9.1f}{ratio}")
    print()
    header = f"{'causal conv1d (W=4, silu)':<36}{'median ms':>11}{'min ms':>9}"
    print(header)
    print("-" * len(header))
    for name, ts in conv_times.items():
        print(f"{name:<36}{statistics.median(ts) * 1e3:>11.1f}{min(ts) * 1e3:>9.1f}")
    fp32_rows = [ts for name, ts in fwd_times.items() if name != "per-step reference loop" and "bf16" not in name]
    best = min(statistics.median(ts) for ts in fp32_rows)
    conv = min(statistics.median(ts) for name, ts in conv_times.items() if "reference" not in name)
    print()
    print(
        f"VideoMamba-M clip ({SCANS_PER_CLIP} scans + {SCANS_PER_CLIP} convs) with the fastest fp32 forward and conv: "
        f"{SCANS_PER_CLIP * (best + conv):.2f} s of the 6 s encoder budget"
    )


if __name__ == "__main__":
    main()
