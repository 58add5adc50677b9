"""Loading a model for inference: a base checkpoint, or a training output on top of its base.

`model_path` may be
- a base checkpoint: a hub id (`Amshaker/Mobile-VideoGPT-0.5B`) or a directory with `config.json` + weights
  (the published checkpoint, a tiny test checkpoint, a merged export);
- a training checkpoint folder (`checkpoint-N/`, `checkpoint-final/`): LoRA adapter + `non_lora_trainables`
  (both ETP projectors) + config + tokenizer, usable only once its `COMPLETE` marker exists;
- a training run's output directory: its `checkpoint-final/` when complete, else its latest complete
  `checkpoint-N/` (the choice is reported in `ModelSource.note`).

A training checkpoint is recognised by its files (adapter, projector weights, trainer state, marker), never by
its folder name, and its base may be any Mobile-VideoGPT checkpoint (recorded in `adapter_config.json`,
overridable). Loading order for one: base weights → projector weights, strictly (every tensor must exist in the
model with the same shape) → LoRA adapter, strictly (every adapter tensor must land in a LoRA layer and every
LoRA layer must get one) → merged into the linear layers. Everything is assembled in fp32 on the CPU and then
moved to the requested device and dtype, so a merge never rounds through half precision.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..train.checkpoints import (
    COMPLETE_MARKER,
    FINAL_CHECKPOINT,
    NON_LORA_WEIGHTS,
    is_complete,
    latest_complete_checkpoint,
    step_checkpoints,
)
from .loading import CheckpointLoadError, first_line, one_line
from .state_dicts import diff_state_dicts, preview

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINER_STATE = "trainer_state.json"
# Files only a training run writes into a checkpoint folder.
TRAINING_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, NON_LORA_WEIGHTS, TRAINER_STATE, COMPLETE_MARKER)
MODEL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json")
# A PEFT parameter name carries the adapter name; the saved adapter file does not.
PEFT_ADAPTER_NAME = "default"

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


class ModelLoadError(RuntimeError):
    """A model cannot be loaded; the message says which file or id and what to do about it."""


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

    def describe(self) -> str:
        if self.checkpoint is None:
            return f"model {self.base}"
        if str(self.checkpoint) == self.base:
            return f"checkpoint {self.checkpoint} (complete model)"
        parts = [
            p for p, present in (("LoRA adapter", self.has_adapter), ("projectors", self.has_projectors)) if present
        ]
        return f"checkpoint {self.checkpoint} ({' + '.join(parts) or 'no trained weights'}) on base {self.base}"


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


def _looks_like_local_path(text: str) -> bool:
    """Hub ids are `owner/name`; anything else with path syntax (or no owner) is meant as a local path."""
    if text.startswith((".", "/", "~")) or "\\" in text:
        return True
    return text.count("/") != 1 or text.endswith("/")


def _is_training_folder(path: Path) -> bool:
    return any((path / name).exists() for name in TRAINING_FILES)


def _has_model_weights(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / name).is_file() for name in MODEL_WEIGHT_FILES)


def is_training_output(model_path: str | os.PathLike) -> bool:
    """A training checkpoint folder or a run folder holding checkpoint-* folders (cheap, reads no weights)."""
    path = Path(model_path).expanduser()
    if not path.is_dir():
        return False
    return _is_training_folder(path) or (
        not _has_model_weights(path) and bool(step_checkpoints(path) or (path / FINAL_CHECKPOINT).is_dir())
    )


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
    if _looks_like_local_path(base):
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
        if _looks_like_local_path(text):
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
    if not _is_training_folder(path) and not _has_model_weights(path):
        path, note = _pick_run_checkpoint(path)
    if not _is_training_folder(path):
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
    if _has_model_weights(path):
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


def _hub_hint(source: ModelSource, err: BaseException) -> str:
    if Path(source.base).expanduser().exists():
        return (
            f"cannot load model {source.base} ({first_line(err)}): "
            "the folder is not a loadable Mobile-VideoGPT checkpoint"
        )
    flag = " with --model_base DIR" if source.checkpoint is not None else ""
    return (
        f"cannot load model {source.base} ({first_line(err)}): it is neither a local checkpoint folder nor reachable "
        f"on the Hugging Face hub (offline?). Download it where there is internet (`huggingface-cli download "
        f"{source.base}`) and pass the local folder{flag}, or set HF_HUB_OFFLINE=1 to use the hub cache"
    )


def load_model_config(source: ModelSource):
    """The config the loaded model will have: the training checkpoint's `config.json` (training may change
    token-pipeline fields such as k / topk) when it has one, else the base model's."""
    from transformers import AutoConfig

    where = (
        source.checkpoint
        if source.checkpoint is not None and (source.checkpoint / "config.json").is_file()
        else source.base
    )
    try:
        config = AutoConfig.from_pretrained(str(where))
    except (OSError, ValueError) as err:
        raise ModelLoadError(_hub_hint(source, err)) from err
    if getattr(config, "model_type", None) != "MobileVideoGPT_qwen":
        raise ModelLoadError(
            f"{where} is a {getattr(config, 'model_type', 'unknown')!r} model, not Mobile-VideoGPT (model_type "
            "MobileVideoGPT_qwen); pass a Mobile-VideoGPT checkpoint"
        )
    return config


def _load_base(source: ModelSource, clip_path: str | None, videomamba_path: str | None):
    """The base model in fp32 on the CPU, configured by `load_model_config`."""
    from transformers import AutoModelForCausalLM

    config = load_model_config(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.base, config=config, dtype=torch.float32, clip_path=clip_path, videomamba_path=videomamba_path
        )
    except CheckpointLoadError as err:
        raise ModelLoadError(one_line(err)) from err
    except (OSError, ValueError) as err:
        raise ModelLoadError(_hub_hint(source, err)) from err
    model.config.use_cache = True
    return model


def apply_non_lora_weights(model: torch.nn.Module, path: str | os.PathLike) -> list[str]:
    """Copy the tensors of `path` (safetensors, plain model keys) into `model`, strictly. Returns their names.

    Every key must name a parameter or buffer of the model with the same shape; otherwise nothing is
    copied and the error lists the offending keys.
    """
    targets = dict(model.named_parameters())
    targets.update(dict(model.named_buffers()))
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if not tensors:
        raise ModelLoadError(f"{path} holds no tensors; the checkpoint's projector weights were not saved")
    # Only the trained subset is in the file: keys it lacks are fine, unknown keys and wrong shapes are not.
    diff = diff_state_dicts(targets, tensors)
    if diff.unexpected or diff.wrong_shape:
        problems = []
        if diff.unexpected:
            problems.append(f"{len(diff.unexpected)} key(s) not in the model: {preview(diff.unexpected)}")
        if diff.wrong_shape:
            problems.append(f"{len(diff.wrong_shape)} shape mismatch(es): {preview(diff.wrong_shape)}")
        raise ModelLoadError(
            f"{path} does not fit the base model ({'; '.join(problems)}); is --model_base the base it was trained from?"
        )
    with torch.no_grad():
        for key, value in tensors.items():
            targets[key].copy_(value.to(targets[key].dtype))
    return sorted(tensors)


def _adapter_keys(checkpoint: Path) -> set[str]:
    with safe_open(str(checkpoint / ADAPTER_WEIGHTS), framework="pt") as f:
        return set(f.keys())


def apply_lora_adapter(model: torch.nn.Module, checkpoint: Path, merge: bool = True) -> torch.nn.Module:
    """Wrap `model` with the checkpoint's LoRA adapter, checking that every tensor was used both ways.

    Returns the merged plain model (`merge=True`) or the `PeftModel` (for equivalence checks).
    """
    from peft import PeftModel

    try:
        with warnings.catch_warnings():
            # peft 0.21 calls a transformers property that transformers 5 deprecates; nothing to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            # Missing adapter tensors are reported below, as an error, together with unused ones.
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            peft_model = PeftModel.from_pretrained(model, str(checkpoint), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as err:
        raise ModelLoadError(
            f"the LoRA adapter in {checkpoint} does not fit the base model ({first_line(err)}); "
            "is --model_base the base it was trained from?"
        ) from err
    marker = f".{PEFT_ADAPTER_NAME}."
    lora_params = {n.replace(marker, "."): p for n, p in peft_model.named_parameters() if "lora_" in n}
    saved = _adapter_keys(checkpoint)
    missing, unused = sorted(set(lora_params) - saved), sorted(saved - set(lora_params))
    if missing or unused:
        raise ModelLoadError(
            f"the LoRA adapter in {checkpoint} does not match the model's LoRA layers: "
            f"{len(missing)} layer weight(s) absent from the file ({preview(missing, 3)}), "
            f"{len(unused)} file tensor(s) unused ({preview(unused, 3)})"
        )
    return peft_model.merge_and_unload() if merge else peft_model


def load_tokenizer(source: ModelSource):
    """The checkpoint's tokenizer when it saved one (training does), else the base model's."""
    from transformers import AutoTokenizer

    where = source.checkpoint if source.checkpoint is not None else source.base
    if source.checkpoint is not None and not any((source.checkpoint / f).is_file() for f in TOKENIZER_FILES):
        where = source.base
    try:
        return AutoTokenizer.from_pretrained(str(where))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the tokenizer from {where} ({first_line(err)})") from err


def assemble_model(
    source: ModelSource,
    clip_path: str | None = None,
    videomamba_path: str | None = None,
    merge: bool = True,
) -> torch.nn.Module:
    """fp32 CPU model for `source`: base → projector weights → LoRA (merged unless `merge=False`), eval mode."""
    model = _load_base(source, clip_path, videomamba_path)
    if source.has_projectors:
        names = apply_non_lora_weights(model, source.checkpoint / NON_LORA_WEIGHTS)
        logger.info("applied %d projector tensors from %s", len(names), source.checkpoint / NON_LORA_WEIGHTS)
    if source.has_adapter:
        model = apply_lora_adapter(model, source.checkpoint, merge=merge)
    return model.eval()


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: ModelSource
    device: torch.device
    dtype: torch.dtype


def load_for_inference(
    model_path: str | os.PathLike,
    model_base: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    clip_path: str | None = None,
    videomamba_path: str | None = None,
) -> LoadedModel:
    """Resolve, load, merge and place a model (see the module docstring); raises `ModelLoadError`."""
    source = resolve_model_path(model_path, model_base)
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    if source.note:
        logger.info(source.note)
    tokenizer = load_tokenizer(source)
    model = assemble_model(source, clip_path, videomamba_path)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ModelLoadError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {rows}; "
            "tokenizer and weights come from different models"
        )
    model.to(device=target_device, dtype=target_dtype)
    return LoadedModel(model, tokenizer, source, target_device, target_dtype)


def load_model_and_tokenizer(
    model_path: str | os.PathLike,
    model_base: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    clip_path: str | None = None,
    videomamba_path: str | None = None,
):
    """(model, tokenizer) ready for `model.generate`: eval mode, on `device` in `dtype`, LoRA merged."""
    loaded = load_for_inference(model_path, model_base, device, dtype, clip_path, videomamba_path)
    return loaded.model, loaded.tokenizer
