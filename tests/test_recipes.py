"""Recipes: stored as data, fitted to a data set by their rules, overridable, recorded, and reproducible."""

from __future__ import annotations

import json

import pytest
import torch

import flowplug
from flowplug.cnf.solver import SolverSettings
from flowplug.data import ImageData
from flowplug.recipes import DEFAULT_RECIPE, load_recipe, plan, recipe, recipes
from flowplug.recipes.rules import DataSummary


def images(shape, *, n=64, n_bins=256, flat=0.0, seed=0):
    """Random integer images; a share ``flat`` of their pixels set to 0 (a flat black background)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(1, n_bins - 1, (n, *shape), generator=generator)
    x[torch.rand(x.shape, generator=generator) < flat] = 0
    return ImageData(x.to(torch.uint8), n_bins, f"random{shape}")


def decided(fitted):
    return {d["key"]: d["value"] for d in fitted.decisions}


def test_the_recipes_ship_as_files_and_the_default_is_mrcnf():
    assert recipes() == ["glow", "mrcnf", "realnvp", "single-resolution-cnf"] and DEFAULT_RECIPE == "mrcnf"
    for name in recipes():
        stored = load_recipe(name)
        assert {"description", "model", "train"} <= set(stored) and "image_shape" not in stored["model"]
    with pytest.raises(ValueError, match=r"unknown recipe 'flow'; recipes: glow, mrcnf, realnvp"):
        load_recipe("flow")


@pytest.mark.parametrize(("shape", "mrcnf_levels", "multiscale_levels"),
                         [((3, 32, 32), 3, 3), ((1, 28, 28), 2, 2), ((1, 8, 8), 3, 2), ((3, 64, 64), 3, 3)])
def test_levels_follow_the_image_size(shape, mrcnf_levels, multiscale_levels):
    data = images(shape, n=8)
    assert decided(plan("mrcnf", data))["levels"] == mrcnf_levels
    assert decided(plan("glow", data))["levels"] == multiscale_levels
    assert decided(plan("realnvp", data))["levels"] == multiscale_levels


def test_flat_backgrounds_get_the_detail_stretch_and_8_bit_data_the_bin_warp():
    natural, flat = images((1, 28, 28)), images((1, 28, 28), flat=0.6)
    assert DataSummary.of(flat).edge_share > 0.5 > DataSummary.of(natural).edge_share
    assert "detail_stretch" not in decided(plan("mrcnf", natural))
    assert decided(plan("mrcnf", flat))["detail_stretch"] == 1 / 256
    assert decided(plan("mrcnf", natural))["bin_warp"] == {"power": 1 / 3, "n_bins": 256}
    coarse = images((1, 28, 28), n_bins=17, flat=0.6)  # 17 levels: neither (both cost BPD on the digits)
    assert not {"detail_stretch", "bin_warp"} & set(decided(plan("mrcnf", coarse)))


def test_realnvp_trains_flat_8_bit_backgrounds_at_its_lower_rate():
    natural, flat = images((1, 28, 28)), images((1, 28, 28), flat=0.6)
    assert plan("realnvp", natural).train["lr"] == 2e-3 and "lr" not in decided(plan("realnvp", natural))
    fitted = plan("realnvp", flat)
    assert fitted.train["lr"] == 1e-3
    assert next(d["why"] for d in fitted.decisions if d["key"] == "lr").startswith("flat backgrounds: ")
    assert plan("realnvp", flat, train={"lr": 5e-3}).train["lr"] == 5e-3  # a given rate is never decided
    coarse = images((1, 28, 28), n_bins=17, flat=0.6)
    assert plan("realnvp", coarse).train["lr"] == 2e-3


def test_small_images_take_the_recipes_small_image_settings():
    fitted = plan("mrcnf", flowplug.load_dataset("digits"))
    assert fitted.train["batch_size"] == 128 and fitted.train["lr"] == 2e-3
    assert [p["objective"] for p in fitted.train["phases"]] == ["flow_matching"]
    large = plan("mrcnf", images((1, 28, 28), n=16))
    assert large.train["batch_size"] == 16 and len(large.train["phases"]) == 2
    small_realnvp = plan("realnvp", flowplug.load_dataset("digits")).train
    assert small_realnvp["batch_size"] == 64 and small_realnvp["lr"] == 1e-3


def test_the_coarser_mrcnf_levels_take_the_recipes_narrower_nets():
    stored = load_recipe("mrcnf")
    shared, rule = stored["model"]["net_options"], dict(stored["adapt"]["coarser_levels"])
    max_levels = rule.pop("max_levels")
    for shape, levels in (((1, 28, 28), 2), ((3, 32, 32), 3), ((3, 32, 32), 2)):
        fitted = plan("mrcnf", images(shape, n=8), model={} if levels == 3 else {"levels": levels})
        assert fitted.model["levels"] == levels
        if levels > max_levels:  # measured to tie on CIFAR-10's three levels: one net for all
            assert fitted.model["net_options"] == shared and "net_options" not in decided(fitted)
            continue
        assert fitted.model["net_options"] == [shared] + [{**shared, **rule}] * (levels - 1)
        model = fitted.build()[0]
        widths = [level.single_cnf("a width").net.input.out_channels for level in model.levels]
        assert widths == [shared["hidden_channels"]] + [rule["hidden_channels"]] * (levels - 1)
    given = {"hidden_channels": 8, "num_blocks": 1}
    fitted = plan("mrcnf", images((1, 28, 28), n=8), model={"net_options": given})
    assert fitted.model["net_options"] == given and "net_options" not in decided(fitted)
    assert plan("mrcnf", flowplug.load_dataset("digits")).model["net_options"] == shared  # small images: one net


def test_three_mrcnf_levels_evaluate_the_coarsest_and_sample_the_finest_by_the_rules():
    stored = load_recipe("mrcnf")
    evaluation, sampling = stored["model"]["eval_solver"], stored["model"]["sample_solver"]
    coarsest, finest = stored["adapt"]["coarsest_evaluation"], stored["adapt"]["finest_sampling"]
    fitted = plan("mrcnf", images((3, 32, 32), n=8))
    assert fitted.model["levels"] == coarsest["min_levels"] == finest["min_levels"] == 3
    loose = {**evaluation, "atol": coarsest["tolerance"], "rtol": coarsest["tolerance"]}
    assert decided(fitted)["eval_solver"] == fitted.model["eval_solver"] == [evaluation, evaluation, loose]
    fewer = {**sampling, "steps": finest["steps"]}
    assert decided(fitted)["sample_solver"] == fitted.model["sample_solver"] == [fewer, sampling, sampling]
    model = fitted.build()[0]
    cnfs = [level.single_cnf("its solvers") for level in model.levels]
    assert [m.eval_solver for m in cnfs] == [SolverSettings.coerce(s) for s in (evaluation, evaluation, loose)]
    assert [m.sample_solver for m in cnfs] == [SolverSettings.coerce(s) for s in (fewer, sampling, sampling)]
    for unchanged in (plan("mrcnf", images((1, 28, 28), n=8)),  # two levels
                      plan("mrcnf", flowplug.load_dataset("digits")),  # three levels of images under 16 pixels
                      plan("mrcnf", images((3, 32, 32), n=8), model={"levels": 2})):
        assert not {"eval_solver", "sample_solver"} & set(decided(unchanged))
        assert (unchanged.model["eval_solver"], unchanged.model["sample_solver"]) == (evaluation, sampling)
    given = plan("mrcnf", images((3, 32, 32), n=8), model={"eval_solver": "bosh3", "sample_solver": None})
    assert not {"eval_solver", "sample_solver"} & set(decided(given))


def test_short_time_budgets_take_the_recipes_short_budget_settings():
    data = images((1, 28, 28), n=16)
    below = load_recipe("mrcnf")["adapt"]["short_budgets"]["below_minutes"]
    short = plan("mrcnf", data, train={"minutes": below / 2, "clock": "process"})
    assert [p["objective"] for p in short.train["phases"]] == ["flow_matching"]
    assert f"under {below:g}" in next(d["why"] for d in short.decisions if d["key"] == "phases")
    for budget in ({"minutes": below}, {}, {"steps": 10}, {"minutes": below / 2, "steps": 10},
                   {"minutes": below / 2, "epochs": 1}):
        fitted = plan("mrcnf", data, train=budget)
        assert len(fitted.train["phases"]) == 2 and "phases" not in decided(fitted), budget
    given = [{"objective": "likelihood"}]
    assert plan("mrcnf", data, train={"minutes": below / 2, "phases": given}).train["phases"] == given
    assert "phases" not in plan("glow", data, train={"minutes": below / 2}).train  # one objective: no plan


def test_class_conditional_models_take_the_recipes_conditional_settings():
    data = images((1, 28, 28), n=8)
    assert "label_dropout" not in plan("mrcnf", data).model  # unconditional: unchanged
    fitted = plan("mrcnf", data, model={"num_classes": 10})
    assert fitted.model["label_dropout"] == 0.1 and "guided" in fitted.decisions[-1]["why"]
    assert fitted.build()[0].can_guide
    assert plan("mrcnf", data, model={"num_classes": 10, "label_dropout": 0.0}).model["label_dropout"] == 0.0
    assert "label_dropout" not in plan("glow", data, model={"num_classes": 10}).model  # Glow has no guidance


def test_given_settings_are_never_decided_and_a_given_budget_replaces_the_recipes():
    data = images((3, 32, 32), n=8)
    fitted = plan("mrcnf", data, model={"levels": 2, "bin_warp": None}, train={"minutes": 3, "lr": 1e-3})
    assert fitted.model["levels"] == 2 and fitted.model["bin_warp"] is None and fitted.train["lr"] == 1e-3
    assert not {"levels", "bin_warp"} & set(decided(fitted))
    assert fitted.train["minutes"] == 3 and "steps" not in fitted.train
    assert fitted.record() == {"name": "mrcnf", "decisions": fitted.decisions,
                               "overrides": {"model": {"levels": 2, "bin_warp": None},
                                             "train": {"minutes": 3, "lr": 1e-3}}}


@pytest.mark.parametrize("name", ["mrcnf", "glow", "realnvp", "single-resolution-cnf"])
def test_every_recipe_builds_a_rebuildable_model_and_a_valid_config(name):
    model, config = recipe(name, images((3, 16, 16), n=8))
    assert tuple(model.image_shape) == (3, 16, 16) and config.steps == 1000
    flowplug.build(model.config).load_state_dict(model.state_dict())


def test_the_mrcnf_recipe_samples_on_four_rk4_steps_and_evaluates_adaptively():
    model = flowplug.build(recipe("mrcnf", images((1, 16, 16), n=8))[0].config).eval()
    cnfs = [m for m in model.modules() if isinstance(m, flowplug.CNF)]
    assert len(cnfs) == len(model.levels) == 2
    assert {m.sample_solver for m in cnfs} == {SolverSettings("rk4", steps=4)}
    assert {m.eval_solver for m in cnfs} == {SolverSettings("dopri5", atol=3e-3, rtol=3e-3)}
    with torch.no_grad():
        model.sample_images(2)
    assert sum(m.last_nfe for m in cnfs) == 2 * 4 * 4


def test_the_model_initialisation_follows_the_seed():
    data = images((1, 8, 8), n=8)
    first, second = recipe("mrcnf", data)[0], recipe("mrcnf", data)[0]
    other = recipe("mrcnf", data, train={"seed": 1})[0]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values(),
                                                 strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values(),
                                                     strict=True))


def test_a_recipe_run_is_reproducible_bit_for_bit_and_records_the_recipe(tmp_path):
    data = flowplug.load_dataset("digits").first(160)
    train, held_out = data.split(0.25, seed=0)
    options = {"steps": 6, "batch_size": 16, "eval_batch_size": 40, "progress": False}
    runs = []
    for folder in ("a", "b"):
        fitted = plan("mrcnf", train, model={"net_options": {"hidden_channels": 8, "num_blocks": 1}},
                      train=options)
        model, config = fitted.build()
        trainer = flowplug.Trainer(model, config, out_dir=tmp_path / folder, device="cpu", recipe=fitted.record())
        runs.append((trainer.fit(train, held_out), trainer.model.state_dict()))
    (first, weights), (second, again) = runs
    assert first["final_train_loss"] == second["final_train_loss"]
    assert first["held_out"]["bpd"] == second["held_out"]["bpd"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    recorded = json.loads((tmp_path / "a" / "config.json").read_text())["recipe"]
    assert recorded["name"] == "mrcnf" and {"key": "levels", "part": "model", "value": 3,
                                            "why": recorded["decisions"][0]["why"]} == recorded["decisions"][0]
    resumed = flowplug.Trainer(model, config.__class__.from_dict({**config.to_dict(), "steps": 8}),
                               out_dir=tmp_path / "b", device="cpu")  # a resume without the recipe at hand
    resumed.fit(train, held_out, resume=True)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["recipe"] == recorded  # kept by the checkpoint
