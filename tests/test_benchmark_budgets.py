"""``benchmarks/budgets.py``: the runs it plans are the command line's, its table reads their reports, and a
table interrupted half-way resumes without training a finished run again."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
_SPEC = importlib.util.spec_from_file_location("budgets", ROOT / "benchmarks" / "budgets.py")
budgets = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(budgets)


def _row(recipe: str, minutes: float, bpd: float, sample_s: float | None, nfe: float | None = None) -> dict:
    return {"data": "d/mnist.npz", "recipe": recipe, "minutes": minutes, "seed": 0, "bpd": bpd, "nfe": nfe,
            "steps": 100, "sample_s_per_image": sample_s}


def test_planned_runs_are_the_train_command_with_budget_seed_and_one_thread(tmp_path: Path) -> None:
    args = budgets.parse_args(["--data", "a.npz", "digits", "--recipes", "mrcnf", "glow", "--minutes", "2.5", "10",
                               "--seeds", "0", "1", "--out", str(tmp_path)])
    runs = budgets.plan_runs(args)
    assert len(runs) == 2 * 2 * 2 * 2
    assert [r["minutes"] for r in runs[:8]] == [2.5] * 8  # short budgets first
    first = runs[0]
    assert first["folder"] == tmp_path / "runs" / "a-mrcnf-m2.5-s0"
    assert first["command"] == ["flowplug", "train", "--recipe", "mrcnf", "--data", "a.npz", "--minutes", "2.5",
                                "--seed", "0", "--clock", "process", "--threads", "1", "--no-progress",
                                "--out", str(first["folder"])]


@pytest.mark.parametrize("flag", ["--threads", "--parallel", "--sample-images"])
def test_counts_must_be_positive(flag: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        budgets.parse_args(["--data", "digits", "--minutes", "1", "--out", str(tmp_path), flag, "0"])


def test_table_marks_the_best_model_and_gives_sampling_time_as_a_multiple_of_glows() -> None:
    rows = [_row("mrcnf", 2.5, 1.70, 0.30, nfe=60), _row("glow", 2.5, 1.75, 0.01),
            _row("mrcnf", 10, 1.55, 0.35, nfe=58), _row("glow", 10, 1.50, 0.005),
            {"data": "d/mnist.npz", "recipe": "glow", "minutes": 30, "seed": 0, "missing": True},
            _row("mrcnf", 30, 1.45, 0.4, nfe=70),
            *({"data": "d/mnist.npz", "recipe": r, "minutes": 60, "seed": 0, "missing": True}
              for r in ("mrcnf", "glow"))]
    table = budgets.markdown(rows)
    lines = table.splitlines()
    assert lines[0] == "**mnist.npz**"
    assert lines[2].startswith("| minutes | seed | `mrcnf` BPD | `glow` BPD |")
    assert lines[4] == "| 2.5 | 0 | **1.7000** | 1.7500 | 100 / 100 | 60 | 0.300 (30×) / 0.010 |"
    assert lines[5] == "| 10 | 0 | 1.5500 | **1.5000** | 100 / 100 | 58 | 0.350 (70×) / 0.005 |"
    assert lines[6] == "| 30 | 0 | 1.4500 | — | 100 | 70 | 0.400 |"
    assert len(lines) == 7  # no row for a budget without a finished run


@pytest.mark.slow
def test_a_table_trains_each_run_once_and_resumes(tmp_path: Path) -> None:
    data = tmp_path / "tiny.npz"  # 144 training images: the small-image recipes take batches of 128
    np.savez(data, x=np.random.default_rng(0).integers(0, 256, size=(160, 1, 8, 8), dtype=np.uint8))
    command = [sys.executable, str(ROOT / "benchmarks" / "budgets.py"), "--data", str(data), "--recipes", "mrcnf",
               "glow", "--minutes", "0.01", "--sample-images", "2", "--parallel", "1", "--out", str(tmp_path / "t")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "tiny-mrcnf-m0.01-s0: trained" in first.stdout
    result = json.loads((tmp_path / "t" / "results.json").read_text())
    assert [r["recipe"] for r in result["runs"]] == ["mrcnf", "glow"]
    for row in result["runs"]:
        report = json.loads((tmp_path / "t" / "runs" / f"tiny-{row['recipe']}-m0.01-s0" / "report.json").read_text())
        assert row["bpd"] == report["held_out"]["bpd"] and np.isfinite(row["bpd"])
        assert row["sample_s_per_image"] > 0
    assert result["runs"][0]["nfe"] > 0 and result["runs"][1]["nfe"] is None
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"runs": [{**_row("glow", 10, 1.5, None), "data": str(data)}]}))
    again = subprocess.run([*command, "--add", str(earlier)], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "tiny-mrcnf-m0.01-s0: done before" in again.stdout and "tiny-glow-m0.01-s0: done before" in again.stdout
    rows = json.loads((tmp_path / "t" / "results.json").read_text())["runs"]
    assert [(r["recipe"], r["minutes"]) for r in rows] == [("mrcnf", 0.01), ("glow", 0.01), ("glow", 10)]


def test_runs_added_from_an_earlier_table_may_lack_a_sampling_time() -> None:
    rows = [_row("mrcnf", 10, 1.55, None, nfe=58), _row("glow", 10, 1.50, None)]
    assert budgets.markdown(rows).splitlines()[4] == "| 10 | 0 | 1.5500 | **1.5000** | 100 / 100 | 58 | — / — |"


def test_added_runs_fill_missing_cells_and_never_replace_a_finished_run() -> None:
    missing = {"data": "d/mnist.npz", "recipe": "mrcnf", "minutes": 10, "seed": 0, "missing": True}
    planned = [_row("realnvp", 10, 1.60, 0.01), missing, _row("glow", 10, 1.52, 0.005)]
    added = [_row("mrcnf", 10, 1.55, 0.3), _row("glow", 10, 1.50, 0.004), _row("glow", 30, 1.40, 0.004)]
    rows = budgets.merge(planned, added)
    assert sorted((r["recipe"], r["minutes"], r.get("bpd")) for r in rows) == [
        ("glow", 10, 1.52), ("glow", 30, 1.40), ("mrcnf", 10, 1.55), ("realnvp", 10, 1.60)]


def test_a_later_added_run_of_the_same_cell_replaces_an_earlier_one_and_missing_ones_are_left_out() -> None:
    gone = {"data": "d/mnist.npz", "recipe": "glow", "minutes": 30, "seed": 0, "missing": True}
    added = [_row("mrcnf", 10, 1.55, 0.3), _row("glow", 10, 1.50, 0.004), _row("mrcnf", 10, 1.53, 0.1), gone]
    rows = budgets.merge([], added)
    assert sorted((r["recipe"], r["bpd"]) for r in rows) == [("glow", 1.50), ("mrcnf", 1.53)]


def test_table_columns_follow_the_recipes_given_then_the_added_ones() -> None:
    rows = [_row("realnvp", 10, 1.6, None), _row("single", 2.5, 1.9, None), _row("glow", 10, 1.5, None),
            _row("mrcnf", 10, 1.55, None)]
    order = budgets.recipe_order(rows, ["mrcnf", "glow"])
    assert order == ["mrcnf", "glow", "realnvp", "single"]
    rows = budgets.in_table_order(rows, order)
    assert [(r["recipe"], r["minutes"]) for r in rows] == [
        ("single", 2.5), ("mrcnf", 10), ("glow", 10), ("realnvp", 10)]
    header = budgets.markdown(rows, order).splitlines()[2]
    assert header.startswith("| minutes | seed | `mrcnf` BPD | `glow` BPD | `realnvp` BPD | `single` BPD |")
