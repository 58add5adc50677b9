#!/usr/bin/env python
"""Write a small SYNTHETIC QVED-layout dataset (moving shapes, invented labels) for offline demos and tests.

Run `python utils/make_sample_dataset.py --help`; the logic is in `mobilevideogpt.data.sample_dataset`.
"""

import sys
from pathlib import Path

# Use the package of this checkout even when it is not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mobilevideogpt.data.sample_dataset import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
