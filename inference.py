#!/usr/bin/env python
"""Answer a prompt about a video with Mobile-VideoGPT (base or finetuned checkpoint).

    python inference.py \\
      --model_path results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final \\
      --video_path dataset/squats/00093026.mp4 \\
      --prompt "Analyze this squats video and provide corrective feedback."

`python inference.py --help` lists the options; the logic is in `mobilevideogpt.inference` (Python API) and
`mobilevideogpt.inference_cli`.
"""

import sys
from pathlib import Path

# Use the package of this checkout even when it is not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mobilevideogpt.inference_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
