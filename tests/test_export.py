"""`fastsr export`: every registered generator (and a plugin's) to one ONNX graph with free batch, height and
width, which onnxruntime runs to the PyTorch model's output; float16 graphs; the check that refuses a graph
that differs; one-line errors for what a user can get wrong."""

import sys

import numpy as np
import pytest
import torch

from fastsr.cli import main
from fastsr.models import build_generator
from fastsr.weights import save_weights

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# Small configs of each registered generator, so each export takes a few seconds.
GENERATORS = {
    "srresnet": dict(name="srresnet", scale=4, res_blocks=2, channels=8),
    "srcnn": dict(name="srcnn", scale=4, kernels=[5, 3, 3], channels=[8, 4]),  # MATLAB bicubic inside
    "rrdbnet_x4": dict(name="rrdbnet", scale=4, blocks=1, features=8, growth=4),
    "rrdbnet_x2": dict(name="rrdbnet", scale=2, blocks=1, features=8, growth=4),  # pixel-unshuffled input
    "compact": dict(name="compact", scale=4, channels=8, convs=2),
    "span": dict(name="span", scale=4, channels=8),  # Conv3XCs export merged: plain 3x3 convs
    "swinir": dict(name="swinir", scale=4, embed_dim=12, depths=[2], num_heads=[2], window_size=4, img_size=8),
    "swinir_light": dict(name="swinir", scale=2, embed_dim=12, depths=[2], num_heads=[2], window_size=4, img_size=8,
                         upsampler="pixelshuffledirect"),
    "bicubic": dict(name="bicubic", scale=4),
}
# batch 2, odd sides, a 1x1 image (fastsr upscale takes those), none the size the exporter traced
SIZES = [(1, 16, 16), (2, 7, 11), (1, 1, 1), (1, 33, 6)]


def _weights(tmp_path, model, name="generator"):
    torch.manual_seed(0)
    for module in model.modules():  # BatchNorm statistics away from their initial 0 and 1
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{name}.safetensors"
    save_weights(model, path, model.config)
    return path


def _lr(batch, h, w, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((batch, 3, h, w), dtype=np.float32))


def _ort_matches_torch(path, model, atol, dtype=np.float32):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (lr,), (sr,) = session.get_inputs(), session.get_outputs()
    assert (lr.name, lr.shape, sr.name) == ("lr", ["batch", 3, "height", "width"], "sr")
    assert sr.shape == ["batch", 3, f"height*{model.scale}", f"width*{model.scale}"]
    for batch, h, w in SIZES:
        x = _lr(batch, h, w).numpy().astype(dtype)
        (out,) = session.run(None, {"lr": x})
        assert out.dtype == dtype
        with torch.no_grad():
            expected = model.eval()(torch.from_numpy(x).float()).numpy()
        assert out.shape == expected.shape == (batch, 3, h * model.scale, w * model.scale)
        np.testing.assert_allclose(out.astype(np.float32), expected, rtol=0, atol=atol)


@pytest.mark.parametrize("arch", GENERATORS)
def test_every_registered_generator_exports_and_runs_in_onnxruntime_as_in_torch(tmp_path, arch, capsys):
    config = dict(GENERATORS[arch])
    model = build_generator(config.pop("name"), **config)
    out = tmp_path / "out" / "model.onnx"  # a folder that is not there yet
    assert main(["export", str(_weights(tmp_path, model)), "-o", str(out)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    _ort_matches_torch(out, model, atol=1e-4)
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # one file, no temporary left
    assert [o.version for o in onnx.load(str(out)).opset_import if o.domain == ""] == [18]  # the default


def test_a_plugin_architecture_exports(tmp_path, plugin_cleanup):
    weights = tmp_path / "plain.safetensors"
    import plugin_arch  # registers plainnet, to build the weights the CLI then loads through --plugin

    model = build_generator("plainnet", scale=2, channels=4)
    save_weights(model, weights, model.config)
    assert main(["export", str(weights), "--plugin", "plugin_arch"]) == 0  # default output: beside the weights
    _ort_matches_torch(weights.with_suffix(".onnx"), model, atol=1e-4)


def test_fp16_is_a_float16_graph_with_float16_input_and_output(tmp_path):
    model = build_generator("srcnn", scale=2, kernels=[5, 3, 3], channels=[8, 4])
    out = tmp_path / "srcnn16.onnx"
    assert main(["export", str(_weights(tmp_path, model)), "-o", str(out), "--fp16"]) == 0
    graph = onnx.load(str(out)).graph
    convolutions = [i for i in graph.initializer if len(i.dims) == 4]
    assert len(convolutions) == 3 and all(i.data_type == onnx.TensorProto.FLOAT16 for i in convolutions)
    _ort_matches_torch(out, model, atol=2e-2, dtype=np.float16)


def test_opset_is_the_one_asked_for_or_refused(tmp_path, capsys):
    weights = _weights(tmp_path, build_generator("bicubic", scale=2))
    assert main(["export", str(weights), "-o", str(tmp_path / "b17.onnx"), "--opset", "17"]) == 0
    assert [o.version for o in onnx.load(str(tmp_path / "b17.onnx")).opset_import if o.domain == ""] == [17]
    capsys.readouterr()
    # below 17 the exporter's converter fails and keeps 18, warning only: a file claiming 13 would be wrong
    assert main(["export", str(weights), "-o", str(tmp_path / "b13.onnx"), "--opset", "13"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not convert its graph to opset 13" in err
    assert not (tmp_path / "b13.onnx").exists()


def test_a_graph_that_differs_from_the_model_is_refused_and_not_written(tmp_path, capsys, monkeypatch):
    import fastsr.export

    weights = _weights(tmp_path, build_generator("srcnn", scale=2, kernels=[3, 3, 3], channels=[4, 4]))
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    run = fastsr.export._run
    monkeypatch.setattr(fastsr.export, "_run", lambda *args: run(*args) + 1e-3)  # as a miscompiled graph would
    assert main(["export", str(weights), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs from the model by up to 0.001" in err and "tolerance 0.0001" in err
    assert out.read_bytes() == b"an earlier export"  # untouched, and no temporary beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.json", "generator.safetensors", "model.onnx"]
    assert main(["export", str(weights), "-o", str(out), "--tolerance", "2e-3"]) == 0


class _BranchesOnWidth(torch.nn.Module):
    """Computes differently for narrow images: the trace takes one branch and records a range for the width."""

    scale = 1

    def __init__(self, narrow: int):
        super().__init__()
        self.narrow = narrow

    def forward(self, lr):
        return lr * 2 if lr.shape[-1] <= self.narrow else lr


@pytest.mark.parametrize("narrow, message", [(16, "width >= 17"), (30, "width in [0, 30]")])
def test_a_graph_traced_for_some_sizes_only_is_refused(tmp_path, narrow, message):
    from fastsr.errors import ExportError
    from fastsr.export import export_onnx

    with pytest.raises(ExportError) as err:
        export_onnx(_BranchesOnWidth(narrow), tmp_path / "x.onnx", source="w.safetensors")
    assert str(err.value) == (f"w.safetensors: the exported graph would hold only for {message} (the model "
                              "branches on its input's size there); nothing was written")
    assert not (tmp_path / "x.onnx").exists()


def _refused(capsys, *args) -> str:
    assert main(["export", *map(str, args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, monkeypatch):
    assert "weights file not found" in _refused(capsys, tmp_path / "none.safetensors")
    model = build_generator("bicubic", scale=4)
    not_safetensors = tmp_path / "g.safetensors"
    save_weights(model, not_safetensors, model.config)
    not_safetensors.write_bytes(b"\x80\x04 a pickle, say")
    assert "not a readable safetensors file" in _refused(capsys, not_safetensors)
    pickle = tmp_path / "g.pth"
    pickle.write_bytes(b"\x80\x04")
    (tmp_path / "g.json").write_text('{"name": "bicubic", "scale": 4}')
    assert "g.pth: not a readable model file" in _refused(capsys, pickle, "-o", tmp_path / "g.onnx")
    save_weights(model, not_safetensors, model.config)
    assert "is an .onnx file" in _refused(capsys, not_safetensors, "-o", tmp_path / "g.png")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    err = _refused(capsys, not_safetensors)
    assert "onnxruntime is missing" in err and 'pip install "fastsr[onnx]"' in err
