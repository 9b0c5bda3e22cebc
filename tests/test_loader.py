"""TrainLoader's contract: batches depend only on (seed, epoch, batch index), ranks get disjoint equal
shards, resuming skips without decoding; plus load_val_set."""

import numpy as np
import pytest
import torch
from PIL import Image

import fastsr.data.loader as loader_module
from fastsr.data import ImageError, Sample, TrainLoader, load_val_set, save_image

N_IMAGES = 12


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    out = []
    for i in range(N_IMAGES):
        h, w = rng.integers(64, 101, size=2)
        path = root / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        out.append(Sample(path))
    return out


def _all(loader, epoch=0, start=0):
    return list(loader.batches(epoch, start))


def _assert_same(a, b):
    assert len(a) == len(b)
    for (hr_a, lr_a), (hr_b, lr_b) in zip(a, b):
        assert torch.equal(hr_a, hr_b) and torch.equal(lr_a, lr_b)


def _make(samples, **kw):
    args = dict(scale=4, hr_crop=32, batch_size=4)
    args.update(kw)
    return TrainLoader(samples, args.pop("scale"), args.pop("hr_crop"), args.pop("batch_size"), **args)


def test_shapes_dtype_range_and_len(samples):
    loader = _make(samples, repeat=2)
    assert len(loader) == N_IMAGES * 2 // 4
    batches = _all(loader)
    assert len(batches) == len(loader)
    for hr, lr in batches:
        assert hr.shape == (4, 3, 32, 32) and lr.shape == (4, 3, 8, 8)
        assert hr.dtype == lr.dtype == torch.float32 and hr.device.type == "cpu"
        assert 0 <= hr.min() and hr.max() <= 1 and 0 <= lr.min() and lr.max() <= 1
        torch.testing.assert_close(lr * 255, (lr * 255).round(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("batch_size, world_size, expected", [(5, 1, 2), (4, 2, 1), (2, 3, 2)])
def test_len_drops_the_remainder(samples, batch_size, world_size, expected):
    assert len(_make(samples, batch_size=batch_size, world_size=world_size)) == expected


def test_no_full_batch_means_no_batches(samples):
    loader = _make(samples[:3], batch_size=4)
    assert len(loader) == 0 and _all(loader) == []


def test_same_seed_same_batches_other_seed_differs(samples):
    first = _all(_make(samples, seed=7))
    _assert_same(first, _all(_make(samples, seed=7)))
    other = _all(_make(samples, seed=8))
    assert not torch.equal(first[0][0], other[0][0])


def test_worker_count_does_not_change_batches(samples):
    _assert_same(_all(_make(samples, workers=0)), _all(_make(samples, workers=2)))


def test_resume_equals_tail_and_skips_decoding(samples, monkeypatch):
    loader = _make(samples, cache_images=False)
    full = _all(loader, epoch=3)
    decoded = []
    real_load = loader_module.load_image
    monkeypatch.setattr(loader_module, "load_image", lambda p: decoded.append(p) or real_load(p))
    _assert_same(_all(loader, epoch=3, start=2), full[2:])
    assert len(decoded) == (len(loader) - 2) * 4


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_disjoint_equal_and_cover(samples, world_size):
    shards = [_make(samples, batch_size=2, rank=r, world_size=world_size) for r in range(world_size)]
    items = [[key for batch in s.plan(0) for key in batch] for s in shards]
    assert len({len(i) for i in items}) == 1
    positions = [p for shard in items for _, p, _ in shard]
    assert len(positions) == len(set(positions)) == N_IMAGES
    assert sorted(index for shard in items for _, _, index in shard) == list(range(N_IMAGES))


def test_rank_batches_are_the_global_batches(samples):
    """Rank r's batch k is global batch k * world + r: a crop depends only on its global position."""
    single = _all(_make(samples, batch_size=2))
    for rank in range(2):
        _assert_same(_all(_make(samples, batch_size=2, rank=rank, world_size=2)), single[rank::2])


def test_epochs_differ(samples):
    loader = _make(samples)
    orders = [[i for batch in loader.plan(e) for _, _, i in batch] for e in range(3)]
    assert orders[0] != orders[1] != orders[2]
    assert not torch.equal(_all(loader, 0)[0][0], _all(loader, 1)[0][0])


@pytest.mark.parametrize("workers", [0, 2])
def test_image_error_keeps_its_one_line_message(samples, tmp_path, workers):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    loader = _make(samples[:3] + [Sample(bad)], workers=workers)
    with pytest.raises(ImageError) as e:
        _all(loader)
    assert str(e.value).startswith(f"{bad}: ") and "\n" not in str(e.value)


def test_crop_larger_than_an_image_names_it(samples):
    with pytest.raises(ImageError, match="at most the image size") as e:
        _all(_make(samples, hr_crop=96))
    assert str(e.value).split(":")[0] in {str(s.hr) for s in samples}


def test_load_val_set(samples, tmp_path):
    lr_file = tmp_path / "paired.png"
    hr_h, hr_w = np.asarray(Image.open(samples[0].hr)).shape[:2]
    save_image(lr_file, torch.rand(3, hr_h // 4, hr_w // 4))
    val = load_val_set([Sample(samples[0].hr, lr_file, "paired"), *samples[1:]], 4, max_images=2)
    assert [name for name, _, _ in val] == ["paired", "01"]
    for _, hr, lr in val:
        assert hr.shape[0] == 1 and hr.shape[-2] % 4 == 0 and hr.shape[-1] % 4 == 0
        assert lr.shape[-2:] == (hr.shape[-2] // 4, hr.shape[-1] // 4)
    assert torch.equal(val[0][2], torch.from_numpy(np.array(Image.open(lr_file))).permute(2, 0, 1)[None] / 255)
