"""Make a stand-in for the benchmark test-set layout from photographs scikit-image ships, for machines
that cannot download Set5/Set14/B100 (`fastsr download-benchmarks`): every image is one the quick
start never trains on, so its numbers are held-out numbers, but they are not the published sets'.

    python benchmarks/sample_testsets.py runs/testsets
    fastsr eval --model bicubic --data set5 --data set14 --data b100 --data-root runs/testsets

Set5: five 192x192 crops of the quick start's held-out photographs (astronaut, chelsea, coffee);
Set14: fourteen 96x96 crops of them; B100: scikit-image's other images the quick start does not train
on (cell, color, microaneurysms, page, phantom, text), whole.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import skimage.data

from fastsr.data import load_image, save_image
from fastsr.data.sources import SAMPLES_VAL

UNSEEN = ("cell.png", "color.png", "microaneurysms.png", "page.png", "phantom.png", "text.png")


def crops(photos: list[np.ndarray], size: int, count: int) -> list[np.ndarray]:
    """`count` size x size crops, taken in turn from each photo on a regular grid (no randomness)."""
    out = []
    for k in range(count):
        photo = photos[k % len(photos)]
        h, w = photo.shape[:2]
        slot = k // len(photos)
        y = (slot * size // 2 + size // 3 * slot) % max(1, h - size)
        x = (slot * size) % max(1, w - size)
        out.append(photo[y:y + size, x:x + size])
    return out


def main() -> None:
    """Write DEST/Set5/HR, DEST/Set14/HR and DEST/B100/HR as numbered PNGs (existing files are overwritten)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    dest = ap.parse_args().dest
    root = Path(os.path.dirname(skimage.data.__file__))
    held_out = [load_image(root / name) for name in SAMPLES_VAL]
    sets = {"Set5": crops(held_out, 192, 5), "Set14": crops(held_out, 96, 14),
            "B100": [load_image(root / name) for name in UNSEEN]}
    for name, images in sets.items():
        folder = dest / name / "HR"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            save_image(folder / f"{i:03d}.png", np.ascontiguousarray(image))
        print(f"{folder}: {len(images)} images")


if __name__ == "__main__":
    main()
