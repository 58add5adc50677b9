"""Merging a training checkpoint into a standalone model: same outputs as the adapter model, no PEFT needed."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mobilevideogpt.chat import VideoChat
from mobilevideogpt.checkpoints import FINAL_CHECKPOINT, resolve_model_path
from mobilevideogpt.cli import run_command
from mobilevideogpt.errors import ModelLoadError
from mobilevideogpt.export import MERGE_INFO, merge_checkpoint
from mobilevideogpt.model.assemble import assemble_model


def merge_main(argv: list[str]) -> int:
    return run_command("merge", argv)

PROMPT_IDS = [151644, 872, 198, -200, 198, 2082, 374, 419, 151645, 198, 151644, 77091, 198]


@pytest.fixture(scope="module")
def merged(mvgpt_trained_run, tmp_path_factory) -> Path:
    return merge_checkpoint(mvgpt_trained_run / FINAL_CHECKPOINT, tmp_path_factory.mktemp("merged") / "model")


def test_merged_model_equals_the_adapter_model(merged, mvgpt_trained_run):
    from transformers import AutoModelForCausalLM

    import mobilevideogpt  # noqa: F401

    files = {p.name for p in merged.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json", MERGE_INFO} <= files
    assert not {"adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.safetensors"} & files
    with safe_open(str(merged / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert not any("lora_" in k for k in keys)
    assert any(k.startswith("model.vision_tower.vision_encoder.") for k in keys)  # towers travel along

    standalone = AutoModelForCausalLM.from_pretrained(merged).eval()
    adapter_model = assemble_model(resolve_model_path(mvgpt_trained_run / FINAL_CHECKPOINT), merge=False)
    assert type(adapter_model).__name__.startswith("PeftModel")
    g = torch.Generator().manual_seed(3)
    config = standalone.config
    size = config.clip_vision().image_size
    images = torch.randn(1, config.num_frames, 3, size, size, generator=g)
    context = torch.randn(1, config.num_frames, 3, size, size, generator=g)
    with torch.no_grad():
        inputs = {"input_ids": torch.tensor([PROMPT_IDS]), "images": images, "context_images": context}
        want = adapter_model(**inputs, logits_to_keep=9).logits  # the text after the video
        got = standalone(**inputs, logits_to_keep=9).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    info = json.loads((merged / MERGE_INFO).read_text())
    assert info["lora_merged"] and info["projectors_applied"] and info["dtype"] == "float32"


def test_merged_folder_is_a_plain_model_for_inference(merged, mvgpt_trained_run, sample_dataset_dir):
    source = resolve_model_path(merged)
    assert source.checkpoint is None and source.base == str(merged)
    video = sample_dataset_dir / "squats/00093026.mp4"
    prompt = "What is the person doing?"
    from_merged = VideoChat.from_pretrained(merged, device="cpu").answer(video, prompt, max_new_tokens=4)
    from_checkpoint = VideoChat.from_pretrained(mvgpt_trained_run, device="cpu").answer(video, prompt, max_new_tokens=4)
    assert from_merged.text == from_checkpoint.text


def test_merge_cli_dtype_and_refusals(capsys, merged, mvgpt_trained_run, mvgpt_fast_checkpoint, tmp_path):
    out = tmp_path / "bf16"
    assert merge_main(["--model_path", str(mvgpt_trained_run), "--out", str(out), "--dtype", "bf16"]) == 0
    assert "Wrote standalone model" in capsys.readouterr().out
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("model.mm_projector.mlp.mlp.0.weight").dtype == torch.bfloat16

    assert merge_main(["--model_path", str(mvgpt_trained_run), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "not empty" in err and "--overwrite" in err

    assert merge_main(["--model_path", str(mvgpt_fast_checkpoint), "--out", str(tmp_path / "x")]) == 1
    assert "already a standalone model" in capsys.readouterr().err
    with pytest.raises(ModelLoadError, match="is the checkpoint"):
        merge_checkpoint(mvgpt_trained_run / FINAL_CHECKPOINT, mvgpt_trained_run / FINAL_CHECKPOINT, overwrite=True)


def test_merge_never_writes_into_the_run_or_the_base(mvgpt_trained_run, mvgpt_fast_checkpoint, tmp_path):
    """`--out` that is, contains or lies inside the checkpoint, its run or its base is refused before anything is
    written; `--overwrite` replaces only an earlier export, never other files."""
    run = tmp_path / "project" / "results" / "run"
    shutil.copytree(mvgpt_trained_run, run)
    (run / "notes.txt").write_text("the user's own file")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    checkpoint = run / FINAL_CHECKPOINT
    for out, relation in (
        (run, "is the checkpoint's training run"),
        (checkpoint, "is the checkpoint"),
        (run / "merged", "lies inside the checkpoint's training run"),
        (run.parent, "contains the checkpoint's training run"),
        (mvgpt_fast_checkpoint, "is the base model"),
        (mvgpt_fast_checkpoint / "merged", "lies inside the base model"),
    ):
        assert merge_main(["--model_path", str(checkpoint), "--out", str(out), "--overwrite"]) == 1
        with pytest.raises(ModelLoadError, match=relation):
            merge_checkpoint(checkpoint, out, overwrite=True)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before

    other = tmp_path / "documents"
    other.mkdir()
    (other / "thesis.tex").write_text("not a model")
    with pytest.raises(FileExistsError, match="not a merged model"):
        merge_checkpoint(checkpoint, other, overwrite=True)
    assert (other / "thesis.tex").read_text() == "not a model"


def test_a_failed_merge_keeps_the_earlier_export_and_leaves_nothing_half_written(merged, mvgpt_trained_run, tmp_path, monkeypatch):
    from mobilevideogpt.model.modeling import MobileVideoGPTQwenForCausalLM

    out = tmp_path / "merged"
    shutil.copytree(merged, out)
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(self, save_directory, **kwargs):
        (Path(save_directory) / "model.safetensors").write_bytes(b"\0" * 1000)  # a partial file, then no space
        raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')

    monkeypatch.setattr(MobileVideoGPTQwenForCausalLM, "save_pretrained", disk_full)
    with pytest.raises(OSError, match=f"no space left on the disk while writing the merged model {out}") as info:
        merge_checkpoint(mvgpt_trained_run, out, overwrite=True)
    assert info.value.errno == errno.ENOSPC
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # no temporary folder left behind
