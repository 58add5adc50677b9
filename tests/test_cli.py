"""`mvgpt`: one command, every subcommand listed and documented, the same through `python -m mobilevideogpt`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


HEAVY = ("torch", "transformers", "gradio", "deepspeed", "peft", "cv2", "decord")
HELP_COMMANDS = [
    [sys.executable, "-m", "mobilevideogpt", "--help"],
    *([sys.executable, "-m", "mobilevideogpt", name, "--help"] for name in sorted(COMMANDS)),
    [sys.executable, "inference.py", "--help"],
    [sys.executable, "utils/qved_from_fine_labels.py", "--help"],
]


def test_help_imports_no_heavy_library():
    """`--help` answers at once: it builds every parser (also the guide's wrappers) without loading torch,
    transformers, gradio or DeepSpeed (≈ 6 s of imports on 2 loaded cores before they were deferred)."""
    probe = (
        "import runpy, sys\n"
        "sys.argv = sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_module('mobilevideogpt', run_name='__main__') if sys.argv[0] == '-m' else "
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    root = Path(__file__).resolve().parents[1]
    for command in HELP_COMMANDS:
        argv = command[1:]
        if argv[0] == "-m":
            argv = ["-m", *argv[2:]]
        result = subprocess.run(
            [sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=root, timeout=120
        )
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert "usage:" in result.stdout, command
        assert result.stdout.strip().splitlines()[-1] == "LOADED []", command


def test_importing_the_package_still_registers_the_auto_classes_with_transformers():
    code = (
        "import mobilevideogpt, sys; assert 'torch' not in sys.modules\n"
        "import transformers\n"
        "print(type(transformers.AutoConfig.for_model('MobileVideoGPT_qwen')).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["MobileVideoGPTQwenConfig"]


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
