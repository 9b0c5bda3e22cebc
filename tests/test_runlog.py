"""curves.png: the figure built from logs written by hand, asserted on its matplotlib objects."""

import json

import pytest

from fastsr.engine.runlog import FINETUNE_LABEL, curves_figure, plot_curves


def _train(step, phase, **losses):
    return {"kind": "train", "step": step, "phase": phase, **{f"loss_{k}": v for k, v in losses.items()}}


def _val(step, psnr, bicubic, name="Set5"):
    return {"kind": "val", "step": step, "set": name, "psnr": psnr, "bicubic_psnr": bicubic, "images": 5}


# pretrain logs the pixel term alone; finetune adds the others, TV's raw value 1e4x the pixel term's.
TWO_PHASES = ([_train(s, "pretrain", pixel=0.02 / s) for s in (1, 2, 3)]
              + [_train(s, "finetune", pixel=0.01, adv=0.7, tv=100.0 * s, d=1.3) for s in (4, 5, 6)]
              + [_val(3, 24.0, 25.0), _val(6, 25.5, 25.0)])


def _axes(fig):
    """{y label: axes}: a panel per loss term ("pixel loss", ...) and "validation PSNR (dB, Y)"."""
    return {ax.get_ylabel(): ax for ax in fig.axes}


def _lines(ax, label):
    return [line for line in ax.get_lines() if line.get_label() == label]


def test_a_single_validation_shows_with_its_bicubic_reference():
    fig = curves_figure([_train(1, "pretrain", pixel=0.1), _val(1, 24.0, 25.1, "samples")])
    ax = _axes(fig)["validation PSNR (dB, Y)"]
    for label, psnr in (("samples", 24.0), ("samples bicubic", 25.1)):
        line, = _lines(ax, label)
        assert list(line.get_xdata()) == [1] and list(line.get_ydata()) == [psnr]
        assert line.get_marker() not in ("None", "", None)  # one point has no segment: only a marker draws it


def test_finetune_starts_at_its_first_step_on_every_panel():
    fig = curves_figure(TWO_PHASES)
    for ax in fig.axes:
        line, = _lines(ax, FINETUNE_LABEL)
        assert list(line.get_xdata()) == [4, 4]
    labelled = [ax for ax in fig.axes if any(t.get_text().strip() == "finetune" for t in ax.texts)]
    assert [ax.get_ylabel() for ax in labelled] == ["pixel loss", "validation PSNR (dB, Y)"]
    legend = [t.get_text() for t in _axes(fig)["validation PSNR (dB, Y)"].get_legend().get_texts()]
    assert FINETUNE_LABEL in legend


@pytest.mark.parametrize("phase", ["pretrain", "finetune"])
def test_one_phase_has_no_boundary(phase):
    fig = curves_figure([_train(s, phase, pixel=0.1) for s in (5, 6)] + [_val(6, 24.0, 25.0)])
    assert not any(_lines(ax, FINETUNE_LABEL) or ax.texts for ax in fig.axes)


def test_each_term_has_its_own_axis_so_tv_does_not_flatten_pixel():
    axes = _axes(curves_figure(TWO_PHASES))
    assert list(axes) == ["pixel loss", "adv loss", "tv loss", "d loss", "validation PSNR (dB, Y)"]
    pixel, tv = axes["pixel loss"], axes["tv loss"]
    assert pixel is not tv and pixel.get_yscale() == tv.get_yscale() == "log"
    assert pixel.get_ylim()[1] < 0.1 and tv.get_ylim()[0] > 10  # each range fits its own term
    data, = [line for line in pixel.get_lines() if line.get_label() != FINETUNE_LABEL]
    assert list(data.get_xdata()) == [1, 2, 3, 4, 5, 6]  # across both phases


def test_an_empty_log_still_labels_its_panels():
    assert list(_axes(curves_figure([]))) == ["loss", "validation PSNR (dB, Y)"]


def test_plot_curves_writes_the_png(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in TWO_PHASES))
    plot_curves(log, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
