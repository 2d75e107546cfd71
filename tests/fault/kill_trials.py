"""SIGKILL trials: a ``flowplug train`` process killed at a random moment of its training (uniformly between its first
and its last step checkpoint in an uninterrupted run; it writes one every step) must leave its newest complete
checkpoint loadable, and ``--resume`` must then finish with the same final weights, bit for bit, as an
uninterrupted run.

Run ``python tests/fault/kill_trials.py --trials 100`` for the long version; ``tests/fault/test_faults.py``
runs a few trials of the same code (marked slow).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from flowplug.train import load_checkpoint
from flowplug.train.run_folder import RunFolder

STEPS = 24
CONFIG = {"model": {"type": "glow", "levels": 1, "depth": 2, "hidden_channels": 8},
          "train": {"batch_size": 16, "checkpoint_every": 1, "keep_last": 2, "precision": "float64",
                    "tensorboard": False, "log_every": 1}}


def _train(out: Path, config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "flowplug", "train", "--config", str(config), "--steps", str(STEPS),
               "--out", str(out), "--no-progress", "--device", "cpu", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(out: Path, process: subprocess.Popen, pattern: str = "step-*.pt") -> float:
    """Wait until ``process`` has written a checkpoint matching ``pattern`` (or ended); returns the time."""
    while process.poll() is None and not list((out / "checkpoints").glob(pattern)):
        time.sleep(0.02)
    return time.monotonic()


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(RunFolder(out).step_checkpoint(STEPS)).model


def run_trials(trials: int, folder: Path, seed: int = 0) -> dict[str, object]:
    """Run ``trials`` kill-and-resume trials in ``folder``; returns counts, failures and times."""
    rng = random.Random(seed)
    config = folder / "config.json"
    config.write_text(json.dumps(CONFIG))
    start = time.monotonic()
    reference = _train(folder / "reference", config)
    first = _wait_for(folder / "reference", reference)
    duration = _wait_for(folder / "reference", reference, f"step-{STEPS:08d}.pt") - first  # the training steps
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err
    expected = _final_weights(folder / "reference")
    failures, killed_at_step = [], []
    for trial in range(trials):
        out = folder / f"trial-{trial}"
        process = _train(out, config)
        _wait_for(out, process)
        time.sleep(rng.uniform(0.0, duration))
        process.send_signal(signal.SIGKILL)
        process.communicate()
        try:
            found = RunFolder(out).load_latest() if (out / "checkpoints").exists() else None
            if found is not None and found[2]:
                raise AssertionError(f"the newest checkpoint is not intact: {found[2]}")
            killed_at_step.append(found[1].step if found else 0)
            resumed = _train(out, config, "--resume")
            _, err = resumed.communicate(timeout=600)
            if resumed.returncode != 0:
                raise RuntimeError(err.strip().splitlines()[-1])
            got = _final_weights(out)
            if not all(torch.equal(got[k], expected[k]) for k in expected):
                raise AssertionError("final weights differ from the uninterrupted run")
            if list((out / "checkpoints").glob(".*.tmp")):
                raise AssertionError("a temporary file was left behind")
        except Exception as error:
            failures.append(f"trial {trial}: {error}")
    return {"trials": trials, "failures": failures, "checkpoint_step_at_kill": killed_at_step,
            "kill_window_s": round(duration, 1), "total_s": round(time.monotonic() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = run_trials(args.trials, Path(folder), args.seed)
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
