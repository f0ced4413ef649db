"""The arrows point one way: scripts -> utils/cli.py -> library modules. No library module imports
the CLI layer or a script, and the library has no import cycle (at module level or inside
functions)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {p.stem for p in REPO.glob("*.py")}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def imports(path: Path) -> set[str]:
    """The project modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("utils.") or name in SCRIPTS}


LIBRARY = {module_name(p): imports(p) for p in (REPO / "utils").rglob("*.py") if p.name != "cli.py"}


def test_library_modules_never_import_the_cli_layer_or_a_script():
    offenders = {module: sorted(i for i in found if i == "utils.cli" or i in SCRIPTS)
                 for module, found in LIBRARY.items()}
    assert not {m: o for m, o in offenders.items() if o}


def test_the_library_has_no_import_cycle():
    graph = {module: {i for i in found if i in LIBRARY} for module, found in LIBRARY.items()}
    state = {}

    def visit(module, path):
        if state.get(module) == "open":
            raise AssertionError(" -> ".join(path + [module]))
        if state.get(module) == "done":
            return
        state[module] = "open"
        for imported in sorted(graph[module]):
            visit(imported, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
    assert "utils.pair_scoring" in graph and "utils.dist" in graph  # the walk saw the library
