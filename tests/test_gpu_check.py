"""benchmarks/gpu_check.py stays runnable: on CPU its GPU rows skip with the reason and the others measure."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mobilevideogpt.runtime import cpu_features

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
GPU_ROWS = [
    "full-size bf16 model build",
    "ZeRO-3 LoRA step, batch 4",
    "ZeRO-3 LoRA step, batch 2",
    "ZeRO-3 LoRA step, batch 1",
    "greedy decode, one video (full size, bf16)",
]
ALL_ROWS = ["gpu tests (`pytest -m gpu`)", *GPU_ROWS, "VideoMamba selective scan"]


def run_check(tmp_path: Path, *options: str) -> tuple[subprocess.CompletedProcess, dict[str, list[str]], dict]:
    """Runs the check with CUDA hidden (so it takes its CPU course on any machine); returns the process, the
    table's rows {check: [result, details]} and the JSON it wrote."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out), *options], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "check":
            table[cells[0]] = cells[1:]
    return done, table, json.loads(out.read_text())


def test_on_cpu_the_gpu_rows_skip_and_the_others_measure(tmp_path):
    done, table, report = run_check(tmp_path)
    header = done.stdout.splitlines()[0]
    assert header.startswith("GPU: no CUDA device; CUDA ") and "torch " in header
    assert header.endswith(f"CPU {cpu_features().describe()}")
    assert list(table) == ALL_ROWS
    for check in GPU_ROWS:
        assert table[check][0] == "skipped: no CUDA device"
    rows = {r["check"]: r for r in report["rows"]}
    assert list(rows) == ALL_ROWS and [r["result"] for r in rows.values()] == [table[c][0] for c in ALL_ROWS]
    tests = rows["gpu tests (`pytest -m gpu`)"]
    assert tests["status"] == "ok" and tests["numbers"]["passed"] == 0 and tests["numbers"]["failed"] == 0
    assert tests["numbers"]["skipped"] >= 4 and "needs a CUDA device" in tests["details"]
    assert re.fullmatch(r"0 passed, 0 failed, \d+ skipped", table["gpu tests (`pytest -m gpu`)"][0])
    scan = rows["VideoMamba selective scan"]["numbers"]
    assert scan["scan_path"] in ("cpp", "torch") and scan["conv_path"] in ("cpp", "torch")  # no CUDA kernels on a CPU
    assert scan["scan_max_abs_diff"] < 1e-4 and scan["conv_max_abs_diff"] < 1e-4
    assert f"{scan['scan_max_abs_diff']:.2e}" in table["VideoMamba selective scan"][0]


def test_zero3_config_fills_every_auto_of_scripts_zero3_json():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    config = gpu_check.zero3_config(batch=4, hidden_size=896)
    assert "auto" not in json.dumps(config)
    assert config["zero_optimization"]["stage"] == 3 and config["bf16"]["enabled"] is True
    assert config["fp16"]["enabled"] is False
    assert config["train_micro_batch_size_per_gpu"] == config["train_batch_size"] == 4
    assert config["zero_optimization"]["reduce_bucket_size"] == 896 * 896
    assert gpu_check.zero3_config(batch=1, hidden_size=896, bf16=False)["bf16"]["enabled"] is False


@pytest.mark.slow
def test_tiny_cpu_runs_the_gpu_rows_code_through_deepspeed_zero3(tmp_path):
    """--tiny-cpu: the build, ZeRO-3 (gloo) and decode rows' code on the CPU with the tiny config."""
    _, table, report = run_check(tmp_path, "--tiny-cpu", "--text-len", "32", "--new-tokens", "4")
    rows = {r["check"].split(" [")[0]: r for r in report["rows"]}
    assert list(rows) == ALL_ROWS and all(r["status"] == "ok" for r in rows.values()), table
    for batch in (4, 2, 1):
        numbers = rows[f"ZeRO-3 LoRA step, batch {batch}"]["numbers"]
        assert numbers["batch"] == batch and numbers["step_s"] > 0 and math.isfinite(numbers["loss"])
        assert numbers["trainable"] > 0 and numbers["peak_rss_gib"] > 0
    assert rows["full-size bf16 model build"]["numbers"]["parameters"] > 0
    decode = rows["greedy decode, one video (full size, bf16)"]["numbers"]
    assert decode["decode_tok_s"] > 0 and decode["new_tokens"] == 4 and decode["paper_tok_s"] == 45.9
