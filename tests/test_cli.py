"""`mvgpt`: one command, every subcommand listed and documented, the same through `python -m mobilevideogpt`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mobilevideogpt.cli import COMMANDS, build_parser, main
from mobilevideogpt.cli.common import Parser


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"    {name}" in out, name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(capsys, name):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mvgpt {name}") and "--" in out


def test_console_script_and_module_are_the_same_command():
    via_module = subprocess.run([sys.executable, "-m", "mobilevideogpt", "--help"], capture_output=True, text=True)
    assert via_module.returncode == 0 and "tiny-checkpoint" in via_module.stdout
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "mvgpt"]
    assert script.value == "mobilevideogpt.cli:main"


def test_options_take_both_spellings():
    parser = Parser()
    parser.add_argument("--model_path")
    parser.add_argument("--dataset-dir")
    args = parser.parse_args(["--model-path", "a", "--dataset_dir", "b"])
    assert (args.model_path, args.dataset_dir) == ("a", "b")


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([])
    assert info.value.code == 2
