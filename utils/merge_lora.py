#!/usr/bin/env python
"""Merge a finetuning checkpoint (LoRA adapter + projectors) into a standalone model folder.

    python utils/merge_lora.py --model_path results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final --out DIR

The logic is in `mobilevideogpt.model.merge`; `--help` lists the options.
"""

import sys
from pathlib import Path

# Use the package of this checkout even when it is not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilevideogpt.model.merge import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
