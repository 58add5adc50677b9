"""Inference: resolving model paths, loading training checkpoints (projectors + LoRA), VideoChat, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mobilevideogpt.conversation import IM_END
from mobilevideogpt.inference import ChatResult, VideoChat, default_prompt, exercise_from_path
from mobilevideogpt.inference_cli import main as cli_main
from mobilevideogpt.model.finetuned import (
    ADAPTER_WEIGHTS,
    ModelLoadError,
    apply_non_lora_weights,
    load_for_inference,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
)
from mobilevideogpt.train.checkpoints import COMPLETE_MARKER, FINAL_CHECKPOINT, NON_LORA_WEIGHTS, mark_complete
from tests.trained_checkpoint import LORA_ALPHA, LORA_R

REPO = Path(__file__).resolve().parents[1]
GUIDE_VIDEO = Path("squats/00093026.mp4")
GUIDE_PROMPT = "Analyze this squats video and provide corrective feedback."


@pytest.fixture(scope="module")
def trained_chat(mvgpt_trained_run):
    return VideoChat.from_pretrained(mvgpt_trained_run / FINAL_CHECKPOINT, device="cpu")


def copy_checkpoint(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run" / FINAL_CHECKPOINT
    shutil.copytree(run / FINAL_CHECKPOINT, target)
    return target


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# ---------------------------------------------------------------- resolving what a model path is


def test_model_path_kinds(mvgpt_fast_checkpoint, mvgpt_trained_run, tmp_path):
    base = resolve_model_path(mvgpt_fast_checkpoint)
    assert base.checkpoint is None and base.base == str(mvgpt_fast_checkpoint)

    hub = resolve_model_path("Amshaker/Mobile-VideoGPT-0.5B")
    assert hub.checkpoint is None and hub.base == "Amshaker/Mobile-VideoGPT-0.5B"

    final = mvgpt_trained_run / FINAL_CHECKPOINT
    direct = resolve_model_path(final)
    assert direct.checkpoint == final and direct.base == str(mvgpt_fast_checkpoint)
    assert direct.has_adapter and direct.has_projectors and direct.note is None

    from_run = resolve_model_path(mvgpt_trained_run)
    assert from_run.checkpoint == final and FINAL_CHECKPOINT in from_run.note

    overridden = resolve_model_path(final, model_base="someone/other-base")
    assert overridden.base == "someone/other-base"


def test_run_folder_falls_back_to_latest_complete_checkpoint(mvgpt_trained_run, tmp_path):
    run = tmp_path / "run"
    for name in ("checkpoint-5", "checkpoint-10", "checkpoint-15", FINAL_CHECKPOINT):
        shutil.copytree(mvgpt_trained_run / FINAL_CHECKPOINT, run / name)
    (run / "checkpoint-15" / COMPLETE_MARKER).unlink()  # crashed while saving
    (run / FINAL_CHECKPOINT / COMPLETE_MARKER).unlink()
    source = resolve_model_path(run)
    assert source.checkpoint == run / "checkpoint-10"
    assert "checkpoint-final is incomplete" in source.note and "checkpoint-10" in source.note

    for name in ("checkpoint-5", "checkpoint-10"):
        (run / name / COMPLETE_MARKER).unlink()
    with pytest.raises(ModelLoadError, match="no complete checkpoint"):
        resolve_model_path(run)


def test_unusable_model_paths_say_what_to_do(mvgpt_trained_run, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist.*finetune_qved.sh"):
        resolve_model_path("results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final")
    checkpoint = copy_checkpoint(mvgpt_trained_run, tmp_path)
    (checkpoint / COMPLETE_MARKER).unlink()
    with pytest.raises(ModelLoadError, match="incomplete.*COMPLETE"):
        resolve_model_path(checkpoint)
    mark_complete(checkpoint, 1)
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "moved/away/base"
    (checkpoint / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="--model_base"):
        resolve_model_path(checkpoint)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="not a Mobile-VideoGPT checkpoint"):
        resolve_model_path(empty)


def test_relative_recorded_base_is_found_above_the_checkpoint(mvgpt_fast_checkpoint, mvgpt_trained_run, tmp_path):
    """Training records the base path relative to the project root; inference may run from anywhere."""
    project = tmp_path / "project"
    (project / "results").mkdir(parents=True)
    (project / "results/tiny-base").symlink_to(mvgpt_fast_checkpoint)
    checkpoint = project / "results/run" / FINAL_CHECKPOINT
    shutil.copytree(mvgpt_trained_run / FINAL_CHECKPOINT, checkpoint)
    config = json.loads((checkpoint / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "results/tiny-base"
    (checkpoint / "adapter_config.json").write_text(json.dumps(config))
    assert resolve_model_path(checkpoint).base == str(project / "results/tiny-base")


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype("fp16") == torch.float16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("int3")
    if torch.cuda.is_available():
        cuda = resolve_device("auto")
        assert cuda.type == "cuda"
        assert resolve_dtype("auto", cuda) in (torch.bfloat16, torch.float16)
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")


# ---------------------------------------------------------------- loading a training checkpoint


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
    loaded = load_for_inference(checkpoint, device="cpu")
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
    with pytest.raises(ModelLoadError, match="absent from the file"):
        load_for_inference(checkpoint, device="cpu")


# ---------------------------------------------------------------- VideoChat


def test_default_prompt_rules():
    assert default_prompt("squats") == GUIDE_PROMPT
    assert default_prompt("tricep_stretch") == "Analyze this tricep stretch video and provide corrective feedback."
    assert default_prompt() == "Analyze this exercise video and provide corrective feedback."
    assert exercise_from_path("dataset/squats/00093026.mp4") == "squats"
    assert exercise_from_path("dataset/knee_circles/1.mp4") == "knee circles"
    assert exercise_from_path("/home/me/videos/clip.mp4") is None


def test_answer_is_greedy_streamed_timed(trained_chat, sample_dataset_dir):
    video = sample_dataset_dir / GUIDE_VIDEO
    pieces: list[str] = []
    first = trained_chat.answer(video, max_new_tokens=6, on_text=pieces.append)
    again = trained_chat.answer(video, max_new_tokens=6)
    assert isinstance(first, ChatResult)
    assert first.prompt == GUIDE_PROMPT  # from the folder name
    assert first.text == again.text and first.num_new_tokens == again.num_new_tokens
    assert "".join(pieces).strip() == first.text
    assert 1 <= first.num_new_tokens <= 6
    assert first.finish_reason in ("stop", "length")
    assert len(first.frame_indices) == trained_chat.num_frames == 4
    t = first.timings
    assert t.new_tokens == first.num_new_tokens
    assert min(t.video_decode_s, t.encode_s, t.prefill_s) > 0 and t.decode_s >= 0
    assert t.total_s >= t.video_decode_s + t.encode_s + t.prefill_s + t.decode_s - 1e-6
    assert t.time_to_first_token_s == pytest.approx(t.video_decode_s + t.encode_s + t.prefill_s)
    json.dumps(first.to_dict())  # serialisable

    sampled = [trained_chat.answer(video, "Describe it.", max_new_tokens=5, temperature=1.5, seed=s) for s in (1, 1, 2)]
    assert sampled[0].text == sampled[1].text
    assert sampled[0].prompt == "Describe it." and sampled[0].generation["temperature"] == 1.5


def test_generation_stops_at_im_end_and_strips_it(trained_chat, sample_dataset_dir):
    im_end = trained_chat.tokenizer.convert_tokens_to_ids(IM_END)

    def favour_im_end(module, inputs, output):
        output[..., im_end] += 1e4
        return output

    handle = trained_chat.model.lm_head.register_forward_hook(favour_im_end)
    try:
        # min_new_tokens holds the end-of-turn token back for 3 steps; then it wins at once.
        result = trained_chat.answer(sample_dataset_dir / GUIDE_VIDEO, max_new_tokens=10, min_new_tokens=3)
    finally:
        handle.remove()
    assert result.finish_reason == "stop"
    assert result.num_new_tokens == 4
    assert IM_END not in result.text


def test_num_frames_must_match_the_model(trained_chat, sample_dataset_dir):
    with pytest.raises(ValueError, match="exactly 4 frames"):
        trained_chat.answer(sample_dataset_dir / GUIDE_VIDEO, num_frames=16)


# ---------------------------------------------------------------- CLI


def test_cli_on_base_checkpoint_json(capsys, mvgpt_tiny_checkpoint, sample_dataset_dir):
    code, out, err = run_cli(
        capsys,
        "--model_path", mvgpt_tiny_checkpoint,
        "--video_path", sample_dataset_dir / "tricep_stretch/00002012.mp4",
        "--max_new_tokens", 3,
        "--json",
    )  # fmt: skip
    assert code == 0, err
    payload = json.loads(out)
    assert set(payload) >= {
        "model", "video_path", "prompt", "text", "num_new_tokens", "finish_reason", "frame_indices", "timings",
        "generation",
    }  # fmt: skip
    assert payload["model"]["checkpoint"] is None and payload["model"]["dtype"] == "float32"
    assert payload["prompt"] == "Analyze this tricep stretch video and provide corrective feedback."
    assert len(payload["frame_indices"]) == 16  # the published geometry
    assert 1 <= payload["num_new_tokens"] <= 3
    timings = payload["timings"]
    for key in ("video_decode_s", "encode_s", "prefill_s", "decode_s", "total_s", "time_to_first_token_s"):
        assert isinstance(timings[key], float) and timings[key] >= 0
    assert timings["video_decode_s"] > 0


def test_cli_streams_trained_checkpoint(capsys, mvgpt_trained_run, sample_dataset_dir):
    code, out, err = run_cli(
        capsys,
        "--model_path", mvgpt_trained_run,
        "--video_path", sample_dataset_dir / GUIDE_VIDEO,
        "--prompt", "What is wrong?",
        "--max_new_tokens", 4,
    )  # fmt: skip
    assert code == 0, err
    assert out.endswith("\n") and out.strip()
    assert "using checkpoint-final" in err and "Prompt: What is wrong?" in err and "tok/s" in err

    code, quiet_out, _ = run_cli(
        capsys,
        "--model_path", mvgpt_trained_run / FINAL_CHECKPOINT,
        "--video_path", sample_dataset_dir / GUIDE_VIDEO,
        "--prompt", "What is wrong?",
        "--max_new_tokens", 4,
        "--no-stream",
    )  # fmt: skip
    assert code == 0 and quiet_out == out  # greedy: the same answer, printed at the end


def test_cli_bad_inputs_are_one_line_errors(capsys, mvgpt_trained_run, sample_dataset_dir, tmp_path):
    video = sample_dataset_dir / GUIDE_VIDEO
    code, out, err = run_cli(capsys, "--model_path", mvgpt_trained_run, "--video_path", tmp_path / "missing.mp4")
    assert_one_line_error(code, err, "missing.mp4", "file not found", "--video_path")
    assert out == ""

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2048))
    code, _, err = run_cli(capsys, "--model_path", mvgpt_trained_run, "--video_path", corrupt)
    assert_one_line_error(code, err, "corrupt.mp4", "--video_path")

    checkpoint = copy_checkpoint(mvgpt_trained_run, tmp_path)
    (checkpoint / COMPLETE_MARKER).unlink()
    code, _, err = run_cli(capsys, "--model_path", checkpoint, "--video_path", video)
    assert_one_line_error(code, err, "incomplete", "COMPLETE")

    code, _, err = run_cli(capsys, "--model_path", "results/nope/checkpoint-final", "--video_path", video)
    assert_one_line_error(code, err, "does not exist")

    code, _, err = run_cli(capsys, "--model_path", mvgpt_trained_run, "--video_path", video, "--num_frames", 16)
    assert_one_line_error(code, err, "exactly 4 frames")


def test_guide_command_and_offline_base(mvgpt_trained_run, sample_dataset_dir, tmp_path):
    """The guide's command, verbatim, from a project folder laid out as the guide says."""
    project = tmp_path / "project"
    (project / "dataset/squats").mkdir(parents=True)
    shutil.copy(sample_dataset_dir / GUIDE_VIDEO, project / "dataset" / GUIDE_VIDEO)
    shutil.copytree(
        mvgpt_trained_run / FINAL_CHECKPOINT, project / "results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, str(REPO / "inference.py"),
        "--model_path", "results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final",
        "--video_path", "dataset/squats/00093026.mp4",
        "--prompt", GUIDE_PROMPT,
        "--max_new_tokens", "4",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and f"Prompt: {GUIDE_PROMPT}" in done.stderr

    # A base that is neither local nor downloadable: one line naming the way out.
    offline = command[:2] + ["--model_path", "nobody/not-a-cached-model", "--video_path", "dataset/squats/00093026.mp4"]
    done = subprocess.run(offline, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.count("error: ") == 1 and "Traceback" not in done.stderr
    assert "huggingface-cli download nobody/not-a-cached-model" in done.stderr
