"""The package's shape, read from its source (ast), so it stays a shape:
- the import graph of `alad`, imports inside functions included, has no cycle;
- every import points down or sideways in LAYERS (README "How it works" draws them);
- no function in alad/ is over 80 lines; no private name is imported across modules.
Imports under `if TYPE_CHECKING:` are type hints only and never run: they are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "alad"

# Bottom first. A module may import modules of its own layer or of lower ones, never higher.
LAYERS: list[tuple[str, ...]] = [
    # foundations: no knowledge of the method
    ("errors", "atomic", "provenance", "timing", "runtime", "stopping"),
    # what every piece is built from: data formats, metrics, models, the adapter, heads, modes
    # (hf_config: the transformers config of an exported model, no modeling code; losses: the
    # distillation loss on logits)
    ("data", "metrics", "models", "adapter", "heads", "modes", "hf_config", "losses"),
    # serving without torch: raw text in, tags or answers out; the ONNX predictor
    ("text_predictor", "onnx_predict"),
    ("tasks",),  # a task: its reader, encoding, loss and metric
    ("config",),  # validated against the tasks and modes below it
    ("results",),  # the records alad reads back (cell results, latency): schemas, the cell key
    # saved models (and as transformers models), frozen outputs, registered versions as files,
    # the teacher of phases 1-2, the distillation teacher of phase 3 and its cached logits
    ("checkpoint", "cache", "aligned_model", "hf", "inference", "store", "teacher", "distill"),
    # the method's phases; using a saved model; exporting it; linear probes of encoders' layers
    ("phases", "evaluation", "predict", "export", "plots", "probe"),
    # MLflow runs, the registered pyfunc and ONNX flavor, the model registry; benchmarks
    ("tracking", "pyfunc", "onnx_flavor", "registry", "bench"),
    ("jobs", "stages", "sweep", "report"),  # each workflow once; the pipeline; Table 1
    ("cli",),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["alad", *parts])] = path
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the alad modules it imports (at module level or inside functions)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target not in (name, "alad"):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    top = module.split(".")[1] if module != "alad" else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: in no layer of tests/test_architecture.py LAYERS; add it")


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_every_import_points_down_or_sideways():
    graph = import_graph()
    up = sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        if a != "alad"
        for b in targets
        if layer(b) > layer(a)
    )
    assert up == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_imports_inside_functions_count(tmp_path, monkeypatch):
    pkg = tmp_path / "alad"
    pkg.mkdir()
    (pkg / "low.py").write_text("def f():\n    from alad import high\n")
    (pkg / "high.py").write_text("from typing import TYPE_CHECKING\nimport alad.low\n"
                                 "if TYPE_CHECKING:\n    from alad import types\n")  # fmt: skip
    (pkg / "types.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    graph = import_graph()
    assert graph["alad.low"] == {"alad.high"} and graph["alad.high"] == {"alad.low"}
    assert cycles(graph) == [["alad.high", "alad.low"]]


def _functions():
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield f"{name}.{node.name}", node.end_lineno - node.lineno + 1


def test_no_function_is_over_80_lines():
    assert [f"{name}: {n} lines" for name, n in _functions() if n > 80] == []


@pytest.mark.parametrize("folder", ["alad", "flows", "experiments"])
def test_no_private_name_is_imported_from_another_module(folder):
    root = PACKAGE.parent / folder
    private = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("alad"):
                private += [
                    f"{path.relative_to(root.parent)}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert private == []
