#!/usr/bin/env python
"""Answer a prompt about a video with Mobile-VideoGPT (base or finetuned checkpoint): the guide's command.

    python inference.py \\
      --model_path results/qved_finetune_mobilevideogpt_0.5B/checkpoint-final \\
      --video_path dataset/squats/00093026.mp4 \\
      --prompt "Analyze this squats video and provide corrective feedback."

The same as `mvgpt infer`; with `--live`, the same as `mvgpt live` (timestamped feedback on a long video, a
camera or a stream). `--help` lists the options.
"""

import sys

from mobilevideogpt.cli import run_command

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--live" in argv:
        argv.remove("--live")
        sys.exit(run_command("live", argv, prog="inference.py --live"))
    sys.exit(run_command("infer", argv, prog="inference.py"))
