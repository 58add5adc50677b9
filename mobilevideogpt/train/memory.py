"""Peak memory of one training rank, estimated before launch from the model's configuration and the recipe.

The parts, each counted from what autograd and the optimizer really keep (the per-layer activation terms are checked
against the tensors a real Qwen2 decoder layer with LoRA saves for backward, `tests/test_memory.py`):

- weights: every parameter in the training precision (frozen towers and LLM included). ZeRO-3 partitions them, but
  its live-parameter limit (`stage3_max_live_parameters` 1e9 in `scripts/zero3.json`) exceeds the model's 0.66 B
  parameters, so a rank may gather the whole model; with several ranks its own partition comes on top.
- trainable states: LoRA + projector weights' fp32 master copy, AdamW's two moments and the fp32 gradient,
  partitioned over the ranks, plus the gradients in the training precision.
- activations: per token and decoder layer, RMSNorm's fp32 input and inverse root (twice), attention's query, key,
  value, output and log-sum-exp (memory-efficient attention, no T×T matrix), SwiGLU's three inputs, and for each
  LoRA'd linear its dropout output and mask and its rank-r product. With activation checkpointing a layer keeps only
  its input and one layer is recomputed at a time.
- logits: the LM head runs on the supervised positions only (`modeling.py`): its output, the fp32 copy the loss
  takes, log-softmax's output and its gradient, per supervised token and vocabulary entry.
- encoders: the frozen towers run without saving anything; their largest transient (one CLIP layer over every
  frame) and the trainable projectors' activations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

GIB = 1024**3
# CUDA context and allocator slack that `torch.cuda.max_memory_allocated` does not see.
CUDA_RUNTIME_BYTES = int(0.5 * GIB)
_LORA_TARGETS_PER_LAYER = 7  # q, k, v, o, gate, up, down (train/model_setup.py LLM_LORA_TARGETS)
_PATCHES_PER_FRAME = 196  # 14×14 patch grid of both towers at 224 px


@dataclass(frozen=True)
class ModelSizes:
    """The numbers of the architecture the estimate needs."""

    parameters: int
    lora_parameters_per_r: int  # LoRA parameters at r = 1 (they scale with r)
    projector_parameters: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    visual_tokens: int
    frames: int
    clip_hidden: int
    clip_intermediate: int
    clip_heads: int
    video_hidden: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def model_sizes(config) -> ModelSizes:
    """Count `config`'s parameters by building the model on the meta device (no memory, no weights)."""
    import torch

    from ..model.modeling import MobileVideoGPTQwenForCausalLM
    from .model_setup import LLM_LORA_TARGETS

    with torch.device("meta"):
        model = MobileVideoGPTQwenForCausalLM(config)
    targets = [
        module for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and re.fullmatch(LLM_LORA_TARGETS, name)
    ]  # fmt: skip
    clip = config.clip_vision()
    return ModelSizes(
        parameters=sum(p.numel() for p in model.parameters()),
        lora_parameters_per_r=sum(m.in_features + m.out_features for m in targets),
        projector_parameters=sum(p.numel() for projector in model.model.projectors for p in projector.parameters()),
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        layers=config.num_hidden_layers,
        heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads,
        vocab=config.vocab_size,
        visual_tokens=config.visual_tokens_per_video,
        frames=config.num_frames,
        clip_hidden=clip.hidden_size,
        clip_intermediate=clip.intermediate_size,
        clip_heads=clip.num_attention_heads,
        video_hidden=config.videomamba().embed_dim,
    )


@dataclass(frozen=True)
class TrainingShape:
    """What one rank trains: `text_tokens` per sample on top of the visual tokens (the longest sample of a batch
    sets every sample's length), `supervised_tokens` of them in the loss."""

    batch: int
    text_tokens: int
    supervised_tokens: int
    lora_r: int
    lora_dropout: float
    precision: str  # "bf16", "fp16" or "fp32"
    activation_checkpointing: bool
    world_size: int = 1

    @property
    def bytes_per_value(self) -> int:
        return 4 if self.precision == "fp32" else 2


def layer_activation_bytes_per_token(sizes: ModelSizes, lora_r: int, lora_dropout: float, value_bytes: int) -> int:
    """What one decoder layer saves for backward per token (its input, kept by whoever made it, not included)."""
    h, i, kv = sizes.hidden, sizes.intermediate, sizes.kv_heads * sizes.head_dim
    # Each RMSNorm keeps its input in fp32 and its inverse root; in fp32 the input norm's is the layer's own input.
    norms = 2 * (4 * h + 4) - (4 * h if value_bytes == 4 else 0)
    attention = (2 * h + 2 * kv) * value_bytes + 4 * sizes.heads  # q, out, k, v + fp32 log-sum-exp
    mlp = 3 * i * value_bytes  # gate (SiLU's input), SiLU's output, up
    lora = 0
    if lora_r:
        inputs = 6 * h + i  # the inputs of q, k, v, o, gate, up (hidden) and down (intermediate)
        if lora_dropout > 0:
            lora = (2 * inputs + _LORA_TARGETS_PER_LAYER * lora_r) * value_bytes  # dropout output + mask, A's output
        else:
            # Without dropout A reads the linears' own inputs: q/k/v share the normed input, gate/up the other, and
            # at the published sizes o's is the attention output attention keeps anyway.
            lora = (2 * h + i + _LORA_TARGETS_PER_LAYER * lora_r) * value_bytes
    return norms + attention + mlp + lora


@dataclass(frozen=True)
class MemoryEstimate:
    """Expected peak bytes of one rank, by part."""

    weights: int
    trainable_states: int
    activations: int
    logits: int
    encoders: int
    runtime: int

    @property
    def total(self) -> int:
        return sum(self.parts().values())

    def parts(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "LoRA + projectors with optimizer": self.trainable_states,
            "activations": self.activations,
            "logits": self.logits,
            "encoders": self.encoders,
            "runtime": self.runtime,
        }


def estimate_training_memory(sizes: ModelSizes, shape: TrainingShape, cuda: bool = True) -> MemoryEstimate:
    """The expected peak memory of one rank training `shape` on a model of `sizes` (`cuda`: add the CUDA runtime)."""
    b, ranks = shape.bytes_per_value, max(shape.world_size, 1)
    weights = sizes.parameters * b + (sizes.parameters * b // ranks if ranks > 1 else 0)
    trainable = sizes.lora_parameters_per_r * shape.lora_r + sizes.projector_parameters
    master = 0 if shape.precision == "fp32" else 4
    trainable_states = trainable * (master + 8 + 4) // ranks + trainable * b

    tokens = shape.batch * (sizes.visual_tokens + shape.text_tokens)
    per_layer = layer_activation_bytes_per_token(sizes, shape.lora_r, shape.lora_dropout, b)
    hidden = sizes.hidden * b
    # Backward of a layer holds the gradients flowing in and out and SwiGLU's two gradient buffers.
    backward = 4 * hidden + 2 * sizes.intermediate * b
    rotary = 2 * sizes.head_dim * b  # cos and sin, shared by every layer
    embeddings = 2 * hidden  # the spliced input embeddings and the final norm's output
    if shape.activation_checkpointing:
        kept = sizes.layers * hidden + per_layer
    else:
        kept = sizes.layers * (hidden + per_layer)
    activations = tokens * (kept + backward + rotary + embeddings)

    supervised = shape.batch * shape.supervised_tokens
    logits = supervised * sizes.vocab * (b + 4 + 4 + 4)

    frame_tokens = shape.batch * sizes.frames * (_PATCHES_PER_FRAME + 1)
    clip_layer = frame_tokens * (4 * sizes.clip_hidden + sizes.clip_intermediate) * b
    clip_layer += shape.batch * sizes.frames * sizes.clip_heads * (_PATCHES_PER_FRAME + 1) ** 2 * b
    projector_inputs = sizes.clip_hidden + sizes.video_hidden
    projectors = shape.batch * sizes.frames * _PATCHES_PER_FRAME * (projector_inputs + 4 * sizes.hidden) * b
    return MemoryEstimate(
        weights=weights,
        trainable_states=trainable_states,
        activations=activations,
        logits=logits,
        encoders=clip_layer + projectors,
        runtime=CUDA_RUNTIME_BYTES if cuda else 0,
    )


def largest_fitting_batch(sizes: ModelSizes, shape: TrainingShape, budget_bytes: int, cuda: bool = True) -> int:
    """The largest per-rank batch (≥ 0) whose estimate fits `budget_bytes`, the rest of `shape` unchanged."""
    batch = 0
    while batch < 1024 and estimate_training_memory(sizes, replace(shape, batch=batch + 1), cuda).total <= budget_bytes:
        batch += 1
    return batch


def longest_sample(annotation_files, tokenizer, max_text_tokens: int) -> tuple[int, int]:
    """(text tokens, supervised tokens) of the longest sample in `annotation_files`, as training tokenizes them and
    capped at `max_text_tokens`; records training would skip are left out. (0, 0) when none is usable."""
    import json

    from ..constants import IGNORE_INDEX
    from ..processing import AnnotationError, parse_record, tokenize_segments

    text = supervised = 0
    for path in annotation_files:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
        for record in records if isinstance(records, list) else ():
            try:
                conversation = parse_record(record)
            except AnnotationError:
                continue
            ids, labels = tokenize_segments(conversation.segments(), tokenizer)
            text = max(text, min(len(ids) - 1, max_text_tokens))  # the one video placeholder is not text
            supervised = max(supervised, min(sum(label != IGNORE_INDEX for label in labels), max_text_tokens))
    return text, supervised
