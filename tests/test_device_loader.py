"""The device-resident batch source (on CPU tensors; the same code runs on a GPU, `pytest -k cuda`): the
torch loader's crops bit for bit, its LR imresize of the whole image at every border and corner, the
plan's shards and resume, `auto` choosing it only when the set fits the budget, and a run training on it."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import DEVICES, hide_dali, photo_crops_and_cache
from PIL import Image
from safetensors.torch import load_file

from fastsr.config import DataConfig
from fastsr.data import BatchSource, Crop, CropPlan, DeviceLoader, ImageStore, TorchLoader, make_batch_source
from fastsr.data.cache import prepare_cache
from fastsr.data.degradation import crop_to_scale
from fastsr.data.device_backend import CPU_BUDGET_GB, device_budget_gb, padded_bytes
from fastsr.errors import RecipeError
from fastsr.ops import imresize, kernel_margin, shrink_kernel
from fastsr.ops.resize import _contributions

SIZES = [(150, 130), (101, 97), (96, 134), (128, 128), (40, 33)]  # some not multiples of the scale


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return photo_crops_and_cache(tmp_path_factory, SIZES)


def _plan(images, scale=4, hr_crop=32, batch_size=4, **kw):
    kw = {"repeat": 8, "seed": 1, **kw}
    return CropPlan(images.sizes, [str(f) for f in images.files], scale, hr_crop, batch_size, **kw)


def _pair(samples, cache=None, device="cpu", **kw):
    """(torch loader, device loader) over the same plan."""
    images = ImageStore.from_samples(samples, cache)
    return TorchLoader(images, _plan(images, **kw)), DeviceLoader(images, _plan(images, **kw), device=device)


def _on_cpu(batches):
    return [(hr.cpu(), lr.cpu()) for hr, lr in batches]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (hr_a, lr_a), (hr_b, lr_b) in zip(a, b):
        assert torch.equal(hr_a, hr_b) and torch.equal(lr_a, lr_b)


def test_the_kernel_is_imresize_s_at_every_output_pixel_away_from_the_borders():
    for scale in (2, 3, 4, 8):
        weights, offsets = shrink_kernel(scale)
        assert weights.sum().item() == pytest.approx(1, abs=1e-12) and torch.equal(weights, weights.flip(0))
        assert -offsets[0] <= kernel_margin(scale) and offsets[-1] - (scale - 1) <= kernel_margin(scale)
        all_weights, indices = _contributions(scale * 30, 30, 1 / scale, True, torch.device("cpu"), torch.float64)
        all_weights = all_weights[..., 0]
        inner = [j for j in range(30) if indices[j, 0] == scale * j + offsets[0] and indices[j, -1] == scale * j + offsets[-1]]
        assert len(inner) >= 24
        for j in inner:
            assert indices[j].tolist() == [scale * j + o for o in offsets]
            torch.testing.assert_close(all_weights[j], weights, rtol=0, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_cache", [True, False])
def test_same_crops_as_the_torch_loader(photos, use_cache, device):
    """HR equal; LR equal bit for bit on the CPU (imresize's operations in its order), off by a level
    for rare pixels on a rounding boundary on a GPU (its multiply-adds round differently)."""
    samples, cache = photos
    kw = {"channel_shuffle": True, "crops_per_image": 2, "repeat": 16}
    torch_loader, loader = _pair(samples, cache if use_cache else None, device, **kw)
    expected, got = list(torch_loader.batches(0)), _on_cpu(loader.batches(0))
    assert len(got) == len(loader) == len(expected) == 20
    if device == "cpu":
        _assert_same(got, expected)
        return
    for (hr_t, lr_t), (hr_d, lr_d) in zip(expected, got):
        assert torch.equal(hr_t, hr_d)
    levels = torch.cat([((a[1] - b[1]) * 255).abs().flatten() for a, b in zip(expected, got)])
    assert levels.max() <= 1 + 1e-4 and (levels > 0.5).float().mean() < 0.01


class _Planned(CropPlan):
    """A plan of chosen crops, one batch per image."""

    def __init__(self, sizes, scale, hr_crop, crops):
        super().__init__(sizes, [str(i) for i in range(len(sizes))], scale, hr_crop, len(crops[0]))
        self.crops = crops

    def __len__(self):
        return len(self.crops)

    def epoch(self, epoch):
        return [[[c] for c in batch] for batch in self.crops]


def _along(length, crop, scale):
    """Anchors touching the start, the middle and the end of a side (multiples of the scale)."""
    last = (length - length % scale - crop) // scale * scale
    return sorted({0, last // 2 // scale * scale, last})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale, hr_crop", [(4, 32), (2, 16), (8, 32)])
def test_lr_is_imresize_of_the_whole_image_at_every_border_and_corner(photos, scale, hr_crop, device):
    """Crops at each corner, the middle of each side and inside: before rounding, the LR equals
    imresize of the whole image (float64) at that place within float32 rounding."""
    samples, cache = photos
    images = ImageStore.from_samples(samples, cache)
    crops = [[Crop(i, top, left) for top in _along(h, hr_crop, scale) for left in _along(w, hr_crop, scale)]
             for i, (h, w) in enumerate(images.sizes)]
    crops = [(batch * 9)[:9] for batch in crops]  # a batch of 9 per image: its corners, sides' middles, middle
    loader = DeviceLoader(images, _Planned(images.sizes, scale, hr_crop, crops), device=device, quantize=False)
    worst = 0.0
    for batch, (hr, lr) in zip(crops, loader.batches(0)):
        image = crop_to_scale(torch.from_numpy(np.array(Image.open(samples[batch[0].index].hr))).permute(2, 0, 1), scale)
        reference = imresize(image[None].double() / 255, scale=1 / scale)[0]
        for crop, hr_one, lr_one in zip(batch, hr.cpu(), lr.cpu()):
            t, l, n = crop.top // scale, crop.left // scale, hr_crop // scale
            assert torch.equal(hr_one, image[:, crop.top : crop.top + hr_crop, crop.left : crop.left + hr_crop].float() / 255)
            worst = max(worst, (lr_one.double() - reference[:, t : t + n, l : l + n]).abs().max().item())
    def sides(c):  # which borders of its image (cropped to a multiple of the scale) a crop touches
        h, w = (n - n % scale for n in images.sizes[c.index])
        return c.top == 0, c.top + hr_crop == h, c.left == 0, c.left + hr_crop == w

    touched = {sides(c) for batch in crops for c in batch}
    corners = {(top, not top, left, not left) for top in (True, False) for left in (True, False)}
    assert corners <= touched and (False, False, False, False) in touched
    assert worst <= 1e-6  # measured ~3e-7: float32 sums of 8-bit levels


def test_is_a_batch_source_with_the_contract_s_shapes(photos):
    samples, cache = photos
    _, loader = _pair(samples, cache)
    assert isinstance(loader, BatchSource) and loader.name == "device"
    for hr, lr in loader.batches(0):
        assert hr.shape == (4, 3, 32, 32) and lr.shape == (4, 3, 8, 8)
        assert hr.dtype == lr.dtype == torch.float32 and hr.is_contiguous() and lr.is_contiguous()
        assert 0 <= lr.min() and lr.max() <= 1
    _, few = _pair(samples[:3], repeat=1)
    assert len(few) == 0 and list(few.batches(0)) == []


def test_shards_are_the_torch_loader_s_and_disjoint(photos):
    samples, cache = photos
    shards = [_pair(samples, cache, batch_size=2, repeat=4, rank=r, world_size=2) for r in range(2)]
    single = _pair(samples, cache, batch_size=2, repeat=4)[1]
    everything = list(single.batches(0))
    for rank, (torch_loader, loader) in enumerate(shards):
        got = list(loader.batches(0))
        _assert_same(got, list(torch_loader.batches(0)))
        _assert_same(got, everything[rank::2])

    def crops(plan):
        return sorted(dataclasses.astuple(c) for batch in plan.epoch(0) for visit in batch for c in visit)

    first, second = (crops(loader.plan) for _, loader in shards)
    assert len(first) == len(second) == 10 and sorted(first + second) == crops(single.plan)  # each crop once


def test_resume_equals_the_tail_whatever_the_chunk_and_reads_nothing(photos, monkeypatch):
    samples, cache = photos
    _, loader = _pair(samples, cache, repeat=16)
    assert loader.chunk > 1  # several batches made at once
    full = list(loader.batches(3))
    monkeypatch.setattr(ImageStore, "read", lambda self, i: pytest.fail("read an image after loading"))
    for start in (1, loader.chunk, loader.chunk + 1):
        _assert_same(list(loader.batches(3, start)), full[start:])
    loader.chunk = 1
    _assert_same(list(loader.batches(3)), full)
    assert not torch.equal(full[0][0], next(iter(loader.batches(4)))[0])  # epochs differ


def _config(**kw):
    return DataConfig(hr_crop=32, repeat=4, workers=1, **kw)


def test_auto_picks_the_device_backend_only_for_a_cache_that_fits(photos, monkeypatch):
    samples, cache = photos
    need = padded_bytes(ImageStore.from_samples(samples, cache).sizes, 4) / 1e9
    loader, note = make_batch_source(_config(cache=str(cache)), samples, 4, 4)
    assert loader.name == "device" and "uses the device backend" in note and f"{need:.3g} GB" in note
    assert "data.device_budget_gb default" in note  # 4 GB on the CPU
    loader, note = make_batch_source(_config(cache=str(cache), device_budget_gb=need * 0.9), samples, 4, 4)
    assert loader.name == "dali" and "not the device backend" in note and f"data.device_budget_gb={need * 0.9:g}" in note
    loader, note = make_batch_source(_config(), samples, 4, 4)  # files: as before the device backend
    assert loader.name == "dali" and note is None
    loader, note = make_batch_source(_config(cache=str(cache), degradation="kornia"), samples, 4, 4)
    assert loader.name == "torch" and "data.degradation=kornia" in note
    hide_dali(monkeypatch)
    loader, note = make_batch_source(_config(cache=str(cache), device_budget_gb=need * 0.9), samples, 4, 4)
    assert loader.name == "torch" and "not installed" in note and "not the device backend" in note
    assert "\n" not in note


def test_device_backend_asked_for_but_over_its_budget_is_one_line(photos):
    samples, cache = photos
    with pytest.raises(RecipeError, match="raise data.device_budget_gb") as err:
        make_batch_source(_config(cache=str(cache), backend="device", device_budget_gb=1e-4), samples, 4, 4)
    assert str(err.value).startswith("data.backend=device: the 5 training images take") and "\n" not in str(err.value)
    with pytest.raises(RecipeError, match="data.degradation=kornia needs data.backend=torch"):
        make_batch_source(_config(backend="device", degradation="kornia"), samples, 4, 4)
    loader, note = make_batch_source(_config(backend="device"), samples, 4, 4)  # from the files: decoded once
    assert loader.name == "device" and note is None


def test_the_default_budget_is_half_a_gpu_s_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (30e9, 141e9))
    assert device_budget_gb(None, "cuda:0") == (15.0, "data.device_budget_gb default: 0.5 of cuda:0's free memory")
    assert device_budget_gb(None, "cpu")[0] == CPU_BUDGET_GB == 4.0
    assert device_budget_gb(2.5, "cuda:0")[0] == 2.5


def test_a_run_trains_on_it_and_resumes_exactly(tiny_recipe, tmp_path, photo_folder):
    """The trainer with data.backend=device (from a cache): a run resumed from a mid-epoch checkpoint
    ends with the uninterrupted run's weights, bitwise."""
    from fastsr.engine.trainer import train

    def records(run, kind):
        return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]

    prepare_cache(str(photo_folder), tmp_path / "cache", workers=1, progress=False)
    data = {"backend": "device", "cache": str(tmp_path / "cache"), "channel_shuffle": True}
    train_keys = {"epochs_pretrain": 2, "epochs_finetune": 0, "save_every": 1, "keep_checkpoints": 20}
    full = train(tiny_recipe(data=data, train=train_keys))
    assert records(full, "run")[0]["loader"] == "device"
    losses = [r["loss_pixel"] for r in records(full, "train")]
    assert len(losses) == 6 and all(np.isfinite(losses))
    resumed_recipe = tiny_recipe(name="resumed", data=data, train={**train_keys, "resume": "auto"})
    middle = full / "checkpoints" / "step_00000002"  # mid-epoch (3 steps per epoch)
    shutil.copytree(middle, resumed_recipe.run_dir / "checkpoints" / middle.name)
    resumed = train(resumed_recipe)
    assert records(resumed, "train")[0]["step"] == 3
    a, b = (load_file(run / "checkpoints" / "step_00000006" / "generator.safetensors") for run in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
