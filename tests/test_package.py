"""The package: its constants, the library/application boundary (the model knows nothing of the rest), and the
imports between its modules (no circle; the bottom layer imports nothing above it)."""

import ast
import subprocess
import sys
from pathlib import Path

import mobilevideogpt
from mobilevideogpt import constants

PACKAGE = Path(mobilevideogpt.__file__).parent


def test_version_and_pipeline_constants():
    assert mobilevideogpt.__version__
    # The published pipeline selects k frames from each chunk and feeds them to VideoMamba as one clip.
    assert constants.NUM_FRAMES // constants.CHUNK_SIZE * constants.NUM_SELECT_K_FRAMES_IN_CHUNK == 8


def test_importing_the_model_loads_no_training_data_evaluation_or_application_code():
    code = (
        "import sys, mobilevideogpt.model, mobilevideogpt.model.assemble, mobilevideogpt.chat\n"
        "print(sorted(m for m in sys.modules if m.startswith('mobilevideogpt')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for forbidden in ("mobilevideogpt.train", "mobilevideogpt.evaluation", "mobilevideogpt.cli", "mobilevideogpt.qved"):
        assert f"'{forbidden}" not in loaded, forbidden
    model_only = subprocess.run(
        [sys.executable, "-c", "import sys, mobilevideogpt.model; print(sorted(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "'mobilevideogpt.data" not in model_only


def _imports_and_calls(path: Path) -> tuple[set[str], set[str]]:
    """Modules a file imports (relative ones resolved against the package) and the names it calls."""
    tree = ast.parse(path.read_text())
    package = ".".join(("mobilevideogpt", *path.relative_to(PACKAGE).parent.parts))
    imports, calls = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            imports |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            calls.add(node.func.id)
    return imports, calls


def test_the_library_knows_nothing_of_qved_argparse_or_printing():
    applications = {"cli", "qved", "serve"}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in applications or relative.name == "__main__.py":
            continue
        imports, calls = _imports_and_calls(path)
        assert "argparse" not in imports and "print" not in calls, relative
        assert not any(name.startswith(("mobilevideogpt.qved", "mobilevideogpt.cli")) for name in imports), relative


def test_no_model_module_imports_training_data_evaluation_or_applications():
    forbidden = tuple(f"mobilevideogpt.{name}" for name in ("train", "data", "evaluation", "cli", "qved", "chat"))
    for path in sorted((PACKAGE / "model").glob("*.py")):
        imports, _ = _imports_and_calls(path)
        assert not any(name.startswith(forbidden) for name in imports), (path.name, sorted(imports))


def _module_names() -> dict[str, Path]:
    """Dotted name → file of every module of the package (a package by its `__init__.py`)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("mobilevideogpt", *path.relative_to(PACKAGE).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _module_imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """The package's modules each module imports, at module level or inside a function: `from . import x` is
    module x, `from .x import name` is module x."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                module = ".".join(part for part in (base, node.module or "") if part)
                found |= {f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names}
        graph[name] = {module for module in found if module in modules and module != name}
    return graph


def test_no_two_modules_import_each_other_even_through_others():
    graph = _module_imports(_module_names())
    done: set[str] = set()

    def circle_from(module: str, trail: list[str]) -> list[str] | None:
        for imported in sorted(graph[module]):
            if imported in trail:
                return [*trail[trail.index(imported):], imported]
            if imported not in done:
                found = circle_from(imported, [*trail, imported])
                if found:
                    return found
        done.add(module)
        return None

    for module in sorted(graph):
        assert circle_from(module, [module]) is None


def test_the_bottom_layer_imports_nothing_above_it():
    """Chat template and record parser, run folders, errors, constants, where and how a model runs (runtime and the
    CPU engine): what data, model and training stand on."""
    modules = _module_names()
    bottom = {f"mobilevideogpt.{name}" for name in ("processing", "checkpoints", "errors", "constants", "tokenizer",
                                                    "runtime")}  # fmt: skip
    bottom |= {name for name in modules if name.startswith("mobilevideogpt.engine")}
    assert "mobilevideogpt.engine.lowp" in bottom
    graph = _module_imports(modules)
    for module in sorted(bottom):
        assert graph[module] <= bottom, (module, sorted(graph[module] - bottom))
