"""Assembling a model from a training checkpoint: projector weights and LoRA applied strictly, then merged."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mobilevideogpt.checkpoints import ADAPTER_WEIGHTS, COMPLETE_MARKER, FINAL_CHECKPOINT, NON_LORA_WEIGHTS, mark_complete
from mobilevideogpt.errors import ModelLoadError
from mobilevideogpt.model.assemble import apply_non_lora_weights, load_for_inference
from tests.trained_checkpoint import LORA_ALPHA, LORA_R


def copy_checkpoint(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run" / FINAL_CHECKPOINT
    shutil.copytree(run / FINAL_CHECKPOINT, target)
    return target


def video_batch(config, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = config.clip_vision().image_size
    shape = (1, config.num_frames, 3, size, size)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


PROMPT_IDS = [151644, 872, 198, -200, 198, 2082, 374, 419, 151645, 198, 151644, 77091, 198]


def logits(model, images, context):
    """Logits of the text after the video (all that depends on it; the 151,936-wide vocabulary makes the rest slow)."""
    with torch.no_grad():
        return model(
            input_ids=torch.tensor([PROMPT_IDS]), images=images, context_images=context, logits_to_keep=9
        ).logits


def test_loader_applies_projectors_and_merges_lora_like_by_hand(mvgpt_fast_checkpoint, mvgpt_trained_run):
    from transformers import AutoModelForCausalLM

    checkpoint = mvgpt_trained_run / FINAL_CHECKPOINT
    loaded = load_for_inference(checkpoint, device="cpu", dtype="fp32")  # plain fp32: the merge checked exactly
    assert loaded.dtype == torch.float32 and not loaded.model.training
    assert not any("lora_" in n for n, _ in loaded.model.named_parameters())

    base = AutoModelForCausalLM.from_pretrained(mvgpt_fast_checkpoint).eval()
    images, context = video_batch(base.config)
    base_logits = logits(base, images, context)

    # By hand: the projector tensors as saved, and W + (alpha / r) · B A for every LoRA pair.
    projectors = load_file(checkpoint / NON_LORA_WEIGHTS)
    assert projectors and all("mm_projector" in k for k in projectors)
    adapter = load_file(checkpoint / ADAPTER_WEIGHTS)
    params = dict(base.named_parameters())
    with torch.no_grad():
        for key, value in projectors.items():
            assert not torch.equal(params[key], value)
            params[key].copy_(value)
        with_projectors = logits(base, images, context)
        for key in [k for k in adapter if ".lora_A." in k]:
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            lora_a, lora_b = adapter[key], adapter[key.replace(".lora_A.", ".lora_B.")]
            params[f"{module}.weight"].add_((LORA_ALPHA / LORA_R) * lora_b @ lora_a)
    by_hand = logits(base, images, context)
    got = logits(loaded.model, images, context)

    assert not torch.allclose(with_projectors, base_logits, atol=1e-4)  # the projectors matter
    assert not torch.allclose(by_hand, with_projectors, atol=1e-4)  # and so does the adapter
    torch.testing.assert_close(got, by_hand, rtol=1e-5, atol=1e-5)


def test_projector_file_must_fit_the_model(mvgpt_fast_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(mvgpt_fast_checkpoint)
    key = "model.mm_projector.mlp.mlp.0.weight"
    weight = model.get_parameter(key)
    bad = tmp_path / NON_LORA_WEIGHTS
    save_file({key: torch.zeros(weight.shape[0] + 1, weight.shape[1]), "model.no_such.weight": torch.zeros(2)}, bad)
    before = weight.detach().clone()
    with pytest.raises(ModelLoadError, match=r"not in the model: model\.no_such\.weight.*shape mismatch.*mm_projector"):
        apply_non_lora_weights(model, bad)
    assert torch.equal(model.get_parameter(key), before)  # nothing half-applied


def test_adapter_must_match_the_lora_layers(mvgpt_trained_run, tmp_path):
    checkpoint = copy_checkpoint(mvgpt_trained_run, tmp_path)
    tensors = load_file(checkpoint / ADAPTER_WEIGHTS)
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, checkpoint / ADAPTER_WEIGHTS)
    with pytest.raises(ModelLoadError, match=f"{ADAPTER_WEIGHTS} is damaged \\(\\d+ bytes, \\d+ when saved"):
        load_for_inference(checkpoint, device="cpu")
    mark_complete(checkpoint, 1)  # as if it had been saved like this
    with pytest.raises(ModelLoadError, match="absent from the file"):
        load_for_inference(checkpoint, device="cpu")


def unmarked_copy(run: Path, tmp_path: Path, name: str) -> Path:
    """A copy of the checkpoint whose marker lists no files (written by hand, or before markers did): the
    loaders' own checks are all that stand between a damaged file and the model."""
    checkpoint = copy_checkpoint(run, tmp_path / name)
    marker = json.loads((checkpoint / COMPLETE_MARKER).read_text())
    del marker["files"]
    (checkpoint / COMPLETE_MARKER).write_text(json.dumps(marker))
    return checkpoint


def test_damaged_weight_files_are_named(mvgpt_trained_run, mvgpt_fast_checkpoint, tmp_path):
    empty = unmarked_copy(mvgpt_trained_run, tmp_path, "empty")
    (empty / ADAPTER_WEIGHTS).write_bytes(b"")
    cut = unmarked_copy(mvgpt_trained_run, tmp_path, "cut")
    (cut / NON_LORA_WEIGHTS).write_bytes((cut / NON_LORA_WEIGHTS).read_bytes()[:100])
    for path in (empty / ADAPTER_WEIGHTS, cut / NON_LORA_WEIGHTS):
        with pytest.raises(ModelLoadError, match=f"{path} is damaged .SafetensorError.*cut short or corrupted"):
            load_for_inference(path.parent, device="cpu")

    wrong = unmarked_copy(mvgpt_trained_run, tmp_path, "wrong")
    tensors = load_file(wrong / ADAPTER_WEIGHTS)
    key = sorted(k for k in tensors if "lora_A" in k)[0]
    tensors[key] = torch.zeros(LORA_R + 1, tensors[key].shape[1])
    save_file(tensors, wrong / ADAPTER_WEIGHTS)
    with pytest.raises(ModelLoadError, match=re.escape(f"{key} is torch.Size([{LORA_R + 1}, ")):
        load_for_inference(wrong, device="cpu")

    base = tmp_path / "base"
    shutil.copytree(mvgpt_fast_checkpoint, base)
    (base / "model.safetensors").write_bytes((base / "model.safetensors").read_bytes()[:3000])
    with pytest.raises(ModelLoadError, match=f"{base / 'model.safetensors'} is damaged"):
        load_for_inference(mvgpt_trained_run, model_base=base, device="cpu")
