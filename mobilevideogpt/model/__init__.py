"""Mobile-VideoGPT model: configuration, towers, projectors, token pipeline, loading (the CPU kernels and packed
weights it runs with on a CPU are `mobilevideogpt.engine`)."""

from .configuration import MobileVideoGPTQwenConfig
from .modeling import MobileVideoGPTQwenForCausalLM, MobileVideoGPTQwenModel, register_auto_classes

register_auto_classes()

__all__ = ["MobileVideoGPTQwenConfig", "MobileVideoGPTQwenForCausalLM", "MobileVideoGPTQwenModel"]
