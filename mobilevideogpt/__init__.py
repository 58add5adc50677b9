"""Mobile-VideoGPT: an efficient video-language model and its QVED finetuning pipeline.

Importing the package registers "MobileVideoGPT_qwen" with transformers' `AutoConfig` and
`AutoModelForCausalLM` (imports only; no model is built and nothing is downloaded).

The library's entry points, imported on first use:

    from mobilevideogpt import VideoChat, load_model_and_tokenizer
    chat = VideoChat.from_pretrained("results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final")
    print(chat.answer("dataset/squats/00093026.mp4", "What is the person doing?").text)

The applications over it are the `mvgpt` command (`mobilevideogpt.cli`) and the QVED code (`mobilevideogpt.qved`).
"""

import os
from importlib import import_module

# OpenMP threads that spin while they wait for work hold their core; when another process needs that core too (a
# laptop, a shared server), every parallel region then waits a scheduler time slice for a preempted spinner. Measured
# on 2 shared cores: a tiny matmul 23-36 ms spinning vs 0.06-0.2 ms passive; full-size decode 0.83 vs 4.2 tok/s with
# one other CPU job. The setting must be in the environment before torch loads its OpenMP runtime, i.e. before the
# first `import torch`; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .model import MobileVideoGPTQwenConfig, MobileVideoGPTQwenForCausalLM  # noqa: E402  (after the setting above)

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
