"""Finding the images a run cannot use before it starts, and the recipe's policy for them.

A training run visits each image many times over hours; an image that cannot serve (unreadable,
truncated, transparent, 16-bit colour, smaller than the crop, too small to score) must be found
before the first step, not when the loader first reaches it at 3 a.m. `data.bad_images` says what
then happens: `error` refuses the run naming the files, `skip` leaves them out and names each. Every
image is checked before that one refusal (training and validation alike, as `fastsr eval` checks all its
sets), so a user fixes them all at once rather than meeting the next one on each rerun.

Training images read from files are decoded in full here (a truncated PNG has an intact header), in
threads (Pillow decodes without holding the GIL), each process checking its share; a decode-once
cache (`fastsr prepare`) already decoded everything, so its manifest is enough.

This is where a run checks that the crop fits each training image (`check_crop_fits`), once: the crop
plan takes the sizes of the images kept here as checked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from fastsr.data.cache import Cache, open_cache
from fastsr.data.images import load_image
from fastsr.data.plan import check_crop_fits
from fastsr.data.realworld import RealWorldLR
from fastsr.data.sources import Sample
from fastsr.data.validation import Pair, load_val_pair
from fastsr.errors import ImageError

# What a refusal of evaluation images tells the user to do (a training run can also skip them: apply_policy)
FIX_AND_RERUN = "Fix or remove them and rerun"
NAMED = 20  # problems named in a refusal (the rest counted); `skip` names every one


def screen_train(samples: Sequence[Sample], data, scale: int, *, cache: Cache | None = None, rank: int = 0,
                 world_size: int = 1) -> list[tuple[str, str]]:
    """(file, one-line problem) for each training image a recipe's `data` section cannot use.

    `cache` is data.cache opened (`open_cache`) by the caller, to hand on to `make_batch_source` so that
    a run reads the manifest once; opened here when not given.
    With several processes each decodes every `world_size`-th file from `rank`, so the problems of all
    processes must be gathered (and de-duplicated) before deciding, for every process to drop the same files."""
    if data.cache is not None:
        cache = open_cache(data.cache, data.source) if cache is None else cache
        failed = cache.failures  # images `fastsr prepare` could not decode
        problems = [(str(s.hr), failed[str(s.hr.resolve())]) for s in samples if str(s.hr.resolve()) in failed]
        kept = [s for s in samples if str(s.hr.resolve()) not in failed]
        for s, entry in zip(kept, cache.images(kept)):  # refuses a stale cache
            problems += _problem(s, check_crop_fits, str(s.hr), entry.height, entry.width, scale, data.hr_crop)
        return problems

    def decode(sample: Sample) -> None:
        img = load_image(sample.hr)
        check_crop_fits(str(sample.hr), img.shape[0], img.shape[1], scale, data.hr_crop)

    mine = list(samples)[rank::world_size]
    with ThreadPoolExecutor(max(1, min(len(mine), os.cpu_count() or 1))) as pool:
        return [p for found in pool.map(lambda s: _problem(s, decode, s), mine) for p in found]


def without(samples: Sequence[Sample], problems: list[tuple[str, str]]) -> list[Sample]:
    """`samples` less those whose HR file is named in `problems` (the screen's (file, problem) pairs), in order."""
    bad = {path for path, _ in problems}
    return [s for s in samples if str(s.hr) not in bad]


def screen_val(samples: Sequence[Sample], scale: int, method: str | RealWorldLR = "matlab", max_images: int | None = None
               ) -> tuple[list[Pair], list[tuple[str, str]]]:
    """(the first `max_images` usable validation pairs, (file, problem) for each unusable image met on the way)."""
    pairs, problems = [], []
    for index, s in enumerate(samples):
        if max_images is not None and len(pairs) == max_images:
            break
        try:
            pairs.append(load_val_pair(s, scale, method, index))
        except ImageError as e:
            problems.append((str(s.hr), str(e)))
    return pairs, problems


def load_val_set(samples: Sequence[Sample], scale: int, method: str | RealWorldLR = "matlab",
                 max_images: int | None = None) -> list[Pair]:
    """The first `max_images` validation pairs (`load_val_pair`), or one ImageError naming every unusable image."""
    pairs, problems = screen_val(samples, scale, method, max_images)
    refuse({"validation": problems}, FIX_AND_RERUN)
    return pairs


def apply_policy(problems: dict[str, list[tuple[str, str]]], policy: str) -> list[str]:
    """Refuse (`error`) in one line naming the first few problems of every kind (`{"training": [(file,
    problem), ...], "validation": ...}`), or return one warning per skipped image (`skip`)."""
    if policy == "error":
        refuse(problems, "Fix or remove them, or set data.bad_images=skip to run without them")
    return [f"skipped {what} image {message}" for what, found in problems.items() for _, message in found]


def refuse(problems: dict[str, list[tuple[str, str]]], remedy: str) -> None:
    """Raise one one-line ImageError naming the first NAMED problems of all kinds (and counting the rest),
    then `remedy`, what to do; return when there are none."""
    lines = [message for found in problems.values() for _, message in found]
    if not lines:
        return
    counts = {what: len(found) for what, found in problems.items() if found}
    head = (f"{len(lines)} unusable {next(iter(counts))} image(s)" if len(counts) == 1 else
            f"{len(lines)} unusable images ({', '.join(f'{n} {what}' for what, n in counts.items())})")
    more = f"; and {len(lines) - NAMED} more" if len(lines) > NAMED else ""
    raise ImageError(f"{head}: {'; '.join(lines[:NAMED])}{more}. {remedy}")


def _problem(sample: Sample, check, *args) -> list[tuple[str, str]]:
    """[] when `check(*args)` passes, else [(the sample's file, its one-line message)]."""
    try:
        check(*args)
    except ImageError as e:
        return [(str(sample.hr), str(e))]
    return []
