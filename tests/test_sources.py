"""resolve_source: the built-in samples, a DIV2K tree with paired LR, plain folders, test sets by name,
and clear errors; and the offline parts of download_div2k and download_benchmarks."""

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from fastsr.data import Sample, download_div2k, load_image, resolve_source
from fastsr.data.benchmarks import download_benchmarks
from fastsr.data.sources import SAMPLES_TRAIN, SAMPLES_VAL, source_label
from fastsr.errors import DownloadError, ImageError


def _png(path, h=24, w=24):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def test_samples_counts_and_disjoint():
    train = resolve_source("samples", "train", 4)
    val = resolve_source("samples", "val", 4)
    assert len(train) == len(SAMPLES_TRAIN) == 13 and len(val) == len(SAMPLES_VAL) == 3
    assert not {s.hr for s in train} & {s.hr for s in val}
    assert all(s.lr is None and s.hr.is_file() for s in train + val)
    assert [s.name for s in val] == ["astronaut", "chelsea", "coffee"]


def test_samples_gray_photo_loads_as_rgb():
    camera = next(s for s in resolve_source("samples", "train", 4) if s.name == "camera")
    img = load_image(camera.hr)
    assert img.shape == (512, 512, 3)
    assert (img[:, :, 0] == img[:, :, 2]).all()


def test_div2k_tree_with_paired_lr(tmp_path):
    for i in (1, 2, 3):
        _png(tmp_path / "DIV2K_train_HR" / f"{i:04d}.png")
        _png(tmp_path / "DIV2K_train_LR_bicubic" / "X4" / f"{i:04d}x4.png", 6, 6)
    for i in (801, 802):
        _png(tmp_path / "DIV2K_valid_HR" / f"{i:04d}.png")
    train = resolve_source(str(tmp_path), "train", 4)
    assert [s.name for s in train] == ["0001", "0002", "0003"]
    assert train[1].lr == tmp_path / "DIV2K_train_LR_bicubic" / "X4" / "0002x4.png"
    val = resolve_source(str(tmp_path), "val", 4)
    assert [(s.name, s.lr) for s in val] == [("0801", None), ("0802", None)]
    assert all(s.lr is None for s in resolve_source(str(tmp_path), "train", 2))  # no X2 folder


def test_div2k_missing_lr_file_is_named(tmp_path):
    for i in (1, 2):
        _png(tmp_path / "DIV2K_train_HR" / f"{i:04d}.png")
    _png(tmp_path / "DIV2K_train_LR_bicubic" / "X4" / "0001x4.png", 6, 6)
    with pytest.raises(ImageError, match="0002x4.png"):
        resolve_source(str(tmp_path), "train", 4)


def test_div2k_missing_split_names_folder(tmp_path):
    _png(tmp_path / "DIV2K_train_HR" / "0001.png")
    with pytest.raises(ImageError, match="DIV2K_valid_HR"):
        resolve_source(str(tmp_path), "val", 4)


@pytest.mark.parametrize("n, n_val", [(1, 1), (9, 1), (20, 2), (31, 3)])
def test_plain_folder_holds_out_last_tenth(tmp_path, n, n_val):
    for i in range(n):
        (tmp_path / f"img{i:03d}.png").write_bytes(b"")
    (tmp_path / "readme.txt").write_text("not an image")
    val = resolve_source(str(tmp_path), "val", 4)
    assert [s.name for s in val] == [f"img{i:03d}" for i in range(n - n_val, n)]
    if n == 1:
        with pytest.raises(ImageError, match="held out"):
            resolve_source(str(tmp_path), "train", 4)
        return
    train = resolve_source(str(tmp_path), "train", 4)
    assert [s.name for s in train] == [f"img{i:03d}" for i in range(n - n_val)]
    # An eval set (Set5-like folder) is scored whole.
    assert [s.name for s in resolve_source(str(tmp_path), "eval", 4)] == [f"img{i:03d}" for i in range(n)]


@pytest.mark.parametrize("val_dir", ["val", "valid"])
def test_train_val_subfolders(tmp_path, val_dir):
    for name in ("a", "b"):
        _png(tmp_path / "train" / f"{name}.png")
    _png(tmp_path / val_dir / "c.jpg")
    assert [s.name for s in resolve_source(str(tmp_path), "train", 3)] == ["a", "b"]
    assert resolve_source(str(tmp_path), "val", 3) == [Sample(tmp_path / val_dir / "c.jpg")]
    assert resolve_source(str(tmp_path), "eval", 3) == [Sample(tmp_path / val_dir / "c.jpg")]


def test_single_file_is_a_val_source(tmp_path):
    _png(tmp_path / "one.png")
    assert resolve_source(str(tmp_path / "one.png"), "val", 4) == [Sample(tmp_path / "one.png", name="one")]
    with pytest.raises(ImageError, match="val/eval"):
        resolve_source(str(tmp_path / "one.png"), "train", 4)


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ImageError) as e:
        resolve_source(str(missing), "train", 4)
    assert str(missing) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ImageError, match="fastsr download-div2k .*/DIV2K`"):
        resolve_source(str(tmp_path / "DIV2K"), "train", 4)


def test_unknown_name_lists_builtins():
    with pytest.raises(ImageError, match="built-in: samples") as e:
        resolve_source("sampels", "train", 4)
    assert "'sampels'" in str(e.value)


def test_empty_folder_is_named(tmp_path):
    with pytest.raises(ImageError, match="no images") as e:
        resolve_source(str(tmp_path), "val", 4)
    assert str(tmp_path) in str(e.value)


# download_div2k, offline: a file:// "server", hand-downloaded zips, the skip logic and the failure line.


def _div2k_zip(path, folder, names):
    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            z.writestr(f"{folder}/{name}", b"png bytes")


VALID_NAMES = [f"{i:04d}.png" for i in range(801, 901)]


def test_download_fetches_and_extracts(tmp_path):
    server, dest = tmp_path / "server", tmp_path / "div2k"
    server.mkdir()
    _div2k_zip(server / "DIV2K_valid_HR.zip", "DIV2K_valid_HR", VALID_NAMES)
    _div2k_zip(server / "DIV2K_valid_LR_bicubic_X4.zip", "DIV2K_valid_LR_bicubic/X4",
               [n.replace(".png", "x4.png") for n in VALID_NAMES])
    dest.mkdir()
    (dest / "DIV2K_valid_HR.zip.part").write_bytes(b"stale partial bytes")  # file:// cannot resume: restarts
    download_div2k(dest, parts=("valid_HR", "valid_LR_bicubic"), base_url=server.as_uri(),
                   md5={p.name: _md5(p) for p in server.iterdir()})
    assert len(list((dest / "DIV2K_valid_HR").glob("*.png"))) == 100
    assert not (dest / "DIV2K_valid_HR.zip.part").exists()
    val = resolve_source(str(dest), "val", 4)
    assert len(val) == 100 and val[0].lr == dest / "DIV2K_valid_LR_bicubic" / "X4" / "0801x4.png"


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_skips_complete_parts_and_uses_hand_downloaded_zips(tmp_path):
    unreachable = "http://127.0.0.1:1/"
    for name in VALID_NAMES:
        _png(tmp_path / "DIV2K_valid_HR" / name, 2, 2)
    download_div2k(tmp_path, parts=("valid_HR",), base_url=unreachable)  # complete: nothing fetched
    _div2k_zip(tmp_path / "DIV2K_valid_LR_bicubic_X2.zip", "DIV2K_valid_LR_bicubic/X2", VALID_NAMES)
    download_div2k(tmp_path, scales=(2,), parts=("valid_LR_bicubic",), base_url=unreachable,
                   md5={"DIV2K_valid_LR_bicubic_X2.zip": _md5(tmp_path / "DIV2K_valid_LR_bicubic_X2.zip")})
    assert len(list((tmp_path / "DIV2K_valid_LR_bicubic" / "X2").glob("*.png"))) == 100


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:1/", "file:///nonexistent/div2k/"])
def test_download_failure_is_one_line(tmp_path, base_url):
    with pytest.raises(DownloadError) as e:
        download_div2k(tmp_path, parts=("valid_HR",), base_url=base_url)
    msg = str(e.value)
    assert "\n" not in msg and base_url.rstrip("/") + "/DIV2K_valid_HR.zip" in msg
    assert "by hand" in msg and str(tmp_path) in msg


def test_incomplete_zip_is_reported(tmp_path):
    _div2k_zip(tmp_path / "DIV2K_valid_HR.zip", "DIV2K_valid_HR", VALID_NAMES[:3])
    with pytest.raises(DownloadError, match="extracted 3 PNGs.*expected 100"):
        download_div2k(tmp_path, parts=("valid_HR",), base_url="http://127.0.0.1:1/", md5={})


def test_a_zip_that_fails_its_published_md5_is_moved_aside_not_extracted(tmp_path):
    """A hand-downloaded (or truncated) file that is not the published one: refused before extraction."""
    _div2k_zip(tmp_path / "DIV2K_valid_HR.zip", "DIV2K_valid_HR", VALID_NAMES)
    with pytest.raises(DownloadError) as e:
        download_div2k(tmp_path, parts=("valid_HR",), base_url="http://127.0.0.1:1/")  # the real published MD5
    msg = str(e.value)
    assert "\n" not in msg and "9fcdda83005c5e5997799b69f955ff88" in msg and "rerun" in msg
    assert not (tmp_path / "DIV2K_valid_HR").exists() and (tmp_path / "DIV2K_valid_HR.zip.bad").is_file()


# Test sets: the benchmark.tar layout (benchmark/<Set>/HR/*.png beside LR_bicubic/), served from file://.

BENCH_COUNTS = {"Set5": 5, "Set14": 14, "B100": 100, "Urban100": 100}


def _benchmark_tar(path, counts=BENCH_COUNTS):
    png = io.BytesIO()
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(png, format="PNG")
    with tarfile.open(path, "w") as tar:
        for folder, n in counts.items():
            for i in range(n):
                for member in (f"benchmark/{folder}/HR/img{i:03d}.png", f"benchmark/{folder}/LR_bicubic/X4/img{i:03d}x4.png"):
                    info = tarfile.TarInfo(member)
                    info.size = len(png.getvalue())
                    tar.addfile(info, io.BytesIO(png.getvalue()))


def test_download_benchmarks_extracts_the_hr_images_into_the_layout(tmp_path):
    server, dest = tmp_path / "server", tmp_path / "benchmarks"
    server.mkdir()
    _benchmark_tar(server / "benchmark.tar")
    url, md5 = (server / "benchmark.tar").as_uri(), _md5(server / "benchmark.tar")
    notes = download_benchmarks(dest, ("set5", "bsd100", "manga109"), url=url, md5=md5)
    assert sorted(p.name for p in dest.iterdir()) == ["B100", "Set5", "benchmark.tar"]  # only what was asked
    assert len(list((dest / "Set5" / "HR").iterdir())) == 5 and not (dest / "Set5" / "LR_bicubic").exists()
    assert len(notes) == 1 and "Manga109 is distributed on request" in notes[0] and "Manga109/HR" in notes[0]
    assert [s.name for s in resolve_source("set5", "eval", 4, benchmark_root=dest)] == [f"img{i:03d}" for i in range(5)]
    assert len(resolve_source("B100", "val", 4, benchmark_root=str(dest))) == 100
    (server / "benchmark.tar").unlink()
    download_benchmarks(dest, ("set5", "b100"), url=url, md5=md5)  # complete: nothing fetched


def test_download_benchmarks_checks_the_archive(tmp_path):
    _benchmark_tar(tmp_path / "benchmark.tar", {"Set5": 4})  # by hand, but a set short
    with pytest.raises(DownloadError, match="extracted 4 images into .*Set5/HR, expected 5"):
        download_benchmarks(tmp_path, ("set5",), url="http://127.0.0.1:1/benchmark.tar", md5=None)
    with pytest.raises(DownloadError, match="not the published 4ace41d3"):
        download_benchmarks(tmp_path, ("set5",), url="http://127.0.0.1:1/benchmark.tar")
    with pytest.raises(DownloadError, match="unknown test set 'set6'"):
        download_benchmarks(tmp_path, ("set6",))


def test_test_sets_by_name_say_how_to_get_them(tmp_path):
    with pytest.raises(ImageError, match=f"Set14: no images at {tmp_path}/Set14/HR; .*fastsr download-benchmarks"):
        resolve_source("set14", "eval", 4, benchmark_root=tmp_path)
    with pytest.raises(ImageError, match="Set5 is a test set"):
        resolve_source("set5", "train", 4, benchmark_root=tmp_path)
    assert [source_label(s) for s in ("set5", "BSD100", "samples", str(tmp_path))] == ["Set5", "B100", "samples",
                                                                                     tmp_path.name]


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `self.server.payload`, honouring `Range: bytes=N-` as a real download server does."""

    def do_GET(self):
        body = self.server.payload
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers["Range"] else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])
        self.server.ranges.append(start)

    def log_message(self, *args):
        pass


def test_download_resumes_from_the_part_file(tmp_path):
    _div2k_zip(tmp_path / "full.zip", "DIV2K_valid_HR", VALID_NAMES)
    payload = (tmp_path / "full.zip").read_bytes()
    dest = tmp_path / "div2k"
    dest.mkdir()
    (dest / "DIV2K_valid_HR.zip.part").write_bytes(payload[:1000])
    server = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    server.payload, server.ranges = payload, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        download_div2k(dest, parts=("valid_HR",), base_url=f"http://127.0.0.1:{server.server_port}/",
                       md5={"DIV2K_valid_HR.zip": _md5(tmp_path / "full.zip")})
    finally:
        server.shutdown()
    assert server.ranges == [1000]
    assert (dest / "DIV2K_valid_HR.zip").read_bytes() == payload
    assert len(list((dest / "DIV2K_valid_HR").glob("*.png"))) == 100


# A failed download leaves nothing it made, but for what a rerun resumes from.


def _tree(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None) for p in root.rglob("*"))


@pytest.mark.parametrize("download", [
    lambda dest: download_div2k(dest, parts=("valid_HR",), base_url="http://127.0.0.1:9/"),  # refused at once
    lambda dest: download_benchmarks(dest, ("set5",), url="file:///nonexistent/benchmark.tar"),
    lambda dest: download_benchmarks(dest, ("set6",)),
], ids=["div2k-unreachable", "benchmarks-missing-file", "benchmarks-unknown-set"])
def test_a_failed_download_leaves_no_folder_it_made_and_a_users_folder_as_it_was(tmp_path, download):
    with pytest.raises(DownloadError):
        download(tmp_path / "DIR" / "a" / "b")
    assert not (tmp_path / "DIR").exists()
    mine = tmp_path / "mine"
    (mine / "empty").mkdir(parents=True)
    (mine / "notes.txt").write_text("a user's file")
    before = _tree(mine)
    with pytest.raises(DownloadError):
        download(mine)
    assert _tree(mine) == before


def test_ctrl_c_leaves_no_folder_it_made(tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("fastsr.data.div2k.fetch_verified", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download_div2k(tmp_path / "DIR" / "a", parts=("valid_HR",))
    assert not (tmp_path / "DIR").exists()


class _CutShortHandler(http.server.BaseHTTPRequestHandler):
    """Announces the whole payload, sends its first `self.server.sent` bytes and closes the connection."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.payload)))
        self.end_headers()
        self.wfile.write(self.server.payload[:self.server.sent])

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("sent", [0, 1000])
def test_a_cut_download_keeps_the_part_only_if_bytes_came(tmp_path, sent):
    """The .part of a connection that closed early is what a rerun resumes from (not an archive to verify and
    move aside); with no bytes in it there is nothing to resume, and the folders made go too."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _CutShortHandler)
    server.payload, server.sent = bytes(5000), sent
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dest = tmp_path / "DIR" / "div2k"
    try:
        with pytest.raises(DownloadError, match=f"closed after {sent} of 5000 bytes"):
            download_div2k(dest, parts=("valid_HR",), base_url=f"http://127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
    if sent:
        assert _tree(tmp_path / "DIR") == [("div2k", None), ("div2k/DIV2K_valid_HR.zip.part", bytes(sent))]
    else:
        assert not (tmp_path / "DIR").exists()
