"""The import structure holds: no cycles, the core never imports the service, and imports run down the layers.

Imports are read from the source (every `import` statement, including those inside functions, since a lazy import
is still a dependency). A module belongs to the layer of the longest prefix listed below; every module must belong
to one, so a new module has to be placed on purpose. Inside one layer, imports may run either way, as long as they
form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("erasure_core", "service")

# Top to bottom: a module may import its own layer (without cycles) and the layers below it, never one above.
LAYERS: dict[str, tuple[tuple[str, ...], ...]] = {
    "erasure_core": (
        ("erasure_core.cli",),  # core subcommands
        ("erasure_core.reports",),  # erasure reports: judges, prompt sets, the white-box attack, the grid
        ("erasure_core.models",),  # the model table: which engine, family, loader and demo world
        ("erasure_core.engines",),  # a loaded pipeline + its erasures + generation
        ("erasure_core.methods",),  # erasure methods behind one base class and a registry
        ("erasure_core.worlds",),  # demo worlds: data, judges, training, assembly, evaluation
        ("erasure_core.adapters", "erasure_core.lora_import"),  # hooks that apply erasure sets; foreign LoRAs
        ("erasure_core.families",),  # per-family facts: text layers, LoRA targets, encoding, training ops
        ("erasure_core.pipelines",),  # loading pipelines; the Open-Sora port
        (
            "erasure_core.concepts",
            "erasure_core.expansion",
            "erasure_core.lexicon",
            "erasure_core.memo",
            "erasure_core.artifacts",
            "erasure_core.checkpoints",
            "erasure_core.media",
            "erasure_core.paths",
        ),
        ("erasure_core.errors", "erasure_core.version", "erasure_core"),
    ),
    "service": (
        ("service.cli", "service.openapi"),  # entry points
        ("service.main",),  # the app factory
        ("service.api",),  # routers, dependencies, the error table, middleware
        ("service.runtime",),  # request logic: erasures, generation, scheduling, adapters, tenancy
        ("service.jobs",),  # job execution, runners, the queue, the worker
        ("service.store", "service.store_redis", "service.store_reports", "service.schemas", "service.pipelines"),
        ("service.settings", "service.errors", "service.metrics", "service"),
    ),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_imports(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports (a `from X import Y` names X.Y when Y is a module)."""
    files = {module_name(p): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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


def layer_of(module: str) -> tuple[str, int] | None:
    best: tuple[int, str, int] | None = None
    for package, layers in LAYERS.items():
        for depth, prefixes in enumerate(layers):
            for prefix in prefixes:
                # A package's own name places its __init__ only, not everything under it.
                if module == prefix or (prefix not in PACKAGES and module.startswith(prefix + ".")):
                    if best is None or len(prefix) > best[0]:
                        best = (len(prefix), package, depth)
    return None if best is None else (best[1], best[2])


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every broken rule, as one line each: unplaced modules, core -> service imports, imports against the layers."""
    found = [f"{m} is in no layer of tests/test_layering.py" for m in sorted(graph) if layer_of(m) is None]
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            if source.startswith("erasure_core") and target.startswith("service"):
                found.append(f"{source} -> {target}: the core imports the service")
                continue
            a, b = layer_of(source), layer_of(target)
            if a and b and a[0] == b[0] and b[1] < a[1]:
                found.append(f"{source} -> {target}: runs up from layer {a[1]} to layer {b[1]} of {a[0]}")
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return found


def test_the_imports_follow_the_layers() -> None:
    graph = read_imports()
    assert len(graph) > 80, "the import reader found too few modules"
    assert violations(graph) == []


def test_the_checker_catches_each_kind_of_break() -> None:
    graph = read_imports()

    def broken(source: str, target: str) -> list[str]:
        changed = {k: set(v) for k, v in graph.items()}
        changed[source].add(target)
        return violations(changed)

    assert any("imports the service" in v for v in broken("erasure_core.errors", "service.main"))
    assert any("runs up" in v for v in broken("erasure_core.pipelines.loading", "erasure_core.worlds.flux_world"))
    assert any("runs up" in v for v in broken("service.store", "service.runtime.tenancy"))
    assert any("import cycle" in v for v in broken("erasure_core.families.flux_training", "erasure_core.families.flux"))
    assert any("in no layer" in v for v in violations({**graph, "erasure_core.stray": set()}))
