"""The package's shape: imports go one way. The library (everything outside charrnn/cli/)
never imports the CLI, typer or rich; no module imports the package above it; no cycles.
Read from the source with ast, so nothing is imported and nothing can hide behind a lazy
import inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "charrnn"
# `python -m charrnn` is the command line's second entry point, not library code.
ENTRY_POINTS = {"charrnn.__main__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _runtime_nodes(tree: ast.AST, typing_too: bool) -> list[ast.AST]:
    """The nodes of a module, without those under `if TYPE_CHECKING:` unless `typing_too`:
    an import for annotations only is never run, so it cannot take part in a cycle."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        typing_only = isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        todo.extend(node.orelse if typing_only and not typing_too else ast.iter_child_nodes(node))
    return nodes


def _imports(path: Path, typing_too: bool = True) -> set[str]:
    """Every module named by an import anywhere in the file, relative ones made absolute.
    `from pkg import name` counts `pkg` and `pkg.name` (which may be a submodule); `from .
    import name` counts only the name: it reads a sibling, not the package's own code."""
    name = _module_name(path)
    package = _package(name, path)
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in _runtime_nodes(tree, typing_too):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if node.module is not None:
                found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _modules() -> dict[str, set[str]]:
    """charrnn's modules and the charrnn modules each imports when it runs."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {
        name: {i for i in _imports(p, typing_too=False) if i in modules}
        for name, p in modules.items()
    }


def _relative_bases(path: Path) -> list[str]:
    """The module each `from .x import ...` in the file reads, made absolute."""
    name = _module_name(path)
    anchor = _package(name, path).split(".")
    return [
        ".".join([*anchor[: len(anchor) - node.level + 1], *([node.module] if node.module else [])])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level
    ]


def _all_imports() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}


def _is_cli(module: str) -> bool:
    return module == "charrnn.cli" or module.startswith("charrnn.cli.")


def test_the_library_never_imports_the_cli_typer_or_rich():
    offenders = {
        module: sorted(i for i in imports if i.split(".")[0] in ("typer", "rich") or _is_cli(i))
        for module, imports in _all_imports().items()
        if not _is_cli(module) and module not in ENTRY_POINTS
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_every_relative_import_names_a_module_that_exists():
    # An import inside a function runs only when it is called: a moved module's lazy
    # `from .launch import ...` would otherwise wait for the one test that reaches it.
    modules = {_module_name(p) for p in ROOT.rglob("*.py")}
    missing = {
        _module_name(p): sorted(set(_relative_bases(p)) - modules) for p in ROOT.rglob("*.py")
    }
    assert {m: b for m, b in missing.items() if b} == {}


def test_no_module_imports_a_package_above_it():
    # A submodule that imports its own package's __init__ runs in the middle of it.
    offenders = {
        module: sorted(i for i in imports if module.startswith(i + "."))
        for module, imports in _modules().items()
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(graph[module]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_there_is_no_import_cycle():
    assert _cycles(_modules()) == []


# The way data travels (DESIGN.md): each stage may use the ones before it, never one after.
PIPELINE = ["sources", "idcache", "corpus", "batches", "model", "training", "api"]


def _stage(module: str) -> int | None:
    name = module.removeprefix("charrnn.").split(".")[0]
    return PIPELINE.index(name) if name in PIPELINE else None


def test_imports_follow_the_way_data_travels():
    backwards = {
        module: sorted(i for i in imports if (_stage(i) or 0) > _stage(module))
        for module, imports in _modules().items()
        if _stage(module) is not None
    }
    assert {m: i for m, i in backwards.items() if i} == {}
    # The model is pure: no files, devices by name or training, only its config.
    assert _modules()["charrnn.model"] <= {"charrnn.config"}


def test_the_checker_sees_the_imports():
    """The tests above would pass on a broken parser that finds no imports at all."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    graph = _modules()
    assert "charrnn.cli.app" in graph["charrnn.cli.train"]
    assert "charrnn.errors" in graph["charrnn.cli.streams"]
    assert "charrnn.config" in graph["charrnn.api"]


def test_every_package_is_in_the_wheel():
    # setuptools takes the packages list literally: a package missing from it works from
    # the source tree (and under `pip install -e`) and is absent from a built wheel.
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT.parent / "pyproject.toml", "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    packages = {_module_name(p) for p in ROOT.rglob("__init__.py")}
    assert packages == listed


def test_sizes_a_newcomer_can_read():
    """The house issue's sizes: a function body fits on a screen (60 lines), a class in
    250, a module in 450. A signal, not the goal: split where the reader would."""
    too_big = []
    for path in sorted(ROOT.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        name = str(path.relative_to(ROOT.parent))
        if len(source.splitlines()) > 450:
            too_big.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.end_lineno - node.body[0].lineno + 1
                if body > 60:
                    too_big.append(f"{name}: {node.name}() body {body} lines")
            elif isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 250:
                too_big.append(f"{name}: class {node.name} {node.end_lineno - node.lineno + 1}")
    assert too_big == []
