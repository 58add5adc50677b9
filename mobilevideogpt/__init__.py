"""Mobile-VideoGPT: an efficient video-language model and its QVED finetuning pipeline.

Importing the package registers "MobileVideoGPT_qwen" with transformers' `AutoConfig` and
`AutoModelForCausalLM` (imports only; no model is built and nothing is downloaded).
"""

from .model import MobileVideoGPTQwenConfig, MobileVideoGPTQwenForCausalLM

__version__ = "0.1.0"

__all__ = ["MobileVideoGPTQwenConfig", "MobileVideoGPTQwenForCausalLM", "__version__"]
