"""Out-of-distribution scores (flowplug.ood): per-image BPD overall and per level, AUROC, the written report."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from flowplug import MRCNF
from flowplug.cnf import CNF
from flowplug.cnf.solver import SolverSettings
from flowplug.data import ImageData
from flowplug.ood import ImageScores, auroc, auroc_table, score_images, write_report
from flowplug.train.evaluation import cnf_settings, count_nfe, evaluate, evaluation_inputs

SOLVER = {"method": "rk4", "step_size": 0.5}


def tiny_model(levels: int = 2) -> MRCNF:
    """A 1×4×4 MRCNF with conv nets 4 wide, a fixed-step solver and Hutchinson traces, perturbed from identity."""
    torch.manual_seed(0)
    model = MRCNF((1, 4, 4), levels=levels, hidden_channels=4, num_blocks=1, train_solver=SOLVER,
                  eval_solver=SOLVER).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model.eval()


def tiny_data(n: int, seed: int, name: str, shape: tuple[int, ...] = (1, 4, 4)) -> ImageData:
    x = torch.randint(0, 4, (n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return ImageData(x, 4, name)


def test_exact_scores_are_the_models_per_image_bits_per_dim_and_levels_add_up():
    model, data = tiny_model(), tiny_data(3, 0, "a")
    scores = score_images(model, data, per_level=True, trace="exact", dtype=torch.float64, batch_size=2)
    assert list(scores.scores) == ["bpd", "level0_bpd", "level1_bpd"] and scores.probe_sd == {}
    with cnf_settings(model, trace="exact"), torch.no_grad():
        terms = model.level_log_probs(evaluation_inputs(data, 0, torch.float64))
    expected = [(-t / (16 * math.log(2))).numpy() for t in terms]
    np.testing.assert_allclose(scores.scores["level0_bpd"], expected[0], rtol=1e-12)
    np.testing.assert_allclose(scores.scores["level1_bpd"], expected[1], rtol=1e-12)
    np.testing.assert_allclose(scores.scores["bpd"], expected[0] + expected[1] + 2.0, rtol=1e-12)


def test_one_probe_scores_average_to_evaluate_and_are_reproducible_by_seed():
    model, data = tiny_model(), tiny_data(6, 1, "a")
    scores = score_images(model, data, seed=3, dtype=torch.float64, batch_size=4)
    result = evaluate(model, data, seed=3, dtype=torch.float64, batch_size=4)
    assert scores.scores["bpd"].mean() == pytest.approx(result["bpd"], rel=1e-12)
    again = score_images(model, data, seed=3, dtype=torch.float64, batch_size=4)
    np.testing.assert_array_equal(again.scores["bpd"], scores.scores["bpd"])
    other = score_images(model, data, seed=4, dtype=torch.float64, batch_size=4)
    assert not np.array_equal(other.scores["bpd"], scores.scores["bpd"])


def test_probes_average_hutchinson_solves_and_record_their_spread():
    model, data = tiny_model(), tiny_data(4, 2, "a")
    scores = score_images(model, data, per_level=True, probes=3, dtype=torch.float64)
    assert set(scores.probe_sd) == set(scores.scores) and (scores.probe_sd["bpd"] > 0).all()
    exact = score_images(model, data, per_level=True, trace="exact", dtype=torch.float64)
    # the probes' mean lies within a few of its standard errors of the exact score
    error = np.abs(scores.scores["bpd"] - exact.scores["bpd"])
    assert (error <= 5 * scores.probe_sd["bpd"] / math.sqrt(3) + 1e-9).all()


def test_cnf_settings_sets_and_restores_every_cnfs_evaluation_trace_and_tolerance():
    model = tiny_model()
    cnfs = [m for m in model.modules() if isinstance(m, CNF)]
    solvers = [m.eval_solver for m in cnfs]
    with cnf_settings(model, trace="exact", tolerance=1e-3):
        assert {m.eval_divergence for m in cnfs} == {"exact"}
        assert {(m.eval_solver.atol, m.eval_solver.rtol) for m in cnfs} == {(1e-3, 1e-3)}
    assert {m.eval_divergence for m in cnfs} == {"hutchinson"} and [m.eval_solver for m in cnfs] == solvers
    with pytest.raises(ValueError, match="unknown trace 'diagonal'"):
        with cnf_settings(model, trace="diagonal"):
            pass
    with pytest.raises(ValueError, match="tolerance must lie in"):
        with cnf_settings(model, tolerance=0.0):
            pass
    with cnf_settings(model, steps=6):
        assert {m.eval_solver for m in cnfs} == {SolverSettings("rk4", steps=6)}
        model.eval()
        with torch.no_grad():
            model.log_prob(torch.rand(2, *model.image_shape, dtype=torch.float64))
        assert count_nfe(model) == len(cnfs) * 4 * 6
    assert [m.eval_solver for m in cnfs] == solvers
    for kwargs, match in (({"steps": 0}, "steps must be an integer from 1 to 1000, got 0"),
                          ({"steps": 4, "tolerance": 1e-3}, "not both"),
                          ({"steps": 4, "method": "dopri5"}, "method must be a fixed-step method")):
        with pytest.raises(ValueError, match=match), cnf_settings(model, **kwargs):
            pass


def test_cnf_settings_takes_one_tolerance_or_grid_per_level_of_a_multi_resolution_model():
    model = tiny_model(levels=2)
    per_level = [1e-3, 1e-2]
    solvers = [level.single_cnf("a tolerance").eval_solver for level in model.levels]
    with cnf_settings(model, tolerance=per_level):
        assert [level.single_cnf("a tolerance").eval_solver for level in model.levels] == [
            dataclasses.replace(solver, atol=tol, rtol=tol) for solver, tol in zip(solvers, per_level, strict=True)]
    assert [level.single_cnf("a tolerance").eval_solver for level in model.levels] == solvers
    for tolerances, match in (([1e-3] * 3, "3 values of tolerance given, one per level, but the model has 2 levels"),
                              ([1e-3, 0.0], "tolerance must lie in")):
        with pytest.raises(ValueError, match=match), cnf_settings(model, tolerance=tolerances):
            pass
    with cnf_settings(model, steps=[1, 3]), torch.no_grad():
        model.sample_images(2)
        assert [level.single_cnf("NFE").last_nfe for level in model.levels] == [4, 12]
    with pytest.raises(ValueError, match="steps must be an integer"), cnf_settings(model, steps=[1, 0]):
        pass
    cnf = tiny_model().levels[0].single_cnf("a model without levels")
    with pytest.raises(ValueError, match="but the model has no resolution levels"), \
            cnf_settings(cnf, tolerance=[1e-3]):
        pass


def test_a_given_tolerance_or_grid_also_replaces_the_sampling_solver_until_the_block_ends():
    model = tiny_model()
    cnfs = [m for m in model.modules() if isinstance(m, CNF)]
    for m in cnfs:
        m.sample_solver = SolverSettings("rk4", steps=1)
    with torch.no_grad():
        model.sample_images(2)
        assert count_nfe(model) == len(cnfs) * 4 * 1
    with cnf_settings(model, steps=2), torch.no_grad():
        assert {m.sample_solver for m in cnfs} == {None}
        model.sample_images(2)
        assert count_nfe(model) == len(cnfs) * 4 * 2
    with cnf_settings(model, tolerance=1e-3):
        assert {m.sample_solver for m in cnfs} == {None}
    with cnf_settings(model, trace="exact"):
        assert {m.sample_solver for m in cnfs} == {SolverSettings("rk4", steps=1)}
    assert {m.sample_solver for m in cnfs} == {SolverSettings("rk4", steps=1)}


def test_auroc_is_the_probability_that_the_other_set_scores_higher():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0  # reported as is, not flipped
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=7), rng.normal(0.5, size=5)
    pairs = [(x < y) + 0.5 * (x == y) for x in a for y in b]
    assert auroc(a, b) == pytest.approx(sum(pairs) / len(pairs), rel=1e-12)
    with pytest.raises(ValueError, match="non-empty"):
        auroc(a, np.array([]))


def test_a_two_image_table_and_report(tmp_path):
    pytest.importorskip("matplotlib")
    model = tiny_model()
    sets = [score_images(model, tiny_data(2, seed, name), per_level=True, dtype=torch.float64)
            for seed, name in ((0, "a"), (1, "b"))]
    markdown = write_report(sets, tmp_path, {"checkpoint": "x.pt"})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["checkpoint"] == "x.pt" and [s["num_images"] for s in summary["sets"]] == [2, 2]
    table = summary["auroc"][0]
    assert (table["reference"], table["other"]) == ("a", "b")
    assert set(table["auroc"]) == {"bpd", "level0_bpd", "level1_bpd"}
    assert all(value in (0.0, 0.25, 0.5, 0.75, 1.0) for value in table["auroc"].values())  # 2 × 2 pairs
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert [(r["data"], r["index"]) for r in rows] == [("a", "0"), ("a", "1"), ("b", "0"), ("b", "1")]
    assert float(rows[2]["level1_bpd"]) == pytest.approx(sets[1].scores["level1_bpd"][0], abs=1e-6)
    assert "| level0_bpd |" in markdown and (tmp_path / "auroc.md").read_text() == markdown
    assert (tmp_path / "histograms.png").stat().st_size > 0


def test_per_level_scores_need_a_multi_resolution_model():
    with pytest.raises(ValueError, match="per-level scores need a multi-resolution model"):
        score_images(tiny_model(levels=1), tiny_data(2, 0, "a"), per_level=True, dtype=torch.float64)
    assert list(score_images(tiny_model(levels=1), tiny_data(2, 0, "a"), dtype=torch.float64).scores) == ["bpd"]


@pytest.mark.parametrize(("options", "match"), [
    ({"trace": "exact", "probes": 2}, "the exact trace takes probes=1"),
    ({"probes": 0}, "probes must be a positive integer"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"trace": "diagonal"}, "unknown trace"),
])
def test_bad_scoring_options(options, match):
    with pytest.raises(ValueError, match=match):
        score_images(tiny_model(), tiny_data(2, 0, "a"), **options)


def test_sets_of_different_image_shapes_or_scores_are_refused():
    scores = {"bpd": np.zeros(2)}
    grey, colour = ImageScores("grey", (1, 4, 4), scores), ImageScores("colour", (3, 4, 4), scores)
    with pytest.raises(ValueError, match=r"colour has images \(3, 4, 4\) and grey \(1, 4, 4\)"):
        auroc_table(grey, [colour])
    with pytest.raises(ValueError, match="scored differently"):
        auroc_table(grey, [ImageScores("b", (1, 4, 4), {**scores, "level0_bpd": np.zeros(2)})])
    with pytest.raises(ValueError, match="at least one other set"):
        write_report([grey], "unused")


def test_the_summary_gives_the_root_mean_square_one_probe_deviation(tmp_path):
    pytest.importorskip("matplotlib")
    a = ImageScores("a", (1, 4, 4), {"bpd": np.array([1.0, 2.0])}, {"bpd": np.array([0.3, 0.4])})
    b = ImageScores("b", (1, 4, 4), {"bpd": np.array([3.0])}, {"bpd": np.array([0.1])})
    write_report([a, b], tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["rms_one_probe_sd"]["bpd"] for s in summary["sets"]] == pytest.approx([math.sqrt(0.125), 0.1])
    assert summary["auroc"][0]["auroc"] == {"bpd": 1.0}
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert [r["bpd_probe_sd"] for r in rows] == ["0.300000", "0.400000", "0.100000"]
