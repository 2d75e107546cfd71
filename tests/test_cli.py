"""The flowplug command: train, sample, evaluate, info, and errors reported before training."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from flowplug.cli import main

TRAIN = ["train", "--model", "realnvp", "--steps", "4", "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def test_train_writes_a_run_folder(run_folder, capsys):
    report = json.loads((run_folder / "report.json").read_text())
    assert report["model"] == "realnvp" and report["steps"] == 4
    assert report["data"]["name"] == "digits[train]" and report["held_out"]["num_images"] == 180
    assert (run_folder / "metrics.csv").exists() and list((run_folder / "samples").glob("*.png"))
    assert (run_folder / "checkpoints" / "step-00000004.pt").exists()


def test_resume_continues_to_a_larger_budget(run_folder):
    assert main([*TRAIN[:3], "--steps", "6", "--batch-size", "16", "--no-progress",
                 "--out", str(run_folder), "--resume"]) == 0
    report = json.loads((run_folder / "report.json").read_text())
    assert report["steps"] == 6 and report["steps_this_run"] == 2


def test_sample_and_evaluate(run_folder, tmp_path, capsys):
    checkpoint = str(sorted((run_folder / "checkpoints").glob("step-*.pt"))[-1])
    assert main(["sample", checkpoint, "--num", "9", "--temperature", "0.8",
                 "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["evaluate", checkpoint, "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 180 and len(result["per_level_bpd"]) == 1


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "glow" in out and "realnvp" in out and "digits" in out and "devices:" in out
    assert "haar_squeeze" in out and "Drop-in for ``normflows.flows.Squeeze``" in out  # name, source, summary


def test_python_dash_m(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flowplug", "info"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "models" in result.stdout


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["train", "--model", "nope"], "unknown component 'nope'"),
        (["train", "--model", "haar_squeeze"], "not a model"),
        (["train", "--model", "glow", "--data", "nowhere"], "unknown dataset 'nowhere'"),
        (["train", "--model", "glow", "--data", "missing.npz"], "does not exist"),
        (["train", "--model", "glow", "--data", "{float}"], "uint8"),
        (["train", "--model", "glow", "--data", "{odd}"], "divisible by 4"),
        (["train", "--model", "glow", "--steps", "0"], "steps must be a positive"),
        (["train", "--model", "glow", "--device", "cuda:7"], "not available|out of range"),
        (["train", "--model", "glow", "--steps", "2", "--batch-size", "4000"], "exceeds"),
        (["train", "--config", "missing.json"], "does not exist"),
        (["evaluate", "missing.pt"], "does not exist"),
    ],
)
def test_errors_before_training(args, match, tmp_path, capsys):
    np.savez(tmp_path / "float.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    np.savez(tmp_path / "odd.npz", x=np.zeros((40, 1, 6, 6), np.uint8))
    args = [a.format(float=tmp_path / "float.npz", odd=tmp_path / "odd.npz") for a in args]
    assert main([*args, "--out", str(tmp_path / "out")] if args[0] == "train" else args) == 2


    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "out" / "checkpoints").exists()
