"""``flowplug ood``: per-image scores of two data sets with a checkpoint, the AUROC table, and refused input."""

from __future__ import annotations

import csv
import json
import re
import sys

import numpy as np
import pytest

from flowplug.cli import main

SOLVER = {"method": "rk4", "step_size": 0.5}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny 2-level MRCNF and a RealNVP, each trained 2 steps on the embedded digits (1×8×8, 17 levels)."""
    folder = tmp_path_factory.mktemp("ood")
    config = folder / "mrcnf.json"
    config.write_text(json.dumps({
        "model": {"type": "mrcnf", "levels": 2, "hidden_channels": 4, "num_blocks": 1,
                  "train_solver": SOLVER, "eval_solver": SOLVER},
        "train": {"objective": "flow_matching", "steps": 2, "batch_size": 16}}))
    common = ["--no-progress", "--steps", "2", "--batch-size", "16"]
    assert main(["train", "--config", str(config), *common, "--out", str(folder / "mrcnf")]) == 0
    assert main(["train", "--recipe", "realnvp", *common, "--out", str(folder / "realnvp")]) == 0
    return {name: str(folder / name / "checkpoints" / "step-00000002.pt") for name in ("mrcnf", "realnvp")}


def npz(path, channels: int = 1, n: int = 5) -> str:
    x = np.random.default_rng(0).integers(0, 17, size=(n, channels, 8, 8), dtype=np.uint8)
    np.savez(path, x=x, n_bins=17)
    return str(path)


def test_ood_scores_two_sets_per_level(checkpoints, tmp_path, capsys):
    other = npz(tmp_path / "noise.npz")
    out = tmp_path / "ood"
    assert main(["ood", checkpoints["mrcnf"], "--data", "digits", "--data", other, "--per-level",
                 "--max-images", "2", "--probes", "2", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    names = [s["name"] for s in summary["sets"]]
    assert names[0] == "digits[held-out][:2]" and names[1].endswith("noise.npz[:2]")
    assert [s["num_images"] for s in summary["sets"]] == [2, 2]
    assert summary["splits"] == ["held-out", "all"] and summary["probes"] == 2 and summary["seed"] == 0
    assert set(summary["auroc"][0]["auroc"]) == {"bpd", "level0_bpd", "level1_bpd"}
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 4 and "level1_bpd_probe_sd" in rows[0]
    assert "| level1_bpd |" in printed and (out / "histograms.png").exists()


@pytest.mark.parametrize(("which", "extra", "match"), [
    ("mrcnf", ["--data", "digits"], "needs two or more --data"),
    ("mrcnf", ["--data", "digits", "--data", "OTHER", "--split", "held-out"], "give --split once per --data"),
    ("mrcnf", ["--data", "digits", "--data", "COLOUR"], r"is for images \(1, 8, 8\).*has \(3, 8, 8\)"),
    ("mrcnf", ["--data", "digits", "--data", "OTHER", "--split", "held-out", "--split", "all", "--data",
               "digits"], "give --split once per --data"),
    ("mrcnf", ["--data", "digits", "--split", "all", "--data", "OTHER", "--split", "all"],
     "includes the images the checkpoint was trained on"),
    ("mrcnf", ["--data", "digits", "--data", "OTHER", "--max-images", "0"], "--max-images must be a positive"),
    ("mrcnf", ["--data", "digits", "--data", "OTHER", "--batch-size", "0"], "batch_size must be a positive"),
    ("realnvp", ["--data", "digits", "--data", "OTHER", "--per-level"],
     "per-level scores need a multi-resolution model"),
])
def test_ood_refuses_bad_input(which, extra, match, checkpoints, tmp_path, capsys):
    paths = {"OTHER": npz(tmp_path / "other.npz"), "COLOUR": npz(tmp_path / "colour.npz", channels=3)}
    extra = [paths.get(a, a) for a in extra]
    # an earlier --max-images 2 keeps the scoring short; a later one in extra replaces it
    assert main(["ood", checkpoints[which], "--max-images", "2", *extra, "--device", "cpu",
                 "--out", str(tmp_path / "ood")]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_a_missing_optional_dependency_is_one_error_line_before_scoring(checkpoints, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert main(["ood", checkpoints["mrcnf"], "--data", "digits", "--data", npz(tmp_path / "b.npz"),
                 "--out", str(tmp_path / "ood")]) == 2
    assert "the histograms need matplotlib: pip install 'flowplug[ood]'" in capsys.readouterr().err
    assert not (tmp_path / "ood").exists()
