"""Validation during training: the generator and bicubic scored on each validation set, exactly as
`fastsr eval` scores the weights saved at that step, with side-by-side pictures and a log record per set."""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn

from fastsr.engine.runlog import RunLog
from fastsr.evaluate import ONE_PROCESS, Metric, Shard, evaluate
from fastsr.infer import MemoryAdvice
from fastsr.models import build_generator
from fastsr.recipe import Recipe


def as_saved(model: nn.Module) -> nn.Module:
    """`model` with its tensors in the layout of a saved weights file: itself, or a copy when training laid it
    out channels_last. A convolution sums in another order in the other layout, so scoring the training layout
    would differ from `fastsr eval` of the saved weights in the last digits."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.is_contiguous() for t in tensors):
        return model
    return deepcopy(model).to(memory_format=torch.contiguous_format)


def share_rank0_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers of `model` (a collective): a batch norm's running statistics follow
    each process's own last batches, and rank 0's are the ones saved, so the processes that share a validation
    must score with those. (DDP copies rank 0's buffers to the others at each forward anyway.)"""
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def validate(model: nn.Module, val_sets: dict[str, list], metrics: list[Metric], recipe: Recipe, device, log: RunLog,
             step: int, shard: Shard = ONE_PROCESS) -> str:
    """Score `model` and bicubic on each of `val_sets` (evaluation runs the model in eval mode and restores its
    mode), save the side-by-side pictures under the run directory, log a record per set; return a one-line
    summary. The numbers are those `fastsr eval` gives for the weights saved at this step (`as_saved`). Called
    by every process of a run, each scoring its `shard` of the images (and saving its pictures); the log is
    rank 0's."""
    if shard.world > 1:
        share_rank0_buffers(model)
    model = as_saved(model)
    # out of memory: validation's own knobs, and the training state it shares the device with
    advice = MemoryAdvice(tile="train.val_tile", metrics="train.val_metrics", cpu=None,
                          where=f"validating at step {step}, beside the training state",
                          then="resume with train.resume=auto")
    shown, baseline = [], build_generator("bicubic", scale=recipe.scale)
    for name, pairs in val_sets.items():
        pictures = recipe.run_dir / "samples" / f"step_{step:08d}" / name
        bicubic, sr = evaluate({"Bicubic": baseline, "model": model}, pairs, recipe.scale, device, metrics=metrics,
                               tile=recipe.train.val_tile, pictures=pictures, advice=advice, shard=shard)
        values = {m.name: sr.mean(m.name) for m in metrics}
        log.write(kind="val", step=step, set=name, **values, **{f"bicubic_{m}": bicubic.mean(m) for m in values},
                  images=len(pairs))
        saved = sorted(pictures.glob("*.png"))  # logged by their paths in the run directory
        log.write(kind="pictures", step=step, set=name, files=[str(p.relative_to(recipe.run_dir)) for p in saved])
        shown.append(f"{name} {values['psnr']:.2f} dB (bicubic {bicubic.mean('psnr'):.2f})")
    return "val " + ", ".join(shown)
