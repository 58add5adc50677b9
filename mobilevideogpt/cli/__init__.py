"""`mvgpt`: the one command line over the library (also `python -m mobilevideogpt`).

Each subcommand is one module here exposing `HELP` (its line in `mvgpt --help`), `configure(parser)` (its options)
and `run(args) -> exit code`. The guide's commands are thin wrappers over the same modules:
`bash scripts/verify_qved_setup.sh` = `mvgpt verify`, `python utils/qved_from_fine_labels.py` = `mvgpt convert`,
`bash scripts/finetune_qved.sh` = `mvgpt train`, `python inference.py` = `mvgpt infer`.

The other modules are no subcommands: `common.py` (model options, loading, the one-line errors) and
`recipe_launch.py` (the finetuning launch `mvgpt train` and `mvgpt demo` share) sit below the subcommands,
`train_memory.py` is the memory estimate that launch prints, and `train_rank.py` what each training rank runs.
"""

from __future__ import annotations

import importlib

from .common import Parser, run_guarded

# subcommand → module under mobilevideogpt.cli, in the order `mvgpt --help` lists them.
COMMANDS = {
    "demo": "demo",
    "verify": "verify",
    "convert": "convert",
    "train": "train",
    "infer": "infer",
    "live": "live",
    "eval": "evaluate",
    "serve": "serve",
    "merge": "merge",
    "sample-data": "sample_data",
    "tiny-checkpoint": "tiny_checkpoint",
}


def command_module(name: str):
    return importlib.import_module(f"{__name__}.{COMMANDS[name]}")


def build_parser(prog: str = "mvgpt") -> Parser:
    parser = Parser(
        prog=prog,
        description="Mobile-VideoGPT: finetune on exercise videos (QVED), ask questions about videos, evaluate.",
        epilog="`mvgpt COMMAND --help` describes one command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = command_module(name)
        sub = commands.add_parser(
            name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP), **getattr(module, "PARSER_KWARGS", {})
        )
        module.configure(sub)
        sub.set_defaults(_run=module.run)
    return parser


def run_command(name: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run one subcommand with its own argument list (what the guide's wrapper scripts call)."""
    module = command_module(name)
    parser = Parser(
        prog=prog or f"mvgpt {name}", description=getattr(module, "DESCRIPTION", module.HELP), **getattr(module, "PARSER_KWARGS", {})
    )
    module.configure(parser)
    return run_guarded(module.run, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(args._run, args)

