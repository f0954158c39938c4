"""The package's shape, read from its source: framework boundaries, no import cycles, small modules.

Every import statement of every module is read with ast, top-level and
function-level alike (a lazy import is still a dependency).
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mlp_exp"
COMMANDS = {"mlp_exp.search", "mlp_exp.evaluate", "mlp_exp.report", "mlp_exp.ui"}
FRAMEWORK_HOMES = {"optuna": "mlp_exp.study", "mlflow": "mlp_exp.tracking"}
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # `from . import x` / `from .pkg import mod` may name submodules
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
IMPORTS = {name: imports_of(path) for name, path in MODULES.items()}


def internal_edges(name: str) -> set[str]:
    """The package modules `name` depends on, a package standing for its __init__; not its own ancestors
    (a package's __init__ importing its submodules is not a cycle)."""
    ancestors = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
    return {target for target in IMPORTS[name] if target in MODULES} - ancestors - {name}


def test_the_reader_sees_every_kind_of_import():
    """The rules below are only as good as the import reader: check it on this package's own forms."""
    assert "optuna" in IMPORTS["mlp_exp.study.storage"]                       # import optuna
    assert "mlp_exp.tracking.names" in IMPORTS["mlp_exp.study.settings"]      # from ..tracking.names import
    assert "mlp_exp.diagnosis" in IMPORTS["mlp_exp.study.objective"]          # from .. import diagnosis
    assert "mlflow" in IMPORTS["mlp_exp.tracking.store"]                      # import inside a function


@pytest.mark.parametrize("framework", sorted(FRAMEWORK_HOMES))
def test_each_framework_is_imported_only_in_its_package(framework):
    home = FRAMEWORK_HOMES[framework]
    strays = sorted(name for name, imported in IMPORTS.items()
                    if any(i == framework or i.startswith(framework + ".") for i in imported)
                    and not (name == home or name.startswith(home + ".")))
    assert strays == [], f"{framework} imported outside {home}/: {strays}"


def test_the_numerical_core_imports_no_framework_and_no_framework_package():
    """The math, data and training modules stand alone: nothing they reach, even indirectly,
    is Optuna, MLflow, the study or tracking packages, or a command."""
    core = {name for name, path in MODULES.items() if name.count(".") == 1 and path.name != "__init__.py"
            and name not in COMMANDS | {"mlp_exp.cli"}}
    assert {"mlp_exp.net", "mlp_exp.trainer", "mlp_exp.data", "mlp_exp.kernels"} <= core
    forbidden = set(FRAMEWORK_HOMES.values()) | COMMANDS
    for name in sorted(core):
        seen, todo = set(), [name]
        while todo:
            current = todo.pop()
            for target in internal_edges(current) - seen:
                seen.add(target)
                todo.append(target)
        reached = sorted(t for t in seen if any(t == f or t.startswith(f + ".") for f in forbidden))
        assert reached == [], f"{name} depends on {reached}"
        frameworks = sorted(i for i in IMPORTS[name] if i.split(".")[0] in FRAMEWORK_HOMES)
        assert frameworks == [], f"{name} imports {frameworks}"


def test_library_modules_never_import_a_command():
    offenders = sorted((name, sorted(IMPORTS[name] & COMMANDS)) for name in MODULES
                       if name not in COMMANDS and IMPORTS[name] & COMMANDS)
    assert offenders == []


def test_there_is_no_import_cycle():
    state, path = {}, []

    def visit(name):
        state[name] = "open"
        path.append(name)
        for target in sorted(internal_edges(name)):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = "done"

    for name in sorted(MODULES):
        if name not in state:
            visit(name)


def test_no_module_holds_more_than_a_few_hundred_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines (two concerns?): {long}"
