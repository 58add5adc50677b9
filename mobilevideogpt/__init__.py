"""Mobile-VideoGPT: an efficient video-language model and its QVED finetuning pipeline.

Importing the package registers "MobileVideoGPT_qwen" with transformers' `AutoConfig` and
`AutoModelForCausalLM` (imports only; no model is built and nothing is downloaded).

Inference entry points, imported on first use:

    from mobilevideogpt import VideoChat, load_model_and_tokenizer
    chat = VideoChat.from_pretrained("results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final")
    print(chat.answer("dataset/squats/00093026.mp4").text)
"""

from importlib import import_module

from .model import MobileVideoGPTQwenConfig, MobileVideoGPTQwenForCausalLM

__version__ = "0.1.0"

# name → module that defines it; loaded lazily so `import mobilevideogpt` stays light.
_LAZY = {
    "VideoChat": ".inference",
    "ChatResult": ".inference",
    "Timings": ".inference",
    "default_prompt": ".inference",
    "load_model_and_tokenizer": ".model.finetuned",
    "ModelLoadError": ".model.finetuned",
    "merge_checkpoint": ".model.merge",
}

__all__ = ["MobileVideoGPTQwenConfig", "MobileVideoGPTQwenForCausalLM", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
