import json

import pytest
import torch

from fastsr.engine.checkpoint import (
    Position,
    Trainables,
    complete_checkpoints,
    load_optimizer_state,
    load_state,
    resolve_resume,
    restore_training_state,
    save_checkpoint,
    write_training_checkpoint,
)
from fastsr.errors import WeightsError
from fastsr.models import build_generator
from fastsr.weights import load_generator, load_weights, save_weights


def small(scale=4, blocks=2):
    torch.manual_seed(0)
    return build_generator("srresnet", scale=scale, res_blocks=blocks, channels=8)


def test_weights_round_trip_rebuilds_the_model(tmp_path):
    model = small().eval()
    path = tmp_path / "w" / "generator.safetensors"
    save_weights(model, path, model.config)
    assert json.loads(path.with_suffix(".json").read_text()) == model.config
    loaded = load_generator(path)
    x = torch.rand(1, 3, 10, 12)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not loaded.training


def test_an_srresnet_with_upsample_input_round_trips_and_old_configs_load(tmp_path):
    residual = build_generator("srresnet", scale=4, res_blocks=1, channels=8, upsample_input="bicubic")
    torch.nn.init.normal_(residual.tail.weight, std=0.01)  # as if trained: not the bare upsampler
    path = tmp_path / "residual" / "generator.safetensors"
    save_weights(residual.eval(), path, residual.config)
    x = torch.rand(1, 3, 10, 12)
    loaded = load_generator(path)
    assert loaded.upsample_input == "bicubic"
    torch.testing.assert_close(loaded(x), residual(x), rtol=0, atol=0)
    # a generator.json written before the option existed has no `upsample_input`: the paper's SRResNet
    model = small().eval()
    old = tmp_path / "old" / "generator.safetensors"
    save_weights(model, old, {k: v for k, v in model.config.items() if k != "upsample_input"})
    loaded = load_generator(old)
    assert loaded.config == model.config and loaded.upsample_input == "none"
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_an_srresnet_without_batch_norm_round_trips_and_old_configs_load_with_it(tmp_path):
    plain = build_generator("srresnet", scale=4, res_blocks=1, channels=8, batch_norm=False).eval()
    path = tmp_path / "plain" / "generator.safetensors"
    save_weights(plain, path, plain.config)
    assert json.loads(path.with_suffix(".json").read_text())["batch_norm"] is False
    loaded = load_generator(path)
    assert loaded.batch_norm is False and not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
    x = torch.rand(1, 3, 10, 12)
    torch.testing.assert_close(loaded(x), plain(x), rtol=0, atol=0)
    # a generator.json written before the option existed: the paper's SRResNet, with BatchNorm
    model = small().eval()
    old = tmp_path / "old" / "generator.safetensors"
    save_weights(model, old, {k: v for k, v in model.config.items() if k != "batch_norm"})
    loaded = load_generator(old)
    assert loaded.config == model.config and loaded.batch_norm is True
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(WeightsError, match="weights do not fit"):  # BatchNorm weights do not load into a plain one
        load_weights(build_generator("srresnet", scale=4, res_blocks=2, channels=8, batch_norm=False), old)


def _trained(fused: bool, steps: int = 3):
    """A small model and its Adam (fused, as on a GPU, or torch's default) after `steps` steps."""
    model = small()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused or None)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.rand(2, 3, 8, 8, generator=gen)).square().mean().backward()
        optimizer.step()
    return model, optimizer


def _same_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    for pa, pb in zip(a.param_groups[0]["params"], b.param_groups[0]["params"]):
        sa, sb = a.state[pa], b.state[pb]
        assert float(sa["step"]) == float(sb["step"])
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)


def test_fused_adam_state_loads_into_torchs_default_adam_and_back(tmp_path):
    """A run resumed on another device type: a GPU run's fused Adam checkpoint into a CPU run's default
    Adam and back, each keeping its own implementation (torch's load_state_dict would take the saved one)."""
    model, fused = _trained(fused=True)
    plain = torch.optim.Adam(model.parameters(), lr=1e-2)
    naive = torch.optim.Adam(model.parameters(), lr=1e-2)
    naive.load_state_dict(fused.state_dict())
    assert naive.param_groups[0]["fused"]  # why load_optimizer_state exists
    load_optimizer_state(plain, fused.state_dict())
    assert not plain.param_groups[0]["fused"] and plain.param_groups[0]["lr"] == 1e-2
    _same_state(plain, fused)
    back = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    load_optimizer_state(back, plain.state_dict())
    assert back.param_groups[0]["fused"]
    _same_state(back, fused)
    assert all(s["step"].dtype == torch.float32 and s["step"].device == p.device for p, s in back.state.items())

    # through a training checkpoint, into the optimisers a run on the other device type builds
    _, continued = _trained(fused=True, steps=4)  # the uninterrupted run
    write_training_checkpoint(tmp_path, Position(step=3), Trainables(model, fused), keep=1)
    resumed_model = small()
    resumed = Trainables(resumed_model, torch.optim.Adam(resumed_model.parameters(), lr=1e-2))
    restore_training_state(complete_checkpoints(tmp_path)[-1], resumed, Position())
    assert not resumed.opt_g.param_groups[0]["fused"]
    _same_state(resumed.opt_g, fused)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.rand(2, 3, 8, 8, generator=gen) for _ in range(4)]
    resumed.opt_g.zero_grad()
    resumed_model(batches[3]).square().mean().backward()
    resumed.opt_g.step()  # the fourth step, by the other implementation: equal to float rounding
    for a, b in zip(resumed_model.parameters(), continued.param_groups[0]["params"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_mismatched_weights_name_the_file(tmp_path):
    path = tmp_path / "g.safetensors"
    save_weights(small(blocks=2), path, small(blocks=2).config)
    with pytest.raises(WeightsError, match=r"g.safetensors: weights do not fit this model \(unexpected"):
        load_weights(small(blocks=1), path)
    with pytest.raises(WeightsError, match="weights do not fit"):
        load_weights(small(scale=2, blocks=2), path)
    wide = build_generator("srresnet", scale=4, res_blocks=2, channels=16)
    with pytest.raises(WeightsError, match="the model wants"):
        load_weights(wide, path)


def test_bad_files_are_refused_without_unpickling(tmp_path):
    good = tmp_path / "g.safetensors"
    save_weights(small(), good, small().config)
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(good.read_bytes()[:100])
    truncated.with_suffix(".json").write_text(good.with_suffix(".json").read_text())
    with pytest.raises(WeightsError, match="t.safetensors: not a readable safetensors file"):
        load_generator(truncated)
    pickle = tmp_path / "model.pt"
    torch.save(small().state_dict(), pickle)
    with pytest.raises(WeightsError, match="only from .safetensors"):
        load_weights(small(), pickle)
    lonely = tmp_path / "lonely.safetensors"
    lonely.write_bytes(good.read_bytes())
    with pytest.raises(WeightsError, match="no lonely.json beside it"):
        load_generator(lonely)
    with pytest.raises(WeightsError, match="not found"):
        load_generator(tmp_path / "missing.safetensors")


def test_checkpoints_are_complete_or_invisible(tmp_path):
    model = small()
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, {"generator": (model, model.config)}, {"step": step}, keep=2)
    found = complete_checkpoints(tmp_path)
    assert [p.name for p in found] == ["step_00000020", "step_00000030"]
    # A writer killed mid-checkpoint leaves only a temporary directory: never picked.
    (tmp_path / "checkpoints" / ".step_00000040.tmp-999").mkdir()
    (tmp_path / "checkpoints" / "step_00000050").mkdir()  # no COMPLETE marker
    assert resolve_resume("auto", tmp_path) == found[-1]
    assert load_state(found[-1]) == {"step": 30}
    assert load_generator(found[-1] / "generator.safetensors").config == model.config
    assert resolve_resume("none", tmp_path) is None
    assert resolve_resume("auto", tmp_path / "elsewhere") is None
    with pytest.raises(WeightsError, match="not a complete fastsr checkpoint"):
        resolve_resume(str(tmp_path / "checkpoints" / "step_00000050"), tmp_path)


def test_a_damaged_training_state_is_one_line_and_never_unpickled(tmp_path, capsys):
    model = small()
    found = save_checkpoint(tmp_path, 1, {"generator": (model, model.config)}, {"step": 1}, keep=2)
    state = found / "state.pt"
    state.write_bytes(state.read_bytes()[:50])  # truncated
    with pytest.raises(WeightsError, match=r"state.pt: cannot read the training state") as e:
        load_state(found)
    assert "\n" not in str(e.value)

    class Exploit:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"step": Exploit()}, state)  # a state file that would run code if fully unpickled
    with pytest.raises(WeightsError, match="cannot read the training state"):
        load_state(found)
    assert "unpickled!" not in capsys.readouterr().out
