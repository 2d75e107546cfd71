"""The command line's run-folder and resume rules, and evaluation on the checkpoint's own held-out split."""

from __future__ import annotations

import json

import pytest

import flowplug
from flowplug.cli import main

TRAIN = ["train", "--recipe", "realnvp", "--steps", "2", "--batch-size", "16", "--no-progress", "--seed", "3"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def test_a_second_run_into_the_folder_is_refused_unless_overwrite(tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path)]) == 0
    before = (tmp_path / "checkpoints" / "step-00000002.pt").read_bytes()
    assert main([*TRAIN, "--steps", "1", "--out", str(tmp_path)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "checkpoints" / "step-00000002.pt").read_bytes() == before
    assert main([*TRAIN, "--steps", "1", "--out", str(tmp_path), "--overwrite"]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["steps"] == 1
    assert not (tmp_path / "checkpoints" / "step-00000002.pt").exists()


def test_resume_needs_out(capsys):
    assert main([*TRAIN, "--resume"]) == 2
    assert "--resume continues the run in --out" in capsys.readouterr().err


def test_resume_from_a_path_keeps_the_runs_options_and_records_changes(run_folder, capsys):
    best = run_folder / "checkpoints" / "best.pt"
    assert main(["train", "--recipe", "realnvp", "--steps", "6", "--lr", "2e-3", "--no-progress",
                 "--out", str(run_folder), "--resume", str(best)]) == 0
    assert f"resumed from {best} at step 2" in capsys.readouterr().err
    config = json.loads((run_folder / "config.json").read_text())
    assert config["trainer"]["batch_size"] == 16 and config["trainer"]["seed"] == 3  # the run's, not defaults
    assert config["resumes"][-1]["changed"] == {"steps": [2, 6], "lr": [1e-3, 2e-3]}
    digits = flowplug.load_dataset("digits").fingerprint()
    assert config["data"]["split"] == {"of": "digits", "of_sha256": digits, "holdout": 0.1, "seed": 3, "part": "train"}


def test_evaluate_defaults_to_the_checkpoints_own_held_out_split(run_folder, capsys):
    checkpoint = str(run_folder / "checkpoints" / "best.pt")
    capsys.readouterr()
    assert main(["evaluate", checkpoint, "--device", "cpu"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert main(["evaluate", checkpoint, "--device", "cpu", "--seed", "3", "--holdout", "0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["bpd"] == own["bpd"] and own["num_images"] == 180
    for extra in (["--seed", "0"], ["--split", "all"], ["--split", "test"]):
        assert main(["evaluate", checkpoint, "--device", "cpu", *extra]) == 2
        assert "train" in capsys.readouterr().err
    assert main(["evaluate", checkpoint, "--device", "cpu", "--split", "train"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 1797 - 180


def test_resume_and_overwrite_together_are_refused(run_folder, capsys):
    assert main([*TRAIN, "--out", str(run_folder), "--resume", "--overwrite"]) == 2
    assert "--resume continues the run in --out and --overwrite replaces it" in capsys.readouterr().err
