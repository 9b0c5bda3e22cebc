"""The real-world degradation (fastsr.data.realworld) and its primitives (per-sample resize, padding and
filtering, noise, unsharp masking): against torch's own ops run per sample, hand formulas and the configured
probabilities; per-sample parameters in one batch; exact repetition across resumes and batch sources; the
recipe's one-line errors; `fastsr degrade`; eval on degraded LR; a few steps of each new recipe."""

import dataclasses
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chi2

from fastsr.cli import main
from fastsr.config import KERNEL_KINDS, RealESRGANConfig
from fastsr.data.batches import make_batch_source
from fastsr.data.degradation import lr_for_eval
from fastsr.data.realworld import SINC, DegradedBatches, Order, Params, RealESRGANDegradation, RealWorldLR
from fastsr.data.sources import resolve_source
from fastsr.engine.trainer import train
from fastsr.errors import RecipeError
from fastsr.ops.noise import gaussian_noise, poisson_noise
from fastsr.ops.resample import MODES, filter_each, pad_each, resize_each
from fastsr.ops.sharpen import unsharp_mask
from fastsr.recipe import find_recipe, load_recipe


def _sizes(*values):
    return torch.tensor(values)


# ---------------------------------------------------------------------------------------------
# primitives


def test_each_sample_resized_as_interpolate_resizes_it_alone():
    """A batch resized with a scale factor and a mode per sample equals F.interpolate on each sample alone;
    so does one resized from mixed input sizes to mixed output sizes (the second order's case)."""
    torch.manual_seed(0)
    x = torch.rand(6, 3, 40, 40)
    scales = torch.tensor([0.15, 0.5, 0.77, 1.0, 1.3, 1.5], dtype=torch.float64)
    modes = torch.tensor([0, 1, 2, 1, 2, 0])
    out = (40 * scales).floor().long()
    full = torch.full((6,), 40)
    y = resize_each(x, full, full, out, out, modes, (1 / scales).float(), (1 / scales).float())
    for i in range(6):
        want = F.interpolate(x[i:i + 1], scale_factor=float(scales[i]), mode=MODES[modes[i]])
        o = int(out[i])
        assert want.shape[-1] == o
        torch.testing.assert_close(y[i:i + 1, :, :o, :o], want, atol=2e-6, rtol=0)
    ins, outs_h, outs_w = _sizes(12, 40, 25, 33, 7, 40), _sizes(30, 10, 25, 47, 20, 40), _sizes(5, 33, 64, 33, 9, 13)
    y = resize_each(x, ins, ins, outs_h, outs_w, modes, (ins / outs_h).float(), (ins / outs_w).float())
    for i in range(6):
        a = int(ins[i])
        want = F.interpolate(x[i:i + 1, :, :a, :a], size=(int(outs_h[i]), int(outs_w[i])), mode=MODES[modes[i]])
        torch.testing.assert_close(y[i:i + 1, :, :outs_h[i], :outs_w[i]], want, atol=2e-6, rtol=0)


def test_padding_and_filtering_see_each_samples_own_edge():
    torch.manual_seed(1)
    x = torch.rand(4, 3, 30, 30)
    h, w = _sizes(30, 12, 25, 17), _sizes(30, 29, 11, 17)
    kernels = torch.rand(4, 21, 21)
    y = filter_each(x, kernels, h, w)
    padded = pad_each(x, h, w, 3, "replicate")
    for i in range(4):
        own = x[i:i + 1, :, :h[i], :w[i]]
        want = F.conv2d(F.pad(own, (10,) * 4, mode="reflect"), kernels[i].expand(3, 1, 21, 21), groups=3)
        torch.testing.assert_close(y[i:i + 1, :, :h[i], :w[i]], want, atol=1e-5, rtol=1e-6)
        assert torch.equal(padded[i:i + 1, :, :h[i] + 6, :w[i] + 6], F.pad(own, (3,) * 4, mode="replicate"))


def test_unsharp_mask_is_basicsr_usmsharp_by_its_formula():
    """The separable filter equals the 51 x 51 2-D Gaussian (OpenCV's sigma for the size: 8) of USMSharp; the
    result is img + 0.5 residual where |residual| > 10 levels, blended by the blurred mask."""
    torch.manual_seed(2)
    img = F.interpolate(torch.rand(2, 3, 16, 16), size=64, mode="bicubic").clamp(0, 1)
    x = np.arange(51) - 25.0
    g = np.exp(-x * x / (2 * 8.0 ** 2))
    g2 = torch.tensor(np.outer(g, g) / np.outer(g, g).sum(), dtype=torch.float32)

    def blur(t):
        return F.conv2d(F.pad(t, (25,) * 4, mode="reflect"), g2.expand(t.shape[1], 1, 51, 51), groups=t.shape[1])

    residual = img - blur(img)
    soft = blur((residual.abs() * 255 > 10).float())
    want = soft * (img + 0.5 * residual).clamp(0, 1) + (1 - soft) * img
    torch.testing.assert_close(unsharp_mask(img), want, atol=2e-6, rtol=0)


def test_gaussian_noise_levels_and_gray_channels():
    img = torch.zeros(3, 3, 128, 128)
    sigma = torch.tensor([5.0, 20.0, 0.0])
    colour = gaussian_noise(img, sigma, gray=False, generator=torch.Generator().manual_seed(0))
    gray = gaussian_noise(img, sigma, gray=True, generator=torch.Generator().manual_seed(0))
    for i, s in enumerate(sigma.tolist()):
        assert colour[i].std().item() == pytest.approx(s / 255, rel=0.03, abs=1e-9)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    assert not torch.equal(colour[:, 0], colour[:, 1])


def test_poisson_noise_variance_follows_its_scale_and_the_images_levels():
    """An image of two 8-bit levels draws at vals = 2 photons per unit: Var = scale^2 * level / 2 for each
    sample, counted over the sample's own pixels only (its canvas outside holds a third level). 55,000 values
    per level: the variance estimate's spread is about 1%."""
    n = 3
    img = torch.full((n, 3, 224, 192), 0.5)
    img[:, :, :, ::2] = 100 / 255  # two levels, half the columns each
    img[:, :, 192:, :] = 1.0  # outside every sample's 192 x 192: must not count as a level
    scale = torch.tensor([0.5, 1.0, 3.0])
    size = torch.full((n,), 192)
    noise = poisson_noise(img, scale, False, size, size, torch.Generator().manual_seed(0))[:, :, :192, :192]
    levels = torch.clamp((img[:, :, :192, :192] * 255).round(), 0, 255) / 255
    for i in range(n):
        for level in levels[0].unique():
            picked = noise[i][levels[i] == level]
            assert picked.var().item() == pytest.approx(float(scale[i]) ** 2 * float(level) / 2, rel=0.05)
    gray = poisson_noise(img, scale, True, size, size, torch.Generator().manual_seed(0))
    assert torch.equal(gray[:, 0], gray[:, 2])


# ---------------------------------------------------------------------------------------------
# the parameters


def test_parameter_frequencies_match_the_configured_probabilities():
    """20,000 draws, a chi-square test (p = 0.001) for every categorical choice the recipe configures."""
    config = RealESRGANConfig()
    n = 20000
    p, _ = RealESRGANDegradation(config, 4).draw(n, (0, 0, 0, 0))

    def check(counts, probs):
        counts, probs = np.asarray(counts, float), np.asarray(probs, float)
        expected = probs * counts.sum()
        keep = expected > 0
        assert counts[~keep].sum() == 0
        stat = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
        assert stat < chi2.ppf(0.999, keep.sum() - 1), (counts, expected)

    for order, kinds, sinc in ((p.first, config.kernel_prob, config.sinc_prob),
                               (p.second, config.kernel_prob2, config.sinc_prob2)):
        check(torch.bincount(order.kernel, minlength=SINC + 1), [q * (1 - sinc) for q in kinds] + [sinc])
        up, down = (order.resize > 1).sum(), (order.resize < 1).sum()
        resize_prob = config.resize_prob if order is p.first else config.resize_prob2
        check([up, down, n - up - down], resize_prob)
        check(torch.bincount(order.mode, minlength=3), [1 / 3] * 3)
        check([order.poisson.sum(), n - order.poisson.sum()], [0.5, 0.5])
        check([order.gray.sum(), n - order.gray.sum()], [0.4, 0.6])
        sizes = torch.bincount(order.size, minlength=22)[7::2]
        check(sizes, [1 / 8] * 8)
    check([p.second.blurred.sum(), n - p.second.blurred.sum()], [0.8, 0.2])
    assert p.first.blurred.all()
    check([p.final_sinc.sum(), n - p.final_sinc.sum()], [0.8, 0.2])
    check([p.jpeg_last.sum(), n - p.jpeg_last.sum()], [0.5, 0.5])
    # ranges: within, and spread over them
    assert p.first.quality.min() == 30 and p.first.quality.max() == 95
    assert p.first.resize.min() >= 0.15 and p.first.resize.max() <= 1.5
    iso = p.first.kernel == KERNEL_KINDS.index("iso")
    assert torch.equal(p.first.sigma_x[iso], p.first.sigma_y[iso]) and (p.first.theta[iso] == 0).all()
    small = (p.first.kernel == SINC) & (p.first.size < 13)
    assert p.first.cutoff[small].min() >= math.pi / 3 - 1e-6


def test_draws_are_a_pure_function_of_the_key():
    deg = RealESRGANDegradation(RealESRGANConfig(), 4)
    a, seed_a = deg.draw(8, (1, 2, 0, 3))
    b, seed_b = deg.draw(8, (1, 2, 0, 3))
    c, _ = deg.draw(8, (1, 2, 1, 3))  # another process
    assert seed_a == seed_b and torch.equal(a.first.resize, b.first.resize)
    assert not torch.equal(a.first.resize, c.first.resize)


def _one(params: Params, i: int) -> Params:
    """Sample i's parameters alone."""
    def pick(order):
        return Order(**{f.name: getattr(order, f.name)[i:i + 1] for f in dataclasses.fields(Order)})

    rest = {f.name: getattr(params, f.name)[i:i + 1] for f in dataclasses.fields(Params)
            if f.name not in ("first", "second")}
    return Params(first=pick(params.first), second=pick(params.second), **rest)


def test_samples_of_one_batch_take_their_own_resize_scale_and_mode():
    """A batch whose samples resize by different scales and modes is degraded as each sample alone would be
    (noise off, so the samples are comparable): the canvas holding them changes nothing."""
    config = RealESRGANConfig(noise_range=[0.0, 0.0], poisson_scale_range=[0.0, 0.0],
                              noise_range2=[0.0, 0.0], poisson_scale_range2=[0.0, 0.0])
    deg = RealESRGANDegradation(config, 4)
    torch.manual_seed(3)
    hr = F.interpolate(torch.rand(6, 3, 16, 16), size=64, mode="bicubic").clamp(0, 1)
    params, _ = deg.draw(6, (0, 0, 0, 7))
    assert len(set(params.first.resize.tolist())) == 6 and len(set(params.second.resize.tolist())) > 1
    assert len(set(params.first.mode.tolist())) > 1
    batch = deg.apply(hr, params, torch.Generator().manual_seed(0))
    assert batch.shape == (6, 3, 16, 16)
    for i in range(6):
        alone = deg.apply(hr[i:i + 1], _one(params, i), torch.Generator().manual_seed(0))
        assert torch.equal(batch[i:i + 1], alone), i


# ---------------------------------------------------------------------------------------------
# in a run


def test_degraded_batches_repeat_exactly_after_a_resume_and_on_another_backend(photo_folder):
    """The LR of a batch depends on (seed, epoch, rank, index) alone: a resumed epoch gets the uninterrupted one's
    batches bitwise, and the device backend the torch loader's."""
    recipe = load_recipe(find_recipe("quickstart_realesrgan"),
                         [f"data.source={photo_folder}", "data.hr_crop=32", "data.repeat=2"])
    samples = resolve_source(str(photo_folder), "train", 4)

    def batches(backend, start=0):
        data = dataclasses.replace(recipe.data, backend=backend)
        source, _ = make_batch_source(data, samples, 4, 4, seed=5)
        assert isinstance(source, DegradedBatches) and source.name.endswith("+ realesrgan")
        return list(source.batches(1, start))

    torch_batches = batches("torch")
    assert len(torch_batches) == 3
    for (hr_a, lr_a), (hr_b, lr_b) in zip(torch_batches[1:], batches("torch", start=1)):
        assert torch.equal(hr_a, hr_b) and torch.equal(lr_a, lr_b)
    for (hr_a, lr_a), (hr_b, lr_b) in zip(torch_batches, batches("device")):
        assert torch.equal(hr_a, hr_b) and torch.equal(lr_a, lr_b)
    assert not torch.equal(torch_batches[0][1], torch_batches[1][1][: len(torch_batches[0][1])])


BAD = [
    ("data.realesrgan.kernel_prob=[0.5,0.4,0.05,0.02,0.02,0.02]", "kernel_prob must be non-negative and sum to 1"),
    ("data.realesrgan.resize_prob=[0.2,0.7]", "resize_prob needs 3 probabilities"),
    ("data.realesrgan.blur_sigma=[3,0.2]", "blur_sigma must be a range [low, high] with low <= high"),
    ("data.realesrgan.resize_range=[0,1.5]", "resize_range must be [down, up] with 0 < down <= 1 <= up"),
    ("data.realesrgan.kernel_range=[7,20]", "kernel_range must be two odd sizes"),
    ("data.realesrgan.jpeg_range=[30,101]", "jpeg_range is a JPEG quality range within 1..100"),
    ("data.realesrgan.sinc_prob=1.5", "sinc_prob is a probability"),
    ("data.realesrgan.betag_range=[1.5,4]", "betag_range must span 1"),
    ("data.realesrgan.kernel_list=[iso,iso]", "kernel_list must name at least one choice, each once"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_bad_degradation_settings_are_one_line_naming_the_key(override, message):
    with pytest.raises(RecipeError, match=re.escape(f"data.realesrgan.{message}")) as err:
        load_recipe(find_recipe("quickstart_realesrgan"), [override])
    assert "\n" not in str(err.value)


def test_realesrgan_keys_without_the_degradation_are_refused():
    with pytest.raises(RecipeError, match="data.realesrgan.jpeg_range is set but data.degradation is matlab"):
        load_recipe(find_recipe("quickstart"), ["data.realesrgan.jpeg_range=[50,95]"])


def test_paired_lr_files_refuse_a_real_world_degradation(tmp_path):
    lr_file = tmp_path / "x_LR.png"
    real = RealWorldLR(RealESRGANDegradation(RealESRGANConfig(), 4), 0)
    with pytest.raises(RecipeError, match=f"{lr_file}: the real-world degradation .* pairs LR files"):
        lr_for_eval(torch.rand(1, 3, 32, 32), 4, lr_file, real)


def test_eval_lr_is_the_same_for_every_method_and_differs_by_seed():
    hr = torch.rand(1, 3, 48, 48)
    first = RealWorldLR(RealESRGANDegradation(RealESRGANConfig(), 4), 7)
    again = RealWorldLR(RealESRGANDegradation(RealESRGANConfig(), 4), 7)
    other = RealWorldLR(RealESRGANDegradation(RealESRGANConfig(), 4), 8)
    assert torch.equal(lr_for_eval(hr, 4, None, first, 2)[1], lr_for_eval(hr, 4, None, again, 2)[1])
    assert not torch.equal(lr_for_eval(hr, 4, None, first, 2)[1], lr_for_eval(hr, 4, None, other, 2)[1])
    assert not torch.equal(lr_for_eval(hr, 4, None, first, 2)[1], lr_for_eval(hr, 4, None, first, 3)[1])


def test_eval_on_degraded_lr_is_the_same_set_for_a_seed(photo_folder, tmp_path, capsys):
    """`fastsr eval --degradation realesrgan --seed N` scores on one degraded set per seed: the same values on a
    rerun, others under another seed; the caption and the JSON say how the LR was made."""
    def scores(seed, name):
        out = tmp_path / name
        assert main(["eval", "--model", "bicubic", "--data", str(photo_folder / "val"), "--degradation",
                     "realesrgan", "--seed", str(seed), "--json", str(out), "--device", "cpu"]) == 0
        return json.loads(out.read_text())

    first, again, other = scores(3, "a.json"), scores(3, "b.json"), scores(4, "c.json")
    assert first["degradation"] == "realesrgan" and first["seed"] == 3

    def values(s):
        return next(iter(s["sets"].values()))["methods"]["Bicubic"]["per_image"]

    assert values(first) == values(again) and values(first) != values(other)
    assert "Real-ESRGAN-degraded LR (seed 3)" in capsys.readouterr().out


def test_eval_takes_the_degradations_keys_and_refuses_them_alone(photo_folder, tmp_path, capsys):
    """`fastsr eval --degradation realesrgan key=value` degrades with those ranges (another set than the
    defaults'); the keys without --degradation realesrgan, or a bad one, are one line."""
    def run(*extra):
        out = tmp_path / "s.json"
        code = main(["eval", "--model", "bicubic", "--data", str(photo_folder / "val"), "--json", str(out),
                     "--device", "cpu", *extra])
        return code, (json.loads(out.read_text()) if code == 0 else None)

    _, default = run("--degradation", "realesrgan")
    _, mild = run("--degradation", "realesrgan", "noise_range=[0,0]", "poisson_scale_range=[0,0]",
                  "noise_range2=[0,0]", "poisson_scale_range2=[0,0]")
    assert mild["degradation_keys"][0] == "noise_range=[0,0]"
    assert "noise_range=[0,0]" in capsys.readouterr().out

    def values(s):
        return next(iter(s["sets"].values()))["methods"]["Bicubic"]["per_image"]

    assert values(mild) != values(default)
    assert run("jpeg_range=[60,95]")[0] == 2
    assert "jpeg_range=[60,95]: data.realesrgan keys need --degradation realesrgan" in capsys.readouterr().err
    assert run("--degradation", "realesrgan", "jpeg_range=[0,95]")[0] == 2
    assert "data.realesrgan.jpeg_range" in capsys.readouterr().err


def test_degrade_writes_a_labelled_grid(photo_folder, tmp_path):
    out = tmp_path / "grids"
    assert main(["degrade", str(photo_folder / "val"), "-o", str(out), "--n", "3", "--crop", "64",
                 "jpeg_range=[60,90]", "--device", "cpu"]) == 0
    grids = sorted(p.name for p in out.iterdir())
    assert grids == ["v0_degraded.png", "v1_degraded.png"]
    from PIL import Image

    assert Image.open(out / grids[0]).size[0] > 3 * 64


def test_degrade_refuses_a_bad_key_in_one_line(photo_folder, tmp_path, capsys):
    assert main(["degrade", str(photo_folder / "val" / "v0.png"), "-o", str(tmp_path / "g.png"),
                 "jpeg_range=[0,90]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.realesrgan.jpeg_range" in err
    assert not (tmp_path / "g.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["realesrnet_x4", "realesrgan_x4", "realesr_compact_x4", "quickstart_realesrgan"])
def test_each_realworld_recipe_trains_a_few_steps(name, photo_folder, tmp_path):
    """Each packaged real-world recipe, cut to a tiny model and two steps per phase on small photographs."""
    small = {"realesrnet_x4": ["model.blocks=1", "model.features=8", "model.growth=4"],
             "realesrgan_x4": ["model.blocks=1", "model.features=8", "model.growth=4", "discriminator.channels=8",
                               "train.init_from=null"],
             "realesr_compact_x4": ["model.channels=8", "model.convs=2"],
             "quickstart_realesrgan": ["model.channels=8", "model.convs=2", "discriminator.channels=8"]}[name]
    recipe = load_recipe(find_recipe(name), [
        *small, f"out_dir={tmp_path}", f"data.source={photo_folder}", "data.cache=null", "data.backend=torch",
        "data.workers=0", "data.val_sets=[]", "data.hr_crop=32", "data.repeat=1", "data.val_images=1",
        "train.batch_size=2", "train.epochs_pretrain=null", "train.epochs_finetune=null",
        f"train.steps_pretrain={0 if name == 'realesrgan_x4' else 2}",
        f"train.steps_finetune={0 if name in ('realesrnet_x4', 'realesr_compact_x4') else 2}",
        "train.val_every=0", "train.save_every=0", "loss.vgg_weights=random"])
    run = train(recipe)
    assert (run / "generator.safetensors").is_file()
