"""Published state-dict layout, tiny checkpoints, from_pretrained round trips, tower weight sources, strict keys."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel

import mobilevideogpt
from mobilevideogpt.constants import IMAGE_TOKEN_INDEX
from mobilevideogpt.model.configuration import MobileVideoGPTQwenConfig
from mobilevideogpt.model.loading import CLIP_PATH_ENV, VIDEOMAMBA_PATH_ENV, CheckpointLoadError
from mobilevideogpt.model.modeling import MobileVideoGPTQwenForCausalLM
from mobilevideogpt.model.tiny import TINY_CLIP, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
TOWER_PREFIXES = (
    "model.vision_tower.",
    "model.image_vision_tower.",
    "model.mm_projector.",
    "model.image_mm_projector.",
)


# ---------------------------------------------------------------- published layout (upstream qwen.py + arch.py)


def published_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"model.embed_tokens.weight": (151936, 896), "model.norm.weight": (896,), "lm_head.weight": (151936, 896)}
    for i in range(24):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (896, 896),
                p + "self_attn.q_proj.bias": (896,),
                p + "self_attn.k_proj.weight": (128, 896),
                p + "self_attn.k_proj.bias": (128,),
                p + "self_attn.v_proj.weight": (128, 896),
                p + "self_attn.v_proj.bias": (128,),
                p + "self_attn.o_proj.weight": (896, 896),
                p + "mlp.gate_proj.weight": (4864, 896),
                p + "mlp.up_proj.weight": (4864, 896),
                p + "mlp.down_proj.weight": (896, 4864),
                p + "input_layernorm.weight": (896,),
                p + "post_attention_layernorm.weight": (896,),
            }
        )
    v = "model.vision_tower.vision_encoder."
    shapes.update(
        {
            v + "patch_embed.proj.weight": (576, 3, 1, 16, 16),
            v + "patch_embed.proj.bias": (576,),
            v + "cls_token": (1, 1, 576),
            v + "pos_embed": (1, 197, 576),
            v + "temporal_pos_embedding": (1, 8, 576),
            v + "norm.weight": (576,),
            v + "clip_decoder.0.head.weight": (512, 576),
            v + "clip_decoder.0.head.bias": (512,),
            v + "clip_decoder.0.norm.weight": (512,),
            v + "clip_decoder.0.norm.bias": (512,),
        }
    )
    for i in range(32):
        p = f"{v}layers.{i}."
        shapes.update(
            {
                p + "mixer.in_proj.weight": (2304, 576),
                p + "mixer.out_proj.weight": (576, 1152),
                p + "norm.weight": (576,),
            }
        )
        for s, a in (("", "A_log"), ("_b", "A_b_log")):
            shapes.update(
                {
                    p + f"mixer.conv1d{s}.weight": (1152, 1, 4),
                    p + f"mixer.conv1d{s}.bias": (1152,),
                    p + f"mixer.x_proj{s}.weight": (68, 1152),
                    p + f"mixer.dt_proj{s}.weight": (1152, 36),
                    p + f"mixer.dt_proj{s}.bias": (1152,),
                    p + f"mixer.{a}": (1152, 16),
                    p + f"mixer.D{s}": (1152,),
                }
            )
    for prefix, width in (("model.mm_projector.", 576), ("model.image_mm_projector.", 768)):
        shapes.update(
            {
                prefix + "mlp.mlp.0.weight": (896, width),
                prefix + "mlp.mlp.0.bias": (896,),
                prefix + "mlp.mlp.2.weight": (896, 896),
                prefix + "mlp.mlp.2.bias": (896,),
                prefix + "peg.peg.0.weight": (896, 1, 3, 3),
                prefix + "peg.peg.0.bias": (896,),
            }
        )
    c = "model.image_vision_tower.vision_tower.vision_model."
    shapes.update(
        {
            c + "embeddings.class_embedding": (768,),
            c + "embeddings.patch_embedding.weight": (768, 3, 16, 16),
            c + "embeddings.position_embedding.weight": (197, 768),
            c + "pre_layrnorm.weight": (768,),
            c + "pre_layrnorm.bias": (768,),
            c + "post_layernorm.weight": (768,),
            c + "post_layernorm.bias": (768,),
        }
    )
    for i in range(12):
        p = f"{c}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes.update({p + f"self_attn.{proj}.weight": (768, 768), p + f"self_attn.{proj}.bias": (768,)})
        for norm in ("layer_norm1", "layer_norm2"):
            shapes.update({p + f"{norm}.weight": (768,), p + f"{norm}.bias": (768,)})
        shapes.update(
            {
                p + "mlp.fc1.weight": (3072, 768),
                p + "mlp.fc1.bias": (3072,),
                p + "mlp.fc2.weight": (768, 3072),
                p + "mlp.fc2.bias": (768,),
            }
        )
    return shapes


def test_full_size_model_on_meta_has_the_published_layout():
    with torch.device("meta"):
        model = MobileVideoGPTQwenForCausalLM(MobileVideoGPTQwenConfig.published())
    got = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    want = published_shapes()
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k: s for k, s in got.items() if want[k] != s} == {}
    assert model.lm_head.weight is model.model.embed_tokens.weight

    def count(prefix):
        return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))

    llm = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(TOWER_PREFIXES))
    assert llm == 494_032_768
    assert count("model.vision_tower.vision_encoder.") == 73_941_504
    assert count("model.mm_projector.") == 1_329_664
    assert count("model.image_mm_projector.") == 1_501_696
    assert count("model.image_vision_tower.") == 85_799_424


# ---------------------------------------------------------------- tiny checkpoint round trip


def video_prompt(tokenizer):
    """A ChatML prompt with one placeholder (ids), as the data pipeline builds it."""
    before = tokenizer(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n", add_special_tokens=False
    ).input_ids
    after = tokenizer("\nDescribe the exercise.<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).input_ids
    return torch.tensor([before + [IMAGE_TOKEN_INDEX] + after])


def full_videos(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, 3, 224, 224, generator=g), torch.randn(1, 16, 3, 224, 224, generator=g)


@pytest.fixture(scope="module")
def loaded(mvgpt_tiny_checkpoint):
    model = transformers.AutoModelForCausalLM.from_pretrained(mvgpt_tiny_checkpoint)
    tokenizer = transformers.AutoTokenizer.from_pretrained(mvgpt_tiny_checkpoint)
    return model, tokenizer


def test_tiny_checkpoint_files_have_the_published_key_names(mvgpt_tiny_checkpoint):
    with safe_open(mvgpt_tiny_checkpoint / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    model = build_tiny_model(seed=0)
    assert keys == set(model.state_dict()) - {"lm_head.weight"}  # tied head not stored
    assert "model.image_vision_tower.vision_tower.vision_model.encoder.layers.1.mlp.fc2.bias" in keys
    assert "model.vision_tower.vision_encoder.layers.1.mixer.A_b_log" in keys
    config = json.loads((mvgpt_tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "MobileVideoGPT_qwen"
    assert config["architectures"] == ["MobileVideoGPTQwenForCausalLM"]


def test_round_trip_gives_identical_weights_and_logits(loaded):
    model, tokenizer = loaded
    assert type(model) is MobileVideoGPTQwenForCausalLM and not model.training
    assert len(tokenizer) == 151665 and tokenizer.eos_token_id == 151645
    fresh = build_tiny_model(seed=0)
    for key, value in fresh.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    ids = video_prompt(tokenizer)
    images, context = full_videos()
    with torch.no_grad():
        a = model(input_ids=ids, images=images, context_images=context, logits_to_keep=8).logits
        b = fresh(input_ids=ids, images=images, context_images=context, logits_to_keep=8).logits
    assert torch.equal(a, b)
    new = model.generate(ids, images=images, context_images=context, max_new_tokens=4, do_sample=False)
    assert new.shape[0] == 1 and 1 <= new.shape[1] <= 4
    assert isinstance(tokenizer.decode(new[0], skip_special_tokens=True), str)


def test_k_and_topk_as_from_pretrained_kwargs(mvgpt_tiny_checkpoint):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        mvgpt_tiny_checkpoint, num_select_k_frames_in_chunk=4, topk=False
    )
    assert model.config.topk is False and model.config.num_select_k_frames_in_chunk == 4
    same = MobileVideoGPTQwenForCausalLM.from_pretrained(
        mvgpt_tiny_checkpoint, num_select_k_frames_in_chunk=None, topk=None
    )
    assert same.config.topk is True
    with pytest.raises(ValueError, match="8 frames"):
        MobileVideoGPTQwenForCausalLM.from_pretrained(mvgpt_tiny_checkpoint, num_select_k_frames_in_chunk=2)


def test_fresh_interpreter_loads_through_auto_classes(mvgpt_tiny_checkpoint):
    code = (
        "import mobilevideogpt, transformers; "
        f"m = transformers.AutoModelForCausalLM.from_pretrained({str(mvgpt_tiny_checkpoint)!r}); "
        f"t = transformers.AutoTokenizer.from_pretrained({str(mvgpt_tiny_checkpoint)!r}); "
        "print(type(m).__name__, m.config.visual_tokens_per_video, len(t))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["MobileVideoGPTQwenForCausalLM", "2402", "151665"]


# ---------------------------------------------------------------- strict keys and tower sources


def rewrite_checkpoint(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    save_file(edit(dict(state)), dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_unknown_extra_or_missing_key_fails_loudly(mvgpt_tiny_checkpoint, tmp_path):
    extra = rewrite_checkpoint(
        mvgpt_tiny_checkpoint, tmp_path / "extra", lambda s: {**s, "model.surprise.weight": torch.zeros(3)}
    )
    with pytest.raises(CheckpointLoadError, match=r"unexpected 1 key\(s\): model.surprise.weight"):
        MobileVideoGPTQwenForCausalLM.from_pretrained(extra)
    missing = rewrite_checkpoint(
        mvgpt_tiny_checkpoint, tmp_path / "missing", lambda s: {k: v for k, v in s.items() if k != "model.norm.weight"}
    )
    with pytest.raises(CheckpointLoadError, match=r"missing 1 key\(s\): model.norm.weight"):
        transformers.AutoModelForCausalLM.from_pretrained(missing)


def test_vocab_size_comes_from_the_embedding_tensor(mvgpt_tiny_checkpoint, tmp_path):
    target = tmp_path / "vocab"
    shutil.copytree(mvgpt_tiny_checkpoint, target)
    config = json.loads((target / "config.json").read_text())
    config["vocab_size"] = 151666  # e.g. resized to the tokenizer length; the tensor still has 151936 rows
    (target / "config.json").write_text(json.dumps(config))
    model = MobileVideoGPTQwenForCausalLM.from_pretrained(target)
    assert model.config.vocab_size == 151936 and model.lm_head.weight.shape == (151936, 32)
    model = transformers.AutoModelForCausalLM.from_pretrained(target)  # config object passed by the Auto class
    assert model.config.vocab_size == 151936 and model.model.embed_tokens.weight.shape == (151936, 32)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A CLIPModel (text + vision, like openai/clip-vit-base-patch16) with the tiny vision config."""
    torch.manual_seed(3)
    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 99,
        "max_position_embeddings": 16,
        "projection_dim": 32,
    }
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=dict(TINY_CLIP), projection_dim=32))
    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    clip.save_pretrained(path)
    return path, {k: v.clone() for k, v in clip.vision_model.state_dict().items()}


def test_clip_weights_absent_from_checkpoint_load_from_env_or_argument(
    mvgpt_tiny_checkpoint, tmp_path, tiny_clip_dir, monkeypatch
):
    clip_dir, clip_state = tiny_clip_dir
    no_clip = rewrite_checkpoint(
        mvgpt_tiny_checkpoint,
        tmp_path / "no_clip",
        lambda s: {k: v for k, v in s.items() if not k.startswith("model.image_vision_tower.")},
    )
    monkeypatch.setenv(CLIP_PATH_ENV, str(clip_dir))
    model, info = MobileVideoGPTQwenForCausalLM.from_pretrained(no_clip, output_loading_info=True)
    assert info["tower_sources"] == {"clip": str(clip_dir)} and not info["missing_keys"]
    tower = model.model.image_vision_tower.vision_tower.vision_model.state_dict()
    assert tower.keys() == clip_state.keys()
    assert all(torch.equal(tower[k], clip_state[k]) for k in clip_state)
    monkeypatch.delenv(CLIP_PATH_ENV)
    model = MobileVideoGPTQwenForCausalLM.from_pretrained(no_clip, clip_path=str(clip_dir))
    assert torch.equal(
        model.model.image_vision_tower.vision_tower.vision_model.embeddings.class_embedding,
        clip_state["embeddings.class_embedding"],
    )


def test_videomamba_weights_absent_from_checkpoint_load_from_upstream_pth(mvgpt_tiny_checkpoint, tmp_path, monkeypatch):
    prefix = "model.vision_tower.vision_encoder."
    full = load_file(mvgpt_tiny_checkpoint / "model.safetensors")
    no_video = rewrite_checkpoint(
        mvgpt_tiny_checkpoint, tmp_path / "no_video", lambda s: {k: v for k, v in s.items() if not k.startswith(prefix)}
    )
    # Upstream layout: {"model": {"vision_encoder.*": ..., text branch ...}}, read with weights_only.
    upstream = {"vision_encoder." + k[len(prefix) :]: v * 2 for k, v in full.items() if k.startswith(prefix)}
    upstream["text_encoder.embeddings.weight"] = torch.zeros(4, 4)
    pth = tmp_path / "videomamba_tiny.pth"
    torch.save({"model": upstream}, pth)
    monkeypatch.setenv(VIDEOMAMBA_PATH_ENV, str(pth))
    model, info = MobileVideoGPTQwenForCausalLM.from_pretrained(no_video, output_loading_info=True)
    assert info["tower_sources"] == {"videomamba": str(pth)}
    encoder = model.model.vision_tower.vision_encoder.state_dict()
    assert all(
        torch.equal(encoder[k[len("vision_encoder.") :]], v)
        for k, v in upstream.items()
        if k.startswith("vision_encoder.")
    )


def test_unreachable_tower_sources_give_one_message_naming_the_fix(mvgpt_tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv(CLIP_PATH_ENV, raising=False)
    monkeypatch.delenv(VIDEOMAMBA_PATH_ENV, raising=False)
    bare = rewrite_checkpoint(
        mvgpt_tiny_checkpoint,
        tmp_path / "bare",
        lambda s: {
            k: v for k, v in s.items() if not k.startswith(("model.image_vision_tower.", "model.vision_tower."))
        },
    )
    with pytest.raises(CheckpointLoadError) as err:
        MobileVideoGPTQwenForCausalLM.from_pretrained(bare, videomamba_path=str(tmp_path / "nowhere.pth"))
    message = str(err.value)
    assert "CLIP image tower" in message and CLIP_PATH_ENV in message and "clip_path=" in message
    assert "VideoMamba video tower" in message and VIDEOMAMBA_PATH_ENV in message and "nowhere.pth" in message


def test_package_registers_auto_classes():
    assert mobilevideogpt.MobileVideoGPTQwenForCausalLM is MobileVideoGPTQwenForCausalLM
    config = transformers.AutoConfig.for_model(
        "MobileVideoGPT_qwen",
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        num_hidden_layers=1,
        mm_vision_tower=None,
    )
    assert type(config) is MobileVideoGPTQwenConfig
    text_only = transformers.AutoModelForCausalLM.from_config(config)
    assert type(text_only) is MobileVideoGPTQwenForCausalLM and not hasattr(text_only.model, "vision_tower")


def test_videomamba_source_resolution(tmp_path, monkeypatch):
    import huggingface_hub

    from mobilevideogpt.model.loading import resolve_videomamba_file

    local = tmp_path / "vm.pth"
    local.write_bytes(b"")
    assert resolve_videomamba_file(str(local)) == local
    with pytest.raises(CheckpointLoadError, match="is a directory"):
        resolve_videomamba_file(str(tmp_path))
    with pytest.raises(CheckpointLoadError, match="does not exist"):
        resolve_videomamba_file(str(tmp_path / "missing.pth"))
    calls = []
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo_id, filename: calls.append((repo_id, filename)) or str(local)
    )
    resolve_videomamba_file("OpenGVLab/VideoMamba/videomamba_m16_25M_f8_res224.pth")
    resolve_videomamba_file("hf://OpenGVLab/VideoMamba")  # bare repo: the published training script's file name
    assert calls == [("OpenGVLab/VideoMamba", "videomamba_m16_25M_f8_res224.pth")] * 2


def test_clip_source_without_vision_weights_is_rejected(mvgpt_tiny_checkpoint, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    from mobilevideogpt.model.loading import load_clip_weights

    text_only = tmp_path / "text-only"
    CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=99,
            max_position_embeddings=16,
        )
    ).save_pretrained(text_only)
    model = build_tiny_model(seed=0)
    with pytest.raises(CheckpointLoadError, match="CLIP"):
        load_clip_weights(model.model.image_vision_tower, str(text_only))
