"""The arrows point one way: scripts (and bench_suites/) -> utils/cli.py -> library modules, and
inside the library, floor by floor: the engine, search and model modules -> utils/loaders/ ->
the base (files, images, videos, prompts, metrics...). No library module imports the CLI layer
or a script, no loader imports above its floor, no base module above its own, and the library
has no import cycle (at module level or inside functions)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {p.stem for p in REPO.glob("*.py")} | {f"bench_suites.{p.stem}" for p in REPO.glob("bench_suites/*.py")}
BASE = {f"utils.{name}" for name in ("errors", "io", "images", "video", "prompts", "loops", "amp", "machine", "metrics",
                                     "retrieval", "safe_pickle", "training", "ilias_store", "synthetic", "vis", "dist")}


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
    return {name for name in found if name.startswith(("utils.", "bench_suites")) or name in SCRIPTS}


LIBRARY = {module_name(p): imports(p) for p in (REPO / "utils").rglob("*.py") if p.name != "cli.py"}


def test_library_modules_never_import_the_cli_layer_or_a_script():
    offenders = {module: sorted(i for i in found if i == "utils.cli" or i in SCRIPTS)
                 for module, found in LIBRARY.items()}
    assert not {m: o for m, o in offenders.items() if o}


def floor(module: str) -> int:
    """0: the base; 1: the loaders; 2: the rest of the library."""
    return 0 if module in BASE else 1 if module.startswith("utils.loaders.") else 2


def test_no_library_module_imports_above_its_floor():
    modules = {m for m in LIBRARY if m != "utils.loaders" and not m.endswith("__init__")}
    offenders = {m: sorted(i for i in LIBRARY[m] if i in modules and floor(i) > floor(m)) for m in modules}
    assert not {m: o for m, o in offenders.items() if o}
    assert BASE <= set(LIBRARY) and any(floor(m) == 1 for m in modules)  # the floors name real modules


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
