"""The decode-once cache (`fastsr prepare`): exact pixels in DALI-readable .npy files, reruns that redo only
what changed, resumption after an interruption, and refusals that name the file."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import fastsr.data.cache as cache_module
from fastsr.cli import main
from fastsr.data import load_image, resolve_source
from fastsr.data.cache import CachedImage, open_cache, prepare_cache
from fastsr.errors import ImageError

PHOTO = skdata.astronaut()  # 512x512x3 uint8
TRAIN = ["a0.png", "a1.png", "a2.png", "b.jpg", "g.png"]


@pytest.fixture
def src(tmp_path):
    """train/ with RGB PNGs, a JPEG and a gray PNG of odd sizes cut from a real photo; val/ is not cached."""
    root = tmp_path / "src"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    for i in range(3):
        Image.fromarray(PHOTO[40 * i:40 * i + 37, 50:103]).save(root / "train" / f"a{i}.png")
    Image.fromarray(PHOTO[200:248, 300:364]).save(root / "train" / "b.jpg", quality=90)
    Image.fromarray(PHOTO[100:131, 100:150, 1], "L").save(root / "train" / "g.png")
    Image.fromarray(PHOTO[:32, :32]).save(root / "val" / "v.png")
    return root


def prepare(src, dst, **kwargs):
    return prepare_cache(str(src), dst, **{"workers": 1, "progress": False, **kwargs})


def manifest(dst):
    return json.loads((dst / "manifest.json").read_text())


def npy_mtimes(dst):
    return {p.name: p.stat().st_mtime_ns for p in dst.glob("*.npy")}


def one_line_naming(excinfo, *names):
    msg = str(excinfo.value)
    assert "\n" not in msg
    for name in names:
        assert str(name) in msg
    return msg


def test_npy_files_hold_exactly_the_decoded_pixels(src, tmp_path, monkeypatch):
    dst = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)
    result = prepare("src", dst)  # a relative spec is recorded absolute
    assert (result.written, result.skipped, result.failed) == (5, 0, [])
    m = manifest(dst)
    assert (m["format"], m["version"], m["source"], m["failed"]) == ("fastsr-cache", 1, str(src.resolve()), [])
    assert [e["file"] for e in m["images"]] == [f"{n}.npy" for n in TRAIN]
    assert sorted(p.name for p in dst.iterdir()) == sorted([f"{n}.npy" for n in TRAIN] + ["manifest.json"])
    for name, entry in zip(TRAIN, m["images"]):
        source, npy = src / "train" / name, dst / f"{name}.npy"
        with npy.open("rb") as f:
            assert np.lib.format.read_magic(f) == (1, 0)
        cached = np.load(npy)
        assert cached.dtype == np.uint8 and cached.flags.c_contiguous and cached.ndim == 3
        np.testing.assert_array_equal(cached, load_image(source))
        assert entry["shape"] == list(cached.shape)
        assert entry["source"] == str(source.resolve())
        assert (entry["source_size"], entry["source_mtime_ns"]) == (source.stat().st_size, source.stat().st_mtime_ns)
        assert entry["sha256"] == hashlib.sha256(npy.read_bytes()).hexdigest()
    gray = np.load(dst / "g.png.npy", mmap_mode="r")[3:9, 5:20]  # a crop read through a memory map
    np.testing.assert_array_equal(gray, np.repeat(PHOTO[103:109, 105:120, 1:2], 3, axis=2))
    samples = resolve_source(str(src), "train", scale=4)
    assert open_cache(dst).images(samples) == [CachedImage(dst / f"{n}.npy", *np.load(dst / f"{n}.npy").shape[:2])
                                        for n in TRAIN]


def test_pool_writes_the_same_cache(src, tmp_path):
    prepare(src, tmp_path / "one")
    result = prepare(src, tmp_path / "two", workers=2)
    assert (result.written, result.skipped, result.failed) == (5, 0, [])
    assert manifest(tmp_path / "two")["images"] == manifest(tmp_path / "one")["images"]  # same order and hashes


def test_rerun_redoes_only_what_changed(src, tmp_path):
    dst = tmp_path / "cache"
    prepare(src, dst)
    before = npy_mtimes(dst)
    result = prepare(src, dst)
    assert (result.written, result.skipped) == (0, 5)
    assert npy_mtimes(dst) == before

    Image.fromarray(PHOTO[300:341, 10:60]).save(src / "train" / "a1.png")  # new pixels and size
    st = (src / "train" / "b.jpg").stat()
    os.utime(src / "train" / "b.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched only
    (dst / "g.png.npy").unlink()
    result = prepare(src, dst)
    assert (result.written, result.skipped) == (3, 2)
    after = npy_mtimes(dst)
    assert [n for n in TRAIN if after[f"{n}.npy"] != before[f"{n}.npy"]] == ["a1.png", "b.jpg", "g.png"]
    np.testing.assert_array_equal(np.load(dst / "a1.png.npy"), PHOTO[300:341, 10:60])
    assert manifest(dst)["images"][1]["shape"] == [41, 50, 3]

    (src / "train" / "a2.png").unlink()
    result = prepare(src, dst)
    assert (result.written, result.skipped) == (0, 4)
    assert not (dst / "a2.png.npy").exists()
    assert [e["file"] for e in manifest(dst)["images"]] == ["a0.png.npy", "a1.png.npy", "b.jpg.npy", "g.png.npy"]


def test_verify_rewrites_a_damaged_copy_that_the_cheap_check_misses(src, tmp_path):
    dst = tmp_path / "cache"
    prepare(src, dst)
    npy = dst / "a0.png.npy"
    damaged = bytearray(npy.read_bytes())
    damaged[-1] ^= 0xFF  # same size, one pixel off
    npy.write_bytes(damaged)
    assert prepare(src, dst).written == 0
    result = prepare(src, dst, verify=True)
    assert (result.written, result.skipped) == (1, 4)
    assert result.repaired == [str((src / "train" / "a0.png").resolve())]
    np.testing.assert_array_equal(np.load(npy), load_image(src / "train" / "a0.png"))


def test_interrupted_run_resumes(src, tmp_path, monkeypatch):
    dst = tmp_path / "cache"
    decoded, seen = [], []

    def interrupt_third(path):
        if len(decoded) == 2:
            seen.append(manifest(dst))  # as a run killed outright would leave it
            raise KeyboardInterrupt
        decoded.append(path)
        return load_image(path)

    monkeypatch.setattr(cache_module, "load_image", interrupt_third)
    monkeypatch.setattr(cache_module, "_SAVE_EVERY_S", -1.0)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, dst)
    for m in (seen[0], manifest(dst)):  # the periodic save, and the one on the way out
        assert [e["file"] for e in m["images"]] == ["a0.png.npy", "a1.png.npy"]
    (dst / ".a2.png.npy.99999.tmp").write_bytes(b"\x93NUMPY half")  # as left by a killed worker
    (dst / "b.jpg.npy").write_bytes(b"written, but the run died before the manifest listed it")

    monkeypatch.setattr(cache_module, "load_image", load_image)
    result = prepare(src, dst)
    assert (result.written, result.skipped) == (3, 2)
    assert sorted(p.name for p in dst.iterdir()) == sorted([f"{n}.npy" for n in TRAIN] + ["manifest.json"])
    assert len(open_cache(dst).images(resolve_source(str(src), "train", 4))) == 5
    np.testing.assert_array_equal(np.load(dst / "b.jpg.npy"), load_image(src / "train" / "b.jpg"))


def test_unreadable_images_are_reported_and_refused_for_training(src, tmp_path):
    dst = tmp_path / "cache"
    prepare(src, dst)
    (src / "train" / "bad.png").write_bytes(b"this is text, not a PNG\n")
    Image.fromarray(PHOTO[:64, :64]).save(src / "train" / "cut.png")
    (src / "train" / "cut.png").write_bytes((src / "train" / "cut.png").read_bytes()[:400])
    (src / "train" / "a0.png").write_bytes(b"")  # was cached; now empty

    result = prepare(src, dst)
    assert [os.path.basename(s) for s, _ in result.failed] == ["a0.png", "bad.png", "cut.png"]
    for source, error in result.failed:
        assert source in error and "\n" not in error
    assert (result.written, result.skipped) == (0, 4)
    assert not (dst / "a0.png.npy").exists()  # its old copy no longer matches its source
    assert [f["source"] for f in manifest(dst)["failed"]] == [s for s, _ in result.failed]
    assert len(manifest(dst)["images"]) == 4

    samples = resolve_source(str(src), "train", 4)
    with pytest.raises(ImageError) as e:
        open_cache(dst).images(samples)
    assert "not a readable image" in one_line_naming(e, dst, src / "train" / "a0.png", "fastsr prepare")
    with pytest.raises(ImageError) as e:
        open_cache(dst).images([s for s in samples if s.name != "a0"])
    one_line_naming(e, "bad.png")


def test_open_cache_refuses_stale_and_missing_copies(src, tmp_path):
    dst = tmp_path / "cache"
    prepare(src, dst)
    samples = resolve_source(str(src), "train", 4)
    b = src / "train" / "b.jpg"
    st = b.stat()
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    with pytest.raises(ImageError) as e:
        open_cache(dst).images(samples)
    assert "changed" in one_line_naming(e, b, f"fastsr prepare {src} {dst}")
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    open_cache(dst).images(samples)

    npy = dst / "g.png.npy"
    data = npy.read_bytes()
    npy.write_bytes(data[:-1])
    with pytest.raises(ImageError) as e:
        open_cache(dst).images(samples)
    assert "damaged" in one_line_naming(e, npy)
    npy.unlink()
    with pytest.raises(ImageError) as e:
        open_cache(dst).images(samples)
    assert "missing" in one_line_naming(e, npy)

    with pytest.raises(ImageError) as e:
        open_cache(tmp_path / "nowhere").images(samples)
    one_line_naming(e, tmp_path / "nowhere", "fastsr prepare")


def test_dst_must_be_new_empty_or_a_cache_of_the_same_source(src, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(ImageError, match="exists and is not a fastsr cache; choose an empty or new folder") as e:
        prepare(src, notes)
    one_line_naming(e, notes)
    (notes / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ImageError, match="not a fastsr cache"):
        prepare(src, notes)
    assert sorted(p.name for p in notes.iterdir()) == ["manifest.json", "todo.txt"]  # nothing touched

    dst = tmp_path / "cache"
    dst.mkdir()  # empty is fine
    prepare(src, dst)
    other = tmp_path / "other"
    for sub in ("train", "val"):
        (other / sub).mkdir(parents=True)
        Image.fromarray(PHOTO[:20, :20]).save(other / sub / "x.png")
    with pytest.raises(ImageError) as e:
        prepare(other, dst)
    one_line_naming(e, dst, src.resolve(), other.resolve())


def test_cli_reports_unreadable_files_and_exits_2(src, tmp_path, capsys):
    (src / "train" / "bad.png").write_bytes(b"\x89PNG garbage")
    dst = tmp_path / "cache"
    assert main(["prepare", str(src), str(dst), "--workers", "1"]) == 2
    out, err = capsys.readouterr()
    assert f"prepared 5 images into {dst} (written 5, skipped 0)" in out
    lines = err.strip().splitlines()
    assert len(lines) == 2 and str(src / "train" / "bad.png") in lines[0]
    assert lines[1].startswith("1 of 6 images could not be read; fix or remove them and rerun fastsr prepare")

    (src / "train" / "bad.png").unlink()
    assert main(["prepare", str(src), str(dst), "--workers", "1"]) == 0
    assert "(written 0, skipped 5)" in capsys.readouterr().out
    npy = dst / "a1.png.npy"
    damaged = bytearray(npy.read_bytes())
    damaged[-1] ^= 0xFF  # same size, wrong checksum
    npy.write_bytes(damaged)
    assert main(["prepare", str(src), str(dst), "--workers", "1", "--verify"]) == 0
    assert f"{(src / 'train' / 'a1.png').resolve()}: its cached copy failed its checksum" in capsys.readouterr().out
    assert main(["prepare", str(tmp_path / "nowhere"), str(dst)]) == 2
    assert "nowhere: data source path not found" in capsys.readouterr().err
