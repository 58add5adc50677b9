"""A stand-in training rank for the supervision tests: records its pid, then waits as a rank inside a long
training step would. With WATCH_SUPERVISOR=1 it first watches its supervisor as a real rank does (that import
loads the package; the other cases stay light)."""

import os
import time
from pathlib import Path

if __name__ == "__main__":
    if os.environ.get("WATCH_SUPERVISOR") == "1":
        from mobilevideogpt.cli.train_rank import watch_supervisor_from_env

        watch_supervisor_from_env()
    Path(os.environ["RANK_PID_DIR"], f"rank{os.environ['RANK']}").write_text(str(os.getpid()))
    time.sleep(600)
