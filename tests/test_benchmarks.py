"""The benchmarks' baseline: the reference script's step (benchmarks/reference_step.py) does what the reference script did,
no more and no less, so the speed-ups measured against it are honest. And the data benchmark runs where DALI
is missing, as the GPU check's first stage needs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import PROCESS_ENV, ROOT

from fastsr.models import DISCRIMINATORS, build_generator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reference_step
from reference_step import ReferenceStep, ReferenceTVLoss


def _models(gan: bool = True):
    torch.manual_seed(0)
    g = build_generator("srresnet", scale=4, res_blocks=1, channels=8)
    d = DISCRIMINATORS.rebuild({"name": "srgan", "channels": 8}, "test") if gan else None
    step = ReferenceStep(g, torch.optim.Adam(g.parameters()), d, torch.optim.Adam(d.parameters()) if gan else None)
    return g, d, step


def _batch():
    hr = torch.rand(2, 3, 32, 32)
    return hr, F.avg_pool2d(hr, 4)


class BackwardCalls:
    """Counts `Tensor.backward` calls; `current` is the index (1-based) of the one running."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = torch.Tensor.backward

        def counted(tensor, *args, **kwargs):
            self.calls += 1
            return real(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "backward", counted)


def test_finetune_runs_the_generator_twice_and_one_backward_covers_both_d_forwards(monkeypatch):
    g, _, step = _models()
    backward = BackwardCalls(monkeypatch)
    g_forwards, d_outputs = [], []  # d_outputs: (output, the backward call that reached it)
    g.register_forward_hook(lambda m, i, o: g_forwards.append(o))

    def watch(module, inputs, output):
        entry = [output, None]
        output.register_hook(lambda grad: entry.__setitem__(1, backward.calls))
        d_outputs.append(entry)

    step.d.register_forward_hook(watch)
    losses = step(*_batch())
    assert len(g_forwards) == 2
    assert backward.calls == 2  # one for D's update, one for G's
    # D(hr) and D(fake.detach()) are both reached by the first backward; D(sr) by G's
    assert [reached for _, reached in d_outputs] == [1, 1, 2]
    assert all(isinstance(v, float) for v in losses.values()) and set(losses) == {"d", "g"}  # .item() every step


def test_losses_are_bce_on_sigmoid_outputs_and_the_reference_weighted_sum():
    g, _, step = _models()
    d_out, g_out, vgg_out = [], [], []
    step.d.register_forward_hook(lambda m, i, o: d_out.append(o.detach().clone()))
    g.register_forward_hook(lambda m, i, o: g_out.append(o.detach().clone()))
    step.vgg.register_forward_hook(lambda m, i, o: vgg_out.append(o.detach().clone()))
    hr, lr = _batch()
    losses = step(hr, lr)
    real, fake, sr_prob = d_out
    assert isinstance(step.d.sigmoid, torch.nn.Sigmoid) and isinstance(step.bce, torch.nn.BCELoss)
    assert all(((o > 0) & (o < 1)).all() for o in d_out)  # probabilities, not logits
    assert losses["d"] == pytest.approx(float(-(real.log().mean() + (1 - fake).log().mean())), rel=1e-5)
    sr = g_out[1]  # the second generator forward is the one G's loss uses
    target, features = vgg_out
    by_hand = (F.mse_loss(sr, hr) + 6e-3 * F.mse_loss(features, target) - 1e-3 * sr_prob.log().mean()
               + 1e-12 * ReferenceTVLoss()(sr))
    assert losses["g"] == pytest.approx(float(by_hand), rel=1e-5)


def test_gradients_go_where_the_reference_script_sent_them(monkeypatch):
    g, d, step = _models()
    d_grads = {}  # parameter name -> how many backward passes computed its gradient
    for name, p in d.named_parameters():
        p.register_hook(lambda grad, name=name: d_grads.__setitem__(name, d_grads.get(name, 0) + 1))
    vgg_modes = []
    step.vgg.register_forward_hook(lambda m, i, o: vgg_modes.append(torch.is_grad_enabled()))
    step(*_batch())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())
    # D's weights get gradients in its own update and again in G's (computed, then dropped)
    assert d_grads and all(n == 2 for n in d_grads.values()) and len(d_grads) == len(list(d.parameters()))
    assert all(not p.requires_grad and p.grad is None for p in step.vgg.parameters())
    assert len(step.vgg.features) == 35  # VGG19 features[:35]: to conv5_4, before its ReLU
    assert sorted(vgg_modes) == [False, True]  # the HR features without grad, the SR ones with


def test_pretrain_is_one_forward_mse_backward_step_and_a_read_back(monkeypatch):
    g, _, step = _models(gan=False)
    backward = BackwardCalls(monkeypatch)
    forwards = []
    g.register_forward_hook(lambda m, i, o: forwards.append(o))
    before = [p.detach().clone() for p in g.parameters()]
    hr, lr = _batch()
    losses = step(hr, lr)
    assert len(forwards) == 1 and backward.calls == 1
    assert losses["pixel"] == pytest.approx(float(F.mse_loss(forwards[0].detach(), hr)))
    assert any(not torch.equal(a, b) for a, b in zip(before, g.parameters()))


def test_the_reference_tv_loss_equals_a_hand_computation():
    x = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 0.0]]], [[[1.0, 1.0, 1.0], [1.0, 4.0, 1.0]]]])  # 2x1x2x3
    # image 1: vertical (2-0)^2 + (2-1)^2 + (0-3)^2 = 14, horizontal 1 + 4 + 0 + 4 = 9
    # image 2: vertical 0 + 9 + 0 = 9, horizontal 0 + 0 + 9 + 9 = 18
    # counts per image: vertical 1 x 1 x 3 = 3, horizontal 1 x 2 x 2 = 4
    by_hand = 2 * ((14 + 9) / 3 + (9 + 18) / 4) / 2
    assert float(ReferenceTVLoss()(x)) == pytest.approx(by_hand)
    assert float(ReferenceTVLoss(1e-6)(x)) == pytest.approx(1e-6 * by_hand)
    assert reference_step.TV_WEIGHT == 1e-6 and reference_step.TV_COEFF == 1e-6  # 1e-12 in all, as the reference script had it
    assert (reference_step.W_VGG, reference_step.W_ADV) == (6e-3, 1e-3)


@pytest.mark.slow  # a DIV2K-sized PNG, its cache and every row for a fraction of a second: ~30 s
def test_data_throughput_without_dali_skips_its_rows_and_says_so(tmp_path):
    """As on the lent GPU machine (no DALI; hidden here by benchmarks/hide, as gpu_check.sh hides it): the other
    rows are measured and reach the summary, the DALI rows are left out with a line saying why."""
    path = [str(ROOT / "benchmarks" / "hide"), *filter(None, [PROCESS_ENV.get("PYTHONPATH")])]
    env = {**PROCESS_ENV, "FASTSR_HIDE": "nvidia.dali", "PYTHONPATH": os.pathsep.join(path),
           "FASTSR_SUMMARY": str(tmp_path / "summary.jsonl")}
    script = [sys.executable, str(ROOT / "benchmarks" / "data_throughput.py"), "--images", "1", "--seconds", "0.1",
              "--work", str(tmp_path / "work"), "--no-record"]
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DALI rows skipped: NVIDIA DALI does not import here (No module named 'nvidia.dali'" in done.stdout
    rows = [json.loads(line)["what"] for line in (tmp_path / "summary.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and any(row.startswith("device backend, cache, HR 96") for row in rows)
    assert not any("DALI" in row for row in rows) and "| DALI" not in done.stdout

    only = subprocess.run([*script, "--dali", "only"], env=env, capture_output=True, text=True, timeout=300)
    assert only.returncode == 2 and "--dali only: NVIDIA DALI does not import here" in only.stderr


def test_degradation_throughput_measures_the_fastsr_row(tmp_path):
    """benchmarks/degradation_throughput.py's fastsr row, tiny (its BasicSR rows need BasicSR's sdist and OpenCV,
    which CI does not have): it runs, prints its table row and hands the number to the summary."""
    pytest.importorskip("fastsr.data.realworld")
    path = [str(ROOT), *filter(None, [PROCESS_ENV.get("PYTHONPATH")])]
    env = {**PROCESS_ENV, "PYTHONPATH": os.pathsep.join(path), "FASTSR_SUMMARY": str(tmp_path / "summary.jsonl")}
    script = [sys.executable, str(ROOT / "benchmarks" / "degradation_throughput.py"), "--rows", "fastsr", "--steps", "2",
              "--batch", "2", "--gt", "64", "--device", "cpu", "--no-record"]
    done = subprocess.run(script, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| fastsr realesrgan (per-sample params) | 2 |" in done.stdout
    assert "BasicSR shims" not in done.stdout  # the fastsr row alone does not load BasicSR
    (row,) = [json.loads(line) for line in (tmp_path / "summary.jsonl").read_text().splitlines()]
    assert row["unit"] == "pairs/s" and row["value"] > 0
