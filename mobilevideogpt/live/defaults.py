"""Defaults of the live loop, in a module light enough for command-line parsers (no torch).

Why these values: the window and stride follow from the model's frame sampler and QEVD's 3 s matching
window (`windows.py`), the threshold from the similarity used for repeats (`suppress.py`).
"""

DEFAULT_WINDOW_S = 8.0
DEFAULT_STRIDE_S = 2.0
DEFAULT_THRESHOLD = 0.7  # ROUGE-L F1 to the last feedback said, at or above which an answer is a repeat
DEFAULT_MAX_NEW_TOKENS = 64  # feedback is a sentence or two
DEFAULT_DISPLAY_S = 4.0  # the longest a feedback stays on screen (subtitles, burned-in captions)
