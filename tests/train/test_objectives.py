"""Objectives as registered specs: one validation, old names still load, parameters reach the loss."""

from __future__ import annotations

import pytest
import torch
from train_helpers import read_metric, tiny_glow

import flowplug
from flowplug.cli import _parser
from flowplug.data import Batch
from flowplug.registry import _registry
from flowplug.train import TrainConfig, Trainer, get_objective, load_checkpoint, objective_spec, objectives

FAST = {"batch_size": 16, "progress": False, "tensorboard": False, "log_every": 1, "warmup_steps": 2}


@pytest.fixture
def custom_objective():
    """A user objective registered by the user's code, removed again after the test."""

    @flowplug.register("scaled_likelihood", kind="objective")
    def scaled_likelihood(model, batch, *, scale=1.0):
        """Likelihood times ``scale``."""
        loss = -scale * model.log_prob(batch.v).mean()
        return loss, {"custom": loss.detach()}

    yield scaled_likelihood
    del _registry["scaled_likelihood"]


def test_names_become_specs_and_bad_specs_fail_in_one_place():
    assert TrainConfig(steps=1).objective == {"type": "likelihood"}
    assert TrainConfig(steps=1, objective="flow_matching").objective == {"type": "flow_matching"}
    assert objective_spec({"type": "flow_matching", "sigma": 0.1}) == {"type": "flow_matching", "sigma": 0.1}
    with pytest.raises(ValueError, match=r"unknown objective 'flow_matchin'; did you mean 'flow_matching'"):
        TrainConfig(steps=1, objective="flow_matchin")
    with pytest.raises(TypeError, match=r"'flow_matching' has no parameter 'sigmaa'; did you mean 'sigma'"):
        TrainConfig(steps=1, objective={"type": "flow_matching", "sigmaa": 0.1})
    with pytest.raises(TypeError, match="registered name or a spec"):
        TrainConfig(steps=1, objective=lambda model, batch: None)
    assert {"likelihood", "flow_matching"} <= set(objectives())
    # the objectives of a plan become specs the same way, the first phase's is the config's objective
    plan = TrainConfig(steps=1, phases=[{"objective": {"type": "flow_matching", "sigma": 0.1}, "until": 0.5},
                                        {"objective": "likelihood"}])
    assert [phase["objective"] for phase in plan.phases] == [{"type": "flow_matching", "sigma": 0.1},
                                                             {"type": "likelihood"}]
    assert plan.objective == {"type": "flow_matching", "sigma": 0.1}
    with pytest.raises(ValueError, match=r"unknown objective 'likelyhood'; did you mean 'likelihood'"):
        TrainConfig(steps=1, phases=[{"objective": "flow_matching", "until": 0.5}, {"objective": "likelyhood"}])


def test_sigma_reaches_the_loss():
    model = flowplug.MRCNF((1, 4, 4), levels=2, hidden_channels=4, num_blocks=1)
    batch = Batch(torch.rand(3, 1, 4, 4), 4)
    losses = {}
    for sigma in (0.0, 0.5):
        torch.manual_seed(0)
        losses[sigma], _ = get_objective({"type": "flow_matching", "sigma": sigma})(model, batch)
    assert losses[0.0] != losses[0.5]


def test_a_registered_custom_objective_is_recorded_as_a_spec_and_restored(custom_objective, tiny_data,
                                                                          tmp_path):
    config = TrainConfig(steps=2, objective={"type": "scaled_likelihood", "scale": 2.0}, **FAST)
    trainer = Trainer(tiny_glow(), config, out_dir=tmp_path, device="cpu")
    trainer.fit(tiny_data)
    saved = load_checkpoint(trainer.latest_checkpoint()).trainer_config
    recorded = saved["objective"]
    assert recorded == {"type": "scaled_likelihood", "scale": 2.0}
    assert [phase["objective"] for phase in saved["phases"]] == [recorded]
    assert TrainConfig.from_dict({**config.to_dict(), "steps": 3}).objective == recorded
    assert sorted(read_metric(tmp_path, "custom")) == [1, 2]


def test_cli_offers_the_registered_objectives(custom_objective):
    train = _parser()._subparsers._group_actions[0].choices["train"]
    action = next(a for a in train._actions if a.dest == "objective")
    assert set(action.choices) == set(objectives()) and "scaled_likelihood" in action.choices
