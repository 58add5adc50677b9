"""Mobile-VideoGPT: an efficient video-language model and its QVED finetuning pipeline.

Importing the package registers "MobileVideoGPT_qwen" with transformers' `AutoConfig` and
`AutoModelForCausalLM` as soon as transformers is imported (before or after this package), and nothing heavy
before then: `import mobilevideogpt` loads neither torch nor transformers, so `mvgpt --help` answers at once.

The library's entry points, imported on first use:

    from mobilevideogpt import VideoChat, load_model_and_tokenizer
    chat = VideoChat.from_pretrained("results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final")
    print(chat.answer("dataset/squats/00093026.mp4", "What is the person doing?").text)

The applications over it are the `mvgpt` command (`mobilevideogpt.cli`) and the QVED code (`mobilevideogpt.qved`).
"""

import importlib.abc
import importlib.util
import os
import sys
from importlib import import_module

from . import openmp_wait as _openmp_wait

# How torch's OpenMP threads wait for work (openmp_wait.py): it must be in the environment before torch loads its
# OpenMP runtime, i.e. before the first `import torch`; a setting of the user's is kept.
_openmp_wait.APPLIED.update(
    _openmp_wait.wait_settings(os.environ, _openmp_wait.other_running_processes(), _openmp_wait.usable_cpus())
)
os.environ.update(_openmp_wait.APPLIED)

__version__ = "0.1.0"

# name → module that defines it; loaded lazily so `import mobilevideogpt` stays light.
_LAZY = {
    "MobileVideoGPTQwenConfig": ".model",
    "MobileVideoGPTQwenForCausalLM": ".model",
    "VideoChat": ".chat",
    "ChatResult": ".chat",
    "Timings": ".chat",
    "load_model_and_tokenizer": ".model.assemble",
    "ModelLoadError": ".errors",
    "merge_checkpoint": ".export",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_auto_classes() -> None:
    import_module(".model", __name__)  # its import registers the Auto classes


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Registers the Auto classes right after `transformers` finishes importing, so `import mobilevideogpt,
    transformers; transformers.AutoModelForCausalLM.from_pretrained(DIR)` works without importing torch and
    transformers here (≈ 6 s of a `mvgpt --help` on 2 loaded cores) before they are needed."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            _register_auto_classes()

        spec.loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:
    _register_auto_classes()
else:
    sys.meta_path.insert(0, _RegisterAfterTransformers())
