"""Training CNF models by flow matching through the shared trainer: objective, plans of phases, levels, resume."""

from __future__ import annotations

import pytest
import torch
from train_helpers import read_metric, tiny_images

import flowplug
from flowplug.train import (
    CheckpointError,
    TrainConfig,
    Trainer,
    build_model,
    combine_level_checkpoints,
    load_checkpoint,
)
from flowplug.train.schedule import lr_factor

FAST = {"batch_size": 16, "progress": False, "tensorboard": False, "log_every": 1,
        "warmup_steps": 2, "lr": 3e-3, "schedule": "constant"}
SOLVER = {"method": "rk4", "step_size": 0.5}


def tiny_mrcnf(seed: int = 0) -> flowplug.MRCNF:
    torch.manual_seed(seed)
    return flowplug.MRCNF((2, 4, 4), levels=2, hidden_channels=8, num_blocks=1, divergence="exact",
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


def _plan(until, **second):
    """Flow matching until ``until``, then the likelihood (with the options ``second``)."""
    return [{"objective": "flow_matching", "until": until}, {"objective": "likelihood", **second}]


def test_switch_to_likelihood_fine_tuning_at_a_step(tiny_data, tmp_path, capfd):
    config = TrainConfig(steps=8, phases=_plan({"step": 5}), **FAST)
    trainer = Trainer(tiny_mrcnf(), config, out_dir=tmp_path, device="cpu")
    report = trainer.fit(tiny_data)
    assert sorted(read_metric(tmp_path, "fm_loss")) == [1, 2, 3, 4, 5]
    assert sorted(read_metric(tmp_path, "nll")) == [6, 7, 8]
    assert trainer.phase == 1 and trainer.phase_starts == report["phase_starts"] == [0, 5]
    assert trainer.current_phase()["objective"] == {"type": "likelihood"}
    assert capfd.readouterr().err.count("step 5: phase 2 of 2 begins (likelihood)") == 1


def test_a_fraction_of_a_step_budget_switches_at_the_first_step_past_it_and_the_phase_rate_is_constant(
        tiny_data, tmp_path):
    # 0.65 of 8 steps is 5.2: the phase begins once 6 steps (0.75 of the budget) are done
    config = TrainConfig(steps=8, phases=_plan(0.65, lr=2e-3), **{**FAST, "schedule": "cosine"})
    trainer = Trainer(tiny_mrcnf(), config, out_dir=tmp_path, device="cpu")
    trainer.fit(tiny_data)
    assert sorted(read_metric(tmp_path, "fm_loss")) == [1, 2, 3, 4, 5, 6]
    assert sorted(read_metric(tmp_path, "nll")) == [7, 8]
    assert trainer.phase_starts == [0, 6]
    rates = read_metric(tmp_path, "lr")  # the rate of the step logged at s is that of step s - 1
    assert [rates[s] for s in range(1, 7)] == [3e-3 * lr_factor(config, s - 1, 8) for s in range(1, 7)]
    assert rates[2] > rates[6]  # the first phase followed the cosine schedule, which goes on falling ...
    assert lr_factor(config, 7, 8) < lr_factor(config, 6, 8)
    assert rates[7] == rates[8] == 2e-3 == trainer.optimizer.param_groups[0]["lr"]  # ... the second's is constant


def test_likelihood_phase_continues_from_the_ema_weights_with_fresh_moments(tiny_data, capfd):
    config = TrainConfig(steps=5, phases=_plan({"step": 4}, lr=1e-4), **FAST)
    trainer = Trainer(tiny_mrcnf(), config, device="cpu")
    seen = {}
    train_step, step = trainer.train_step, trainer.optimizer.step

    def recording_train_step(batch):  # the weights and their average after the last flow-matching step
        metrics = train_step(batch)
        if trainer.step == 4:
            seen["averaged"] = {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
            seen["raw"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        return metrics

    def record(*args, **kwargs):  # the weights the phase's first update starts from, and its moments
        if trainer.phase == 1 and "weights" not in seen:
            seen["weights"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            seen["moments"] = len(trainer.optimizer.state)
            seen["lr"] = trainer.optimizer.param_groups[0]["lr"]
        return step(*args, **kwargs)

    trainer.train_step, trainer.optimizer.step = recording_train_step, record
    trainer.fit(tiny_data)
    averaged, raw = seen["averaged"], seen["raw"]
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw)
    assert trainer.phase_starts == [0, 4]
    assert all(torch.equal(seen["weights"][k], averaged[k]) for k in averaged)
    assert seen["moments"] == 0 and seen["lr"] == 1e-4
    assert {int(s["step"]) for s in trainer.optimizer.state.values()} == {1}
    # the EMA restarted from the phase's starting weights, so its ramp follows the phase's first update
    assert any(not torch.equal(trainer.ema.module.state_dict()[k], averaged[k]) for k in averaged)
    assert "step 4: phase 2 of 2 begins" in capfd.readouterr().err


def test_likelihood_phase_on_some_levels_freezes_the_others_and_skips_their_solves(tiny_data, tmp_path):
    config = TrainConfig(steps=6, phases=_plan({"step": 3}, levels=[0]), **FAST)
    trainer = Trainer(tiny_mrcnf(), config, out_dir=tmp_path, device="cpu")
    solves = [m for m in trainer.model.levels[1].modules() if isinstance(m, flowplug.CNF)]
    start, apply_levels = {}, trainer.apply_phase_levels

    def recording_apply():  # level 1 as the phase starts (the EMA weights), and its solves from then on
        apply_levels()
        assert trainer.model.frozen_levels() == [1]
        start.update({k: v.clone() for k, v in trainer.model.levels[1].state_dict().items()})
        for cnf in solves:
            cnf.reset_nfe()

    trainer.apply_phase_levels = recording_apply
    trainer.fit(tiny_data)
    assert trainer.phase_starts == [0, 3] and start
    assert sum(cnf.nfe.total for cnf in solves) == 0  # the frozen level's term was never computed
    for weights in (trainer.model.levels[1].state_dict(), trainer.ema.module.levels[1].state_dict()):
        assert all(torch.equal(value, start[key]) for key, value in weights.items())
    assert sorted(read_metric(tmp_path, "nll")) == [4, 5, 6]
    assert not read_metric(tmp_path, "bpd")  # the trained levels' nll is not the model's bits per dimension


def test_phase_levels_are_checked_against_the_model_and_the_trainable_levels():
    with pytest.raises(ValueError, match=r"phases\[1\].levels \[1\] must be among the trainable_levels \[0\]"):
        TrainConfig(steps=1, trainable_levels=[0], phases=_plan(0.5, levels=[1]), **FAST)
    for levels in ([], [0, 0], [-1], "0", [True]):
        with pytest.raises(ValueError, match=r"phases\[1\].levels must be a non-empty list of distinct level"):
            TrainConfig(steps=1, phases=_plan(0.5, levels=levels), **FAST)
    model = tiny_mrcnf()
    with pytest.raises(ValueError, match=r"level 2 does not exist; this model has levels 0..1"):
        Trainer(model, TrainConfig(steps=1, phases=_plan(0.5, levels=[2]), **FAST), device="cpu")
    assert model.frozen_levels() == []  # the check left every level trainable


def test_a_fraction_of_a_minutes_budget_starts_the_phase_on_the_budget_clock(tiny_data, tmp_path, monkeypatch):
    trainer = Trainer(tiny_mrcnf(), TrainConfig(minutes=1.0, phases=_plan(0.75), **FAST), out_dir=tmp_path,
                      device="cpu")
    # a clock of 10 seconds per step: the budget ends after 6 steps, the phase takes the last 15 seconds
    monkeypatch.setattr("flowplug.train.budget.budget_clock", lambda clock: 10.0 * trainer.step)
    report = trainer.fit(tiny_data)
    assert sorted(read_metric(tmp_path, "fm_loss")) == [1, 2, 3, 4, 5]
    assert sorted(read_metric(tmp_path, "nll")) == [6]
    assert trainer.phase_starts == [0, 5] and report["budget_time_s"] == 60.0


def test_a_legacy_likelihood_minutes_option_runs_the_same_plan(tiny_data, tmp_path, monkeypatch):
    legacy = TrainConfig.from_dict({"minutes": 1.0, "likelihood_minutes": 0.25, "objective": "flow_matching",
                                    **FAST})
    assert legacy.phases == TrainConfig(minutes=1.0, phases=_plan(0.75), **FAST).phases
    trainer = Trainer(tiny_mrcnf(), legacy, out_dir=tmp_path, device="cpu")
    monkeypatch.setattr("flowplug.train.budget.budget_clock", lambda clock: 10.0 * trainer.step)
    trainer.fit(tiny_data)
    assert sorted(read_metric(tmp_path, "nll")) == [6] and trainer.phase_starts == [0, 5]


@pytest.mark.parametrize(("interrupted_at", "levels"), [(3, None), (4, None), (4, [1])])
def test_resume_at_or_inside_the_likelihood_phase_continues_the_run_exactly(tiny_data, tmp_path, interrupted_at,
                                                                            levels):
    def run(folder, steps, resume=False):
        config = TrainConfig(steps=steps, phases=_plan({"step": 3}, lr=1e-3, levels=levels), checkpoint_every=1,
                             **FAST)
        trainer = Trainer(tiny_mrcnf(), config, out_dir=folder, device="cpu")
        trainer.fit(tiny_data, resume=resume)
        return trainer

    whole = run(tmp_path / "whole", 6)
    run(tmp_path / "parts", interrupted_at)
    resumed = run(tmp_path / "parts", 6, resume=True)
    assert read_metric(tmp_path / "parts", "nll") == read_metric(tmp_path / "whole", "nll")
    assert resumed.phase_starts == whole.phase_starts == [0, 3]
    assert resumed.model.frozen_levels() == whole.model.frozen_levels() == ([] if levels is None else [0])
    for a, b in zip(whole.ema.module.state_dict().values(), resumed.ema.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def _as_version_1(checkpoint, likelihood_from, steps):
    """``checkpoint`` (of a flow-matching run switching to the likelihood at step 3) as the first checkpoint
    format wrote it, with a budget of ``steps``: the likelihood phase as options, ``likelihood_from`` (when not
    ``None``), a scheduler's state, MRCNF's config without "net"."""
    options = {k: v for k, v in checkpoint.trainer_config.items() if k not in ("phases", "eval_points")}
    options.update(steps=steps, tensorboard=False, likelihood_after=3, likelihood_lr=None, likelihood_minutes=None,
                   likelihood_levels=None)
    old = {
        "format": "flowplug-checkpoint-v1", "model": checkpoint.model,
        "model_config": {k: v for k, v in checkpoint.model_config.items() if k != "net"},
        "optimizer": checkpoint.optimizer, "ema": checkpoint.ema,
        "scheduler": {"base_lrs": [3e-3], "last_epoch": checkpoint.step, "_step_count": checkpoint.step + 1},
        "step": checkpoint.step, "skipped_steps": 0, "best_val_bpd": None, "total_steps": checkpoint.total_steps,
        "schedule_segment": None, "elapsed_s": checkpoint.elapsed_s, "resumes": [], "parent": None,
        "rng": checkpoint.rng, "trainer_config": options, "data": checkpoint.data,
    }
    if likelihood_from is not None:
        old["likelihood_from"] = likelihood_from
    return old


def _conv_trainer(steps, folder=None):
    """A trainer of a tiny MRCNF with the conv_odenet nets of version-1 checkpoints, switching at step 3."""
    torch.manual_seed(0)
    model = flowplug.MRCNF((2, 4, 4), levels=2, hidden_channels=8, num_layers=2, net="conv_odenet",
                           divergence="exact", train_solver=SOLVER, eval_solver=SOLVER)
    config = TrainConfig(steps=steps, phases=_plan({"step": 3}), checkpoint_every=1, **FAST)
    return Trainer(model, config, out_dir=folder, device="cpu")


@pytest.fixture(scope="module")
def version_1_run(tmp_path_factory):
    """A 5-step run (model weights), and the path of a 4-step checkpoint of it in the first format."""
    data = tiny_images()
    folder = tmp_path_factory.mktemp("version1")
    whole = _conv_trainer(5)
    whole.fit(data)
    first = _conv_trainer(4, folder / "run")
    first.fit(data)
    checkpoint = load_checkpoint(first.latest_checkpoint())
    paths = {}
    for likelihood_from in (3, None):
        paths[likelihood_from] = folder / f"older-{likelihood_from}.pt"
        torch.save(_as_version_1(checkpoint, likelihood_from, steps=5), paths[likelihood_from])
    return whole.model.state_dict(), paths


@pytest.mark.parametrize("likelihood_from", [3, None], ids=["recorded", "before-phases-were-recorded"])
def test_a_version_1_checkpoint_loads_in_its_phase_and_continues_there(tiny_data, version_1_run,
                                                                       likelihood_from):
    whole, paths = version_1_run
    checkpoint = load_checkpoint(paths[likelihood_from])
    assert checkpoint.phase == 1 and checkpoint.phase_starts == [0, 3] and checkpoint.step == 4
    assert checkpoint.model_config["net"] == "conv_odenet"
    restored = Trainer.restore(checkpoint, device="cpu")
    assert restored.phase == 1 and restored.phase_starts == [0, 3] and restored.config.phases == _conv_trainer(
        5).config.phases
    restored.fit(tiny_data)  # the fifth step, in the likelihood phase
    assert restored.step == 5 and restored.phase_starts == [0, 3]  # already in the phase: not begun a second time
    for key, value in whole.items():
        assert torch.equal(value, restored.model.state_dict()[key])


@pytest.mark.parametrize("likelihood_from", [3, None], ids=["recorded", "before-phases-were-recorded"])
def test_a_version_1_checkpoint_resumes_in_its_phase(tiny_data, version_1_run, likelihood_from):
    whole, paths = version_1_run
    continued = _conv_trainer(5)
    continued.fit(tiny_data, resume=paths[likelihood_from])
    assert continued.phase_starts == [0, 3]  # already in the phase: not begun a second time
    for key, value in whole.items():
        assert torch.equal(value, continued.model.state_dict()[key])


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
    checkpoint = load_checkpoint(resumed.latest_checkpoint())
    assert checkpoint.trainer_config["objective"] == {"type": "flow_matching"}
    assert checkpoint.phase == 0 and checkpoint.phase_starts == [0]
    rebuilt = build_model(checkpoint)
    standardizer = rebuilt.levels[0].standardize
    assert bool(standardizer.initialized) and not torch.equal(standardizer.log_std, torch.zeros(6))


def test_a_new_run_seeds_the_global_generator_with_the_config_seed(tiny_data, tmp_path):
    def fm_losses(folder, global_seed, seed=0):
        model = tiny_mrcnf()
        torch.manual_seed(global_seed)  # whatever state the caller left the global generator in
        config = TrainConfig(steps=2, objective="flow_matching", seed=seed, **FAST)
        Trainer(model, config, out_dir=tmp_path / folder, device="cpu").fit(tiny_data)
        return read_metric(tmp_path / folder, "fm_loss")

    # flow matching draws its times and pairs from the global generator
    assert fm_losses("a", 1) == fm_losses("b", 2) != fm_losses("c", 1, seed=1)


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
    with pytest.raises(ValueError, match=r"phases\[0\]: the flow_matching objective trains CNFs and glow has none; "
                                         "train it with the likelihood objective"):
        Trainer(glow, TrainConfig(steps=1, objective="flow_matching", **FAST), device="cpu")
    later = [{"objective": "likelihood", "until": 0.5}, {"objective": "flow_matching"}]
    with pytest.raises(ValueError, match=r"phases\[1\]: the flow_matching objective trains CNFs and glow has none"):
        Trainer(glow, TrainConfig(steps=1, phases=later, **FAST), device="cpu")
    with pytest.raises(ValueError, match="needs a multi-level model, Glow has no levels"):
        Trainer(glow, TrainConfig(steps=1, phases=[{"objective": "likelihood", "until": 0.5},
                                                   {"objective": "likelihood", "levels": [0]}], **FAST),
                device="cpu")


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
    other = flowplug.MRCNF((2, 4, 4), levels=2, hidden_channels=4, num_blocks=1, train_solver=SOLVER)
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
