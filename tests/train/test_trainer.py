"""The trainer: fitting, exact resume, non-finite steps, EMA, extra losses, bad options."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import TINY_GLOW, Exploding, ToyModel, read_metric, tiny_glow

import flowplug
from flowplug.data import Batch, ImageData
from flowplug.models.baselines import RealNVP
from flowplug.train import CheckpointError, TrainConfig, Trainer, resolve_device

FAST = {"batch_size": 16, "progress": False, "tensorboard": False, "log_every": 1,
        "warmup_steps": 2, "lr": 3e-3}


def _falls(folder):
    loss = read_metric(folder, "loss")
    steps = sorted(loss)
    first, last = steps[:5], steps[-5:]
    return sum(loss[s] for s in last) / 5 < sum(loss[s] for s in first) / 5 - 0.5


@pytest.mark.parametrize("make", [tiny_glow, lambda: RealNVP(**TINY_GLOW)], ids=["glow", "realnvp"])
def test_fits_discrete_flows_with_falling_loss(make, tiny_data, tmp_path):
    trainer = Trainer(make(), TrainConfig(steps=40, **FAST), out_dir=tmp_path, device="cpu")
    report = trainer.fit(*tiny_data.split(0.25))
    assert _falls(tmp_path)
    assert report["steps"] == 40 and report["skipped_steps"] == 0
    assert set(report["held_out"]) >= {"bpd", "per_level_bpd"}
    assert (tmp_path / "report.json").exists() and (tmp_path / "report.txt").exists()
    assert list((tmp_path / "samples").glob("*.png"))
    assert json.loads((tmp_path / "config.json").read_text())["model"] == trainer.model.config


def test_fits_mrcnf_with_falling_loss(tiny_data, tmp_path):
    torch.manual_seed(0)
    model = flowplug.build({"type": "mrcnf", "image_shape": [2, 4, 4]})
    Trainer(model, TrainConfig(steps=20, **FAST), out_dir=tmp_path, device="cpu").fit(tiny_data)
    assert _falls(tmp_path)


def test_fit_refuses_a_bin_warp_for_another_bin_count(tiny_data, tmp_path):
    model = flowplug.build({**TINY_GLOW, "type": "glow", "bin_warp": {"n_bins": tiny_data.n_bins + 1}})
    trainer = Trainer(model, TrainConfig(steps=1, **FAST), out_dir=tmp_path, device="cpu")
    with pytest.raises(ValueError, match=f"bin_warp is for n_bins={tiny_data.n_bins + 1} but the data has "
                                         f"n_bins={tiny_data.n_bins}"):
        trainer.fit(tiny_data)


def _run(folder, data, steps, resume=False):
    config = TrainConfig(steps=steps, precision="float64", schedule="constant",
                         checkpoint_every=3, keep_last=5, **FAST)
    trainer = Trainer(tiny_glow(), config, out_dir=folder, device="cpu")
    trainer.fit(data, resume=resume)
    return trainer


def test_resume_continues_exactly(tiny_data, tmp_path):
    whole = _run(tmp_path / "whole", tiny_data, 8)
    _run(tmp_path / "parts", tiny_data, 3)
    resumed = _run(tmp_path / "parts", tiny_data, 8, resume=True)
    expected = read_metric(tmp_path / "whole", "loss")
    got = read_metric(tmp_path / "parts", "loss")
    assert [got[s] for s in range(4, 9)] == [expected[s] for s in range(4, 9)]
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_a_different_model(tiny_data, tmp_path):
    _run(tmp_path, tiny_data, 3)
    other = flowplug.build({**TINY_GLOW, "type": "glow", "hidden_channels": 4})
    trainer = Trainer(other, TrainConfig(steps=5, **FAST), out_dir=tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match="model config"):
        trainer.fit(tiny_data, resume=True)


def test_non_finite_steps_are_skipped_then_stop_the_run(tiny_data):
    model = Exploding(start=4)  # call 1 is the initialisation pass, so 3 good steps
    config = TrainConfig(steps=50, max_bad_steps=5, ema_decay=None, **FAST)
    trainer = Trainer(model, config, device="cpu")
    with pytest.warns(UserWarning, match="non-finite"), \
            pytest.raises(FloatingPointError, match="last 5 steps"):
        trainer.fit(tiny_data)
    assert trainer.skipped_steps == 5 and torch.isfinite(model.weight)


class _WithExtraLoss(ToyModel):
    def __init__(self):
        super().__init__()
        self.weight.data.fill_(1.0)

    def log_prob(self, v):
        return torch.zeros(v.shape[0]) * self.weight

    def extra_loss_terms(self):
        return {"penalty": 2.0 * self.weight**2}


def test_extra_loss_terms_are_added(tiny_data):
    config = TrainConfig(steps=1, ema_decay=None, grad_clip=None, **FAST)
    trainer = Trainer(_WithExtraLoss(), config, device="cpu")
    metrics = trainer.train_step(Batch(torch.rand(4, 2, 4, 4), 4))
    assert metrics["penalty"] == pytest.approx(2.0) and metrics["loss"] == pytest.approx(2.0)
    assert metrics["grad_norm"] == pytest.approx(4.0)


def test_accumulation_gives_the_same_gradient(tiny_data):
    v = torch.rand(8, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for accumulation in (1, 4):
        model = tiny_glow()
        model.double().log_prob(v)  # ActNorm initialised the same way in both
        config = TrainConfig(steps=1, accumulation=accumulation, precision="float64",
                             ema_decay=None, grad_clip=None, **FAST)
        trainer = Trainer(model, config, device="cpu")
        trainer.train_step(Batch(v, 4))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_evaluate_matches_log_prob_and_levels_sum(tiny_data):
    model = tiny_glow()
    trainer = Trainer(model, TrainConfig(steps=1, ema_decay=None, **FAST), device="cpu")
    result = trainer.evaluate(tiny_data)
    assert result["num_images"] == 64 and len(result["per_level_bpd"]) == 1
    assert result["bpd"] == pytest.approx(sum(result["per_level_bpd"]) + 2.0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({}, "budget"),
        ({"steps": 0}, "steps"),
        ({"minutes": 1.0}, "cosine"),
        ({"steps": 5, "precision": "half"}, "precision"),
        ({"steps": 5, "objective": "nope"}, "objective"),
        ({"steps": 5, "ema_decay": 1.0}, "ema_decay"),
        ({"steps": 5, "clock": "cpu"}, "clock"),
        ({"steps": 5, "lr": float("inf")}, "lr must be a positive finite number, got inf"),
        ({"steps": True}, "steps must be a positive integer, got True"),
        ({"steps": 5, "objective": "flow_matching", "likelihood_after": 2, "likelihood_minutes": 1.0},
         "likelihood_after .* or likelihood_minutes .* not both"),
        ({"minutes": 1.0, "schedule": "constant", "objective": "flow_matching", "likelihood_minutes": 1.0},
         r"likelihood_minutes=1.0 must be less than the minutes budget \(minutes=1.0\)"),
        ({"steps": 5, "objective": "flow_matching", "likelihood_minutes": 0.5},
         r"less than the minutes budget \(minutes=None\)"),
        ({"steps": 5, "likelihood_after": 2}, "already the likelihood"),
        ({"steps": 5, "likelihood_lr": 0.0}, "likelihood_lr must be a positive finite number"),
    ],
)
def test_bad_config(options, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**options)


def test_unknown_option_and_bad_runs(tiny_data):
    with pytest.raises(ValueError, match="unknown trainer option"):
        TrainConfig.from_dict({"steps": 2, "stepz": 3})
    with pytest.raises(ValueError, match="exceeds"):
        Trainer(tiny_glow(), TrainConfig(steps=1, batch_size=128), device="cpu").fit(tiny_data)
    wrong = ImageData(torch.zeros(32, 1, 4, 4, dtype=torch.uint8), 4, "grey")
    with pytest.raises(ValueError, match="expects images of shape"):
        Trainer(tiny_glow(), TrainConfig(steps=1, batch_size=8), device="cpu").fit(wrong)
    with pytest.raises(ValueError, match=r"expects images of shape \(2, 4, 4\), the data has \(1, 4, 4\)"):
        Trainer(tiny_glow(), TrainConfig(steps=1, batch_size=64), device="cpu").fit(wrong)  # not "exceeds"
    with pytest.raises(TypeError, match="log_prob"):
        Trainer(torch.nn.Linear(2, 2), TrainConfig(steps=1))


def test_device_selection():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")


@pytest.mark.parametrize("clock", ["wall", "process"])
def test_minutes_budget_stops_on_the_chosen_clock(tiny_data, clock):
    config = TrainConfig(minutes=1e-4, schedule="constant", clock=clock, batch_size=8, progress=False,
                         tensorboard=False)
    report = Trainer(tiny_glow(), config, device="cpu").fit(tiny_data)
    # the budget (6 ms) is checked before every step: the run stops within a few steps (none at all when
    # the machine is so loaded that 6 ms pass before the first check)
    assert report["steps"] < 200 and report["clock"] == clock
    assert report["budget_time_s"] >= 0.006

