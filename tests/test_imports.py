"""The package's import graph: no cycles between neuroldm modules, and function-level imports only where they pay.

The graph is read from the source with `ast` (every import, at module level or inside a function), so a cycle that
function-level imports hide at run time still fails here.
"""

import ast
from pathlib import Path

import pytest

import neuroldm

PACKAGE = Path(neuroldm.__file__).parent

# Function-level imports are allowed only where they keep `neuroldm --help` fast, each for the reason given; any
# other late import must say on its line which optional dependency it keeps optional.
LAZY_ALLOWED = {
    "neuroldm.cli": "each command imports its stage's modules (torch, MONAI, Captum) when it runs",
    "neuroldm.io": "safetensors.torch imports torch, and config (hence the CLI) imports io for atomic writes",
    "neuroldm.diffusion.samplers": "config validates sampler names against the table; diffusers loads torch",
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        rel = f.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = f
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the neuroldm modules it imports (a package import counts as its ``__init__``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if is_package else name.split(".")[:-1]
                    parts = parts[:len(parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] == "neuroldm":
                    resolved = _resolve(target, modules)
                    if resolved and resolved != name:
                        graph[name].add(resolved)
        # importing neuroldm.a.b runs neuroldm/a/__init__ first (unless the importer lives in neuroldm.a itself)
        for target in list(graph[name]):
            parts = target.split(".")
            parents = {".".join(parts[:i]) for i in range(2, len(parts))}
            graph[name].update(p for p in parents if p in modules and not name.startswith(p + "."))
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan 1972), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_neuroldm_modules():
    graph = import_graph()
    assert graph["neuroldm.pipeline.stages"], "the graph reader found no imports: it is broken"
    assert "neuroldm.report" in graph["neuroldm.pipeline.stages"]
    assert find_cycles(graph) == []


def test_the_report_does_not_import_the_pipeline():
    """The report reads the stage order from the run (neuroldm.runs), so the pipeline can import the report."""
    graph = import_graph()
    report = [m for m in graph if m == "neuroldm.report" or m.startswith("neuroldm.report.")]
    assert not [(m, t) for m in report for t in graph[m] if t.startswith("neuroldm.pipeline")]


def _function_level_imports(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines += [sub.lineno for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom))]
    return sorted(set(lines))


@pytest.mark.parametrize("module", sorted(set(_modules()) - set(LAZY_ALLOWED)))
def test_function_level_imports_only_where_they_pay(module):
    path = _modules()[module]
    lines = _function_level_imports(path)
    # an optional heavy dependency may be imported late; its line must say why
    unexplained = [n for n in lines if "optional" not in path.read_text().splitlines()[n - 1]]
    assert not unexplained, f"{path.name}: function-level imports at lines {unexplained} (move them to the top, " \
                            f"or say on the line why a late import keeps an optional dependency optional)"
