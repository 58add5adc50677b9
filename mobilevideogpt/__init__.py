"""Mobile-VideoGPT: an efficient video-language model and its QVED finetuning pipeline."""

__version__ = "0.1.0"
