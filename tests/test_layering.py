"""Imports inside zeroseg.data and zeroseg.text go one way: every module imports alone, and there is no cycle.

text/clip.py reads checkpoints through zeroseg.weights.clip (and its readers, safe_pickle): those low modules of
weights/ are in the graph too, and may import nothing outside it (weights/ also holds importers that need the
methods, which import text/).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import zeroseg

SRC = Path(zeroseg.__file__).parent
PACKAGES = ("data", "text")
#: Modules outside data/ and text/ that text/ imports; they must stay below it.
LOW = ("weights/clip.py", "weights/readers.py", "safe_pickle.py")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    files = [p for pkg in PACKAGES for p in (SRC / pkg).rglob("*.py")]
    files += [SRC / "config.py", SRC / "errors.py"]  # config imports data.synthetic: a cycle could pass through it
    files += [SRC / name for name in LOW]
    return {_module_name(p): p for p in files}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path, known: set[str]) -> set[str]:
    """zeroseg modules imported anywhere in ``path`` (function bodies too), except under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from zeroseg.data import voc`` imports the submodule zeroseg.data.voc.
            found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in known}


def _assert_acyclic(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])


def test_no_import_cycle_in_data_and_text() -> None:
    modules = _modules()
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    assert "zeroseg.data.readers" in graph["zeroseg.data.zero_shot"]  # the graph was really read
    _assert_acyclic(graph)

    # Between packages too: data/ -> config -> data/synthetic would be a circle of layers, so data/ takes the
    # DataConfig only as a type.
    def top(name: str) -> str:
        return ".".join(name.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for name, deps in graph.items():
        packages.setdefault(top(name), set()).update(top(d) for d in deps if top(d) != top(name))
    _assert_acyclic(packages)


def _all_zeroseg_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    return {m for m in names if m == "zeroseg" or m.startswith("zeroseg.")}


def test_low_weights_modules_import_only_low_layers() -> None:
    modules = _modules()
    assert "zeroseg.weights.clip" in _imports(modules["zeroseg.text.clip"], set(modules))
    allowed = set(modules) | {"zeroseg", "zeroseg.files"}
    for name in LOW:
        path = SRC / name
        outside = _all_zeroseg_imports(path) - allowed
        assert not outside, f"{name} imports {sorted(outside)}, above text/"


def test_every_data_and_text_module_imports_on_its_own() -> None:
    # One fresh interpreter; before each module every zeroseg module is forgotten, so each import starts cold.
    names = sorted(n for n in _modules() if n.startswith(("zeroseg.data", "zeroseg.text", "zeroseg.weights")))
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for m in [m for m in sys.modules if m == 'zeroseg' or m.startswith('zeroseg.')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(" + repr(names) + "))\n"
    )
    env_path = str(SRC.parent)
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {env_path!r})\n" + script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"ok {len(names)}"
