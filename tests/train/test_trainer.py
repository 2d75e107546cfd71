"""The trainer: fitting, exact resume, non-finite steps, EMA, extra losses, bad options and plans, the budget's
clock, evaluation points, default checkpoints, rates."""

from __future__ import annotations

import json
import re

import pytest
import torch
from train_helpers import TINY_GLOW, Exploding, ToyModel, interrupt_at, read_metric, tiny_glow

import flowplug
from flowplug.data import Batch, ImageData
from flowplug.models.baselines import RealNVP
from flowplug.train import CheckpointError, TrainConfig, Trainer, resolve_device
from flowplug.train.schedule import learning_rate

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


@pytest.mark.parametrize(("n_bins", "shape"), [(256, (2, 4, 4)), (4, (2, 8, 8))])
def test_fit_refuses_validation_data_of_other_bins_or_shape(tiny_data, tmp_path, n_bins, shape):
    val = ImageData(torch.zeros(8, *shape, dtype=torch.uint8), n_bins, "other")
    trainer = Trainer(tiny_glow(), TrainConfig(steps=1, **FAST), out_dir=tmp_path, device="cpu")
    with pytest.raises(ValueError, match=re.escape(f"the validation data (other: images {shape}, n_bins={n_bins}) "
                                                   "must match the training data (tiny: images (2, 4, 4), n_bins=4)")):
        trainer.fit(tiny_data, val)
    assert not (tmp_path / "config.json").exists()  # refused before the folder was claimed


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
        ({"steps": 5, "lr": float("inf")}, r"lr must be a positive number of at most 1e\+06, got inf"),
        ({"steps": True}, "steps must be a positive integer, got True"),
        ({"steps": 5, "hflip": "false"}, "hflip must be true or false, got 'false'"),
        ({"steps": 5, "lr": "1e-3"}, r"lr must be a positive number of at most 1e\+06, got '1e-3'"),
        ({"steps": 5, "warmup_steps": 2.5}, r"warmup_steps must be an integer >= 0, got 2\.5"),
        ({"steps": 5, "objective": {"type": "flow_matching", "coupling": "OT"}},
         r"flow_matching: unknown coupling 'OT'; choose one of \('independent', 'ot'\)"),
        ({"steps": 5, "objective": {"type": "flow_matching", "sigma": 1.5}}, r"sigma must lie in \[0, 1\), got 1\.5"),
        ({"steps": 5, "objective": {"type": "flow_matching", "time_sampling": "power", "time_options": {"loc": 1}}},
         r"time_options \['loc'\] do not apply to time_sampling 'power' \(its options: \['power'\]\)"),
        ({"steps": 5, "objective": {"type": "flow_matching", "time_sampling": "power", "time_options": {"power": -1}}},
         "power must be positive, got -1"),
        ({"steps": 5, "weight_decay": 1e30}, r"weight_decay must lie in \[0, 1\), got 1e\+30"),
        ({"steps": 5, "tensorboard": "no"}, "tensorboard must be true, false or null"),
    ],
)
def test_bad_config(options, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**options)


FM_THEN_LIKELIHOOD = [{"objective": "flow_matching", "until": 0.5}, {"objective": "likelihood"}]


@pytest.mark.parametrize(
    ("phases", "match"),
    [
        ([], "phases must be a non-empty list of phase dicts"),
        ({"objective": "likelihood"}, "phases must be a non-empty list of phase dicts"),
        (["likelihood"], r"phases\[0\] must be a dict"),
        ([{"until": 0.5}, {"objective": "likelihood"}], r"phases\[0\] needs an 'objective'"),
        ([{"objective": "flow_matching", "until": 0.5, "rate": 1.0}, {"objective": "likelihood"}],
         r"phases\[0\] has unknown key\(s\) \['rate'\]"),
        ([{"objective": "flow_matching"}, {"objective": "likelihood"}], r"phases\[0\] needs an 'until'"),
        ([{"objective": "likelihood", "until": 0.5}], r"phases\[0\]: the last phase runs to the end of the budget"),
        ([{"objective": "flow_matching", "until": 1.0}, {"objective": "likelihood"}],
         r"phases\[0\].until must be a fraction of the budget in \(0, 1\)"),
        ([{"objective": "flow_matching", "until": 0}, {"objective": "likelihood"}], r"phases\[0\].until must be"),
        ([{"objective": "flow_matching", "until": True}, {"objective": "likelihood"}], r"phases\[0\].until must be"),
        ([{"objective": "flow_matching", "until": {"step": 0}}, {"objective": "likelihood"}], "with N >= 1"),
        ([{"objective": "flow_matching", "until": {"step": 2, "minutes": 1}}, {"objective": "likelihood"}],
         r"phases\[0\].until must be"),
        ([FM_THEN_LIKELIHOOD[0], {"objective": "likelihood", "lr": 0.0}],
         r"phases\[1\].lr must be a positive number of at most 1e\+06, got 0.0"),
        ([FM_THEN_LIKELIHOOD[0], {"objective": "likelihood", "lr": float("nan")}],
         r"phases\[1\].lr must be a positive number of at most 1e\+06, got nan"),
        ([FM_THEN_LIKELIHOOD[0], {"objective": "likelihood", "lr": True}], r"phases\[1\].lr must be"),
        ([{"objective": "flow_matching", "until": 0.6}, {"objective": "flow_matching", "until": 0.4},
          {"objective": "likelihood"}], "must increase"),
        ([{"objective": "flow_matching", "until": {"step": 5}}, {"objective": "flow_matching", "until": {"step": 5}},
          {"objective": "likelihood"}], "must increase"),
    ],
)
def test_bad_plan(phases, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(steps=5, phases=phases)


def test_the_objective_is_the_first_phases_objective():
    config = TrainConfig(steps=5, phases=FM_THEN_LIKELIHOOD)
    assert config.objective == {"type": "flow_matching"}
    assert TrainConfig(steps=5, objective="flow_matching", phases=FM_THEN_LIKELIHOOD).phases == config.phases
    with pytest.raises(ValueError, match=r"objective \{'type': 'likelihood'\} differs from the first phase's "
                                         r"\{'type': 'flow_matching'\}"):
        TrainConfig(steps=5, objective="likelihood", phases=FM_THEN_LIKELIHOOD)
    assert TrainConfig(steps=5).phases == [{"objective": {"type": "likelihood"}, "until": None, "lr": None,
                                            "levels": None}]
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_older_phase_options_become_a_plan():
    config = TrainConfig.from_dict({"steps": 10, "objective": "flow_matching", "likelihood_after": 6,
                                    "likelihood_lr": 2e-3, "likelihood_levels": [0], "likelihood_minutes": None})
    assert config.phases == [
        {"objective": {"type": "flow_matching"}, "until": {"step": 6}, "lr": None, "levels": None},
        {"objective": {"type": "likelihood"}, "until": None, "lr": 2e-3, "levels": [0]},
    ]
    assert config.objective == {"type": "flow_matching"}
    assert not {"likelihood_after", "likelihood_minutes", "likelihood_lr", "likelihood_levels"} & set(
        config.to_dict())
    timed = TrainConfig.from_dict({"minutes": 8.0, "schedule": "constant", "objective": "flow_matching",
                                   "likelihood_minutes": 2.0})
    assert [p["until"] for p in timed.phases] == [0.75, None] and timed.phases[1]["lr"] is None
    unset = TrainConfig.from_dict({"steps": 3, "likelihood_after": None, "likelihood_lr": None})
    assert unset.phases == TrainConfig(steps=3).phases
    with pytest.raises(TypeError, match="likelihood_after"):
        TrainConfig(steps=3, likelihood_after=2)  # only from_dict knows the older names


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"steps": 5, "objective": "flow_matching", "likelihood_after": 2, "likelihood_minutes": 1.0},
         "likelihood_after or likelihood_minutes"),
        ({"minutes": 1.0, "schedule": "constant", "objective": "flow_matching", "likelihood_minutes": 1.0},
         r"likelihood_minutes=1.0 must be less than the minutes budget \(minutes=1.0\)"),
        ({"steps": 5, "objective": "flow_matching", "likelihood_minutes": 0.5},
         r"less than the minutes budget \(minutes=None\)"),
        ({"steps": 5, "objective": "flow_matching", "likelihood_after": 2, "likelihood_lr": 0.0},
         r"phases\[1\].lr must be a positive number"),
        ({"steps": 5, "objective": "flow_matching", "likelihood_after": 2, "likelihood_levels": []},
         r"phases\[1\].levels must be a non-empty list"),
        ({"steps": 5, "likelihood_after": 2, "phases": FM_THEN_LIKELIHOOD}, "give the plan once"),
    ],
)
def test_bad_older_phase_options(options, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(options)


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



def _fake_budget_clock(monkeypatch, trainer, step_s, evaluation_s=0.0):
    """The budget clock reads a fake time that each training step advances by ``step_s`` seconds and each
    evaluation by ``evaluation_s``."""
    now = [0.0]
    monkeypatch.setattr("flowplug.train.budget.budget_clock", lambda clock: now[0])
    train_step, evaluate = trainer.train_step, trainer.evaluate

    def timed_step(batch):
        now[0] += step_s
        return train_step(batch)

    def timed_evaluation(data, **options):
        now[0] += evaluation_s
        return evaluate(data, **options)

    trainer.train_step, trainer.evaluate = timed_step, timed_evaluation


def test_evaluation_time_does_not_count_toward_a_minutes_budget(tiny_data, monkeypatch):
    train, val = tiny_data.split(0.25)
    trainer = Trainer(tiny_glow(), TrainConfig(minutes=1.0, schedule="constant", eval_every=1, **FAST),
                      device="cpu")
    _fake_budget_clock(monkeypatch, trainer, step_s=10.0, evaluation_s=1000.0)
    report = trainer.fit(train, val)
    assert report["steps"] == 6 and report["budget_time_s"] == 60.0  # the evaluations took 1000 s each
    assert [(p["step"], p["train_time_s"]) for p in report["curve"][:6]] == [(s, 10.0 * s) for s in range(1, 7)]


def test_eval_points_of_a_step_budget(tiny_data, tmp_path):
    train, val = tiny_data.split(0.25)
    config = TrainConfig(steps=8, eval_points=4, **FAST)
    report = Trainer(tiny_glow(), config, out_dir=tmp_path, device="cpu").fit(train, val)
    assert [p["step"] for p in report["curve"]] == [2, 4, 6, 8]
    assert report["curve"][-1]["bpd"] == report["held_out"]["bpd"]
    assert sorted(read_metric(tmp_path, "bpd", split="val")) == [2, 4, 6]  # the end's is in the report
    assert json.loads((tmp_path / "report.json").read_text())["curve"] == report["curve"]
    assert "curve" not in Trainer(tiny_glow(), config, device="cpu").fit(train)  # no validation data, no curve


def test_eval_points_across_a_resume(tiny_data, tmp_path):
    train, val = tiny_data.split(0.25)

    def run(folder, resume=False, stop_at=None):
        trainer = Trainer(tiny_glow(), TrainConfig(steps=8, eval_points=4, checkpoint_every=1, **FAST),
                          out_dir=tmp_path / folder, device="cpu")
        if stop_at is not None:
            interrupt_at(trainer, stop_at)
        return trainer.fit(train, val, resume=resume)

    whole = run("whole")
    with pytest.raises(KeyboardInterrupt):
        run("parts", stop_at=4)
    resumed = run("parts", resume=True)
    assert [p["step"] for p in resumed["curve"]] == [p["step"] for p in whole["curve"]] == [2, 4, 6, 8]


def test_eval_points_of_a_minutes_budget_fall_on_training_time(tiny_data, monkeypatch):
    train, val = tiny_data.split(0.25)
    trainer = Trainer(tiny_glow(), TrainConfig(minutes=1.0, schedule="constant", eval_points=3, **FAST),
                      device="cpu")
    _fake_budget_clock(monkeypatch, trainer, step_s=10.0, evaluation_s=7.0)
    report = trainer.fit(train, val)
    assert [(p["step"], p["train_time_s"]) for p in report["curve"]] == [(2, 20.0), (4, 40.0), (6, 60.0)]


@pytest.mark.parametrize(("checkpoint_every", "steps"), [(None, [2, 4, 6, 8]), (3, [3, 6, 8])])
def test_checkpoints_fall_at_each_quarter_of_the_budget_by_default(tiny_data, tmp_path, checkpoint_every, steps):
    config = TrainConfig(steps=8, checkpoint_every=checkpoint_every, keep_last=10, **FAST)
    trainer = Trainer(tiny_glow(), config, out_dir=tmp_path, device="cpu")
    trainer.fit(tiny_data)
    assert [int(p.stem.removeprefix("step-")) for p in trainer.folder.step_checkpoints()] == steps


def test_every_step_takes_its_rate_from_the_schedule(tiny_data, tmp_path):
    config = TrainConfig(steps=6, **{**FAST, "warmup_steps": 2})
    trainer = Trainer(tiny_glow(), config, out_dir=tmp_path, device="cpu")
    trainer.fit(tiny_data)
    rates = read_metric(tmp_path, "lr")  # logged after step s, which ran at the rate of step s - 1
    assert rates == {s: learning_rate(config, s - 1, 6, None, config.phases[0]) for s in range(1, 7)}
    assert rates[1] == 3e-3 / 2 and rates[2] == 3e-3 and rates[6] < rates[3]
    assert not hasattr(trainer, "scheduler")
