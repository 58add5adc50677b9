"""A training rank (`mobilevideogpt.cli.train_rank`) that records what it does to files under its --output_dir.

Python's audit events (PEP 578) give every file this process opens for writing, every folder it makes, and every
rename and removal; they go to `$AUDIT_DIR/rank$RANK.tsv` as `event<TAB>path relative to the output folder`.
Files written by native code (safetensors, tokenizers, torch's zip writer) raise no audit event; the folders
holding them and the renames that publish them do.
"""

from __future__ import annotations

import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"}


def install(output_dir: str, log_path: str) -> None:
    root = os.path.realpath(output_dir)
    log = open(log_path, "a", buffering=1)  # opened before the hook: not recorded

    def relative(path) -> str | None:
        if not isinstance(path, (str, bytes, os.PathLike)) or isinstance(path, int):
            return None
        full = os.path.realpath(os.fsdecode(path))
        return os.path.relpath(full, root) if full == root or full.startswith(root + os.sep) else None

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = (mode is not None and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE_FLAGS)
            paths = [path] if writing else []
        elif event in EVENTS:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for path in paths:
            if (rel := relative(path)) is not None:
                log.write(f"{event}\t{rel}\n")

    sys.addaudithook(hook)


if __name__ == "__main__":
    argv = sys.argv[1:]
    install(argv[argv.index("--output_dir") + 1], os.path.join(os.environ["AUDIT_DIR"], f"rank{os.environ['RANK']}.tsv"))
    from mobilevideogpt.cli.train_rank import main

    sys.exit(main(argv))
