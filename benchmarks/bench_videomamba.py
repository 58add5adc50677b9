"""Whole VideoMamba-M forward on one 8-frame 224×224 clip (random weights, batch 1).

    python benchmarks/bench_videomamba.py [--runs 3] [--dtype float32] [--device cpu] [--depth 32]

Prints the median forward time and how much of it the 64 selective scans take. Goal on 2 CPU cores, fp32:
≤ 6 s per clip.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mobilevideogpt.model.mamba as mamba_module
from mobilevideogpt.model.videomamba import VideoMamba, VideoMambaConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--depth", type=int, default=32)
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = VideoMamba(VideoMambaConfig(depth=args.depth)).eval().to(device=device, dtype=dtype)
    clip = torch.randn(1, 3, 8, 224, 224, device=device)

    scan_seconds = [0.0]
    real_scan = mamba_module.selective_scan

    def timed_scan(*a, **k):
        sync(device)
        start = time.perf_counter()
        out = real_scan(*a, **k)
        sync(device)
        scan_seconds[0] += time.perf_counter() - start
        return out

    mamba_module.selective_scan = timed_scan
    totals, scans = [], []
    with torch.inference_mode():
        model(clip)  # warm-up (and any lazy kernel build)
        for _ in range(args.runs):
            scan_seconds[0] = 0.0
            sync(device)
            start = time.perf_counter()
            out = model(clip)
            sync(device)
            totals.append(time.perf_counter() - start)
            scans.append(scan_seconds[0])
    mamba_module.selective_scan = real_scan

    total, scan = statistics.median(totals), statistics.median(scans)
    print(f"VideoMamba-M forward, 1×8×224×224, depth {args.depth}, {args.dtype} on {device}, "
          f"{torch.get_num_threads()} threads, median of {args.runs}")
    print(f"| {'part':<28} | {'seconds':>8} |")
    print(f"|{'-' * 30}|{'-' * 10}|")
    print(f"| {'whole forward':<28} | {total:8.3f} |")
    print(f"| {f'selective scans ({2 * args.depth})':<28} | {scan:8.3f} |")
    print(f"| {'everything else':<28} | {total - scan:8.3f} |")
    print(f"output {tuple(out.shape)}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
