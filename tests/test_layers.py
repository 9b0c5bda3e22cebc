"""The package's layers (README, "Layers"): each module imports only from its own layer or those below,
and no two modules import each other, directly or in a loop (function-level imports count too)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fastsr"

# Lowest first. A module belongs to the longest prefix listed.
LAYERS = [
    ["fastsr", "fastsr.ops", "fastsr.util", "fastsr.config", "fastsr.registry", "fastsr.metrics",
     "fastsr.pretrained"],  # foundations
    ["fastsr.data"],
    ["fastsr.models", "fastsr.losses", "fastsr.perceptual_metrics", "fastsr.infer", "fastsr.evaluate", "fastsr.export"],  # the parts
    ["fastsr.recipe"],
    ["fastsr.engine"],  # the run
    ["fastsr.cli", "fastsr.train", "fastsr.cluster"],  # entry points
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fastsr")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("fastsr"):
            # `from fastsr.losses import adversarial` imports the module fastsr.losses.adversarial
            found |= {f"{node.module}.{a.name}" if (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                      else node.module for a in node.names}
    return found


def _layer(module: str) -> int:
    best, layer = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), i
    assert layer is not None, f"{module} is in no layer: add it to LAYERS and to the README's layer table"
    return layer


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_from_a_layer_above_its_own():
    upward = sorted(f"{m} -> {i}" for m, imports in GRAPH.items() for i in imports
                    if _layer(i) > _layer(m))
    assert not upward, upward


def test_no_import_cycles():
    # a package importing its own submodules (its __init__ re-exporting them) is not a cycle
    edges = {m: {i for i in imports if i in GRAPH and not m == i.rsplit(".", 1)[0] and i != m}
             for m, imports in GRAPH.items()}
    done, stack = set(), []

    def visit(m):
        if m in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
        if m in done:
            return
        stack.append(m)
        for i in sorted(edges[m]):
            visit(i)
        stack.pop()
        done.add(m)

    for module in sorted(edges):
        visit(module)
