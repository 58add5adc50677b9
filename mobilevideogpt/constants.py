"""Token ids, special strings and the published pipeline's defaults."""

IGNORE_INDEX = -100
# Placeholder id for one visual slot in `input_ids`; replaced by visual embeddings before the LLM.
IMAGE_TOKEN_INDEX = -200

DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_VIDEO_TOKEN = "<video>"

# Published token pipeline: 16 sampled frames, VideoMamba chunks of 8, top-4 frames kept per chunk.
NUM_FRAMES = 16
NUM_CONTEXT_IMAGES = 16
CHUNK_SIZE = 8
IMAGE_SIZE = 224  # both towers: 224 px → 14×14 patch grids
NUM_SELECT_K_FRAMES_IN_CHUNK = 4

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# The published checkpoint that Stage-3 QVED finetuning starts from.
BASE_MODEL_ID = "Amshaker/Mobile-VideoGPT-0.5B"

# `--quantize` on the CPU (runtime.plan_inference): int8 language-model weights, or w8a8: int8 x int8 products too.
QUANTIZE_CHOICES = ("none", "int8", "w8a8")
