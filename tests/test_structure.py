"""Guards of the code's structure (the developer guide's rules), checked on the source with ``ast``:
no import cycle between gcnet modules (function-level imports included), no function with over 60 lines of code,
atomic writes only through ``gcnet.fileio``, one image-extension list, and test modules that import
shared code from ``helpers`` rather than from each other. Each failure lists every offender."""

from __future__ import annotations

import ast
from collections import defaultdict
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "gcnet"
TESTS = REPO / "tests"
FILEIO = PACKAGE / "fileio.py"
MAX_FUNCTION_LINES = 60  # of code: the signature and the docstring do not count


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package's ``__init__`` under the package's name)."""
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _known(name: str) -> str | None:
    """The module ``name`` refers to: itself if it is one, else its nearest enclosing module."""
    modules = _modules()
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(gcnet module imported, line) for every import statement anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            # ``from gcnet.a import b`` depends on gcnet.a.b if that is a module, else on gcnet.a
            targets = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in _modules() else base_name
                       for a in node.names]
        else:
            continue
        for target in targets:
            if target == "gcnet" or target.startswith("gcnet."):
                dep = _known(target)
                if dep is not None and dep != module:
                    found.append((dep, node.lineno))
    return found


def _import_graph() -> dict[str, dict[str, list[int]]]:
    graph: dict[str, dict[str, list[int]]] = {m: defaultdict(list) for m in _modules()}
    for module, path in _modules().items():
        for dep, line in _imports(module, path):
            graph[module][dep].append(line)
    return graph


def _strongly_connected(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """Tarjan's algorithm; components of more than one module are the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _shortest_cycle(graph: dict[str, dict[str, list[int]]], start: str, members: set[str]) -> list[str]:
    """A shortest path start -> ... -> start inside one strongly connected component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w not in members or w in previous:
                    continue
                previous[w] = v
                if w == start:
                    path = [start]
                    while path[-1] != start or len(path) == 1:
                        path.append(previous[path[-1]])
                    return path[::-1]
                following.append(w)
        frontier = following
    return [start]


def test_no_import_cycles():
    graph = _import_graph()
    report = []
    for component in _strongly_connected(graph):
        members = set(component)
        report.append("cycle: " + " -> ".join(_shortest_cycle(graph, component[0], members)))
        for v in component:
            for w, lines in sorted(graph[v].items()):
                if w in members:
                    report.append(f"  {_rel(_modules()[v])}:{','.join(map(str, sorted(set(lines))))} imports {w}")
    assert not report, "import cycles between gcnet modules (lazy imports count too):\n" + "\n".join(report)


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end."""
    body = fn.body[1:] if len(fn.body) > 1 and isinstance(fn.body[0], ast.Expr) and isinstance(
        fn.body[0].value, ast.Constant) and isinstance(fn.body[0].value.value, str) else fn.body
    return fn.end_lineno - body[0].lineno + 1


def test_no_function_over_60_lines_of_code():
    """Argparse ``register`` functions, flag declarations one after another, are exempt."""
    offenders = []
    for path in _modules().values():
        for fn in _functions(_tree(path)):
            length = _code_lines(fn)
            if length > MAX_FUNCTION_LINES and fn.name != "register":
                offenders.append((length, f"{_rel(path)}:{fn.lineno} {fn.name}() has {length} lines of code"))
    offenders.sort(reverse=True)
    assert not offenders, (f"functions over {MAX_FUNCTION_LINES} lines (split them):\n"
                           + "\n".join(text for _, text in offenders))


def _is_rename(call: ast.Call) -> bool:
    """``os.replace/os.rename(a, b)`` or ``path.replace/path.rename(target)`` (``str.replace`` takes two)."""
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in ("replace", "rename"):
        return False
    if isinstance(func.value, ast.Name) and func.value.id == "os":
        return True
    return len(call.args) == 1 and not call.keywords


def test_atomic_writes_only_through_fileio():
    calls = sorted((_rel(path), node.lineno, ast.unparse(node.func))
                   for path in _modules().values() if path != FILEIO
                   for node in ast.walk(_tree(path)) if isinstance(node, ast.Call) and _is_rename(node))
    offenders = [f"{path}:{line} {func}(...)" for path, line, func in calls]
    assert not offenders, ("temp file + rename written by hand; use gcnet.fileio.atomic_path / atomic_write:\n"
                           + "\n".join(offenders))


def test_one_image_extension_list():
    offenders = []
    for path in _modules().values():
        if path == FILEIO:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.Tuple, ast.Set, ast.List)):
                strings = {e.value.lower() for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if {".png", ".jpg"} <= strings:
                    offenders.append(f"{_rel(path)}:{node.lineno} {ast.unparse(node)[:80]}")
    assert not offenders, ("image extensions listed outside gcnet/fileio.py; use fileio.IMAGE_EXTENSIONS / "
                           "is_image_file:\n" + "\n".join(offenders))


def test_test_modules_do_not_import_each_other():
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n == "conftest" or n.split(".")[0].startswith("test_")]
            offenders += [f"{_rel(path)}:{node.lineno} imports {n}" for n in bad]
    assert not offenders, "shared test code belongs in tests/helpers.py (or a conftest fixture):\n" + "\n".join(offenders)
