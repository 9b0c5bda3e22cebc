"""LPIPS and DISTS with randomly initialised backbones, saved to files and loaded the way a user's
weights are: zero for identical photographs, growing with blur, per image, and the weight-file rules."""

import dataclasses
import hashlib
import http.server
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from skimage import data as skdata
from skimage.filters import gaussian

from fastsr import perceptual_metrics, pretrained
from fastsr.errors import WeightsUnavailable
from fastsr.losses.perceptual import VGGFeatures, _vgg19_file
from fastsr.perceptual_metrics import (
    BACKBONES,
    PERCEPTUAL_METRICS,
    MetricWeightsUnavailable,
    build_perceptual_metric,
)
from fastsr.pretrained import SIZES_MB, vgg_features

SIZE = 96


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()


def _photos() -> list[np.ndarray]:
    """Three real photographs, subsampled whole to 96 to 150 pixels and cut to 96x96, in [0, 1]."""
    return [p[:SIZE, :SIZE] / 255.0 for p in
            (skdata.astronaut()[::4, ::4], skdata.chelsea()[::2, ::2], skdata.coffee()[::3, ::3])]


PHOTOS = torch.cat([_tensor(p) for p in _photos()])


def _blurred(sigma: float) -> torch.Tensor:
    return torch.cat([_tensor(gaussian(p, sigma=sigma, channel_axis=-1)) for p in _photos()])


def _alexnet_features(prefix: str) -> dict[str, torch.Tensor]:
    from torchvision.models import alexnet

    return {prefix + k: v for k, v in alexnet().features.state_dict().items()}


@pytest.fixture(scope="module")
def backbone_files(tmp_path_factory):
    """Random backbones as .safetensors: AlexNet's with the full model's keys (`features.N.*`, as in
    torchvision's file; the classifier, which no metric reads, left out), VGG16's as `features` alone."""
    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    files = {"lpips": root / "alexnet.safetensors", "dists": root / "vgg16.safetensors"}
    save_file(_alexnet_features(prefix="features."), str(files["lpips"]))
    save_file(vgg_features(16).state_dict(), str(files["dists"]))
    return files


@pytest.fixture(scope="module")
def metrics(backbone_files):
    return {name: build_perceptual_metric(name, "cpu", backbone_files[name]) for name in PERCEPTUAL_METRICS}


@pytest.mark.parametrize("name", PERCEPTUAL_METRICS)
def test_identical_photographs_score_zero(metrics, name):
    values = metrics[name](PHOTOS, PHOTOS.clone())
    assert values.shape == (3,)
    assert values.abs().max() < 1e-6


@pytest.mark.parametrize("name", PERCEPTUAL_METRICS)
def test_more_blur_scores_worse(metrics, name):
    metric = metrics[name]
    assert metric.lower_is_better
    slight, strong = metric(_blurred(1.0), PHOTOS), metric(_blurred(3.0), PHOTOS)
    assert (slight > 1e-4).all() and (strong > slight).all(), (slight, strong)  # identical ones score 0 (above)


@pytest.mark.parametrize("name", PERCEPTUAL_METRICS)
def test_values_are_per_image(metrics, name):
    metric, blurred = metrics[name], _blurred(2.0)
    batch = metric(blurred, PHOTOS)
    alone = torch.cat([metric(blurred[i:i + 1], PHOTOS[i:i + 1]) for i in range(3)])
    assert alone.shape == (3,)
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-6)
    assert len(set(batch.tolist())) == 3  # the images' own values, not a batch mean repeated


_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("name", PERCEPTUAL_METRICS)
def test_same_values_on_every_device(metrics, backbone_files, name, device):
    metric = build_perceptual_metric(name, torch.device(device), backbone_files[name])
    blurred = _blurred(2.0)
    values = metric(blurred.to(device), PHOTOS.to(device))
    assert values.device.type == device
    # cuDNN convolutions run on TF32 by default: a few parts in 1e3 on a GPU
    torch.testing.assert_close(values.cpu(), metrics[name](blurred, PHOTOS), rtol=1e-2, atol=1e-4)


def test_learned_weights_are_torchmetrics_files_and_backbone_is_the_users(metrics, backbone_files):
    # torchmetrics loads the linear layers with strict=False: check they really arrived
    from safetensors.torch import load_file
    from torchmetrics.functional.image import dists, lpips

    lpips_metric, dists_metric = metrics["lpips"].network, metrics["dists"].network
    shipped = torch.load(lpips.__file__.replace("lpips.py", "lpips_models/alex.pth"), map_location="cpu",
                         weights_only=True)
    assert shipped and all(torch.equal(lpips_metric.state_dict()[k], v) for k, v in shipped.items())
    alpha_beta = torch.load(dists._PATH_WEIGHT_DISTS, map_location="cpu", weights_only=True)
    assert torch.equal(dists_metric.alpha, alpha_beta["alpha"]) and torch.equal(dists_metric.beta, alpha_beta["beta"])
    alex = load_file(str(backbone_files["lpips"]))
    assert torch.equal(lpips_metric.state_dict()["net.slice5.10.weight"], alex["features.10.weight"])
    vgg = load_file(str(backbone_files["dists"]))
    assert torch.equal(dists_metric.state_dict()["stage5.28.weight"], vgg["28.weight"])


def test_backbone_urls_are_torchvisions():
    from torchvision.models import AlexNet_Weights, VGG16_Weights, VGG19_Weights

    assert BACKBONES["lpips"].url == AlexNet_Weights.IMAGENET1K_V1.url
    assert BACKBONES["dists"].url == VGG16_Weights.IMAGENET1K_V1.url  # DISTS's VGG16_Weights.DEFAULT
    assert _vgg19_file().url == VGG19_Weights.IMAGENET1K_V1.url
    # the sizes the download line announces
    for weights in (AlexNet_Weights.IMAGENET1K_V1, VGG16_Weights.IMAGENET1K_V1, VGG19_Weights.IMAGENET1K_V1):
        assert SIZES_MB[weights.url.rsplit("/", 1)[1]] == round(weights.meta["_file_size"])


@pytest.mark.parametrize("name", PERCEPTUAL_METRICS)
def test_missing_file_says_what_to_download_and_where(name, tmp_path):
    file = BACKBONES[name]
    with pytest.raises(MetricWeightsUnavailable) as info:
        build_perceptual_metric(name, "cpu", tmp_path / file.file)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / file.file) in message and file.url in message and str(file.hub_path) in message
    assert f"--metric-weights {name}=/path/to/{file.file}" in message


@pytest.mark.skipif(any(f.hub_path.exists() for f in BACKBONES.values()), reason="weights in the hub cache")
@pytest.mark.parametrize("name", PERCEPTUAL_METRICS)
def test_no_network_and_no_cache_fails_in_one_line(name):
    with pytest.raises(MetricWeightsUnavailable) as info:
        build_perceptual_metric(name, "cpu")
    message = str(info.value)
    assert "\n" not in message and BACKBONES[name].url in message and str(BACKBONES[name].hub_path) in message


@pytest.fixture
def models_url(tmp_path, monkeypatch):
    """Point the weight downloads at `url` (returned as a setter), into an empty hub cache, with no server
    remembered as unreachable."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(pretrained, "_UNREACHABLE", {})
    return lambda url: monkeypatch.setattr(pretrained, "TORCHVISION_MODELS_URL", url)


def _fail_to_load_vgg_then_lpips() -> list[str]:
    """The quick start's order in one process: the loss's VGG19, then the metric's AlexNet; their errors."""
    errors = []
    for load in (lambda: VGGFeatures("conv1_2"), lambda: build_perceptual_metric("lpips", "cpu")):
        with pytest.raises(WeightsUnavailable) as info:
            load()
        errors.append(str(info.value))
    return errors


def test_an_unreachable_server_is_tried_once_and_only_fastsr_says_so(models_url, tmp_path, capfd):
    models_url("http://127.0.0.1:9/")  # nothing listens on port 9 of loopback: refused at once
    vgg_error, lpips_error = _fail_to_load_vgg_then_lpips()
    out, err = capfd.readouterr()
    assert "Downloading" not in out + err  # torch's own line
    hub = tmp_path / "hub" / "checkpoints"
    assert err == (f"fastsr: downloading VGG19 ImageNet weights (548 MB) from http://127.0.0.1:9/vgg19-dcbb9e9d.pth "
                   f"to {hub / 'vgg19-dcbb9e9d.pth'}\n")  # once: the second load does not try
    assert "and a download" in vgg_error and "Connection refused" in vgg_error
    assert "no download, as 127.0.0.1:9 could not be reached earlier in this process" in lpips_error
    assert "http://127.0.0.1:9/alexnet-owt-7be5be79.pth" in lpips_error and "\n" not in lpips_error
    assert not list(hub.iterdir())  # no partial file left in the cache


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_error(404)

    def log_message(self, *args):
        pass


def test_a_server_that_answers_is_tried_again_for_the_next_file(models_url, capfd):
    """An HTTP error concerns one file (a moved URL), not the network: the next file is still downloaded."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    models_url(f"http://127.0.0.1:{server.server_port}/")
    try:
        vgg_error, lpips_error = _fail_to_load_vgg_then_lpips()
    finally:
        server.shutdown()
    assert "HTTP Error 404" in vgg_error and "HTTP Error 404" in lpips_error
    assert capfd.readouterr().err.count("fastsr: downloading") == 2


class _Exploit:
    """Unpickling this would run code: a .pth a user hands in must never get that far."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pth_is_unpickled_only_if_it_is_torchvisions_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / BACKBONES["lpips"].file  # the right name is not enough
    torch.save({"features.0.weight": _Exploit()}, path)
    with pytest.raises(MetricWeightsUnavailable, match="not torchvision's alexnet-owt-7be5be79.pth .*convert it to .safetensors"):
        build_perceptual_metric("lpips", "cpu", path)
    assert "unpickled!" not in capsys.readouterr().out
    # A file with the known hash (here: a random AlexNet saved as .pth, named as if it were torchvision's) loads.
    torch.save(_alexnet_features(prefix=""), path)
    known = dataclasses.replace(BACKBONES["lpips"], file=f"alexnet-owt-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pth")
    monkeypatch.setitem(perceptual_metrics.BACKBONES, "lpips", known)
    assert build_perceptual_metric("lpips", "cpu", path)(PHOTOS[:1], PHOTOS[:1]).item() == 0


def test_file_of_another_network_is_refused_naming_the_option(backbone_files):
    with pytest.raises(MetricWeightsUnavailable, match=r"not a torchvision vgg16 state dict .* --metric-weights dists="):
        build_perceptual_metric("dists", "cpu", backbone_files["lpips"])  # AlexNet given for DISTS


def test_bad_inputs_are_one_line_errors(metrics):
    with pytest.raises(ValueError, match="lpips: images must be at least 31x31"):
        metrics["lpips"](PHOTOS[:, :, :30, :30], PHOTOS[:, :, :30, :30])
    with pytest.raises(ValueError, match=r"dists: expected sr and hr both shaped \(N, 3, H, W\)"):
        metrics["dists"](PHOTOS[:1], PHOTOS[1:])
    with pytest.raises(ValueError, match="unknown perceptual metric 'ssim'; valid: lpips, dists"):
        build_perceptual_metric("ssim", "cpu")


# In `fastsr eval` and in a run's validation (the weights given as files, as a user without a network would).


def test_eval_table_json_and_csv_hold_the_perceptual_metrics(backbone_files, photo_folder, tmp_path, capsys):
    import csv
    import json

    from fastsr.cli import main
    from fastsr.data import load_val_set, resolve_source
    from fastsr.infer import upscale
    from fastsr.models import build_generator
    from fastsr.ops import quantize

    out, table_csv = tmp_path / "r.json", tmp_path / "r.csv"
    args = ["eval", "--model", "bicubic", "--data", str(photo_folder / "val"), "--metrics", "psnr,ssim,lpips,dists",
            "--json", str(out), "--csv", str(table_csv)]
    for name, path in backbone_files.items():
        args += ["--metric-weights", f"{name}={path}"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "LPIPS↓" in table and "DISTS↓" in table
    results = json.loads(out.read_text())
    assert results["lower_is_better"] == ["lpips", "dists"]
    bicubic = results["sets"]["val"]["methods"]["Bicubic"]
    # Recomputed by hand: the metric on the uint8 bicubic output and the HR, 4 pixels shaved from each border.
    pairs = load_val_set(resolve_source(str(photo_folder / "val"), "eval", 4), 4)
    for name in ("lpips", "dists"):
        metric = build_perceptual_metric(name, "cpu", backbone_files[name])
        bicubic_model = build_generator("bicubic", scale=4)
        expected = [metric(quantize(upscale(bicubic_model, lr, 4))[..., 4:-4, 4:-4], hr[..., 4:-4, 4:-4]).item()
                    for _, hr, lr, _ in pairs]
        np.testing.assert_allclose(bicubic["per_image"][name], expected, rtol=1e-6)
        assert all(v > 0 for v in expected)
    rows = list(csv.DictReader(table_csv.open()))
    assert [r["image"] for r in rows] == ["v0", "v1", ""]  # per image, then the set's mean
    assert float(rows[-1]["lpips"]) == pytest.approx(bicubic["lpips"])


def test_missing_metric_weights_are_one_line(photo_folder, tmp_path, capsys, monkeypatch):
    from fastsr.cli import main

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # an empty cache
    assert main(["eval", "--model", "bicubic", "--data", str(photo_folder / "val"), "--metrics", "psnr,lpips",
                 "--metric-weights", f"lpips={tmp_path / 'nowhere.pth'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsr: error: ") and "\n" not in err and "nowhere.pth" in err
    assert main(["eval", "--model", "bicubic", "--metric-weights", "dists=vgg16.pth"]) == 2  # dists not asked for
    assert "dists is not among --metrics psnr,ssim" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: "--metrics: 'lpipz': choose from psnr, ssim, lpips, dists"
        main(["eval", "--model", "bicubic", "--metrics", "psnr,lpipz"])
    assert "'lpipz': choose from psnr, ssim, lpips, dists" in capsys.readouterr().err


def test_validation_logs_the_perceptual_metrics(backbone_files, tiny_recipe):
    import json

    from fastsr.engine.trainer import train

    weights = [f"{name}={path}" for name, path in backbone_files.items()]
    run = train(tiny_recipe(train={"epochs_finetune": 0, "val_metrics": ["psnr", "ssim", "lpips", "dists"],
                                   "metric_weights": weights}))
    val = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "val"]
    assert val and all({"lpips", "dists", "bicubic_lpips", "bicubic_dists"} <= set(r) for r in val)
    assert all(r["lpips"] > 0 for r in val)
