"""The training loaders' contract, for both backends (torch, and DALI with CPU operators): batches
depend only on (seed, epoch, batch index), ranks get disjoint equal shards, resuming skips without
reading; plus load_val_set. DALI-only behaviour (exactness, borders, fallback) is in test_dali.py."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastsr.data import BatchSource, CropPlan, ImageStore, Sample, TorchLoader, load_val_set, save_image
from fastsr.data.dali_backend import DaliLoader
from fastsr.errors import ImageError

N_IMAGES = 12
BACKENDS = ["torch", "dali"]


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


def make(samples, backend="torch", *, scale=4, hr_crop=32, batch_size=4, workers=0, cache_images=True, **plan_kw):
    images = ImageStore.from_samples(samples)
    plan = CropPlan(images.sizes, [str(f) for f in images.files], scale, hr_crop, batch_size, **plan_kw)
    if backend == "dali":
        return DaliLoader(images, plan, threads=2)
    return TorchLoader(images, plan, workers=workers, cache_images=cache_images)


def _all(loader, epoch=0, start=0):
    return list(loader.batches(epoch, start))


def _assert_same(a, b):
    assert len(a) == len(b)
    for (hr_a, lr_a), (hr_b, lr_b) in zip(a, b):
        assert torch.equal(hr_a, hr_b) and torch.equal(lr_a, lr_b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_both_backends_are_batch_sources(samples, backend):
    loader = make(samples, backend)
    assert isinstance(loader, BatchSource) and loader.name == backend


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_dtype_range_and_len(samples, backend):
    loader = make(samples, backend, repeat=2)
    assert len(loader) == N_IMAGES * 2 // 4
    batches = _all(loader)
    assert len(batches) == len(loader)
    for hr, lr in batches:
        assert hr.shape == (4, 3, 32, 32) and lr.shape == (4, 3, 8, 8)
        assert hr.dtype == lr.dtype == torch.float32 and hr.device.type == "cpu"
        assert hr.is_contiguous() and lr.is_contiguous()
        assert 0 <= hr.min() and hr.max() <= 1 and 0 <= lr.min() and lr.max() <= 1
        torch.testing.assert_close(lr * 255, (lr * 255).round(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("batch_size, world_size, expected", [(5, 1, 2), (4, 2, 1), (2, 3, 2)])
def test_len_drops_the_remainder(samples, batch_size, world_size, expected):
    assert len(make(samples, batch_size=batch_size, world_size=world_size)) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_full_batch_means_no_batches(samples, backend):
    loader = make(samples[:3], backend, batch_size=4)
    assert len(loader) == 0 and _all(loader) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_batches_other_seed_differs(samples, backend):
    first = _all(make(samples, backend, seed=7))
    _assert_same(first, _all(make(samples, backend, seed=7)))
    other = _all(make(samples, backend, seed=8))
    assert not torch.equal(first[0][0], other[0][0])


def test_worker_count_does_not_change_batches(samples):
    _assert_same(_all(make(samples, workers=0)), _all(make(samples, workers=2)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_equals_tail_and_skips_reading(samples, backend, monkeypatch):
    loader = make(samples, backend, cache_images=False)
    full = _all(loader, epoch=3)
    read = []
    real_read = ImageStore.read
    monkeypatch.setattr(ImageStore, "read", lambda self, i: read.append(i) or real_read(self, i))
    real_fromfile = np.fromfile  # DALI's feeder reads encoded files itself
    monkeypatch.setattr(np, "fromfile", lambda path, **kw: read.append(path) or real_fromfile(path, **kw))
    _assert_same(_all(loader, epoch=3, start=2), full[2:])
    assert len(read) == (len(loader) - 2) * 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_abandoned_epoch_does_not_leak_into_the_next(samples, backend):
    loader = make(samples, backend)
    next(iter(loader.batches(0)))  # the consumer stops after one batch (an exception in a step, say)
    _assert_same(_all(loader, 1), _all(make(samples, backend), 1))


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_are_disjoint_equal_and_cover(samples, world_size):
    shards = [make(samples, batch_size=2, rank=r, world_size=world_size) for r in range(world_size)]
    crops = [[crop for batch in s.plan.epoch(0) for visit in batch for crop in visit] for s in shards]
    assert len({len(c) for c in crops}) == 1
    assert sorted(crop.index for shard in crops for crop in shard) == list(range(N_IMAGES))


def test_shards_cover_all_but_the_dropped_remainder(samples):
    """12 images x repeat 1 over 3 ranks x batch 3: one global batch of 9, 3 crops dropped, and the
    dropped ones change from epoch to epoch (the global reshuffle), so no image is always left out."""
    shards = [make(samples, batch_size=3, rank=r, world_size=3) for r in range(3)]
    dropped = []
    for epoch in range(6):
        seen = [crop.index for s in shards for batch in s.plan.epoch(epoch) for visit in batch for crop in visit]
        assert len(seen) == len(set(seen)) == 9
        dropped.append(set(range(N_IMAGES)) - set(seen))
    assert len(set.union(*dropped)) > 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_rank_batches_are_the_global_batches(samples, backend):
    """Rank r's batch k is global batch k * world + r: a crop depends only on its global position."""
    single = _all(make(samples, backend, batch_size=2))
    for rank in range(2):
        _assert_same(_all(make(samples, backend, batch_size=2, rank=rank, world_size=2)), single[rank::2])


def test_epochs_differ(samples):
    loader = make(samples)
    orders = [[v[0].index for batch in loader.plan.epoch(e) for v in batch] for e in range(3)]
    assert orders[0] != orders[1] != orders[2]
    assert not torch.equal(_all(loader, 0)[0][0], _all(loader, 1)[0][0])


def test_crops_per_image_groups_crops_of_one_image(samples):
    loader = make(samples, batch_size=4, repeat=2, crops_per_image=2)
    assert len(loader) == N_IMAGES * 2 // 4
    for batch in loader.plan.epoch(0):
        assert len(batch) == 2 and all(len(visit) == 2 and visit[0].index == visit[1].index for visit in batch)
    every = [crop.index for batch in loader.plan.epoch(0) for visit in batch for crop in visit]
    assert sorted(every) == sorted(list(range(N_IMAGES)) * 2)
    with pytest.raises(ValueError, match="must divide"):
        make(samples, batch_size=4, repeat=3, crops_per_image=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_image_error_keeps_its_one_line_message(samples, tmp_path, workers):
    bad = tmp_path / "bad.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:60])  # a valid header, truncated pixels
    loader = make(samples[:3] + [Sample(bad)], workers=workers, batch_size=4)
    with pytest.raises(ImageError) as e:
        _all(loader)
    assert str(e.value).startswith(f"{bad}: ") and "\n" not in str(e.value)


def test_unreadable_file_is_named_before_any_batch(samples, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="not a readable image") as e:
        make(samples[:3] + [Sample(bad)])
    assert str(e.value).startswith(f"{bad}: ")


def test_crop_larger_than_an_image_names_it(samples):
    with pytest.raises(ImageError, match="at most the image size") as e:
        make(samples, hr_crop=96)
    assert str(e.value).split(":")[0] in {str(s.hr) for s in samples}


def test_load_val_set(samples, tmp_path):
    lr_file = tmp_path / "paired.png"
    hr_h, hr_w = np.asarray(Image.open(samples[0].hr)).shape[:2]
    save_image(lr_file, torch.rand(3, hr_h // 4, hr_w // 4))
    val = load_val_set([Sample(samples[0].hr, lr_file, "paired"), *samples[1:]], 4, max_images=2)
    assert [p.name for p in val] == ["paired", "01"]
    for _, hr, lr, _ in val:
        assert hr.shape[0] == 1 and hr.shape[-2] % 4 == 0 and hr.shape[-1] % 4 == 0
        assert lr.shape[-2:] == (hr.shape[-2] // 4, hr.shape[-1] // 4)
    assert torch.equal(val[0][2], torch.from_numpy(np.array(Image.open(lr_file))).permute(2, 0, 1)[None] / 255)



def test_cache_maps_stay_open_bounded_and_are_not_pickled(samples, tmp_path, monkeypatch):
    import pickle

    import fastsr.data.store as store_module
    from fastsr.data.cache import prepare_cache

    folder = tmp_path / "src"
    (folder / "train").mkdir(parents=True)
    (folder / "val").mkdir()
    for s in samples[:4]:
        (folder / "train" / s.hr.name).write_bytes(s.hr.read_bytes())
    (folder / "val" / "v.png").write_bytes(samples[4].hr.read_bytes())
    prepare_cache(str(folder), tmp_path / "cache", workers=1, progress=False)
    train = [Sample(folder / "train" / s.hr.name) for s in samples[:4]]
    images = ImageStore.from_samples(train, tmp_path / "cache")
    monkeypatch.setattr(store_module, "_max_open_maps", lambda: 2)
    for i in (0, 1, 2, 1):
        assert np.array_equal(images.read(i), np.asarray(Image.open(train[i].hr).convert("RGB")))
    assert sorted(images.maps) == [1, 2]  # the oldest (0) was closed
    assert pickle.loads(pickle.dumps(images)).maps == {}  # spawned workers open their own
