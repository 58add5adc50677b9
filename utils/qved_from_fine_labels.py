#!/usr/bin/env python
"""Regenerate dataset/qved_train.json (and optional val/test splits) from ground_truth.json + manifest.json.

Run `python utils/qved_from_fine_labels.py --help` for the options; the logic is in
`mobilevideogpt.data.qved`.
"""

import sys
from pathlib import Path

# Use the package of this checkout even when it is not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilevideogpt.data.qved import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
