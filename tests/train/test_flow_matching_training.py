"""Training CNF models by flow matching through the shared trainer: objective, switch, levels, resume."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from train_helpers import read_metric

import flowplug
from flowplug.train import (
    CheckpointError,
    TrainConfig,
    Trainer,
    build_model,
    combine_level_checkpoints,
    load_checkpoint,
)

FAST = {"batch_size": 16, "progress": False, "tensorboard": False, "log_every": 1,
        "warmup_steps": 2, "lr": 3e-3, "schedule": "constant"}
SOLVER = {"method": "rk4", "step_size": 0.5}


def tiny_mrcnf(seed: int = 0) -> flowplug.MRCNF:
    torch.manual_seed(seed)
    return flowplug.MRCNF((2, 4, 4), levels=2, hidden_channels=8, num_layers=2, divergence="exact",
                          train_solver=SOLVER, eval_solver=SOLVER)


def test_flow_matching_trains_and_evaluation_reports_exact_likelihood(tiny_data, tmp_path):
    trainer = Trainer(tiny_mrcnf(), TrainConfig(steps=40, objective="flow_matching", **FAST),
                      out_dir=tmp_path, device="cpu")
    report = trainer.fit(tiny_data, tiny_data)
    fm = read_metric(tmp_path, "fm_loss")
    assert sum(fm[s] for s in range(36, 41)) < sum(fm[s] for s in range(1, 6))
    assert set(read_metric(tmp_path, "fm_level_0")) == set(fm)
    assert not read_metric(tmp_path, "nll")  # no ODE solve in training
    held_out = report["held_out"]
    assert len(held_out["per_level_bpd"]) == 2 and held_out["nfe"] > 0
    # the reported figure is the likelihood of the evaluated (EMA) weights
    model = trainer.eval_model().eval()
    v = flowplug.data.dequantize(tiny_data.x[:4], tiny_data.n_bins, generator=torch.Generator())
    with torch.no_grad():
        assert torch.isfinite(model.log_prob(v)).all()


def test_switch_to_likelihood_fine_tuning(tiny_data, tmp_path):
    config = TrainConfig(steps=8, objective="flow_matching", likelihood_after=5, **FAST)
    Trainer(tiny_mrcnf(), config, out_dir=tmp_path, device="cpu").fit(tiny_data)
    assert sorted(read_metric(tmp_path, "fm_loss")) == [1, 2, 3, 4, 5]
    assert sorted(read_metric(tmp_path, "nll")) == [6, 7, 8]


def test_likelihood_phase_continues_from_the_ema_weights_with_fresh_moments(tiny_data):
    config = TrainConfig(steps=4, objective="flow_matching", likelihood_after=4, likelihood_lr=1e-4, **FAST)
    trainer = Trainer(tiny_mrcnf(), config, device="cpu")
    trainer.fit(tiny_data)  # 4 flow-matching steps: the next one is the phase's first
    assert trainer.step == 4 and trainer.likelihood_from is None
    averaged = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    raw = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw)

    seen = {}
    step = trainer.optimizer.step

    def record(*args, **kwargs):  # the weights the phase's first update starts from, and its moments
        seen["weights"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        seen["moments"] = len(trainer.optimizer.state)
        seen["lr"] = trainer.optimizer.param_groups[0]["lr"]
        return step(*args, **kwargs)

    trainer.optimizer.step = record
    trainer.train_step(trainer._batch(tiny_data.x[:16], tiny_data.n_bins))
    assert trainer.likelihood_from == 4 and trainer.current_objective() is trainer._likelihood
    assert all(torch.equal(seen["weights"][k], averaged[k]) for k in averaged)
    assert seen["moments"] == 0 and seen["lr"] == 1e-4
    assert {int(s["step"]) for s in trainer.optimizer.state.values()} == {1}
    # the EMA restarted from the phase's starting weights, so its ramp follows the phase's first update
    assert any(not torch.equal(trainer.ema.module.state_dict()[k], averaged[k]) for k in averaged)


def test_likelihood_phase_on_some_levels_freezes_the_others_and_skips_their_solves(tiny_data, tmp_path):
    config = TrainConfig(steps=6, objective="flow_matching", likelihood_after=3, likelihood_levels=[0], **FAST)
    trainer = Trainer(tiny_mrcnf(), config, out_dir=tmp_path, device="cpu")
    solves = [m for m in trainer.model.levels[1].modules() if isinstance(m, flowplug.CNF)]
    start, begin = {}, trainer._begin_likelihood_phase

    def recording_begin():  # level 1 as the phase starts (the EMA weights), and its solves from then on
        begin()
        assert trainer.model.frozen_levels() == [1]
        start.update({k: v.clone() for k, v in trainer.model.levels[1].state_dict().items()})
        for cnf in solves:
            cnf.reset_nfe()

    trainer._begin_likelihood_phase = recording_begin
    trainer.fit(tiny_data)
    assert trainer.likelihood_from == 3 and start
    assert sum(cnf.nfe.total for cnf in solves) == 0  # the frozen level's term was never computed
    for weights in (trainer.model.levels[1].state_dict(), trainer.ema.module.levels[1].state_dict()):
        assert all(torch.equal(value, start[key]) for key, value in weights.items())
    assert sorted(read_metric(tmp_path, "nll")) == [4, 5, 6]
    assert not read_metric(tmp_path, "bpd")  # the trained levels' nll is not the model's bits per dimension


def test_likelihood_levels_are_checked_against_the_model_and_the_trainable_levels():
    with pytest.raises(ValueError, match=r"likelihood_levels \[1\] must be among the trainable_levels \[0\]"):
        TrainConfig(steps=1, trainable_levels=[0], likelihood_levels=[1], **FAST)
    for levels in ([], [0, 0], [-1], "0", [True]):
        with pytest.raises(ValueError, match="likelihood_levels must be a non-empty list of distinct level"):
            TrainConfig(steps=1, likelihood_levels=levels, **FAST)
    model = tiny_mrcnf()
    with pytest.raises(ValueError, match=r"likelihood_levels \[2\]: level 2 does not exist"):
        Trainer(model, TrainConfig(steps=1, likelihood_levels=[2], **FAST), device="cpu")
    assert model.frozen_levels() == []  # the check left every level trainable


def test_likelihood_minutes_start_the_phase_before_the_end_of_the_budget(tiny_data, tmp_path, monkeypatch):
    trainer = Trainer(tiny_mrcnf(), TrainConfig(minutes=1.0, likelihood_minutes=0.25, objective="flow_matching",
                                                **FAST), out_dir=tmp_path, device="cpu")
    # a clock of 10 seconds per step: the budget ends after 6 steps, the phase takes the last 15 seconds
    monkeypatch.setattr("flowplug.train.trainer.budget_clock", lambda clock: 10.0 * trainer.step)
    trainer.fit(tiny_data)
    assert sorted(read_metric(tmp_path, "fm_loss")) == [1, 2, 3, 4, 5]
    assert sorted(read_metric(tmp_path, "nll")) == [6]
    assert trainer.likelihood_from == 5


@pytest.mark.parametrize(("interrupted_at", "levels"), [(3, None), (4, None), (4, [1])])
def test_resume_at_or_inside_the_likelihood_phase_continues_the_run_exactly(tiny_data, tmp_path, interrupted_at,
                                                                            levels):
    def run(folder, steps, resume=False):
        config = TrainConfig(steps=steps, objective="flow_matching", likelihood_after=3, likelihood_lr=1e-3,
                             likelihood_levels=levels, checkpoint_every=1, **FAST)
        trainer = Trainer(tiny_mrcnf(), config, out_dir=folder, device="cpu")
        trainer.fit(tiny_data, resume=resume)
        return trainer

    whole = run(tmp_path / "whole", 6)
    run(tmp_path / "parts", interrupted_at)
    resumed = run(tmp_path / "parts", 6, resume=True)
    assert read_metric(tmp_path / "parts", "nll") == read_metric(tmp_path / "whole", "nll")
    assert resumed.likelihood_from == whole.likelihood_from == 3
    assert resumed.model.frozen_levels() == whole.model.frozen_levels() == ([] if levels is None else [0])
    for a, b in zip(whole.ema.module.state_dict().values(), resumed.ema.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_written_before_phases_were_recorded_resumes_in_its_phase(tiny_data, tmp_path):
    config = TrainConfig(steps=4, objective="flow_matching", likelihood_after=3, checkpoint_every=1, **FAST)
    trainer = Trainer(tiny_mrcnf(), config, out_dir=tmp_path, device="cpu")
    trainer.fit(tiny_data)
    state = load_checkpoint(trainer.latest_checkpoint())
    del state["likelihood_from"]
    older = tmp_path / "older.pt"
    torch.save(state, older)
    continued = Trainer(tiny_mrcnf(), replace(config, steps=5), device="cpu")
    continued.fit(tiny_data, resume=older)
    assert continued.likelihood_from == 3  # already in the phase: not begun a second time


def test_resume_keeps_objective_and_standardisation(tiny_data, tmp_path):
    def run(folder, steps, resume=False):
        config = TrainConfig(steps=steps, objective="flow_matching", checkpoint_every=1, **FAST)
        trainer = Trainer(tiny_mrcnf(), config, out_dir=folder, device="cpu")
        trainer.fit(tiny_data, resume=resume)
        return trainer

    whole = run(tmp_path / "whole", 6)
    run(tmp_path / "parts", 3)
    resumed = run(tmp_path / "parts", 6, resume=True)
    expected, got = read_metric(tmp_path / "whole", "fm_loss"), read_metric(tmp_path / "parts", "fm_loss")
    assert [got[s] for s in (4, 5, 6)] == [expected[s] for s in (4, 5, 6)]
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    state = load_checkpoint(resumed.latest_checkpoint())
    assert state["trainer_config"]["objective"] == {"type": "flow_matching"}
    rebuilt = build_model(state)
    standardizer = rebuilt.levels[0].standardize
    assert bool(standardizer.initialized) and not torch.equal(standardizer.log_std, torch.zeros(6))


def test_only_the_chosen_levels_train(tiny_data):
    model = tiny_mrcnf()
    v = flowplug.data.dequantize(tiny_data.x, tiny_data.n_bins, generator=torch.Generator())
    model.initialize_from_data(v)  # as a trained level would be
    frozen = {k: v.clone() for k, v in model.levels[0].state_dict().items()}
    moving = {k: v.clone() for k, v in model.levels[1].state_dict().items()}
    Trainer(model, TrainConfig(steps=5, trainable_levels=[1], **FAST), device="cpu").fit(tiny_data)
    assert all(torch.equal(v, frozen[k]) for k, v in model.levels[0].state_dict().items())
    assert not all(torch.equal(v, moving[k]) for k, v in model.levels[1].state_dict().items())


def test_level_options_need_a_multi_level_model_and_flow_matching_a_cnf_model(tiny_data):
    glow = flowplug.build({"type": "glow", "image_shape": [2, 4, 4], "levels": 1, "depth": 1,
                           "hidden_channels": 4})
    with pytest.raises(ValueError, match="trainable_levels needs a multi-level model, Glow has no levels"):
        Trainer(glow, TrainConfig(steps=1, trainable_levels=[0], **FAST), device="cpu")
    trainer = Trainer(glow, TrainConfig(steps=1, objective="flow_matching", **FAST), device="cpu")
    with pytest.raises(NotImplementedError, match="Glow has no flow-matching objective"):
        trainer.fit(tiny_data)


def test_levels_trained_in_separate_runs_combine_from_checkpoints(tiny_data, tmp_path):
    for level in (0, 1):
        config = TrainConfig(steps=4, trainable_levels=[level], objective="flow_matching", **FAST)
        Trainer(tiny_mrcnf(seed=level), config, out_dir=tmp_path / f"level{level}", device="cpu").fit(tiny_data)
    checkpoints = [next((tmp_path / f"level{s}" / "checkpoints").glob("step-*.pt")) for s in (0, 1)]
    combined = combine_level_checkpoints([(checkpoints[0], [0]), (checkpoints[1], [1])]).eval()
    v = flowplug.data.dequantize(tiny_data.x[:8], tiny_data.n_bins, generator=torch.Generator())
    with torch.no_grad():
        terms = combined.level_log_probs(v)
        for s, path in enumerate(checkpoints):
            source = combine_level_checkpoints([(path, [0, 1])]).eval()
            assert torch.equal(terms[s], source.level_log_probs(v)[s])
    with pytest.raises(ValueError, match="level 1 is asked from both"):
        combine_level_checkpoints([(checkpoints[0], [1]), (checkpoints[1], [1])])


def test_combining_refuses_models_of_another_config(tiny_data, tmp_path):
    Trainer(tiny_mrcnf(), TrainConfig(steps=1, **FAST), out_dir=tmp_path / "a", device="cpu").fit(tiny_data)
    other = flowplug.MRCNF((2, 4, 4), levels=2, hidden_channels=4, num_layers=2, train_solver=SOLVER)
    Trainer(other, TrainConfig(steps=1, **FAST), out_dir=tmp_path / "b", device="cpu").fit(tiny_data)
    a, b = (next((tmp_path / n / "checkpoints").glob("step-*.pt")) for n in "ab")
    with pytest.raises(CheckpointError, match="holds a model of another config"):
        combine_level_checkpoints([(a, [0]), (b, [1])])


def test_flow_matching_objective_takes_coupling_and_time_options(tiny_data):
    torch.manual_seed(0)
    model = flowplug.MRCNF((2, 4, 4), levels=2, net="res_odenet",
                           net_options={"hidden_channels": 8},
                           train_solver=SOLVER, eval_solver=SOLVER)
    objective = {"type": "flow_matching", "sigma": 1e-4, "coupling": "ot", "time_sampling": "power",
                 "time_options": {"power": 2.0}}
    config = TrainConfig(steps=3, batch_size=8, objective=objective, progress=False, tensorboard=False)
    report = Trainer(model, config, device="cpu").fit(tiny_data)
    assert report["steps"] == 3 and config.objective["coupling"] == "ot"
    with pytest.raises(ValueError, match="coupling"):
        bad = TrainConfig(steps=1, batch_size=8, objective={"type": "flow_matching", "coupling": "sinkhorn"},
                          progress=False, tensorboard=False)
        Trainer(model, bad, device="cpu").fit(tiny_data)
