"""Training run folders and checkpoints: their layout, the completeness rule, and what a model path means.

A run folder belongs to one training run: `run.json` records its id. It holds `checkpoint-N/` folders and
finally `checkpoint-final/`. A checkpoint folder holds the LoRA adapter (`adapter_config.json` +
`adapter_model.safetensors`), the other trained weights (both ETP projectors) in
`non_lora_trainables.safetensors` under plain model keys, the model config, the tokenizer, the trainer state,
and last the `COMPLETE` marker, written after every rank has finished saving. The marker records the run id,
the step and the size and SHA-256 of every file of the folder, so a truncated or altered file is found before
it is used (`checkpoint_problems`).

A checkpoint is written under `.saving/` and renamed into place once complete (`swap_into_place`): a folder
named `checkpoint-N` is never half written, nor half one save and half another. Folders whose name starts with a
dot, and checkpoints whose marker names another run than `run.json`, are never picked.

`resolve_model_path` turns what a user passes as `--model_path` into a `ModelSource` without loading weights:
- a base checkpoint: a hub id (`Amshaker/Mobile-VideoGPT-0.5B`) or a folder with `config.json` + weights
  (the published checkpoint, a tiny test checkpoint, a merged export);
- a training checkpoint folder (`checkpoint-N/`, `checkpoint-final/`), usable once its marker exists;
- a run folder: its complete `checkpoint-final/`, else its latest complete `checkpoint-N/` (`ModelSource.note`
  says which and why).
A training checkpoint is recognised by its files, never by its folder name; its base is recorded in
`adapter_config.json` (overridable).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError, first_line

COMPLETE_MARKER = "COMPLETE"
FINAL_CHECKPOINT = "checkpoint-final"
RUN_RECORD = "run.json"
# Checkpoints being written, and replaced ones being removed; nothing under it is ever read.
STAGING_DIR = ".saving"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
NON_LORA_WEIGHTS = "non_lora_trainables.safetensors"
TRAINER_STATE = "trainer_state.json"
# Files only a training run writes into a checkpoint folder.
TRAINING_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, NON_LORA_WEIGHTS, TRAINER_STATE, COMPLETE_MARKER)
# What inference reads from a training checkpoint: weights and the tokenizer, checked against the marker before
# loading, and JSON settings, which may be edited by hand (e.g. a moved base's path) and so only have to parse.
INFERENCE_WEIGHTS = (ADAPTER_WEIGHTS, NON_LORA_WEIGHTS, "tokenizer.json")
INFERENCE_JSON = (ADAPTER_CONFIG, "config.json", "tokenizer_config.json")
INFERENCE_FILES = INFERENCE_WEIGHTS + INFERENCE_JSON
MODEL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json")
_STEP_DIR = re.compile(r"^checkpoint-(\d+)$")
_HASH_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: Path, record: dict) -> None:
    """Write `record` to a temporary file beside `path`, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def mark_complete(checkpoint_dir: str | Path, global_step: int, run_id: str | None = None) -> None:
    """Write the `COMPLETE` marker: run id, step, and size + SHA-256 of every file in the folder."""
    folder = Path(checkpoint_dir)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER):
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    record = {
        "run_id": run_id,
        "global_step": global_step,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "files": files,
    }
    write_json_atomic(folder / COMPLETE_MARKER, record)


def is_complete(checkpoint_dir: str | Path) -> bool:
    return (Path(checkpoint_dir) / COMPLETE_MARKER).is_file()


def read_marker(checkpoint_dir: str | Path) -> dict | None:
    """The marker's record; None when there is no marker or it is not a marker this package wrote."""
    try:
        record = json.loads((Path(checkpoint_dir) / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def checkpoint_problems(checkpoint_dir: str | Path, only: Iterable[str] | None = None) -> list[str]:
    """What is wrong with a complete checkpoint's files, compared with its marker ([] when intact).

    `only` limits the check to these files (relative paths) when the marker lists them. Each problem names the
    file: missing, truncated or grown, or different content.
    """
    folder = Path(checkpoint_dir)
    marker = read_marker(folder)
    if marker is None:
        return [f"{folder / COMPLETE_MARKER} is unreadable or not a checkpoint marker"]
    if not isinstance(marker.get("files"), dict):
        return []  # a marker written by hand, or before markers listed files: nothing to compare with
    wanted = set(only) if only is not None else None
    problems = []
    for relpath, expected in sorted(marker["files"].items()):
        if wanted is not None and relpath not in wanted:
            continue
        path = folder / relpath
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        size = path.stat().st_size
        if size != expected.get("bytes"):
            problems.append(f"{path} is damaged ({size} bytes, {expected.get('bytes')} when saved)")
        elif file_sha256(path) != expected.get("sha256"):
            problems.append(f"{path} is damaged (its content changed since it was saved)")
    return problems


def inference_problems(checkpoint_dir: str | Path) -> list[str]:
    """What would make inference fail on a complete checkpoint: a weight or tokenizer file that differs from its
    marker, or a JSON file that does not parse. Each problem names the file."""
    folder = Path(checkpoint_dir)
    problems = checkpoint_problems(folder, INFERENCE_WEIGHTS)
    for name in INFERENCE_JSON:
        if (folder / name).is_file():
            try:
                json.loads((folder / name).read_text())
            except (OSError, ValueError) as err:
                problems.append(f"{folder / name} is damaged ({first_line(err)})")
    return problems


def read_run_id(run_dir: str | Path) -> str | None:
    """The run id `run.json` records; None without one. A damaged `run.json` is an error naming it."""
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return str(record["run_id"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(
            f"{path} is damaged ({first_line(err)}); it should hold the run's id, e.g. {{\"run_id\": \"...\"}}"
        ) from err


def marker_run_id(checkpoint_dir: str | Path) -> str | None:
    marker = read_marker(checkpoint_dir)
    return marker.get("run_id") if marker else None


def belongs_to_run(checkpoint_dir: Path, run_id: str | None) -> bool:
    """A checkpoint of a folder without a run record belongs to it; otherwise its marker must name the run."""
    return run_id is None or marker_run_id(checkpoint_dir) == run_id


def step_checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders of a run folder, complete or not, of any run, by ascending N."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    steps = [(int(m.group(1)), child) for child in root.iterdir() if (m := _STEP_DIR.match(child.name)) and child.is_dir()]
    return [path for _, path in sorted(steps)]


def run_checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete `checkpoint-N` folders of the run `output_dir` records, by ascending N."""
    run_id = read_run_id(output_dir)
    return [path for path in step_checkpoints(output_dir) if is_complete(path) and belongs_to_run(path, run_id)]


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The run's complete `checkpoint-N` with the highest N, or None."""
    complete = run_checkpoints(output_dir)
    return complete[-1] if complete else None


def resume_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint of the run whose files are intact, and why newer ones were passed over."""
    passed_over = []
    for checkpoint in reversed(run_checkpoints(output_dir)):
        problems = checkpoint_problems(checkpoint)
        if not problems:
            return checkpoint, passed_over
        passed_over.append(f"{checkpoint.name} is unusable: {'; '.join(problems[:3])}")
    return None, passed_over


def recover_staging(run_dir: str | Path) -> list[str]:
    """Finish or undo what a process killed while publishing left under `.saving/`, then remove the rest.

    A complete, intact staged checkpoint whose place is empty is moved there (the process died between the two
    renames of `swap_into_place`); else a replaced checkpoint whose place is empty is moved back. Anything else
    there is an unfinished save and is deleted. Returns one line per checkpoint moved into place.
    """
    staging = Path(run_dir) / STAGING_DIR
    if not staging.is_dir():
        return []
    restored = []
    for staged in sorted(p for p in staging.iterdir() if p.is_dir() and not p.name.startswith(".")):
        target = staging.parent / staged.name
        if not target.exists() and is_complete(staged) and not checkpoint_problems(staged):
            staged.rename(target)
            restored.append(f"{target.name}: its save had completed; moved into place")
    for retired in sorted(p for p in staging.iterdir() if p.is_dir() and p.name.endswith(".replaced")):
        target = staging.parent / retired.name[1 : -len(".replaced")]
        if not target.exists() and is_complete(retired):
            retired.rename(target)
            restored.append(f"{target.name}: its replacement was not finished; the earlier save is back in place")
    shutil.rmtree(staging)
    return restored


def swap_into_place(staged: Path, target: Path) -> None:
    """Move the complete folder `staged` to `target` (same file system), replacing a folder already there.

    Between the two renames `target` is briefly absent (a reader then takes an older checkpoint), never mixed.
    """
    if target.exists():
        retired = staged.parent / f".{target.name}.replaced"
        if retired.exists():
            shutil.rmtree(retired)
        target.rename(retired)
        staged.rename(target)
        shutil.rmtree(retired)
    else:
        staged.rename(target)


def looks_like_local_path(text: str) -> bool:
    """Hub ids are `owner/name`; anything else with path syntax (or no owner) is meant as a local path."""
    if text.startswith((".", "/", "~")) or "\\" in text:
        return True
    return text.count("/") != 1 or text.endswith("/")


def is_training_folder(path: Path) -> bool:
    return any((path / name).exists() for name in TRAINING_FILES)


def has_model_weights(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / name).is_file() for name in MODEL_WEIGHT_FILES)


def has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in TOKENIZER_FILES)


def is_training_output(model_path: str | os.PathLike) -> bool:
    """A training checkpoint folder or a run folder holding checkpoint-* folders (cheap, reads no weights)."""
    path = Path(model_path).expanduser()
    if not path.is_dir():
        return False
    return is_training_folder(path) or (
        not has_model_weights(path) and bool(step_checkpoints(path) or (path / FINAL_CHECKPOINT).is_dir())
    )


@dataclass(frozen=True)
class ModelSource:
    """What `model_path` turned out to be, before anything heavy is loaded.

    `checkpoint` is the training checkpoint folder used (None for a base model); `base` is what
    `from_pretrained` loads (the base model for a LoRA checkpoint, else the model folder or hub id itself);
    `has_adapter` / `has_projectors` say which trained files are applied on top of `base`.
    """

    model_path: str
    base: str
    checkpoint: Path | None = None
    has_adapter: bool = False
    has_projectors: bool = False
    note: str | None = None

    @property
    def is_training_checkpoint(self) -> bool:
        return self.checkpoint is not None

    @property
    def marker(self) -> str | None:
        """Run id, step and time of the checkpoint's save (identifies one save of it), None for a base model."""
        marker = read_marker(self.checkpoint) if self.checkpoint is not None else None
        if marker is None:
            return None
        return json.dumps({key: marker.get(key) for key in ("run_id", "global_step", "saved_at")}, sort_keys=True)

    def describe(self) -> str:
        if self.checkpoint is None:
            return f"model {self.base}"
        if str(self.checkpoint) == self.base:
            return f"checkpoint {self.checkpoint} (complete model)"
        parts = [
            p for p, present in (("LoRA adapter", self.has_adapter), ("projectors", self.has_projectors)) if present
        ]
        return f"checkpoint {self.checkpoint} ({' + '.join(parts) or 'no trained weights'}) on base {self.base}"

    def to_dict(self) -> dict:
        return {
            "model_path": self.model_path,
            "base": self.base,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "note": self.note,
        }


def _pick_run_checkpoint(run_dir: Path) -> tuple[Path, str]:
    """checkpoint-final when complete and intact, else the latest such checkpoint-N of the run; the note says
    which and why."""
    run_id = read_run_id(run_dir)
    final = run_dir / FINAL_CHECKPOINT
    passed_over = []
    if final.is_dir():
        if not is_complete(final):
            passed_over.append(f"{FINAL_CHECKPOINT} is incomplete")
        elif not belongs_to_run(final, run_id):
            passed_over.append(f"{FINAL_CHECKPOINT} belongs to another run than {run_dir / RUN_RECORD}")
        elif problems := inference_problems(final):
            passed_over.append(f"{FINAL_CHECKPOINT} is damaged ({problems[0]})")
        else:
            return final, f"{run_dir} is a training run: using {FINAL_CHECKPOINT}"
    else:
        passed_over.append(f"it has no {FINAL_CHECKPOINT}")
    for checkpoint in reversed(run_checkpoints(run_dir)):
        problems = inference_problems(checkpoint)
        if not problems:
            return checkpoint, f"{run_dir} is a training run and {'; '.join(passed_over)}: using the latest intact {checkpoint.name}"
        passed_over.append(f"{checkpoint.name} is damaged ({problems[0]})")
    if final.is_dir() or step_checkpoints(run_dir):
        raise ModelLoadError(
            f"{run_dir} holds no complete checkpoint to use ({'; '.join(passed_over)}; a checkpoint without its "
            f"{COMPLETE_MARKER} marker was interrupted while saving); rerun training or resume it with "
            "`bash scripts/finetune_qved.sh --resume`"
        )
    raise ModelLoadError(
        f"{run_dir} is not a Mobile-VideoGPT checkpoint: it has no config.json with model weights, no "
        f"{ADAPTER_CONFIG} and no checkpoint-* folders; pass a checkpoint folder or a hub id"
    )


def _recorded_base(checkpoint: Path) -> str | None:
    config_path = checkpoint / ADAPTER_CONFIG
    if not config_path.is_file():
        return None
    try:
        recorded = json.loads(config_path.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"{config_path} is not readable JSON ({first_line(err)}); the checkpoint is damaged"
        ) from err
    return recorded or None


def _locate_recorded_base(base: str, checkpoint: Path) -> str:
    """The recorded base as a usable path or hub id.

    Training records the path it was given, relative to where it ran (the project root for
    `scripts/finetune_qved.sh`), so a relative path is looked up from here, then from each folder above the
    checkpoint. Something that is not found and cannot be a hub id (`owner/name`) is an error.
    """
    recorded = Path(base).expanduser()
    if recorded.exists():
        return base
    if not recorded.is_absolute():
        for folder in checkpoint.resolve().parents:
            if (folder / recorded).exists():
                return str(folder / recorded)
    if looks_like_local_path(base):
        raise ModelLoadError(
            f"the base model recorded in {checkpoint / ADAPTER_CONFIG}, {base}, does not exist (looked in "
            f"{Path.cwd()} and the folders above the checkpoint); pass --model_base PATH_OR_HUB_ID"
        )
    return base


def resolve_model_path(model_path: str | os.PathLike, model_base: str | os.PathLike | None = None) -> ModelSource:
    """Classify `model_path` (see the module docstring) without loading weights. Raises `ModelLoadError`."""
    text = str(model_path)
    path = Path(text).expanduser()
    if not path.exists():
        if looks_like_local_path(text) or Path(text.split("/")[0]).expanduser().is_dir():
            # `results/nope` has a hub id's shape, but results/ is a folder here: a folder was meant.
            raise ModelLoadError(
                f"model path {text} does not exist: no such folder; pass a checkpoint folder (e.g. "
                "results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final, written by "
                "`bash scripts/finetune_qved.sh`) or a hub id such as Amshaker/Mobile-VideoGPT-0.5B"
            )
        if model_base:
            raise ModelLoadError(f"--model_base applies to local training checkpoints only; drop it for {text}")
        return ModelSource(model_path=text, base=text)
    if not path.is_dir():
        raise ModelLoadError(f"model path {text} is a file; pass the checkpoint folder that contains it")

    note = None
    if not is_training_folder(path) and not has_model_weights(path):
        path, note = _pick_run_checkpoint(path)
    if not is_training_folder(path):
        if model_base:
            raise ModelLoadError(
                f"--model_base applies to training checkpoints only, but {path} is a complete model; drop --model_base"
            )
        return ModelSource(model_path=text, base=str(path), note=note)

    if not is_complete(path):
        raise ModelLoadError(
            f"checkpoint {path} is incomplete (no {COMPLETE_MARKER} marker: training stopped while saving it); "
            "use another checkpoint-N or checkpoint-final, or resume training with "
            "`bash scripts/finetune_qved.sh --resume`"
        )
    problems = inference_problems(path)
    if problems:
        raise ModelLoadError(
            f"checkpoint {path} is damaged: {'; '.join(problems)}; use another checkpoint-N, or pass the run folder "
            "to use its newest intact checkpoint"
        )
    has_adapter = (path / ADAPTER_CONFIG).is_file()
    if has_adapter and not (path / ADAPTER_WEIGHTS).is_file():
        raise ModelLoadError(f"checkpoint {path} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}; it is damaged")
    has_projectors = (path / NON_LORA_WEIGHTS).is_file()
    if has_model_weights(path):
        # Trained without LoRA: the folder holds the whole model (projectors included).
        if model_base:
            raise ModelLoadError(f"checkpoint {path} holds a complete model; drop --model_base")
        return ModelSource(model_path=text, base=str(path), checkpoint=path, note=note)
    if not has_adapter and not has_projectors:
        raise ModelLoadError(
            f"checkpoint {path} holds neither a LoRA adapter ({ADAPTER_WEIGHTS}) nor projector weights "
            f"({NON_LORA_WEIGHTS}) nor model weights; it is not a usable training checkpoint"
        )
    base = str(model_base) if model_base else _recorded_base(path)
    if not base:
        raise ModelLoadError(
            f"checkpoint {path} does not record its base model ({ADAPTER_CONFIG} lacks base_model_name_or_path); "
            "pass it with --model_base (e.g. Amshaker/Mobile-VideoGPT-0.5B)"
        )
    if not model_base:
        base = _locate_recorded_base(base, path)
    return ModelSource(
        model_path=text,
        base=base,
        checkpoint=path,
        has_adapter=has_adapter,
        has_projectors=has_projectors,
        note=note,
    )
