"""The DALI loader, run with CPU operators (the same pipeline definition as on a GPU): its LR is
imresize of the whole image at the crop's place, from files and from the cache; it yields what the
torch loader yields; `auto` falls back cleanly."""


import numpy as np
import pytest
import torch
from conftest import DEVICES, hide_dali, photo_crops_and_cache
from PIL import Image

from fastsr.config import DataConfig
from fastsr.data import CropPlan, ImageStore, Sample, TorchLoader, make_batch_source
from fastsr.data.dali_backend import DaliLoader, make_dali_loader
from fastsr.data.degradation import crop_to_scale
from fastsr.errors import DaliUnavailable, ImageError
from fastsr.ops import imresize

SIZES = [(150, 130), (101, 97), (96, 134), (128, 128)]  # some not multiples of the scale


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return photo_crops_and_cache(tmp_path_factory, SIZES)


def _loader(samples, cache=None, backend="dali", quantize=True, device="cpu", **kw):
    images = ImageStore.from_samples(samples, cache)
    args = dict(scale=4, hr_crop=32, batch_size=4, repeat=8, seed=1)
    args.update(kw)
    plan = CropPlan(images.sizes, [str(f) for f in images.files], args.pop("scale"), args.pop("hr_crop"),
                    args.pop("batch_size"), **args)
    if backend == "dali":
        return DaliLoader(images, plan, quantize=quantize, device=device)
    return TorchLoader(images, plan)


def _whole_lr(samples):
    out = []
    for s in samples:
        hr = torch.from_numpy(np.array(Image.open(s.hr).convert("RGB"))).permute(2, 0, 1)[None].double() / 255
        out.append(imresize(crop_to_scale(hr, 4), scale=1 / 4)[0])
    return out


def _lr_differences(samples, loader):
    """Per crop: |DALI LR - imresize(whole image) at the crop's place|, and a mask of LR pixels within 2
    of an image border (where the kernel reaches past the image)."""
    whole = _whole_lr(samples)
    out = []
    for batch, (_, lr) in zip(loader.plan.epoch(0), loader.batches(0)):
        for crop, got in zip([c for visit in batch for c in visit], lr):
            ref = whole[crop.index]
            t, l, n = crop.top // 4, crop.left // 4, got.shape[-1]
            rows, cols = torch.arange(t, t + n), torch.arange(l, l + n)
            near = ((rows < 2) | (rows >= ref.shape[-2] - 2))[:, None] | ((cols < 2) | (cols >= ref.shape[-1] - 2))[None]
            out.append(((got.cpu().double() - ref[:, t : t + n, l : l + n]).abs(), near))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_cache", [True, False])
def test_lr_is_imresize_of_the_whole_image_borders_included(photos, use_cache, device):
    samples, cache = photos
    loader = _loader(samples, cache if use_cache else None, quantize=False, augment=False, device=device)
    diffs = _lr_differences(samples, loader)
    assert sum(bool(near.any()) for _, near in diffs) >= 4  # crops at image borders were exercised
    assert max(d.max().item() for d, _ in diffs) <= 1e-4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_cache", [True, False])
def test_same_crops_as_the_torch_loader(photos, use_cache, device):
    samples, cache = photos
    cache = cache if use_cache else None
    kw = dict(channel_shuffle=True, crops_per_image=2)
    torch_batches = list(_loader(samples, cache, backend="torch", **kw).batches(0))
    dali_batches = [(hr.cpu(), lr.cpu()) for hr, lr in _loader(samples, cache, device=device, **kw).batches(0)]
    assert len(torch_batches) == len(dali_batches) == 8
    levels = torch.cat([((a[1] - b[1]) * 255).abs().flatten() for a, b in zip(torch_batches, dali_batches)])
    for (hr_t, _), (hr_d, _) in zip(torch_batches, dali_batches):
        torch.testing.assert_close(hr_d, hr_t, rtol=0, atol=1e-6)
    assert levels.max() <= 1 + 1e-4  # off by a level only where a value sits on a rounding boundary
    assert (levels > 0.5).float().mean() < 0.01


def test_corrupt_file_mid_run_is_named(photos, tmp_path):
    samples, _ = photos
    bad = tmp_path / "bad.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:70])  # a valid header, truncated pixels
    loader = _loader([*samples[:3], Sample(bad)], repeat=4)
    with pytest.raises(ImageError) as e:
        list(loader.batches(0))
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def _config(**kw):
    return DataConfig(hr_crop=32, repeat=4, workers=1, **kw)


def test_auto_picks_dali_where_it_runs(photos):
    samples, _ = photos
    loader, note = make_batch_source(_config(backend="auto"), samples, 4, 4)
    assert loader.name == "dali" and note is None


def test_auto_falls_back_when_dali_is_missing(photos, monkeypatch):
    samples, _ = photos
    hide_dali(monkeypatch)
    loader, note = make_batch_source(_config(backend="auto"), samples, 4, 4)
    assert loader.name == "torch" and "not installed" in note
    assert len(list(loader.batches(0))) == len(loader) == 4
    with pytest.raises(DaliUnavailable, match="not installed"):
        make_batch_source(_config(backend="dali"), samples, 4, 4)


def test_auto_falls_back_for_what_dali_cannot_do(photos, tmp_path):
    samples, _ = photos
    loader, note = make_batch_source(_config(backend="auto", degradation="kornia"), samples, 4, 4)
    assert loader.name == "torch" and "data.degradation=kornia" in note
    palette = tmp_path / "palette.png"
    Image.open(samples[0].hr).convert("P").save(palette)
    loader, note = make_batch_source(_config(backend="auto"), [*samples[1:], Sample(palette)], 4, 4)
    assert loader.name == "torch" and str(palette) in note and "fastsr prepare" in note
    with pytest.raises(DaliUnavailable, match="palette.png"):
        make_dali_loader(ImageStore.from_samples([Sample(palette)]), CropPlan([(150, 130)], ["p"], 4, 32, 1))


def test_a_pipeline_that_fails_when_run_is_unavailable_not_a_crash(photos, monkeypatch):
    """`auto` must fall back when DALI builds but cannot run (a GPU operator, a CUDA library)."""
    samples, _ = photos

    def broken(self):
        raise RuntimeError("Critical error in pipeline:\nError in GPU operator `nvidia.dali.fn.resize`\n"
                           "encountered:\nCUDA error: no kernel image is available")

    monkeypatch.setattr("nvidia.dali.Pipeline.run", broken)
    loader, note = make_batch_source(_config(backend="auto"), samples, 4, 4)
    assert loader.name == "torch" and "failed its first batch" in note and "no kernel image" in note
