"""Scoring methods on the same held-out pairs by the SR protocol, and showing them side by side.

Used by the trainer's validation, `fastsr eval` and the quick start, so every number fastsr prints
comes from one code path: the same (HR, LR) pairs for every method, each output rounded to uint8 levels
with `scale` pixels shaved from each border, then Y-channel PSNR/SSIM and, when asked, the perceptual
metrics LPIPS and DISTS on the RGB image; the mean of per-image values for each test set.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from fastsr.data import save_image
from fastsr.data.validation import Pair
from fastsr.errors import ImageError, OutOfMemory
from fastsr.infer import DEFAULT_TILE, PYTHON_ADVICE, MemoryAdvice, upscale
from fastsr.metrics import psnr, ssim
from fastsr.ops import quantize
from fastsr.util import write_atomic

PROTOCOL_METRICS = ("psnr", "ssim")  # Y channel, uint8 levels, border shaved (fastsr.metrics)
METRIC_LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "dists": "DISTS"}


@dataclass(frozen=True)
class Metric:
    """A per-image metric of (SR, HR, gray), SR and HR 1x3xHxW in [0, 1] on the CPU, SR already rounded to uint8
    levels; `gray`: the HR came from a 1-channel file (`Pair.gray`)."""

    name: str
    score: Callable[[torch.Tensor, torch.Tensor, bool], float]


def build_metrics(names: Sequence[str], scale: int, device, weights: dict[str, str] | None = None,
                  y: str = "basicsr") -> list[Metric]:
    """The metrics called `names` (psnr, ssim, lpips, dists), each shaving `scale` pixels from every border,
    PSNR and SSIM on Y in convention `y` (`fastsr.metrics`). The perceptual ones run their networks on
    `device`, with backbone weights from `weights[name]` or the torch hub cache (fastsr.perceptual_metrics
    says where they come from)."""
    out = []
    for name in names:
        if name == "psnr":
            out.append(Metric(name, lambda sr, hr, gray: psnr(sr, hr, crop_border=scale, y=y, gray=gray).item()))
        elif name == "ssim":
            out.append(Metric(name, lambda sr, hr, gray: ssim(sr, hr, crop_border=scale, y=y, gray=gray).item()))
        else:
            from fastsr.perceptual_metrics import build_perceptual_metric  # loads networks: only when asked

            net = build_perceptual_metric(name, device, (weights or {}).get(name))
            out.append(Metric(name, _shaved(net, scale, device)))
    return out


def _shaved(net, border: int, device) -> Callable[[torch.Tensor, torch.Tensor, bool], float]:
    """A perceptual network's score of the RGB images with `border` shaved (a gray file is scored as RGB)."""
    def score(sr: torch.Tensor, hr: torch.Tensor, gray: bool) -> float:
        crop = (..., slice(border, -border or None), slice(border, -border or None))
        return float(net(sr[crop].to(device), hr[crop].to(device)).item())
    return score


@dataclass
class Score:
    """One method's per-image values of each metric on one set."""

    method: str
    values: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, metric: str) -> float:
        """The mean of `metric`'s per-image values (what tables show)."""
        return sum(self.values[metric]) / len(self.values[metric])


@dataclass
class SetResult:
    """The scores of every method on one test set."""

    name: str  # as shown in tables and logs: `Set5`, `samples`, a folder's name
    images: list[str]
    scores: list[Score]


@dataclass(frozen=True)
class Shard:
    """Which images of a set this process scores when several share the work (`rank` of `world`): image i when
    i % world == rank, so each process gets every world-th image and sizes even out along a set. `gather`
    gives every process the whole set's values in the set's order: the table one process would make."""

    rank: int = 0
    world: int = 1

    def mine(self, n: int) -> range:
        """The indices of this process's images among `n`."""
        return range(self.rank, n, self.world)

    def collect(self, part) -> list:
        """Every process's `part` (any picklable value), in rank order (a collective: all must call)."""
        if self.world == 1:
            return [part]
        import torch.distributed as dist

        parts: list = [None] * self.world
        dist.all_gather_object(parts, part)
        return parts

    def gather(self, scores: list[Score], n: int) -> list[Score]:
        """`scores` of this process's images merged with every other process's (a collective: all must call)."""
        if self.world == 1:
            return scores
        parts = self.collect([s.values for s in scores])
        merged = [Score(s.method, {m: [0.0] * n for m in s.values}) for s in scores]
        for rank, values in enumerate(parts):
            for score, theirs in zip(merged, values):
                for metric, column in theirs.items():
                    for i, value in zip(range(rank, n, self.world), column):
                        score.values[metric][i] = value
        return merged


ONE_PROCESS = Shard()


@contextmanager
def _no_autotuning() -> Iterator[None]:
    """cuDNN's autotuning off (a training run turns it on for its fixed crops): evaluation's images come in
    many sizes (a whole image up to the tile size, the perceptual metrics' networks on the whole image), and
    each new size would time every convolution's algorithms again, for a forward run once."""
    tuning = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = tuning


@torch.inference_mode()
@_no_autotuning()
def evaluate(methods: dict[str, nn.Module], pairs: list[Pair], scale: int, device, *,
             metrics: list[Metric] | None = None, tile: int = DEFAULT_TILE, pictures: Path | None = None,
             max_pictures: int = 4, advice: MemoryAdvice = PYTHON_ADVICE,
             record: Callable[[str, torch.Tensor, dict[str, torch.Tensor], torch.Tensor], None] | None = None,
             shard: Shard = ONE_PROCESS) -> list[Score]:
    """Score each method on every pair (PSNR and SSIM unless `metrics` says otherwise), running the models on
    tiles of `tile` LR pixels (0: whole images); optionally save LR / methods / HR pictures of the first few,
    and hand every image's (name, LR, outputs by method, HR) to `record` (an HTML report's `add`). With several
    processes each scores its `shard` of the pairs (and saves its pictures) and all get every value back.
    Out of device memory, upscaling or in a perceptual metric, it raises `OutOfMemory` naming the image and
    the knob of `advice` to change (the tile size; the metric to leave out)."""
    metrics = metrics if metrics is not None else build_metrics(PROTOCOL_METRICS, scale, device)
    scores = [Score(name, {m.name: [] for m in metrics}) for name in methods]
    for i in shard.mine(len(pairs)):
        name, hr, lr, gray = pairs[i]
        lr_dev = lr.to(device)
        outputs = {}
        for score, model in zip(scores, methods.values()):
            sr = quantize(upscale(model, lr_dev, scale, tile=tile, image=name, advice=advice).float().cpu())
            for m in metrics:
                try:
                    score.values[m.name].append(m.score(sr, hr, gray))
                except ValueError as err:  # an image a perceptual network cannot take (too small)
                    raise ImageError(f"{name}: {err}; remove it from the evaluation images or leave {m.name} out") from None
                except torch.OutOfMemoryError as err:  # a perceptual network, on the whole image
                    raise OutOfMemory(_metric_advice(advice, m.name, name, hr, device)) from err
            outputs[score.method] = sr
        if pictures is not None and i < max_pictures:
            save_side_by_side(pictures / f"{name}.png", lr, outputs, hr)
        if record is not None:
            record(name, lr, outputs, hr)
    return shard.gather(scores, len(pairs))


def _metric_advice(advice: MemoryAdvice, metric: str, image: str, hr: torch.Tensor, device) -> str:
    """A perceptual metric scores the whole image (no tiles): leave it out, or score on the CPU."""
    cpu = f" or run on the CPU ({advice.to_cpu(device)})" if advice.to_cpu(device) else ""
    h, w = hr.shape[-2:]
    return advice.line(f"scoring {image} ({w}x{h} HR) with {metric}", device,
                       f"{metric} runs on the whole image: leave it out of {advice.metrics}{cpu}")


def save_side_by_side(path: Path, lr: torch.Tensor, outputs: dict[str, torch.Tensor], hr: torch.Tensor) -> None:
    """One row: LR (enlarged by pixel repetition, so its pixels show), each method's output, HR."""
    size = hr.shape[-2:]
    lr_big = torch.nn.functional.interpolate(lr, size=size, mode="nearest")
    panels = {"LR": lr_big, **outputs, "HR": hr}
    label_h = 22
    width = size[1] * len(panels)
    canvas = Image.new("RGB", (width, size[0] + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (label, img) in enumerate(panels.items()):
        array = (quantize(img[0]).permute(1, 2, 0).mul(255).round().byte().numpy())
        canvas.paste(Image.fromarray(array), (k * size[1], label_h))
        draw.text((k * size[1] + 6, 4), label, fill="black")
    save_image(path, np.asarray(canvas))


def _header(metrics: Sequence[str]) -> str:
    return " / ".join(METRIC_LABELS.get(m, m) + ("↓" if m not in PROTOCOL_METRICS else "") for m in metrics)


def _cell(score: Score, metrics: Sequence[str]) -> str:
    return " / ".join(f"{score.mean(m):.2f}" if m == "psnr" else f"{score.mean(m):.4f}" for m in metrics)


def format_table(results: list[SetResult], metrics: Sequence[str], caption: str, title: str = "Held-out results"):
    """The paper's table: a row per method, a column per test set holding the mean of each metric
    (PSNR in dB and SSIM on Y; ↓ marks lower-is-better); the best of each set by the first metric in bold."""
    from rich.table import Table

    table = Table(title=title, caption=caption)
    table.add_column("Method")
    for result in results:
        table.add_column(f"{result.name} ({len(result.images)})\n{_header(metrics)}", justify="right")
    def goodness(score: Score) -> float:  # of the first metric: higher is better
        return score.mean(metrics[0]) if metrics[0] in PROTOCOL_METRICS else -score.mean(metrics[0])

    best = {r.name: max(map(goodness, r.scores)) for r in results}
    for row, method in enumerate(s.method for s in results[0].scores):
        cells = []
        for r in results:
            score = r.scores[row]
            text = _cell(score, metrics)
            cells.append(f"[bold]{text}[/]" if goodness(score) == best[r.name] and len(r.scores) > 1 else text)
        table.add_row(method, *cells)
    return table


def results_to_json(results: list[SetResult], metrics: Sequence[str], meta: dict) -> dict:
    """Per-set means and per-image values of every method, with the protocol's settings in `meta`."""
    return {
        **meta,
        "metrics": list(metrics),
        "lower_is_better": [m for m in metrics if m not in PROTOCOL_METRICS],
        "sets": {
            r.name: {
                "images": r.images,
                "methods": {s.method: {**{m: s.mean(m) for m in metrics}, "per_image": s.values} for s in r.scores},
            }
            for r in results
        },
    }


def write_csv(path: Path, results: list[SetResult], metrics: Sequence[str]) -> None:
    """One row per (set, method, image), then one per (set, method) with an empty `image`: the set's mean."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["set", "method", "image", *metrics])
    for r in results:
        for s in r.scores:
            for i, image in enumerate(r.images):
                writer.writerow([r.name, s.method, image, *(repr(s.values[m][i]) for m in metrics)])
        for s in r.scores:
            writer.writerow([r.name, s.method, "", *(repr(s.mean(m)) for m in metrics)])
    write_atomic(path, lambda f: f.write(text.getvalue().encode()))
