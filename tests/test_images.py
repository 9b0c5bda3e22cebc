"""load_image / save_image / list_images: every supported mode becomes the same 8-bit RGB, and every
unusable file fails with one line naming it."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fastsr.data import image_to_tensor, list_images, load_image, read_header, save_image
from fastsr.data.images import load_image_with_alpha, output_format
from fastsr.errors import ImageError

RNG = np.random.default_rng(0)


def _rgb(h=20, w=30):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _one_line_naming(excinfo, path):
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def test_rgb_roundtrip(tmp_path):
    img = _rgb()
    Image.fromarray(img).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, img)


def test_gray_becomes_rgb(tmp_path):
    gray = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    np.testing.assert_array_equal(out, np.stack([gray] * 3, axis=2))


def test_palette_becomes_rgb(tmp_path):
    img = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), np.asarray(img.convert("RGB")))


def test_opaque_rgba_drops_alpha(tmp_path):
    img = _rgb()
    rgba = np.concatenate([img, np.full((20, 30, 1), 255, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), img)


def test_translucent_rgba_is_refused(tmp_path):
    rgba = np.concatenate([_rgb(), np.full((20, 30, 1), 255, np.uint8)], axis=2)
    rgba[3, 4, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "t.png")
    assert "transparency" in _one_line_naming(e, tmp_path / "t.png")


def test_translucent_gray_alpha_is_refused(tmp_path):
    la = np.zeros((8, 8, 2), np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    with pytest.raises(ImageError, match="transparency"):
        load_image(tmp_path / "la.png")


def test_16bit_gray_is_rounded(tmp_path):
    values = np.array([[0, 128, 129, 257, 32767, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    out = load_image(tmp_path / "g16.png")
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 2], expected)


def _png_rgb16(path, pixels):
    """Write a 16-bit RGB PNG by hand (Pillow cannot write one)."""
    h, w, _ = pixels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def test_16bit_colour_is_refused_not_truncated(tmp_path):
    path = tmp_path / "rgb16.png"
    _png_rgb16(path, np.full((4, 5, 3), 300, np.uint16))
    with pytest.raises(ImageError, match="16-bit colour") as e:
        load_image(path)
    _one_line_naming(e, path)


def test_cmyk_becomes_rgb(tmp_path):
    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "c.jpg")
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("content", [b"", b"this is text, not a PNG\n"], ids=["zero-byte", "text"])
def test_not_an_image(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError) as e:
        load_image(path)
    _one_line_naming(e, path)


def test_truncated_fails_at_load(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(_rgb(64, 64)).save(path)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ImageError) as e:
        load_image(path)
    assert "truncated or corrupt" in _one_line_naming(e, path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError) as e:
        load_image(tmp_path / "nope.png")
    _one_line_naming(e, tmp_path / "nope.png")


def test_save_tensor_rounds_and_creates_dirs(tmp_path):
    x = torch.rand(1, 3, 10, 12)
    path = tmp_path / "deep" / "er" / "out.png"
    save_image(path, x)
    expected = (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(load_image(path), expected)
    assert [p.name for p in path.parent.iterdir()] == ["out.png"]  # no temporary left behind


def test_save_array_and_3d_tensor(tmp_path):
    img = _rgb()
    save_image(tmp_path / "a.png", img)
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), img)
    save_image(tmp_path / "b.png", image_to_tensor(img)[0])
    np.testing.assert_array_equal(load_image(tmp_path / "b.png"), img)


def test_save_rejects_wrong_layout(tmp_path):
    with pytest.raises(ValueError):
        save_image(tmp_path / "x.png", torch.rand(10, 12, 3))


def test_list_images_filters_and_sorts(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.JPEG", "d.txt", "e.webp", "f.tiff"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.JPEG", "e.webp", "f.tiff"]


def test_list_images_errors(tmp_path):
    with pytest.raises(ImageError) as e:
        list_images(tmp_path / "missing")
    _one_line_naming(e, tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ImageError, match="no images") as e:
        list_images(tmp_path)
    _one_line_naming(e, tmp_path)


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.fromarray(_rgb(20, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above twice this: 200 pixels
    for read in (load_image, load_image_with_alpha, read_header):
        with pytest.raises(ImageError) as e:
            read(path)
        msg = _one_line_naming(e, path)
        assert "600 pixels" in msg and "200 pixels" in msg and "cut it into smaller images" in msg


def _rgba(alpha):
    return np.concatenate([_rgb(*alpha.shape), alpha[:, :, None]], axis=2)


def test_with_alpha_keeps_real_transparency(tmp_path):
    alpha = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    rgba = _rgba(alpha)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    out = load_image_with_alpha(tmp_path / "t.png")
    assert out.flags.c_contiguous and out.flags.writeable
    np.testing.assert_array_equal(out, rgba)

    la = np.stack([RNG.integers(0, 256, (8, 9), dtype=np.uint8), np.full((8, 9), 7, np.uint8)], axis=2)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_image_with_alpha(tmp_path / "la.png"),
                                  np.stack([la[:, :, 0]] * 3 + [la[:, :, 1]], axis=2))

    palette = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 3  # one palette entry is fully transparent
    palette.save(tmp_path / "p.png")
    expected = np.asarray(Image.open(tmp_path / "p.png").convert("RGBA"))
    assert expected[:, :, 3].min() == 0
    np.testing.assert_array_equal(load_image_with_alpha(tmp_path / "p.png"), expected)


def test_with_alpha_drops_an_opaque_alpha(tmp_path):
    rgba = _rgba(np.full((20, 30), 255, np.uint8))
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image_with_alpha(tmp_path / "a.png"), rgba[:, :, :3])  # HxWx3


# suffix -> (Pillow format read back, whether the pixels come back exactly)
FORMATS = {".png": ("PNG", True), ".jpg": ("JPEG", False), ".JPEG": ("JPEG", False), ".webp": ("WEBP", True),
           ".bmp": ("BMP", True), ".tif": ("TIFF", True), ".tiff": ("TIFF", True)}


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_save_picks_the_format_from_the_suffix(tmp_path, suffix):
    fmt, exact = FORMATS[suffix]
    smooth = np.kron(_rgb(4, 6), np.ones((16, 16, 1), np.uint8))  # JPEG-friendly: flat 16x16 blocks
    path = tmp_path / f"out{suffix}"
    save_image(path, smooth)
    with Image.open(path) as im:
        assert im.format == fmt
    back = load_image(path)
    if exact:
        np.testing.assert_array_equal(back, smooth)
    else:
        assert np.abs(back.astype(int) - smooth).mean() < 8  # lossy, but the same picture
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # written atomically, no temporary left


def test_jpeg_is_written_at_quality_95(tmp_path):
    img = _rgb(32, 32)
    save_image(tmp_path / "a.jpg", img)
    Image.fromarray(img).save(tmp_path / "b.jpg", quality=95)
    assert (tmp_path / "a.jpg").read_bytes() == (tmp_path / "b.jpg").read_bytes()


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
def test_save_rgba_keeps_alpha(tmp_path, suffix):
    rgba = _rgba(RNG.integers(0, 256, (20, 30), dtype=np.uint8))
    rgba[0, 0, 3] = 0  # WebP would drop the colour of a fully transparent pixel unless told otherwise
    save_image(tmp_path / f"t{suffix}", rgba)
    np.testing.assert_array_equal(load_image_with_alpha(tmp_path / f"t{suffix}"), rgba)


@pytest.mark.parametrize("suffix", [".jpg", ".bmp"])
def test_save_rgba_where_alpha_cannot_go_is_refused(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    with pytest.raises(ImageError, match="transparency.*png or .webp") as e:
        save_image(path, _rgba(np.zeros((4, 5), np.uint8)))
    _one_line_naming(e, path)
    assert not list(tmp_path.iterdir())


def test_unknown_suffix_and_oversize_are_refused(tmp_path):
    for name in ("out.gif", "out"):
        with pytest.raises(ImageError, match="unknown image suffix") as e:
            save_image(tmp_path / name, _rgb())
        _one_line_naming(e, tmp_path / name)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ImageError, match="16383 pixels a side") as e:
        output_format(tmp_path / "big.webp", (100, 16384, 3), source="in.png")
    assert "in.png -> " in _one_line_naming(e, tmp_path / "big.webp")
    assert output_format(tmp_path / "big.png", (100, 16384, 4)).format == "PNG"
