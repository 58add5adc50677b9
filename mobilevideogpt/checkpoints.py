"""Training run folders and checkpoints: their layout, the completeness rule, and what a model path means.

A run folder holds `checkpoint-N/` folders and finally `checkpoint-final/`. A checkpoint folder holds the LoRA
adapter (`adapter_config.json` + `adapter_model.safetensors`), the other trained weights (both ETP projectors)
in `non_lora_trainables.safetensors` under plain model keys, the model config, the tokenizer, the trainer
state, and last the `COMPLETE` marker, written after every rank has finished saving: a crash mid-save never
leaves a folder that resume or inference would mistake for a finished checkpoint.

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

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError, first_line

COMPLETE_MARKER = "COMPLETE"
FINAL_CHECKPOINT = "checkpoint-final"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
NON_LORA_WEIGHTS = "non_lora_trainables.safetensors"
TRAINER_STATE = "trainer_state.json"
# Files only a training run writes into a checkpoint folder.
TRAINING_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, NON_LORA_WEIGHTS, TRAINER_STATE, COMPLETE_MARKER)
MODEL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json")
_STEP_DIR = re.compile(r"^checkpoint-(\d+)$")


def mark_complete(checkpoint_dir: str | Path, global_step: int) -> None:
    path = Path(checkpoint_dir) / COMPLETE_MARKER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"global_step": global_step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    tmp.replace(path)


def is_complete(checkpoint_dir: str | Path) -> bool:
    return (Path(checkpoint_dir) / COMPLETE_MARKER).is_file()


def step_checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders of a run, complete or not, by ascending N."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    steps = [(int(m.group(1)), child) for child in root.iterdir() if (m := _STEP_DIR.match(child.name)) and child.is_dir()]
    return [path for _, path in sorted(steps)]


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete `checkpoint-N` with the highest N, or None."""
    complete = [path for path in step_checkpoints(output_dir) if is_complete(path)]
    return complete[-1] if complete else None


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
        """The checkpoint's `COMPLETE` marker text (identifies one save of it), None for a base model."""
        if self.checkpoint is None or not is_complete(self.checkpoint):
            return None
        return (self.checkpoint / COMPLETE_MARKER).read_text().strip()

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
    """checkpoint-final when complete, else the latest complete checkpoint-N; the note says which and why."""
    final = run_dir / FINAL_CHECKPOINT
    if final.is_dir() and is_complete(final):
        return final, f"{run_dir} is a training run: using {FINAL_CHECKPOINT}"
    latest = latest_complete_checkpoint(run_dir)
    if latest is not None:
        why = f"{FINAL_CHECKPOINT} is incomplete" if final.is_dir() else f"it has no {FINAL_CHECKPOINT}"
        return latest, f"{run_dir} is a training run and {why}: using the latest complete {latest.name}"
    if final.is_dir() or step_checkpoints(run_dir):
        raise ModelLoadError(
            f"{run_dir} holds no complete checkpoint (none has its {COMPLETE_MARKER} marker: training was "
            "interrupted while saving); rerun training or resume it with `bash scripts/finetune_qved.sh --resume`"
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
        if looks_like_local_path(text):
            raise ModelLoadError(
                f"model path {text} does not exist; pass a checkpoint folder (e.g. "
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
