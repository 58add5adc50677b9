"""Benchmark the selective scan at VideoMamba-M size on CPU: per-step reference loop vs the pure-PyTorch fast path vs
the compiled CPU kernel, forward and backward, plus the depthwise causal conv.

    PYTHONPATH=. python benchmarks/bench_selective_scan.py [--reps 9] [--threads N] [--no-ref-backward]

One scan: batch 1, L = 1569 (8 frames x 196 patches + CLS), D = 1152, N = 16, fp32, with z, D, delta_bias and
softplus, values as in a freshly initialised VideoMamba-M layer. Repetitions of the implementations are interleaved
(round-robin) so that load from other processes hits all of them alike; the median and the minimum are printed.

On a machine shared with other busy processes, torch's OpenMP threads spin-wait at every parallel op and stall for
milliseconds; the pure-PyTorch path and the conv then slow down 10-20x. OMP_WAIT_POLICY=PASSIVE (set before Python
starts) or --threads 1 avoids it; the compiled kernel uses its own threads and is unaffected. The header prints the
load average so such runs can be recognised.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from typing import Callable

import torch

from mobilevideogpt.model import scan, scan_cpu

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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    x = make_inputs()
    kw = dict(delta_softplus=True)
    load_before = os.getloadavg()[0]
    kernel = scan_cpu.load_kernel()

    with torch.no_grad():
        ref = scan.selective_scan_ref(**x, **kw)
        fwd = {
            "per-step reference loop": lambda: scan.selective_scan_ref(**x, **kw),
            "pure-PyTorch fast path": lambda: scan.selective_scan_torch(**x, **kw),
        }
        if kernel is not None:
            fwd["compiled CPU kernel"] = lambda: scan_cpu.selective_scan_cpu(**x, **kw)
        errors = {name: rel_err(fn(), ref) for name, fn in fwd.items()}
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
    conv_w, conv_b = torch.randn(DIM, 4), torch.randn(DIM)
    with torch.no_grad():
        conv_times = time_round_robin(
            {
                "causal_conv1d reference (per tap)": lambda: scan.causal_conv1d_ref(conv_x, conv_w, conv_b, "silu"),
                "causal_conv1d (F.conv1d)": lambda: scan.causal_conv1d(conv_x, conv_w, conv_b, "silu"),
            },
            args.reps,
        )
    load_after = os.getloadavg()[0]

    print(f"selective scan, CPU fp32, batch 1, L={L}, D={DIM}, N={N}, z + D + delta_bias + softplus")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, {platform.machine()}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, load average {load_before:.2f} -> "
        f"{load_after:.2f}"
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
    best = min(statistics.median(ts) for name, ts in fwd_times.items() if name != "per-step reference loop")
    conv = statistics.median(conv_times["causal_conv1d (F.conv1d)"])
    print()
    print(
        f"VideoMamba-M clip ({SCANS_PER_CLIP} scans + {SCANS_PER_CLIP} convs) with the fastest forward: "
        f"{SCANS_PER_CLIP * (best + conv):.2f} s of the 6 s encoder budget"
    )


if __name__ == "__main__":
    main()
