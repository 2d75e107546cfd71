"""The fault suite (slow): random SIGKILLs, a diverging run, one report under torchrun.

Two Gloo processes with an adaptive solver: ``tests/train/test_distributed_adaptive.py``;
``python tests/fault/kill_trials.py --trials 100`` runs the long kill series.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowplug.cli import main
from flowplug.train import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from kill_trials import run_trials

pytestmark = pytest.mark.slow


def test_a_killed_run_always_resumes_bit_for_bit(tmp_path):
    result = run_trials(10, tmp_path)
    print(json.dumps(result))
    assert result["failures"] == []


def test_a_diverging_run_keeps_a_resumable_checkpoint(tmp_path, capsys):
    config = tmp_path / "glow.json"
    config.write_text(json.dumps({"model": {"type": "glow", "levels": 2, "depth": 4, "hidden_channels": 32},
                                  "train": {"lr": 20, "warmup_steps": 1000, "batch_size": 64}}))
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--steps", "150", "--checkpoint-every", "5", "--eval-every", "5",
            "--no-progress", "--device", "cpu", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("flowplug: error: ") and "non-finite" in err[-1]
    good = Path(re.search(r"newest good checkpoint is (\S+);", err[-1]).group(1))
    state = load_checkpoint(good)
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    step = state["step"]
    assert main([*args[:5], "--steps", str(step + 3), "--lr", "1e-4", "--no-progress", "--device", "cpu",
                 "--out", str(out), "--resume", str(good)]) == 0
    assert f"resumed from {good} at step {step}" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text())["steps"] == step + 3


def test_only_rank_zero_reports_under_torchrun(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "flowplug", "train", "--recipe", "realnvp", "--steps", "2", "--batch-size", "16",
               "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("run folder:") == 1 and result.stdout.count("held_out") == 1
    assert result.stdout.startswith("model:")  # report.txt, not a raw dict
