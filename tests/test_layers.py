"""The layers of docs/architecture.md hold: no import statement (module level or inside a function) crosses one
the wrong way."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: source folder -> the layer its modules belong to (envgym/ is the core; the CLI sits on top of everything)
FOLDERS = {"envgym": "core", "envs": "envs", "trainers": "trainers", "tools": "tools", "containers": "containers"}
#: layer -> the layers it must not import
FORBIDDEN = {"core": {"envs", "trainers"}, "tools": {"envs", "trainers"}, "envs": {"trainers"},
             "trainers": {"envs"}, "containers": {"envs", "trainers"}}
TOP = {ROOT / "envgym" / "cli.py", ROOT / "envgym" / "__main__.py"}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "envgym":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in FOLDERS.values() else "core"


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in `path`: statements at any depth and `import_module("...")` calls."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]  # importlib.import_module("envgym.envs") imports by name all the same
        else:
            continue
        found += [(node.lineno, name) for name in names]
    return found


def crossings(path: Path, layer: str) -> list[str]:
    return [f"{path}:{line} imports {name}" for line, name in imports(path) if layer_of(name) in FORBIDDEN[layer]]


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_no_import_crosses_a_layer_the_wrong_way(folder):
    files = [p for p in sorted((ROOT / folder).rglob("*.py")) if p not in TOP]
    assert files
    found = [line for path in files for line in crossings(path, FOLDERS[folder])]
    assert not found, "imports against docs/architecture.md's layers:\n" + "\n".join(found)


def test_the_checker_sees_a_crossing(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from envgym.trainers import Trainer\n    import envgym.envs.games\n"
                      "from envgym.trajectory import Turn\nimportlib.import_module('envgym.trainers.sft')\n")
    assert len(crossings(module, "core")) == 3
    assert [line.split(" imports ")[1] for line in crossings(module, "trainers")] == ["envgym.envs.games"]


def test_only_the_cli_and_the_package_import_the_trainer_module():
    """The rollout worker builds its policy, pool and engine from trainers/factories.py, as the trainer does: no
    module the trainer starts imports the trainer back."""
    allowed = {ROOT / "trainers" / "__init__.py", ROOT / "trainers" / "cli.py"}
    found = [f"{path}:{line} imports {name}" for folder in FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))
             if path not in allowed for line, name in imports(path) if name == "envgym.trainers.trainer"]
    assert not found, "\n".join(found)
