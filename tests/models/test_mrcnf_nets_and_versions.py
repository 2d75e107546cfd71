"""Per-level nets (``net``/``net_options``) and solvers, the detail stretch in configs, and configs of older
versions."""

from __future__ import annotations

import pytest
import torch

import flowplug
from flowplug.cnf import ConvODENet, ResODENet
from flowplug.cnf.solver import DEFAULT_EVAL_SOLVER, SolverSettings
from flowplug.recipes import load_recipe, recipe
from flowplug.train.checkpoint import Checkpoint, build_model

SOLVER = {"method": "rk4", "step_size": 0.5}

# the default spec the code before issue 11 wrote into configs and checkpoints (MRCNF.config of
# flowplug.build({"type": "mrcnf", "image_shape": [1, 8, 8], "levels": 3, "hidden_channels": 64}))
OLD_DEFAULT_CONFIG = {
    "type": "mrcnf", "image_shape": [1, 8, 8], "levels": 3, "level_flows": None,
    "hidden_channels": 64, "logit_alpha": 0.05, "standardize": True,
}


def _nets(model):
    return [level.flows[0].net for level in model.levels]


def test_a_checkpoint_of_the_old_default_config_migrates_to_the_conv_model_and_its_state_loads():
    old = flowplug.build({**OLD_DEFAULT_CONFIG, "net": "conv_odenet"})
    assert sum(p.numel() for p in old.parameters()) == 123_718  # the old preset's size
    written = {"format": "flowplug-checkpoint-v1", "model_config": OLD_DEFAULT_CONFIG, "model": old.state_dict(),
               "step": 3}
    checkpoint = Checkpoint.from_dict(written)
    assert checkpoint.model_config == {**OLD_DEFAULT_CONFIG, "net": "conv_odenet"}
    rebuilt = build_model(checkpoint)  # strict: the same modules and buffers
    assert all(type(net) is ConvODENet for net in _nets(rebuilt))


def test_the_class_defaults_are_the_recipes_level_nets():
    model = flowplug.MRCNF((1, 8, 8), levels=2)
    assert all(type(net) is ResODENet for net in _nets(model))
    recipe = load_recipe("mrcnf")["model"]
    assert recipe["net"] == model.config["net"] and recipe["logit_alpha"] == model.config["logit_alpha"]
    defaults = ResODENet(1)
    assert all((net.input.out_channels, len(net.blocks)) == (defaults.input.out_channels, len(defaults.blocks))
               == (recipe["net_options"]["hidden_channels"], recipe["net_options"]["num_blocks"])
               for net in _nets(model))


def test_net_options_per_level_and_the_config_rebuilds():
    options = [{"hidden_channels": 8, "num_blocks": 1}, {"hidden_channels": 16, "num_blocks": 2}]
    model = flowplug.build({"type": "mrcnf", "image_shape": [1, 8, 8], "levels": 2, "net": "res_odenet",
                            "net_options": options, "logit_alpha": 1e-3, "detail_stretch": 1 / 256,
                            "train_solver": SOLVER, "eval_solver": SOLVER})
    nets = _nets(model)
    assert all(isinstance(net, ResODENet) for net in nets)
    assert [net.input.out_channels for net in nets] == [8, 16]
    assert model.config["net_options"] == options and model.config["detail_stretch"] == 1 / 256
    rebuilt = flowplug.build(model.config)
    rebuilt.load_state_dict(model.state_dict())
    v = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.log_prob(v), model.log_prob(v))
    shared = flowplug.MRCNF((1, 8, 8), levels=2, net="res_odenet", net_options={"hidden_channels": 8})
    assert [net.input.out_channels for net in _nets(shared)] == [8, 8]


def _level_solvers(model, key):
    return [getattr(level.single_cnf("its solver"), key) for level in model.levels]


def test_solvers_per_level_drive_each_levels_solves_and_the_config_rebuilds():
    grids = [{"method": "rk4", "steps": n} for n in (1, 2, 3)]
    model = flowplug.MRCNF((1, 8, 8), levels=3, hidden_channels=8, num_blocks=1, train_solver=SOLVER,
                           eval_solver=grids, sample_solver=[grids[2], None, grids[0]])
    assert _level_solvers(model, "train_solver") == [SolverSettings.coerce(SOLVER)] * 3
    assert _level_solvers(model, "sample_solver") == [SolverSettings.coerce(grids[2]), None,
                                                      SolverSettings.coerce(grids[0])]
    rebuilt = flowplug.build(model.config).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():  # rk4 takes 4 evaluations a step
        rebuilt.log_prob(torch.rand(2, 1, 8, 8))
        assert [level.single_cnf("NFE").last_nfe for level in rebuilt.levels] == [4, 8, 12]
        rebuilt.sample_images(2)  # the middle level has no sample solver: its evaluation solver
        assert [level.single_cnf("NFE").last_nfe for level in rebuilt.levels] == [12, 8, 4]
    defaults = flowplug.MRCNF((1, 8, 8), levels=2, hidden_channels=8, eval_solver=[None, "bosh3"])
    assert _level_solvers(defaults, "eval_solver") == [DEFAULT_EVAL_SOLVER, SolverSettings("bosh3")]


def test_a_grown_model_gives_its_new_level_the_old_finest_levels_solver():
    tight, loose = {"method": "dopri5", "atol": 1e-3, "rtol": 1e-3}, {"method": "dopri5", "atol": 1e-2, "rtol": 1e-2}
    model = flowplug.MRCNF((1, 4, 4), levels=2, hidden_channels=8, num_blocks=1, eval_solver=[tight, loose])
    grown = model.grow()
    assert grown.config["eval_solver"] == [tight, tight, loose]
    assert _level_solvers(grown, "eval_solver") == [SolverSettings.coerce(s) for s in (tight, tight, loose)]


def test_per_level_level_flows_through_build_keep_a_rebuildable_config():
    cnf = {"type": "cnf", "net": {"type": "res_odenet", "channels": 1, "hidden_channels": 8},
           "train_solver": SOLVER, "eval_solver": SOLVER}
    spec = {"type": "mrcnf", "image_shape": [1, 4, 4], "levels": 1, "level_flows": [[cnf]]}
    model = flowplug.build(spec)
    assert model.config is not None
    rebuilt = flowplug.build(model.config)
    rebuilt.load_state_dict(model.state_dict())


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"net": "res_odenet", "num_layers": 2}, TypeError, "no option 'num_layers' with net='res_odenet'"),
        ({"net_options": [{"hidden_channels": 8}]}, ValueError, "one entry per level"),
        ({"net_options": [{"type": "res_odenet"}, None]}, TypeError, "net="),
        ({"net_options": "wide"}, TypeError, "net_options"),
        ({"eval_solver": [SOLVER]}, ValueError, "eval_solver must hold one entry per level"),
        ({"sample_solver": [SOLVER, 4]}, TypeError, "each level's sample_solver must be a solver"),
        ({"train_solver": 4}, TypeError, "train_solver must be a solver"),
    ],
)
def test_bad_net_or_solver_options_name_the_problem(options, error, match):
    with pytest.raises(error, match=match):
        flowplug.MRCNF((1, 8, 8), levels=2, **options)


def test_the_default_recipe_builds_a_rebuildable_residual_model():
    model, config = recipe("mrcnf", flowplug.load_dataset("digits"))
    assert all(isinstance(net, ResODENet) for net in _nets(model))
    flowplug.build(model.config).load_state_dict(model.state_dict())
    assert config.objective["type"] == "flow_matching"
