"""The package's layers (README, "Layers"): each module imports only from its own layer or those below,
and no two modules import each other, directly or in a loop (function-level imports count too)."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fastsr"

# Lowest first. A module belongs to the longest prefix listed.
LAYERS = [
    ["fastsr", "fastsr.errors", "fastsr.ops", "fastsr.util", "fastsr.config", "fastsr.registry", "fastsr.metrics",
     "fastsr.pretrained"],  # foundations
    ["fastsr.data"],
    ["fastsr.models", "fastsr.losses", "fastsr.perceptual_metrics", "fastsr.infer", "fastsr.evaluate", "fastsr.export",
     "fastsr.weights", "fastsr.grid", "fastsr.model_files", "fastsr.report"],  # the parts
    ["fastsr.recipe"],
    ["fastsr.engine"],  # the run
    ["fastsr.cli", "fastsr.__main__", "fastsr.train", "fastsr.cluster"],  # entry points
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


def test_errors_import_nothing():
    """fastsr.errors is below every layer: any module may raise its errors, the CLI catch them cheaply."""
    assert GRAPH["fastsr.errors"] == set()
    assert not [n for n in ast.walk(ast.parse((PACKAGE / "errors.py").read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_eval_upscale_and_export_do_not_import_the_training_engine(tmp_path):
    """The commands that use weights read them through fastsr.weights: none of them imports fastsr.engine
    (checked in a fresh interpreter, after each command ran)."""
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from PIL import Image
        from fastsr.cli import main
        from fastsr.models import build_generator
        from fastsr.weights import save_weights

        root = {str(tmp_path)!r}
        model = build_generator("srcnn", scale=2, kernels=[3, 1, 3], channels=[4, 4])
        save_weights(model, root + "/g.safetensors", model.config)
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(root + "/a.png")
        for argv in (["eval", "--model", root + "/g.safetensors", "--data", root + "/a.png", "--scale", "2"],
                     ["upscale", root + "/a.png", "--weights", root + "/g.safetensors", "-o", root + "/out"],
                     ["export", root + "/g.safetensors", "-o", root + "/g.onnx"]):
            assert main(argv) == 0, argv
            engine = sorted(m for m in sys.modules if m.startswith("fastsr.engine"))
            assert not engine, (argv[0], engine)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
