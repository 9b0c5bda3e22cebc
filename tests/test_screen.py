"""Bad data found before a run starts (`data.bad_images`): every kind of unusable file is named, `error`
refuses the run in one line, `skip` trains without the bad files and names each; the same from a cache."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata
from test_images import _png_rgb16

import fastsr.data.plan as plan_module
import fastsr.data.screen as screen_module
from fastsr.cli import main
from fastsr.config import DataConfig
from fastsr.data import resolve_source
from fastsr.data.cache import prepare_cache
from fastsr.data.screen import apply_policy, screen_train, screen_val
from fastsr.engine.trainer import train
from fastsr.errors import ImageError

PHOTO = skdata.astronaut()  # 512x512 RGB


def _tile(i: int, size: int = 64) -> np.ndarray:
    y, x = divmod(i, 4)
    return np.ascontiguousarray(PHOTO[y * 128:y * 128 + size, x * 128:x * 128 + size])


def _bad_files(folder) -> dict[str, str]:
    """Write one file of each unusable kind into `folder`; file name -> what its message must say."""
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not a JPEG\n")
    Image.fromarray(_tile(7)).save(folder / "cut.png")
    (folder / "cut.png").write_bytes((folder / "cut.png").read_bytes()[:300])
    rgba = np.dstack([_tile(8), np.full((64, 64), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    Image.fromarray(_tile(9, 20)).save(folder / "small.png")  # smaller than the 32 px crop
    return {"zero.png": "not a readable image", "text.jpg": "not a readable image", "cut.png": "truncated or corrupt",
            "alpha.png": "transparency", "small.png": "does not fit"}


@pytest.fixture
def messy(tmp_path):
    """train/: 4 good images (RGB, grayscale, palette, opaque RGBA) and 5 bad ones; val/: 1 good, 1 too small."""
    root = tmp_path / "messy"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    Image.fromarray(_tile(0)).save(root / "train" / "good_rgb.png")
    Image.fromarray(_tile(1)).convert("L").save(root / "train" / "good_gray.png")
    Image.fromarray(_tile(2)).convert("P").save(root / "train" / "good_palette.png")
    Image.fromarray(np.dstack([_tile(3), np.full((64, 64), 255, np.uint8)]), "RGBA").save(root / "train" / "good_rgba.png")
    bad = _bad_files(root / "train")
    Image.fromarray(_tile(4)).save(root / "val" / "v_good.png")
    Image.fromarray(_tile(5, 16)).save(root / "val" / "v_small.png")  # 16 px: SSIM at x4 needs 19
    return root, bad


def _config(root, **kw):
    return DataConfig(source=str(root), hr_crop=32, workers=0, **kw)


@pytest.mark.parametrize("world_size", [1, 3])
def test_every_kind_of_bad_training_image_is_found_and_named(messy, world_size):
    root, bad = messy
    samples = resolve_source(str(root), "train", 4)
    # Each process decodes its share; together they find every problem exactly once.
    problems = [p for rank in range(world_size) for p in screen_train(samples, _config(root), 4, rank=rank,
                                                                      world_size=world_size)]
    found = {path.rsplit("/", 1)[-1]: message for path, message in problems}
    assert sorted(found) == sorted(bad) and len(problems) == len(bad)
    for name, why in bad.items():
        assert why in found[name] and name in found[name] and "\n" not in found[name]


def test_a_too_small_validation_image_is_named(messy):
    root, _ = messy
    pairs, problems = screen_val(resolve_source(str(root), "val", 4), 4, "matlab", None)
    assert [p.name for p in pairs] == ["v_good"]
    assert len(problems) == 1 and "v_small.png" in problems[0][1] and "at least 19x19" in problems[0][1]


def test_policy_error_names_the_first_twenty_and_counts_the_rest():
    problems = [(f"f{i}.png", f"f{i}.png: broken") for i in range(22)]
    with pytest.raises(ImageError) as e:
        apply_policy({"training": problems}, "error")
    msg = str(e.value)
    assert "\n" not in msg and "22 unusable training image(s)" in msg and "f19.png: broken" in msg
    assert "f20.png" not in msg and "and 2 more" in msg and "data.bad_images=skip" in msg
    assert apply_policy({"training": problems[:2]}, "skip") == [
        "skipped training image f0.png: broken", "skipped training image f1.png: broken"]


def test_policy_error_names_training_and_validation_problems_in_one_refusal():
    with pytest.raises(ImageError) as e:
        apply_policy({"training": [("t.png", "t.png: broken")], "validation": [("v.png", "v.png: broken")]}, "error")
    assert str(e.value).startswith("2 unusable images (1 training, 1 validation): t.png: broken; v.png: broken. ")


def test_training_refuses_bad_files_up_front_before_touching_the_run(messy, tiny_recipe):
    root, bad = messy
    recipe = tiny_recipe(data={"source": str(root)})
    with pytest.raises(ImageError) as e:
        train(recipe)
    # the validation image too: one refusal for the whole run, not one per rerun
    assert all(name in str(e.value) for name in [*bad, "v_small.png"]) and "\n" not in str(e.value)
    assert not recipe.run_dir.exists()


def test_training_skips_bad_files_and_names_each(messy, tiny_recipe):
    root, bad = messy
    run = train(tiny_recipe(data={"source": str(root), "bad_images": "skip", "repeat": 4},
                            train={"epochs_finetune": 0}))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    notes = [r["message"] for r in records if r["kind"] == "note"]
    for name in [*bad, "v_small.png"]:
        assert sum(f"/{name}: " in n for n in notes) == 1
    run_record = next(r for r in records if r["kind"] == "run")
    assert run_record["steps_per_epoch"] == 4 * 4 // 4  # the 4 good images x repeat 4, batches of 4
    assert next(r for r in records if r["kind"] == "val")["images"] == 1


def test_a_cache_skips_what_prepare_could_not_decode(messy, tiny_recipe, tmp_path):
    root, bad = messy
    cache = tmp_path / "cache"
    result = prepare_cache(str(root), cache, workers=1, progress=False)
    assert len(result.failed) == len(bad) - 1  # small.png decodes; it is too small for the crop only
    problems = screen_train(resolve_source(str(root), "train", 4), _config(root, cache=str(cache)), 4)
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in problems) == sorted(bad)
    run = train(tiny_recipe(data={"source": str(root), "cache": str(cache), "bad_images": "skip", "backend": "torch"},
                            train={"epochs_finetune": 0}))
    assert (run / "generator.safetensors").is_file()
    # A stale cache is still refused outright: skipping cannot fix it, `fastsr prepare` can.
    Image.fromarray(_tile(10)).save(root / "train" / "good_rgb.png")
    with pytest.raises(ImageError, match="changed .* since it was cached"):
        screen_train(resolve_source(str(root), "train", 4), _config(root, cache=str(cache), bad_images="skip"), 4)


def test_a_run_reads_the_cache_manifest_once_and_checks_each_crop_fit_once(messy, tiny_recipe, tmp_path, monkeypatch):
    """The screen hands its opened cache on to the batch source, and the crop plan takes the screen's
    crop-fit check of each image instead of repeating it."""
    root, _ = messy
    cache = tmp_path / "cache"
    prepare_cache(str(root), cache, workers=1, progress=False)
    reads, checked = [], []
    real_read_text, real_check = Path.read_text, plan_module.check_crop_fits

    def read_text(self, *args, **kwargs):
        if self.name == "manifest.json":
            reads.append(self)
        return real_read_text(self, *args, **kwargs)

    def check(name, *args):
        checked.append(name)
        return real_check(name, *args)

    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setattr(plan_module, "check_crop_fits", check)
    monkeypatch.setattr(screen_module, "check_crop_fits", check)
    train(tiny_recipe(data={"source": str(root), "cache": str(cache), "bad_images": "skip", "backend": "torch"},
                      train={"epochs_finetune": 0}))
    assert reads == [cache / "manifest.json"]
    # every image prepare could decode, once: the 4 good ones and small.png (refused by this check)
    assert sorted(Path(name).name for name in checked) == ["good_gray.png", "good_palette.png", "good_rgb.png",
                                                           "good_rgba.png", "small.png"]


def test_eval_refuses_an_image_too_small_to_score(tmp_path, capsys):
    Image.fromarray(_tile(0, 12)).save(tmp_path / "tiny.png")
    assert main(["eval", "--model", "bicubic", "--data", str(tmp_path / "tiny.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsr: error: ") and "\n" not in err and "tiny.png: 12x12" in err and "at least 19x19" in err


def test_eval_names_every_unusable_image_of_its_sets_in_one_error(tmp_path, capsys):
    folder, other = tmp_path / "mixed", tmp_path / "other"
    folder.mkdir()
    other.mkdir()
    for i in range(2):
        Image.fromarray(_tile(i)).save(folder / f"good{i}.png")
    Image.fromarray(_tile(2)).save(folder / "cut.png")
    (folder / "cut.png").write_bytes((folder / "cut.png").read_bytes()[:300])
    Image.fromarray(np.dstack([_tile(3), np.full((64, 64), 128, np.uint8)]), "RGBA").save(folder / "alpha.png")
    _png_rgb16(folder / "wide.png", np.full((64, 64, 3), 300, np.uint16))
    Image.fromarray(_tile(4)).save(other / "good.png")
    (other / "zero.png").write_bytes(b"")
    assert main(["eval", "--model", "bicubic", "--data", str(folder), "--data", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    head = "fastsr: error: 4 unusable evaluation image(s): "
    assert err.startswith(head) and "\n" not in err
    # each problem is "FILE: reason; what to do" (the reason is what is kept of it here), joined by "; "
    reasons = dict(part.split(": ", 1) for part in err.removeprefix(head).split("; ") if ".png: " in part)
    assert {Path(path).name for path in reasons} == {"cut.png", "alpha.png", "wide.png", "zero.png"}
    assert "truncated" in reasons[str(folder / "cut.png")]
    assert "transparency" in reasons[str(folder / "alpha.png")]
    assert "16-bit colour" in reasons[str(folder / "wide.png")]
    assert "not a readable image" in reasons[str(other / "zero.png")]
    assert "good" not in err and err.endswith("Fix or remove them and rerun")
