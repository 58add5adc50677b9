"""Fault injection: after any single fault, training uses the previous complete checkpoint or one line names the file.

    python tests/fault_injection.py [--workdir DIR] [--kills 4] [--seed 0]

Runs on CPU with a tiny model (a few minutes on two cores; not part of pytest). Three kinds of fault:

1. kill -9 of the whole training at a random moment of a checkpoint save, several times, each followed by
   `--resume`: every `checkpoint-*` folder left is complete and intact, and the finished run equals one that was
   never interrupted (same losses, same final weights) — never a mixed or silently wrong model;
2. each file of the newest checkpoint cut short in turn: `--resume` falls back to the previous checkpoint and names
   the file, inference uses the newest checkpoint whose weights are intact or names the damaged weight file;
3. a full disk (a small tmpfs, where this user may mount one; skipped otherwise, and said so): the save fails with
   one line naming the folder and saying the disk is full, the previous checkpoint stays intact, and after space is
   freed `--resume` finishes the run; a merge onto the full disk keeps the earlier export.

Exit status 0 when every check held; each failed check is printed and the status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilevideogpt.checkpoints import (  # noqa: E402 - the repository first on the path
    ADAPTER_WEIGHTS,
    FINAL_CHECKPOINT,
    INFERENCE_FILES,
    NON_LORA_WEIGHTS,
    STAGING_DIR,
    checkpoint_problems,
    read_marker,
    resolve_model_path,
    resume_checkpoint,
    step_checkpoints,
)

STEPS = 8
failures: list[str] = []


def check(condition: bool, what: str) -> None:
    print(f"  [{'ok' if condition else 'FAIL'}] {what}", flush=True)
    if not condition:
        failures.append(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", str(free_port()),
        "--module", "mobilevideogpt.cli.train_rank",
        "--deepspeed", "scripts/zero3.json", "--model_name_or_path", str(base), "--dataset_use", str(data),
        "--output_dir", str(out), "--use_cpu", "True", "--per_device_train_batch_size", "1",
        "--learning_rate", "1e-2", "--mm_projector_lr", "1e-2", "--lora_r", "8", "--lora_alpha", "16",
        "--lr_scheduler_type", "constant", "--logging_steps", "1", "--model_max_length", "128",
        "--dataloader_num_workers", "0", "--report_to", "none", "--seed", "7",
        "--max_steps", str(STEPS), "--save_steps", "1", *extra,
    ]  # fmt: skip


def start(base: Path, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        command(base, data, out, *extra), cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def error_lines(output: str) -> list[str]:
    return [line for line in output.replace("\r", "\n").splitlines() if line.startswith("error: ")]


def losses(run: Path) -> list[float]:
    state = json.loads((run / FINAL_CHECKPOINT / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    for name in (ADAPTER_WEIGHTS, NON_LORA_WEIGHTS):
        x, y = load_file(a / name), load_file(b / name)
        if x.keys() != y.keys() or any((x[k].float() - y[k].float()).abs().max() > 1e-5 for k in x):
            return False
    return True


def all_checkpoints_intact(run: Path) -> bool:
    folders = step_checkpoints(run) + ([run / FINAL_CHECKPOINT] if (run / FINAL_CHECKPOINT).exists() else [])
    return all(checkpoint_problems(folder) == [] for folder in folders)


def kill_during_saves(base: Path, data: Path, reference: Path, work: Path, kills: int, rng: random.Random) -> None:
    print(f"1. kill -9 at random moments of a save ({kills} times), then --resume", flush=True)
    run = work / "killed"
    for attempt in range(kills):
        process = start(base, data, run, *(["--resume", "True"] if attempt else []))
        # Wait for a save to begin, then kill the whole process group somewhere inside it.
        while process.poll() is None and not (run / STAGING_DIR).exists():
            time.sleep(0.01)
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        kept = [p.name for p in step_checkpoints(run)]
        check(all_checkpoints_intact(run), f"killed {delay:.2f} s into a save: every checkpoint left is intact ({kept})")
    code, output = finish(start(base, data, run, "--resume", "True"))
    check(code == 0, "the last --resume finished the run" + ("" if code == 0 else f": {output[-2000:]}"))
    if code == 0:
        check(losses(run) == losses(reference), "the interrupted run's losses equal the uninterrupted run's")
        check(same_weights(run / FINAL_CHECKPOINT, reference / FINAL_CHECKPOINT), "its final weights are the same")


def truncate_each_file(reference: Path, work: Path) -> None:
    print("2. each file of the newest checkpoint cut short in turn", flush=True)
    run = work / "truncated"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns(FINAL_CHECKPOINT))
    newest, previous = step_checkpoints(run)[-1], step_checkpoints(run)[-2]
    for relpath in read_marker(newest)["files"]:
        path = newest / relpath
        intact = path.read_bytes()
        path.write_bytes(intact[: len(intact) // 2])
        chosen, passed_over = resume_checkpoint(run)
        check(chosen == previous and str(path) in " ".join(passed_over), f"{relpath}: resume takes {previous.name}")
        source = resolve_model_path(run)
        expected = previous if relpath in INFERENCE_FILES else newest
        check(source.checkpoint == expected, f"{relpath}: inference uses {expected.name}")
        path.write_bytes(intact)


def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode == 0


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def disk_full(base: Path, data: Path, reference: Path, work: Path) -> None:
    print("3. a full disk", flush=True)
    disk = work / "small_disk"
    checkpoint_bytes = folder_bytes(reference / "checkpoint-1")
    # Room for run.json, the logs and about two and a half checkpoints: the third save runs out of space.
    if not mount_tmpfs(disk, f"{int(checkpoint_bytes * 2.5) // 1024 + 64}k"):
        print("  [skipped] this user cannot mount a tmpfs here", flush=True)
        return
    try:
        run = disk / "run"
        code, output = finish(start(base, data, run))
        errors = error_lines(output)
        check(code != 0 and len(errors) == 1, f"the save fails with one error line ({errors})")
        check(bool(errors) and "no space left on the disk" in errors[0] and str(run / STAGING_DIR) in errors[0],
              "it says the disk is full and names the folder being written")
        kept = [p.name for p in step_checkpoints(run)]
        check(bool(kept) and all_checkpoints_intact(run), f"the checkpoints saved before are intact ({kept})")
        room = (checkpoint_bytes * (STEPS + 2) + 2 * folder_bytes(base)) // 1024
        subprocess.run(["mount", "-o", f"remount,size={room}k", str(disk)], check=True)  # space freed
        code, output = finish(start(base, data, run, "--resume", "True"))
        check(code == 0 and losses(run) == losses(reference), "after freeing space, --resume finishes the same run")

        from mobilevideogpt.export import merge_checkpoint

        export = disk / "merged"
        merge_checkpoint(run, export)
        earlier = {p.name: p.stat().st_size for p in export.iterdir()}
        subprocess.run(["mount", "-o", f"remount,size={(folder_bytes(disk) + folder_bytes(export) // 2) // 1024}k",
                        str(disk)], check=True)
        try:
            merge_checkpoint(run, export, overwrite=True)
            check(False, "a merge onto a full disk fails")
        except OSError as err:
            check("no space left on the disk" in str(err) and str(export) in str(err), f"the merge says so: {err}")
        check({p.name: p.stat().st_size for p in export.iterdir()} == earlier, "the earlier export is unchanged")
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where to work (default: a new temporary folder, removed after)")
    parser.add_argument("--kills", type=int, default=4, help="kills during saves (default 4; 0 skips that part)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mvgpt-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        from mobilevideogpt.model.tiny import fast_geometry, save_tiny_checkpoint
        from mobilevideogpt.qved.sample_dataset import make_sample_dataset

        # A --workdir from an earlier run keeps its base model, dataset and uninterrupted reference run.
        base, data, reference = work / "base", work / "dataset" / "qved_train.json", work / "reference"
        if not (base / "config.json").is_file():
            save_tiny_checkpoint(base, seed=0, **fast_geometry())
        if not data.is_file():
            make_sample_dataset(data.parent, log=lambda message: None)
        if not (reference / FINAL_CHECKPOINT / "COMPLETE").is_file():
            shutil.rmtree(reference, ignore_errors=True)
            code, output = finish(start(base, data, reference))
            if code != 0:
                print(output[-3000:])
                return 1
        for part in ("killed", "truncated"):
            shutil.rmtree(work / part, ignore_errors=True)
        if args.kills:
            kill_during_saves(base, data, reference, work, args.kills, random.Random(args.seed))
        truncate_each_file(reference, work)
        disk_full(base, data, reference, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{len(failures)} check(s) failed" + "".join(f"\n  - {f}" for f in failures) if failures else "\nall checks held")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
