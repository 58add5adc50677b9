"""Mobile-VideoGPT: an efficient video-language model and its QVED finetuning pipeline.

Importing the package registers "MobileVideoGPT_qwen" with transformers' `AutoConfig` and
`AutoModelForCausalLM` (imports only; no model is built and nothing is downloaded).

The library's entry points, imported on first use:

    from mobilevideogpt import VideoChat, load_model_and_tokenizer
    chat = VideoChat.from_pretrained("results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final")
    print(chat.answer("dataset/squats/00093026.mp4", "What is the person doing?").text)

The applications over it are the `mvgpt` command (`mobilevideogpt.cli`) and the QVED code (`mobilevideogpt.qved`).
"""

from importlib import import_module

from .model import MobileVideoGPTQwenConfig, MobileVideoGPTQwenForCausalLM

__version__ = "0.1.0"

# name → module that defines it; loaded lazily so `import mobilevideogpt` stays light.
_LAZY = {
    "VideoChat": ".chat",
    "ChatResult": ".chat",
    "Timings": ".chat",
    "load_model_and_tokenizer": ".model.assemble",
    "ModelLoadError": ".errors",
    "merge_checkpoint": ".export",
}

__all__ = ["MobileVideoGPTQwenConfig", "MobileVideoGPTQwenForCausalLM", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
