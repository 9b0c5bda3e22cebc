"""`fastsr.ops.jpeg` against real JPEG files: PIL's save (libjpeg-turbo, its defaults) and decode, on real
photographs at several qualities and odd sizes; per-sample qualities in one batch; the checks on its
arguments; 8-bit levels on the input's device.

Measured (see fastsr/ops/jpeg.py's docstring): equal to PIL bit for bit on every image, size and quality tried, where
a float DCT leaves 71-93% of the values equal (MAE 0.14-0.37 levels), bilinear chroma upsampling 95-98%
(MAE 0.04-0.06) and Kornia's codec about 30% (MAE 0.9-1.8). The bounds below keep a small margin for
another libjpeg-turbo build and still catch any of those."""

import io

import numpy as np
import pytest
import torch
from conftest import DEVICES
from PIL import Image, features
from skimage import data as skdata

from fastsr.ops.jpeg import jpeg, quant_tables

pytestmark = pytest.mark.skipif(not features.check_feature("libjpeg_turbo"),
                                reason="the reference is PIL built with libjpeg-turbo")

MAX_MAE = 0.005  # levels; measured 0
MIN_EQUAL = 0.999  # fraction of values equal; measured 1


def _pil_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def _to_levels(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _errors(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    diff = np.abs(ours.astype(int) - reference.astype(int))
    return float(diff.mean()), float((diff == 0).mean())


PHOTOS = {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "chelsea": skdata.chelsea()}


@pytest.mark.parametrize("name", list(PHOTOS))
def test_matches_pil_on_photographs_at_each_quality(name):
    photo = PHOTOS[name]
    qualities = [10, 30, 50, 75, 95]
    ours = _to_levels(jpeg(_to_tensor([photo] * len(qualities)), torch.tensor(qualities)))
    for quality, out in zip(qualities, ours):
        reference = _pil_jpeg(photo, quality)
        mae, equal = _errors(out, reference)
        input_mae, _ = _errors(photo, reference)
        assert mae <= MAX_MAE and equal >= MIN_EQUAL, (name, quality, mae, equal)
        assert input_mae > 1.0 and mae < input_mae / 100, (name, quality, mae, input_mae)  # the artifacts are there


@pytest.mark.parametrize("size", [(37, 53), (101, 77), (250, 331), (1, 1), (3, 5), (17, 4), (2, 9)])
def test_odd_sizes_match_pil(size):
    # partial MCUs on either side, and chroma two samples wide or less (libjpeg then only repeats it)
    height, width = size
    photo = PHOTOS["astronaut"]
    crops = [np.ascontiguousarray(photo[y:y + height, x:x + width]) for y, x in [(100, 150), (7, 13), (262, 60)]]
    qualities = [10, 50, 95]
    ours = _to_levels(jpeg(_to_tensor(crops), torch.tensor(qualities)))
    for crop, quality, out in zip(crops, qualities, ours):
        assert out.shape == crop.shape
        mae, equal = _errors(out, _pil_jpeg(crop, quality))
        assert mae <= MAX_MAE and equal >= MIN_EQUAL, (size, quality, mae, equal)


def test_a_batch_of_mixed_qualities_equals_each_image_alone():
    photo = PHOTOS["coffee"]
    crops = [np.ascontiguousarray(photo[y:y + 72, x:x + 88]) for y, x in [(0, 0), (50, 111), (200, 300), (301, 17), (9, 500)]]
    batch = _to_tensor(crops)
    qualities = torch.tensor([10, 95, 1, 50, 75])
    together = jpeg(batch, qualities)
    for i in range(len(crops)):
        assert torch.equal(together[i:i + 1], jpeg(batch[i:i + 1], qualities[i:i + 1]))
    assert not torch.equal(together[0], jpeg(batch[:1], torch.tensor([95]))[0])  # each its own quality


def test_quant_tables_are_the_ones_pil_writes():
    qualities = [1, 10, 25, 49, 50, 51, 75, 95, 100]
    tables = quant_tables(torch.tensor(qualities))
    for quality, table in zip(qualities, tables):
        buffer = io.BytesIO()
        Image.fromarray(PHOTOS["chelsea"][:16, :16]).save(buffer, "JPEG", quality=quality)
        written = Image.open(buffer).quantization  # natural (row-major) order
        assert [list(written[0]), list(written[1])] == table.reshape(2, 64).tolist(), quality


@pytest.mark.parametrize("bad", [0, 101, -3, 50.5, float("nan")])
def test_a_quality_outside_1_to_100_or_not_an_integer_is_refused_naming_it(bad):
    images = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="integer in 1..100") as raised:
        jpeg(images, torch.tensor([50, bad]))
    assert repr(bad) in str(raised.value) or str(bad) in str(raised.value)


def test_quality_must_be_one_per_image():
    with pytest.raises(ValueError, match="tensor of 2 qualities"):
        jpeg(torch.rand(2, 3, 16, 16), torch.tensor([50]))
    with pytest.raises(ValueError, match="tensor of 1 qualities"):
        jpeg(torch.rand(1, 3, 16, 16), 50)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        jpeg(torch.rand(3, 16, 16), torch.tensor([50]))


@pytest.mark.parametrize("device", DEVICES)
def test_output_is_on_8_bit_levels_on_the_input_device(device):
    images = torch.rand(3, 3, 24, 40, device=device)
    out = jpeg(images, torch.tensor([20.0, 60.0, 90.0]))  # integer-valued floats, on the host
    assert out.shape == images.shape and out.dtype == torch.float32 and out.device == images.device
    levels = out * 255
    assert torch.equal(levels, levels.round()) and out.min() >= 0 and out.max() <= 1
    on_cpu = jpeg(images.cpu(), torch.tensor([20, 60, 90]))
    assert torch.equal(out.cpu(), on_cpu)  # the same integers on every device


def test_images_of_a_canvas_are_coded_as_files_of_their_own_size():
    """Images of mixed sizes in one canvas (their own sizes given) decode exactly as each alone."""
    torch.manual_seed(0)
    canvas = torch.rand(4, 3, 40, 45)
    heights, widths = torch.tensor([40, 17, 33, 9]), torch.tensor([45, 30, 8, 21])
    quality = torch.tensor([30, 75, 50, 95])
    out = jpeg(canvas, quality, heights, widths)
    for i in range(4):
        h, w = int(heights[i]), int(widths[i])
        alone = jpeg(canvas[i:i + 1, :, :h, :w].contiguous(), quality[i:i + 1])
        assert torch.equal(out[i:i + 1, :, :h, :w], alone), i
