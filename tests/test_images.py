"""load_image / save_image / list_images: every supported mode becomes the same 8-bit RGB, and every
unusable file fails with one line naming it."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fastsr.data import ImageError, image_to_tensor, list_images, load_image, save_image

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
