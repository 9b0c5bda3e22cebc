"""Model files from elsewhere (`fastsr.model_files`): spandrel's own architectures, built here with random weights
and saved as .pth / .pt / .ckpt / .safetensors (nothing downloaded), evaluated, upscaled, exported and fine-tuned
as fastsr's; pickles that would run code, damaged files and models fastsr cannot run refused in one line, with
nothing written."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fastsr.cli import main
from fastsr.model_files import SpandrelModel, open_generator, start_from
from fastsr.models import build_generator
from fastsr.models.compact import Compact
from fastsr.models.rrdbnet import RRDBNet
from fastsr.weights import save_weights

spandrel = pytest.importorskip("spandrel")
from spandrel.architectures.Compact import Compact as TheirCompact  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN as TheirESRGAN  # noqa: E402
from spandrel.architectures.SwiftSRGAN import SwiftSRGAN as TheirSwiftSRGAN  # noqa: E402


def _randomised(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """`net` with small random weights, so that outputs are images and differences mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


def _save(net: torch.nn.Module, path, wrap: str | None = None):
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({wrap: state} if wrap else state, path)
    return path


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsr: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("scale", [2, 4])
def test_an_old_arch_esrgan_pth_becomes_fastsrs_rrdbnet_with_spandrels_output(tmp_path, scale):
    """spandrel's ESRGAN keeps the old key layout (`model.0.weight`, ...); fastsr maps it onto its RRDBNet (BasicSR's
    names) and gives the network's output."""
    # BasicSR's x2 unshuffles the input by 2 and upsamples by 4, as spandrel builds it
    unshuffled = {"shuffle_factor": 2, "in_nc": 12} if scale == 2 else {}
    theirs = _randomised(TheirESRGAN(num_filters=8, num_blocks=2, scale=4, **unshuffled))
    path = _save(theirs, tmp_path / "old.pth")
    ours = open_generator(path)
    assert isinstance(ours, RRDBNet) and ours.scale == scale and not ours.training
    assert ours.config == {"name": "rrdbnet", "scale": scale, "blocks": 2, "features": 8, "growth": 32,
                           "residual_scale": 0.2}
    x = torch.rand(1, 3, 14, 10)
    with torch.no_grad():
        assert (ours(x) - spandrel.ModelLoader().load_from_file(path).model(x)).abs().max() < 1e-5


@pytest.mark.parametrize("suffix, wrap", [(".pth", "params_ema"), (".ckpt", "params"), (".safetensors", None)])
def test_a_compact_file_in_any_container_becomes_fastsrs_compact(tmp_path, suffix, wrap):
    theirs = _randomised(TheirCompact(num_feat=8, num_conv=2, upscale=4))
    path = _save(theirs, tmp_path / f"compact{suffix}", wrap)  # no .json beside it: not fastsr's own
    ours = open_generator(path)
    assert isinstance(ours, Compact) and ours.config["channels"] == 8 and ours.config["convs"] == 2
    x = torch.rand(2, 3, 9, 13)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() < 1e-5


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")  # making the file, as users did
def test_a_torchscript_pt_opens_as_its_module(tmp_path):
    """A .pt is TorchScript or a torch.save pickle; spandrel reads the scripted module's weights."""
    theirs = _randomised(TheirCompact(num_feat=8, num_conv=2, upscale=4)).eval()
    path = tmp_path / "compact.pt"
    torch.jit.save(torch.jit.trace(theirs, torch.rand(1, 3, 8, 8)), path)
    ours = open_generator(path)
    assert isinstance(ours, Compact)
    x = torch.rand(1, 3, 9, 13)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() < 1e-5


def _swift(tmp_path):
    """An architecture fastsr does not have (SwiftSRGAN), saved as a .pt state dict."""
    net = TheirSwiftSRGAN(in_channels=3, num_channels=8, num_blocks=1, upscale_factor=4)
    for m in net.modules():  # BatchNorm statistics away from 0 and 1, so eval mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval(), _save(net, tmp_path / "swift.pt")


def _photo(path, size=(24, 20)):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_an_architecture_fastsr_lacks_is_evaluated_upscaled_and_exported(tmp_path, capsys):
    theirs, path = _swift(tmp_path)
    model = open_generator(path)
    assert isinstance(model, SpandrelModel) and model.label == "Swift-SRGAN" and model.scale == 4
    folder = tmp_path / "val"
    folder.mkdir()
    _photo(folder / "a.png", (48, 40))
    out = tmp_path / "r.json"
    assert main(["eval", "--model", "bicubic", "--model", str(path), "--data", str(folder), "--json", str(out)]) == 0
    assert "Swift-SRGAN" in json.loads(out.read_text())["sets"]["val"]["methods"]  # labelled by its architecture
    assert main(["upscale", str(folder / "a.png"), "--weights", str(path), "-o", str(tmp_path / "up.png")]) == 0
    up = np.asarray(Image.open(tmp_path / "up.png")).astype(np.float64)
    lr = torch.from_numpy(np.array(Image.open(folder / "a.png"))).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = theirs(lr).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255
    assert up.shape == (192, 160, 3) and np.abs(up - expected).max() <= 0.51
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    capsys.readouterr()
    assert main(["export", str(path), "-o", str(tmp_path / "swift.onnx")]) == 0
    assert "spandrel:SwiftSRGAN x4" in capsys.readouterr().out


@pytest.mark.slow
def test_init_from_a_spandrel_file_fine_tunes_and_the_run_opens_in_spandrel(tiny_recipe, tmp_path):
    """`train.init_from` an ESRGAN .pth (old layout): the run starts from its weights and saves fastsr's format,
    which spandrel opens again as ESRGAN."""
    from fastsr.engine.trainer import train

    theirs = _randomised(TheirESRGAN(num_filters=8, num_blocks=1, scale=4))
    path = _save(theirs, tmp_path / "esrgan.pth")
    model = {"name": "rrdbnet", "blocks": 1, "features": 8, "growth": 32}
    started = start_from(build_generator(**model, scale=4), path)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert (started.eval()(x) - theirs(x)).abs().max() < 1e-5
    run = train(tiny_recipe(name="from_spandrel", model=model,
                            train={"epochs_pretrain": None, "steps_pretrain": 2, "epochs_finetune": 0,
                                   "init_from": str(path)}))
    saved = run / "generator.safetensors"
    descriptor = spandrel.ModelLoader().load_from_file(saved)
    assert descriptor.architecture.id == "ESRGAN" and descriptor.scale == 4
    with torch.no_grad():
        assert (open_generator(saved)(x) - descriptor.model(x)).abs().max() < 1e-5


def test_init_from_refuses_another_architecture_or_keys_in_one_line(tmp_path):
    from fastsr.errors import WeightsError

    _, swift = _swift(tmp_path)
    with pytest.raises(WeightsError, match=r"swift.pt: Swift-SRGAN is not an architecture fastsr trains"):
        start_from(build_generator("rrdbnet", scale=4, blocks=1, features=8), swift)
    compact = _save(_randomised(TheirCompact(num_feat=8, num_conv=2, upscale=4)), tmp_path / "c.pth")
    with pytest.raises(WeightsError, match=r"c.pth: weights are for .*'channels': 8.* but the recipe builds"):
        start_from(build_generator("compact", scale=4, channels=16, convs=2), compact)


class _RunsCode:
    """What a malicious pickle holds: unpickling it calls os.mkdir (a stand-in for any code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt"])
@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, capsys, suffix, container):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    payload = {"conv.weight": _RunsCode(marker)}
    if container == "zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert main(["eval", "--model", str(path), "--data", str(tmp_path)]) == 2
    assert f"evil{suffix}: refused: its pickle asks for 'posix.mkdir'" in _one_line(capsys)
    assert not marker.exists()


def test_bad_model_files_are_one_line_and_nothing_is_written(tmp_path, capsys):
    folder = tmp_path / "val"
    folder.mkdir()
    _photo(folder / "a.png", (48, 40))
    cases = {}
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(_save(_randomised(TheirCompact(num_feat=8, num_conv=2)), tmp_path / "ok.pth").read_bytes()[:300])
    cases[corrupt] = "corrupt.pth: not a readable model file"
    unknown = _save(torch.nn.Linear(3, 5), tmp_path / "linear.safetensors")
    cases[unknown] = "linear.safetensors: not an architecture spandrel"
    gray = _save(_randomised(TheirESRGAN(in_nc=1, out_nc=1, num_filters=8, num_blocks=1)), tmp_path / "gray.pth")
    cases[gray] = "gray.pth: a model of 1 input and 1 output channels (ESRGAN"
    rgba = _save(_randomised(TheirESRGAN(in_nc=4, out_nc=4, num_filters=8, num_blocks=1)), tmp_path / "rgba.pth")
    cases[rgba] = "rgba.pth: a model of 4 input and 4 output channels (ESRGAN"
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 64)
    cases[other] = "weights.bin: not a model file fastsr opens"
    x2 = _save(_randomised(TheirCompact(num_feat=8, num_conv=2, upscale=2)), tmp_path / "x2.pth")
    cases[x2] = "x2.pth: model is x2, but --scale is 4"
    for path, message in cases.items():
        out = tmp_path / f"out_{path.stem}"
        assert main(["eval", "--model", str(path), "--data", str(folder), "--json", str(out / "r.json"),
                     "--report", str(out / "report")]) == 2
        assert message in _one_line(capsys)
        if path != x2:  # upscale runs a model at its own scale
            assert main(["upscale", str(folder), "--weights", str(path), "-o", str(out / "up")]) == 2
            assert message in _one_line(capsys)
        assert not out.exists()


@pytest.mark.parametrize("arch", ["span", "swinir", "swinir_light"])
def test_spandrel_files_of_span_and_swinir_become_fastsrs_and_fine_tune(tmp_path, arch):
    """spandrel's own SPAN and SwinIR with random weights: fastsr's module of the same keys, the same output, and
    `train.init_from` accepts it for the recipe's generator of those keys."""
    from spandrel.architectures.SPAN import SPAN as TheirSPAN
    from spandrel.architectures.SwinIR import SwinIR as TheirSwinIR

    theirs, keys = {
        "span": (lambda: TheirSPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=4),
                 {"name": "span", "channels": 8, "norm": True}),
        "swinir": (lambda: TheirSwinIR(upscale=4, embed_dim=12, depths=[2], num_heads=[2], window_size=4, img_size=8,
                                       mlp_ratio=2.0, upsampler="pixelshuffle", img_range=1.0),
                   {"name": "swinir", "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4,
                    "img_size": 8, "mlp_ratio": 2.0, "upsampler": "pixelshuffle", "drop_path": 0.1}),
        "swinir_light": (lambda: TheirSwinIR(upscale=2, embed_dim=12, depths=[2], num_heads=[2], window_size=4,
                                             img_size=8, mlp_ratio=2.0, upsampler="pixelshuffledirect", img_range=1.0),
                         {"name": "swinir", "embed_dim": 12, "depths": [2], "num_heads": [2], "window_size": 4,
                          "img_size": 8, "mlp_ratio": 2.0, "upsampler": "pixelshuffledirect", "drop_path": 0.1}),
    }[arch]
    torch.manual_seed(0)
    theirs = theirs().eval()
    path = _save(theirs, tmp_path / f"{arch}.pth")
    descriptor = spandrel.ModelLoader().load_from_file(path).eval()  # eval: SwinIR's drop path off
    ours = open_generator(path)
    assert type(ours).__name__ != "SpandrelModel" and ours.config == {**keys, "scale": descriptor.scale}
    x = torch.rand(1, 3, 11, 9)
    with torch.no_grad():
        expected = descriptor.model(x)
        # float32 rounding grows with the output, which SPAN's x255 input scaling makes tens at random weights
        tolerance = 1e-5 * max(1.0, expected.abs().max().item())
        assert (ours(x) - expected).abs().max() < tolerance
    fresh = build_generator(**keys, scale=descriptor.scale)
    with torch.no_grad():
        assert (start_from(fresh, path).eval()(x) - expected).abs().max() < tolerance
