"""`python -m mobilevideogpt COMMAND …`: the same as `mvgpt COMMAND …`."""

import sys

from .cli import main

sys.exit(main())
