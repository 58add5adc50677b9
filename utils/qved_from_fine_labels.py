#!/usr/bin/env python
"""Regenerate dataset/qved_train.json (and optional val/test splits) from ground_truth.json + manifest.json.

The same as `mvgpt convert` (the package must be installed: `pip install -e .`); `--help` lists the options.
"""

import sys

from mobilevideogpt.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("convert", prog="qved_from_fine_labels.py"))
