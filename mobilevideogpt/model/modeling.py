"""Mobile-VideoGPT on transformers' Qwen2: towers, projectors, splice, forward and generate.

State-dict layout as published (upstream `mobilevideogpt/model/language_model/qwen.py` + `arch.py`): `model.embed_tokens`, `model.layers.*`, `model.norm`,
`model.vision_tower.vision_encoder.*` (VideoMamba), `model.image_vision_tower.vision_tower.vision_model.*`
(CLIP), `model.mm_projector.*` (video ETP), `model.image_mm_projector.*` (image ETP), `lm_head.weight`
(tied to the embeddings when `tie_word_embeddings`).

Inputs: `input_ids` with one placeholder run per video, `images` (V, T, 3, H, W) VideoMamba frames and
`context_images` (V, T, 3, H, W) CLIP frames, V = number of runs in batch order (see `splice.py`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2ForCausalLM, Qwen2Model
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .clip import CLIPImageTower
from .configuration import MobileVideoGPTQwenConfig, check_token_pipeline
from .last_position import LastPositionDecoderLayer, last_position_only
from .loading import load_pretrained
from .projector import EfficientTokenProjector
from .splice import PaddingSide, SplicedBatch, splice_visual_tokens
from .video_tower import VideoMambaTower
from .visual_tokens import video_visual_tokens


class MobileVideoGPTQwenModel(Qwen2Model):
    config_class = MobileVideoGPTQwenConfig
    # Device maps and FSDP wrapping match layers by class name: the last layer keeps its modules together too.
    _no_split_modules = ["Qwen2DecoderLayer", "LastPositionDecoderLayer"]

    def __init__(self, config: MobileVideoGPTQwenConfig) -> None:
        super().__init__(config)
        # A generation prefill needs the last layer's output at the last position only (see `last_position.py`).
        self.layers[-1] = LastPositionDecoderLayer(self.layers[-1])
        if not config.has_vision:
            return
        video_config, clip_config = config.videomamba(), config.clip_vision()
        self.vision_tower = VideoMambaTower(video_config)
        self.image_vision_tower = CLIPImageTower(
            clip_config, config.mm_vision_select_layer, config.mm_vision_select_feature
        )
        self.mm_projector = EfficientTokenProjector(video_config.embed_dim, config.hidden_size, "video")
        self.image_mm_projector = EfficientTokenProjector(clip_config.hidden_size, config.hidden_size, "image")
        # VideoMamba initialises itself (Mamba's dt/A/D schemes); transformers' generic init must not
        # overwrite that. Loading never leaves its weights random: they come from the checkpoint or upstream.
        for module in self.vision_tower.modules():
            module._is_hf_initialized = True
        # Qwen2Model.__init__ ran post_init before the multimodal modules existed; initialise those now.
        self.post_init()

    @property
    def hidden_dtype(self) -> torch.dtype:
        """dtype of the LLM's hidden states: what the token embedding returns (fp32 when its weights are packed
        in bf16 / int8, see `lowp.py`)."""
        return getattr(self.embed_tokens, "output_dtype", self.embed_tokens.weight.dtype)

    @property
    def projectors(self) -> tuple[EfficientTokenProjector, EfficientTokenProjector]:
        return self.mm_projector, self.image_mm_projector

    def clip_frame_features(self, context_frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) CLIP-preprocessed frames → (N, L, Dc) patch features, each frame's as `encode_videos`
        computes it: stacked per video, they can be passed back as `clip_features` (no CLIP forward then)."""
        if not self.config.has_vision:
            raise ValueError("This model has no vision modules (config.mm_vision_tower is unset)")
        return self.image_vision_tower(context_frames.to(self.embed_tokens.weight.device))

    def encode_clip_frames(self, context_frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`clip_frame_features` and, when the model runs with a visual-token budget, the (N, L) [CLS]-attention
        scores that choose each frame's tokens (None without a budget): both can be passed back to
        `encode_videos` as `clip_features` and `clip_scores`."""
        if not self.config.has_vision:
            raise ValueError("This model has no vision modules (config.mm_vision_tower is unset)")
        return self.image_vision_tower.features_and_scores(
            context_frames.to(self.embed_tokens.weight.device), with_scores=self.config.visual_token_budget is not None
        )

    def encode_videos(
        self,
        images: torch.Tensor,
        context_images: torch.Tensor | None = None,
        clip_features: torch.Tensor | None = None,
        clip_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """images, context_images: (V, T, 3, H, W) → (V, visual_tokens_per_video, hidden) in the LLM dtype.

        Instead of `context_images`, `clip_features` (V, T, L, Dc) and, with a visual-token budget, `clip_scores`
        (V, T, L) from `encode_clip_frames` skip CLIP."""
        if not self.config.has_vision:
            raise ValueError("This model has no vision modules (config.mm_vision_tower is unset)")
        device = self.embed_tokens.weight.device
        tokens = video_visual_tokens(
            images.to(device),
            context_images.to(device) if context_images is not None else None,
            clip_tower=self.image_vision_tower,
            video_tower=self.vision_tower,
            image_projector=self.image_mm_projector,
            video_projector=self.mm_projector,
            chunk_size=self.config.chunk_size,
            k=self.config.num_select_k_frames_in_chunk,
            largest=self.config.topk,
            clip_features=clip_features.to(device) if clip_features is not None else None,
            clip_scores=clip_scores.to(device) if clip_scores is not None else None,
            budget=self.config.visual_token_budget,
        )
        return tokens.to(self.hidden_dtype)

    def prepare_multimodal_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        context_images: torch.Tensor | None = None,
        padding_side: PaddingSide = "right",
        clip_features: torch.Tensor | None = None,
        clip_scores: torch.Tensor | None = None,
    ) -> SplicedBatch:
        """Embed `input_ids` (B, L) and splice each video's visual tokens into its placeholder run.

        `clip_features` (V, T, L, Dc) and `clip_scores` (V, T, L), stacked from `encode_clip_frames`, may stand in
        for `context_images`."""
        has_context = context_images is not None or clip_features is not None
        if (images is None) != (not has_context):
            raise ValueError(
                "Pass both `images` (VideoMamba frames) and `context_images` (CLIP frames, or their `clip_features`), "
                "or neither"
            )
        if context_images is not None and clip_features is not None:
            raise ValueError("Pass `context_images` or their `clip_features`, not both")
        given = (("images", images), ("context_images", context_images), ("clip_features", clip_features),
                 ("clip_scores", clip_scores))  # fmt: skip
        for name, value in given:
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(f"`{name}` must be a tensor, got {type(value).__name__}")
        device = self.embed_tokens.weight.device
        input_ids, attention_mask, labels = (
            t.to(device) if t is not None else None for t in (input_ids, attention_mask, labels)
        )
        visual = self.encode_videos(images, context_images, clip_features, clip_scores) if images is not None else None
        return splice_visual_tokens(input_ids, self.embed_tokens, visual, attention_mask, labels, padding_side)

    def unused_projector_anchor(self) -> torch.Tensor:
        """A zero scalar that depends on every projector parameter.

        Added to the embeddings of a training batch without videos so that trainable projector parameters
        still take part in backward: DDP (without find_unused_parameters) and ZeRO expect every trainable
        parameter to get a gradient each step. Runs each projector on one tiny zero grid (cheap).
        """
        total = self.embed_tokens.weight.new_zeros(())
        for projector in self.projectors:
            side = projector.pool_side
            zeros = torch.zeros(
                1, side * side, projector.mlp.mlp[0].in_features, device=total.device, dtype=projector.dtype
            )
            total = total + projector(zeros).sum().to(total.dtype)
        return total * 0


def infer_padding_side(attention_mask: torch.Tensor | None) -> PaddingSide:
    """Padding side of a batch: left when every row ends with a true token and some row starts with padding."""
    if attention_mask is None or attention_mask.shape[1] == 0:
        return "right"
    left = bool((attention_mask[:, -1] == 1).all()) and bool((attention_mask[:, 0] == 0).any())
    return "left" if left else "right"


class MobileVideoGPTQwenForCausalLM(Qwen2ForCausalLM):
    config_class = MobileVideoGPTQwenConfig

    def __init__(
        self,
        config: MobileVideoGPTQwenConfig,
        num_select_k_frames_in_chunk: int | None = None,
        topk: bool | None = None,
    ) -> None:
        # The published loader passes k / topk as model kwargs; they live on the config here.
        if num_select_k_frames_in_chunk is not None:
            config.num_select_k_frames_in_chunk = num_select_k_frames_in_chunk
        if topk is not None:
            config.topk = topk
        check_token_pipeline(config)
        # Skip Qwen2ForCausalLM.__init__: it would build (and throw away) a plain Qwen2Model.
        super(Qwen2ForCausalLM, self).__init__(config)
        self.model = MobileVideoGPTQwenModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def enable_input_require_grads(self) -> None:
        """Make the token embeddings' output require grad (what PEFT and activation checkpointing ask for), and
        nothing else.

        transformers hooks the input embeddings of every pretrained model inside, the frozen CLIP tower's patch
        embeddings included: backward then ran through the whole tower for gradients nothing uses, and its forward
        kept 1.5 GiB of activations for one 16-frame sample at fp32 (full size, measured with saved-tensor hooks).
        The projectors train without it: their weights require grad themselves."""

        def make_output_require_grad(module, inputs, output):
            output.requires_grad_(True)

        self._require_grads_hooks = [self.get_input_embeddings().register_forward_hook(make_output_require_grad)]
        self._require_grads_hook = self._require_grads_hooks[0]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained` plus tower weights from their own sources and a strict key report.

        Extra keyword arguments: `clip_path` (hub id or local dir of a CLIP model; else env
        `MOBILEVIDEOGPT_CLIP_PATH`, else `config.image_mm_vision_tower`) and `videomamba_path` (upstream
        VideoMamba `.pth`/`.safetensors`; else env `MOBILEVIDEOGPT_VIDEOMAMBA_PATH`, else
        `config.mm_vision_tower`), used only when the checkpoint lacks those weights. See `loading.py`.
        """
        return load_pretrained(super().from_pretrained, pretrained_model_name_or_path, *model_args, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        images: torch.Tensor | None = None,
        context_images: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Causal-LM forward on spliced sequences.

        input_ids, attention_mask, labels: (B, L), placeholder runs marking the videos; images /
        context_images: (V, T, 3, H, W). The spliced batch keeps the input's padding side (right for the
        training collator, left for left-padded prompts); `logits` and the loss are over the spliced
        sequence of length L + Σ(visual tokens − placeholders). Without placeholders and videos this is
        the plain Qwen2 forward.
        """
        # Decode steps of `generate` feed only new tokens: skip the placeholder search (a host sync per token).
        decoding = cache is not None and cache.get_seq_length() > 0
        has_slots = not decoding and input_ids is not None and bool((input_ids == IMAGE_TOKEN_INDEX).any())
        if inputs_embeds is None and (has_slots or images is not None):
            if decoding:
                raise ValueError("Videos can only be spliced into the first forward pass (the cache is not empty)")
            spliced = self.model.prepare_multimodal_inputs(
                input_ids, attention_mask, labels, images, context_images, infer_padding_side(attention_mask)
            )
            input_ids, inputs_embeds = None, spliced.inputs_embeds
            attention_mask, position_ids, labels = spliced.attention_mask, spliced.position_ids, spliced.labels
        elif images is not None or context_images is not None:
            raise ValueError("Pass videos with `input_ids` holding their placeholders, not with `inputs_embeds`")
        if self.training and torch.is_grad_enabled() and self._has_trainable_projectors():
            if inputs_embeds is None:
                inputs_embeds, input_ids = self.model.embed_tokens(input_ids), None
            # Batches with videos already use the projectors; this only matters for video-free batches.
            if images is None:
                inputs_embeds = inputs_embeds + self.model.unused_projector_anchor()
        if cache is not None:
            kwargs["cache"] = cache
        if labels is not None and self.training:
            return self._supervised_loss(
                labels, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs,
            )
        with last_position_only(self._uses_last_position_only(logits_to_keep, labels, kwargs)):
            return super().forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )

    def _uses_last_position_only(
        self, logits_to_keep: int | torch.Tensor, labels: torch.Tensor | None, kwargs: dict
    ) -> bool:
        """Whether this forward's caller reads nothing but the last position's logits (and the cache): a
        generation prefill or decode step. Then the last decoder layer may skip the other positions."""
        return (
            isinstance(logits_to_keep, int)
            and logits_to_keep == 1
            and labels is None
            and not self.training
            and not torch.is_grad_enabled()
            and not kwargs.get("output_hidden_states", getattr(self.config, "output_hidden_states", False))
            and not kwargs.get("output_attentions", getattr(self.config, "output_attentions", False))
        )

    def _supervised_loss(
        self, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None, **model_inputs
    ) -> CausalLMOutputWithPast:
        """Training loss from the supervised positions only (`logits` is None).

        The LM head never sees the visual and prompt positions, so no (batch, length, vocab) logits tensor is
        built: for a batch of 4 QVED samples that tensor alone is 4 × ~2450 × 151,936 values (3 GB in bf16).
        Same value as the full-logits loss: shifted cross-entropy summed over non-ignored targets, divided by
        `num_items_in_batch` (the Trainer's count across gradient accumulation) or by their number.
        """
        mask = model_inputs.get("attention_mask")
        if mask is not None and bool((mask[:, 1:] <= mask[:, :-1]).all()):
            # Right padding (the collator's): the causal mask alone keeps every true token from seeing padding,
            # and only true positions are supervised, so the padding mask can go; attention then takes its fused
            # causal path.
            model_inputs["attention_mask"] = None
        hidden = self.model(**model_inputs).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.lm_head(hidden[:, :-1][keep])
        loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else keep.sum()
        return CausalLMOutputWithPast(loss=loss / count)

    def _has_trainable_projectors(self) -> bool:
        return self.config.has_vision and any(
            p.requires_grad for proj in self.model.projectors for p in proj.parameters()
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        images: torch.Tensor | None = None,
        context_images: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Generate from prompts with videos; greedy or sampling, KV cache, any batch size.

        input_ids: (B, L) prompts (any padding side; `attention_mask` marks true tokens) with one placeholder
        run per video; images / context_images: (V, T, 3, H, W). The prompts are spliced once, left-padded,
        and passed to transformers' `generate` as embeddings. Like the published model, the returned ids
        (B, new) hold **only the new tokens**, not the prompt. `generate_kwargs` go to transformers'
        `generate` (max_new_tokens, do_sample, temperature, ...).
        """
        if input_ids is None:
            return super().generate(attention_mask=attention_mask, **generate_kwargs)
        spliced = self.model.prepare_multimodal_inputs(
            input_ids, attention_mask, None, images, context_images, padding_side="left"
        )
        return super().generate(
            inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask, **generate_kwargs
        )


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` resolve "MobileVideoGPT_qwen" (no remote code needed)."""
    AutoConfig.register(MobileVideoGPTQwenConfig.model_type, MobileVideoGPTQwenConfig, exist_ok=True)
    AutoModelForCausalLM.register(MobileVideoGPTQwenConfig, MobileVideoGPTQwenForCausalLM, exist_ok=True)
