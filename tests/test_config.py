from pathlib import Path

import pytest

from fastsr.config import section_keys
from fastsr.errors import RecipeError
from fastsr.recipe import Recipe, from_dict, load_recipe, save_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe):
    r = load_recipe(recipe)
    assert r.name == recipe.stem


def test_reference_script_knobs_keep_their_names():
    leaves = {k.rsplit(".", 1)[-1] for k in section_keys(Recipe)}
    for knob in ["epochs_pretrain", "epochs_finetune", "batch_size", "res_blocks", "lr", "scale", "w_adv", "w_vgg", "w_tv"]:
        assert knob in leaves


def test_reference_script_loss_weights_are_the_defaults():
    r = load_recipe(RECIPES / "srgan_x4.yaml")
    assert (r.loss.w_adv, r.loss.w_vgg, r.loss.w_tv) == (1e-3, 6e-3, 1e-6)


def test_paper_recipes_keep_the_papers_srresnet_and_the_quick_start_learns_a_residual():
    for paper in ("srresnet_x4.yaml", "srgan_x4.yaml"):
        assert load_recipe(RECIPES / paper).model.upsample_input == "none"
    assert load_recipe(RECIPES / "quickstart.yaml").model.upsample_input == "bicubic"


def test_base_inheritance_and_overrides():
    r = load_recipe(RECIPES / "srgan_x4.yaml", ["train.batch_size=32", "model.res_blocks=8", "train.lr=2e-4"])
    base = load_recipe(RECIPES / "srresnet_x4.yaml")
    assert r.train.batch_size == 32 and r.model.res_blocks == 8 and r.train.lr == 2e-4
    assert r.data.hr_crop == base.data.hr_crop  # inherited
    assert r.train.runs("finetune") and not base.train.runs("finetune")  # the base trains the pretrain phase only


def test_nested_override_of_optional_and_list(tmp_path):
    r = load_recipe(RECIPES / "srcnn_x4.yaml", ["data.val_source=/some/folder", "model.kernels=[9,1,5]"])
    assert r.data.val_source == "/some/folder" and r.model.kernels == [9, 1, 5]
    r = load_recipe(RECIPES / "srcnn_x4.yaml", ["train.lr_finetune=null"])
    assert r.train.lr_finetune is None


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(RECIPES / "srgan_x4.yaml", ["train.batch_size=8"])
    save_recipe(r, tmp_path / "recipe.yaml")
    assert load_recipe(tmp_path / "recipe.yaml") == r


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.batchsize=8", "unknown key 'train.batchsize' (did you mean 'train.batch_size'?)"),
        ("batch_size=8", "did you mean 'train.batch_size'?"),
        ("w_adv=0.1", "did you mean 'loss.w_adv'?"),
        ("train.batch_size=eight", "train.batch_size must be int, got 'eight'"),
        ("train.batch_size=1.5", "train.batch_size must be int"),
        ("train.ema=true", "train.ema must be float"),
        ("data.degradation=bilinear", "data.degradation='bilinear' is not one of: matlab, kornia"),
        ("data.backend=gpu", "data.backend='gpu' is not one of: auto, device, dali, torch"),
        ("data.device_budget_gb=0", "data.device_budget_gb must be positive"),
        ("data.crops_per_image=3", "data.crops_per_image (3) must divide data.repeat (20) and train.batch_size (16)"),
        ("data.crops_per_image=0", "data.crops_per_image must be positive"),
        ("train.batch_size=0", "train.batch_size must be positive"),
        ("data.hr_crop=-8", "data.hr_crop must be positive"),
        ("data.hr_crop=98", "data.hr_crop must be a multiple of scale 4"),
        ("scale=3", "scale 3 is not one generator 'srresnet' is built for"),
        ("loss.w_tv=-1", "loss.w_tv must not be negative"),
        ("train=5", "'train' must be a section"),
        ("nonsense", "expected key=value"),
        ("train.betas=[0.9,1.5]", "train.betas must be two numbers in [0, 1)"),
        ("loss.vgg_layer=conv5_5", "loss.vgg_layer 'conv5_5' is not a VGG19 layer (did you mean 'conv5_4'?)"),
        ("data.bad_images=ignore", "data.bad_images='ignore' is not one of: error, skip"),
        ("train.nonfinite=continue", "train.nonfinite='continue' is not one of: stop, skip"),
        ("train.max_skipped_steps=-1", "train.max_skipped_steps must not be negative"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(RECIPES / "srgan_x4.yaml", [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_circular_base(tmp_path):
    a = write(tmp_path / "a.yaml", "base: b.yaml\nname: a\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(RecipeError, match="circular base"):
        load_recipe(a)
    c = write(tmp_path / "c.yaml", "base: nowhere.yaml\n")
    with pytest.raises(RecipeError, match=r"nowhere.yaml: recipe not found \(base of"):
        load_recipe(c)
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.yaml", "name: x\ntrain:\n  batch_size: [1, 2\n  lr: 3\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: line \d+: malformed YAML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="is a mapping"):
        load_recipe(write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_nothing_to_train_and_small_gan_crop():
    with pytest.raises(RecipeError, match="nothing to train"):
        from_dict({"train": {"epochs_pretrain": 0, "epochs_finetune": 0}})
    with pytest.raises(RecipeError, match="at least 32 for the discriminator"):
        from_dict({"data": {"hr_crop": 24}, "train": {"epochs_finetune": 1}})
    assert from_dict({"data": {"hr_crop": 24}}).data.hr_crop == 24  # fine without a discriminator
