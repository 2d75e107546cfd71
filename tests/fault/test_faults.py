"""The fault suite (slow): SIGKILLs anywhere in a run, a diverging run finished from its printed command, one report
under torchrun.

Two Gloo processes with an adaptive solver: ``tests/train/test_distributed_adaptive.py``;
``python tests/fault/kill_trials.py --trials 100`` runs the long kill series.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from flowplug.cli import main
from flowplug.data import load_dataset
from flowplug.train import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from kill_trials import run_trials

pytestmark = pytest.mark.slow


def test_a_killed_run_always_resumes_bit_for_bit(tmp_path):
    """Kills before the first checkpoint (``setup``: the folder must be re-run or resumed), during an evaluation
    and during a ``best.pt`` write; ``kill_trials.py`` runs the long series over the whole run."""
    result = run_trials(3, tmp_path, seed=0, phases=("setup", "evaluate", "best"))
    print(json.dumps({k: v for k, v in result.items() if k != "kills"}))
    assert result["failures"] == []
    assert "ended" not in result["phases_hit"]  # every kill interrupted the run


def test_a_run_killed_after_its_final_checkpoint_resumes_bit_for_bit(tmp_path):
    result = run_trials(1, tmp_path, seed=0, phases=("report",))
    assert result["failures"] == [], result["failures"]


def test_a_diverging_run_finishes_from_the_command_its_error_prints(tmp_path, capsys, monkeypatch):
    """The one-line error of a diverged run prints the command that continues it; that command, with only the
    advice it gives (a lower --lr) added and nothing else, finishes the run's whole budget. The data are not
    the CLI's default (digits), so the command must name them."""
    monkeypatch.chdir(tmp_path)  # the printed paths are relative to the folder the run was started in
    digits = load_dataset("digits")
    np.savez("rgb digits.npz", x=np.repeat(digits.x.numpy(), 3, axis=1), n_bins=digits.n_bins)
    Path("glow.json").write_text(json.dumps({"model": {"type": "glow", "levels": 2, "depth": 4,
                                                       "hidden_channels": 32},
                                             "train": {"lr": 20, "warmup_steps": 1000, "batch_size": 64}}))
    budget = 150
    assert main(["train", "--config", "glow.json", "--data", "rgb digits.npz", "--steps", str(budget),
                 "--checkpoint-every", "5", "--eval-every", "5", "--no-progress", "--device", "cpu",
                 "--out", "run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("flowplug: error: ") and "non-finite" in err[-1], err[-1]
    printed = re.search(r"continue with `([^`]+)`", err[-1]).group(1)
    assert "after lowering the learning rate" in err[-1]
    command = shlex.split(printed)
    assert command[:2] == ["flowplug", "train"]
    good = Path(command[command.index("--resume") + 1])
    state = load_checkpoint(good)
    assert all(torch.isfinite(t).all() for t in state.model.values()) and state.step < budget
    assert main([*command[1:], "--lr", "1e-4"]) == 0  # exactly the printed command, plus the advice
    assert f"resumed from {good} at step {state.step}" in capsys.readouterr().err
    report = json.loads(Path("run/report.json").read_text())
    assert report["steps"] == budget and math.isfinite(report["held_out"]["bpd"])


def test_only_rank_zero_reports_under_torchrun(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "flowplug", "train", "--recipe", "realnvp", "--steps", "2", "--batch-size", "16",
               "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("run folder:") == 1 and result.stdout.count("held_out") == 1
    assert result.stdout.startswith("model:")  # report.txt, not a raw dict
