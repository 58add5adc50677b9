"""A model ready for inference from a resolved `ModelSource`: base weights, then the trained files on top.

Order for a training checkpoint: base weights → projector weights, strictly (every tensor must exist in the
model with the same shape) → LoRA adapter, strictly (every adapter tensor must land in a LoRA layer and every
LoRA layer must get one) → merged into the linear layers. Everything is assembled in fp32 on the CPU and then
moved to the requested device and dtype, so a merge never rounds through half precision.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import safe_open

from ..checkpoints import ADAPTER_WEIGHTS, NON_LORA_WEIGHTS, ModelSource, has_tokenizer, resolve_model_path
from ..errors import ModelLoadError, first_line, one_line
from ..runtime import InferencePlan, plan_inference, reuse_freed_memory
from .loading import CheckpointLoadError
from .mamba import WEIGHTS_READ_DIRECTLY
from .state_dicts import diff_state_dicts, preview
from .token_budget import BudgetRequest, budget_for, describe_budget

logger = logging.getLogger(__name__)

# A PEFT parameter name carries the adapter name; the saved adapter file does not.
PEFT_ADAPTER_NAME = "default"


def _hub_hint(source: ModelSource, err: BaseException) -> str:
    if os.path.exists(os.path.expanduser(source.base)):
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


def damaged_safetensors_error(path: str | os.PathLike, err: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"{path} is damaged ({first_line(err)}): the file was cut short or corrupted; copy it again, or use another "
        "checkpoint"
    )


def safetensors_keys(path: str | os.PathLike) -> list[str]:
    """The tensor names of a safetensors file (reads only its header); a damaged file is a `ModelLoadError` naming it."""
    from safetensors import SafetensorError

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as err:
        raise damaged_safetensors_error(path, err) from err


def _first_damaged_safetensors(folder: str) -> str | None:
    """A damaged `*.safetensors` file in a local model folder, if there is one."""
    from safetensors import SafetensorError

    root = Path(folder).expanduser()
    for path in sorted(root.glob("*.safetensors")) if root.is_dir() else []:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError):
            return str(path)
    return None


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
    except StrictDataclassError as err:  # a field the model's config rejects (e.g. an impossible token budget)
        cause = err.__cause__ if err.__cause__ is not None else err
        raise ModelLoadError(
            f"{Path(where) / 'config.json' if os.path.isdir(where) else where} describes a model this code cannot "
            f"build: {one_line(cause)}; fix that field or use the checkpoint's original config.json"
        ) from err
    except (OSError, ValueError) as err:
        raise ModelLoadError(_hub_hint(source, err)) from err
    if getattr(config, "model_type", None) != "MobileVideoGPT_qwen":
        raise ModelLoadError(
            f"{where} is a {getattr(config, 'model_type', 'unknown')!r} model, not Mobile-VideoGPT (model_type "
            "MobileVideoGPT_qwen); pass a Mobile-VideoGPT checkpoint"
        )
    return config


def _load_base(source: ModelSource, clip_path: str | None, videomamba_path: str | None, config=None):
    """The base model in fp32 on the CPU, configured by `config` (default: `load_model_config(source)`)."""
    from transformers import AutoModelForCausalLM

    from safetensors import SafetensorError

    config = load_model_config(source) if config is None else config
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.base, config=config, dtype=torch.float32, clip_path=clip_path, videomamba_path=videomamba_path
        )
    except CheckpointLoadError as err:
        raise ModelLoadError(one_line(err)) from err
    except SafetensorError as err:
        raise damaged_safetensors_error(_first_damaged_safetensors(source.base) or source.base, err) from err
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
    safetensors_keys(path)  # a damaged file: an error naming it
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


def apply_lora_adapter(model: torch.nn.Module, checkpoint: os.PathLike, merge: bool = True) -> torch.nn.Module:
    """Wrap `model` with the checkpoint's LoRA adapter, checking that every tensor was used both ways.

    Returns the merged plain model (`merge=True`) or the `PeftModel` (for equivalence checks).
    """
    from peft import PeftModel

    saved = set(safetensors_keys(os.path.join(checkpoint, ADAPTER_WEIGHTS)))
    try:
        with warnings.catch_warnings():
            # peft 0.21 calls a transformers property that transformers 5 deprecates; nothing to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            # Missing adapter tensors are reported below, as an error, together with unused ones.
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            peft_model = PeftModel.from_pretrained(model, str(checkpoint), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as err:
        mismatches = re.findall(r"size mismatch for (\S+): copying a param with shape (.+?) from checkpoint, the shape "
                                r"in current model is (.+?)\.(?:\n|$)", str(err))
        problem = (
            f"{len(mismatches)} tensor(s) of the wrong shape: "
            + "; ".join(f"{key.replace(f'.{PEFT_ADAPTER_NAME}.', '.')} is {saved_shape} in the file, {model_shape} "
                        "in the model" for key, saved_shape, model_shape in mismatches[:3])
            if mismatches else first_line(err)
        )
        raise ModelLoadError(
            f"the LoRA adapter {os.path.join(checkpoint, ADAPTER_WEIGHTS)} does not fit the base model ({problem}); "
            "is --model_base the base it was trained from?"
        ) from err
    marker = f".{PEFT_ADAPTER_NAME}."
    lora_params = {n.replace(marker, "."): p for n, p in peft_model.named_parameters() if "lora_" in n}
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

    where = source.checkpoint if source.checkpoint is not None and has_tokenizer(source.checkpoint) else source.base
    try:
        return AutoTokenizer.from_pretrained(str(where))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load the tokenizer from {where} ({first_line(err)})") from err


def assemble_model(
    source: ModelSource,
    clip_path: str | None = None,
    videomamba_path: str | None = None,
    merge: bool = True,
    config=None,
) -> torch.nn.Module:
    """fp32 CPU model for `source`: base → projector weights → LoRA (merged unless `merge=False`), eval mode.
    `config`: `load_model_config(source)` when the caller has read it already."""
    model = _load_base(source, clip_path, videomamba_path, config)
    if source.has_projectors:
        names = apply_non_lora_weights(model, source.checkpoint / NON_LORA_WEIGHTS)
        logger.info("applied %d projector tensors from %s", len(names), source.checkpoint / NON_LORA_WEIGHTS)
    if source.has_adapter:
        model = apply_lora_adapter(model, source.checkpoint, merge=merge)
    return model.eval()


TOWERS = ("vision_tower", "image_vision_tower")
PROJECTORS = ("mm_projector", "image_mm_projector")


def vision_modules(model: torch.nn.Module, names: tuple[str, ...] = TOWERS + PROJECTORS) -> list[torch.nn.Module]:
    """The towers and projectors of a Mobile-VideoGPT, or those of `names` (empty for a model without vision
    modules)."""
    return [getattr(model.model, name) for name in names if hasattr(model.model, name)]


def place_for_inference(model: torch.nn.Module, plan: InferencePlan) -> torch.nn.Module:
    """Move an assembled model to `plan`'s device and dtypes, in place (eval mode); returns it.

    The vision modules go to `plan.encoder_dtype`, the LLM to `plan.llm_dtype`. With `plan.llm_weights` the LLM's
    linear and embedding weights are packed (`lowp.pack_language_model`) straight from the dtype they have, one
    layer at a time, so a model built or loaded in bf16 is packed to bf16 without any copy and peak memory stays
    near the packed size; only what is left of the LLM (norms) is then cast to `plan.llm_dtype`. With
    `plan.int8_matmul` the towers' linear layers become int8 x int8 (`int8_matmul.int8_linears`; the projectors
    and VideoMamba's x_proj / dt_proj, a few percent of the work, keep theirs) and the prefill multiplies int8 by
    int8. On the CPU the decode-step attention runs packed and a prompt's first prefill attends in the dtype of its
    products (`decoding.use_packed_attention`), CLIP's layers compute q, k and v in one product and quick_gelu in one
    compiled pass (`clip_cpu.fuse_clip_layers`, before the int8 conversion), the LLM's RMSNorms are one compiled
    pass each (`norm_cpu.compile_rms_norms`), and large freed blocks stay in the C heap for reuse
    (`runtime.reuse_freed_memory`).
    """
    from ..engine.clip_cpu import fuse_clip_layers
    from ..engine.decoding import use_packed_attention
    from ..engine.int8_matmul import int8_linears
    from ..engine.lowp import pack_language_model
    from ..engine.norm_cpu import compile_rms_norms

    vision = vision_modules(model)
    if plan.llm_weights is None:
        model.to(device=plan.device, dtype=plan.llm_dtype)
    else:
        model.to(device=plan.device)
        pack_language_model(model, plan.llm_weights, plan.prefill_dtype, plan.int8_matmul)
        in_vision = {id(p) for module in vision for p in module.parameters()}
        for parameter in model.parameters():
            if id(parameter) not in in_vision and parameter.is_floating_point():
                parameter.data = parameter.data.to(plan.llm_dtype)
    for module in vision:
        module.to(dtype=plan.encoder_dtype)
        if plan.device.type == "cpu":
            fuse_clip_layers(module)
    if plan.int8_matmul:
        for tower in vision_modules(model, TOWERS):
            int8_linears(tower, WEIGHTS_READ_DIRECTLY)
    if plan.device.type == "cpu":
        use_packed_attention(model, plan.llm_matmul_dtype)
        compile_rms_norms(model.model)
        reuse_freed_memory()
    return model.eval()


def apply_visual_token_budget(model: torch.nn.Module, source: ModelSource, request: BudgetRequest = None) -> None:
    """Run `model` with `request`'s visual-token budget, or the recorded one when `request` is None; a warning
    when the two differ (the model then sees other tokens than it was trained on). Raises `ModelLoadError`.

    The recorded budget is the model's config's (`load_model_config`: a training checkpoint's own config.json)."""
    config = model.config
    recorded = config.visual_token_budget
    if request is None:
        chosen = recorded
    else:
        try:
            chosen = budget_for(config, request)
        except ValueError as err:
            raise ModelLoadError(str(err)) from err
    if chosen != recorded:
        full = config.full_visual_tokens_per_video
        logger.warning(
            "%s was trained with %s; running with %s as asked%s",
            source.model_path, describe_budget(recorded, full), describe_budget(chosen, full),
            " (training-free: answers differ somewhat from the full budget's)" if recorded is None else "",
        )  # fmt: skip
    config.visual_token_budget = chosen  # `budget_for` checked it against the config's geometry


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: ModelSource
    plan: InferencePlan

    @property
    def device(self) -> torch.device:
        return self.plan.device

    @property
    def dtype(self) -> torch.dtype:
        """The language model's hidden-state dtype."""
        return self.plan.llm_dtype


def load_for_inference(
    model_path: str | os.PathLike,
    model_base: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    clip_path: str | None = None,
    videomamba_path: str | None = None,
    quantize: str | None = None,
    visual_tokens: BudgetRequest = None,
) -> LoadedModel:
    """Resolve, load, merge and place a model (see `checkpoints.resolve_model_path` and `runtime.plan_inference`)
    with the visual-token budget `visual_tokens` (None: the recorded one); raises `ModelLoadError`."""
    source = resolve_model_path(model_path, model_base)
    plan = plan_inference(device, dtype, quantize)
    if source.note:
        logger.info(source.note)
    config = load_model_config(source)  # first: the tokenizer's loader reads config.json too, and fails less clearly
    tokenizer = load_tokenizer(source)
    model = assemble_model(source, clip_path, videomamba_path, config=config)
    if model.config.has_vision:
        apply_visual_token_budget(model, source, visual_tokens)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ModelLoadError(
            f"the tokenizer has {len(tokenizer)} tokens but the model embeds only {rows}; "
            "tokenizer and weights come from different models"
        )
    place_for_inference(model, plan)
    return LoadedModel(model, tokenizer, source, plan)


def load_model_and_tokenizer(
    model_path: str | os.PathLike,
    model_base: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    clip_path: str | None = None,
    videomamba_path: str | None = None,
    quantize: str | None = None,
    visual_tokens: BudgetRequest = None,
):
    """(model, tokenizer) ready for `model.generate`: eval mode, placed as `runtime.plan_inference(device, dtype,
    quantize)` says, LoRA merged, with the visual-token budget `visual_tokens` (None: the one the checkpoint
    records). dtype "fp32" keeps every weight an fp32 parameter (e.g. to inspect or train)."""
    loaded = load_for_inference(model_path, model_base, device, dtype, clip_path, videomamba_path, quantize, visual_tokens)
    return loaded.model, loaded.tokenizer
