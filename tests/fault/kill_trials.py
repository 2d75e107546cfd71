"""SIGKILL trials: a ``flowplug train`` process killed at any moment of its run must leave a folder that the user
can finish, and the finished folder must hold what an uninterrupted run leaves, bit for bit.

The run (a small Glow on the digits, float64, one thread) evaluates, writes ``best.pt``, saves samples and
rotates checkpoints. Each trial starts it under ``traced_train.py`` (the unchanged CLI, writing a marker as it
enters each phase) and kills it with SIGKILL:

- *uniform* trials at a moment drawn uniformly from the whole uninterrupted run, process start to exit
  (interpreter start-up and imports included: the part a user's kill most often lands in), placed at the same
  point of the trial's own progress (after the same marker), so that load on the machine does not push kills
  past the end of the run;
- *targeted* trials a random fraction of a phase's duration after the process enters it (a phase drawn
  uniformly, then one of its occurrences): short phases such as writing ``best.pt``, the samples or the
  report get kills too.

The phase and step each kill interrupted are read from the markers. The folder is then finished as a user
would: with no checkpoint in it, the same command again (which either runs, or is refused with a message that
names ``--resume``) and then ``--resume``; with one, ``--resume``. The newest checkpoint must load, and the
finished folder must equal the uninterrupted run's (:func:`differences`): final checkpoint (weights, EMA,
optimiser, RNG, curve...), ``best.pt``, every ``metrics.csv`` row logged exactly once with the same value,
``report.json``, ``config.json``, the sample images and the checkpoint files kept.

Run ``python tests/fault/kill_trials.py --trials 100`` for the long version; ``tests/fault/test_faults.py``
runs a few trials of the same code (marked slow).
"""

from __future__ import annotations

import argparse
import collections
import csv
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowplug.train import load_checkpoint
from flowplug.train.run_folder import RunFolder

STEPS = 90
CONFIG = {"model": {"type": "glow", "levels": 1, "depth": 2, "hidden_channels": 8},
          "train": {"batch_size": 16, "precision": "float64", "tensorboard": False, "log_every": 1,
                    "checkpoint_every": 4, "keep_last": 2, "eval_every": 10, "sample_every": 15,
                    "num_samples": 16, "lr": 0.03,
                    "phases": [{"objective": "likelihood", "until": 0.6},
                               {"objective": "likelihood", "lr": 0.3}]}}
"""A run with every part a kill can interrupt: evaluations every 10 steps, samples every 15, checkpoints every 4
(not a multiple of ``eval_every``: ``best.pt`` is written by the evaluations' own saves), and a second phase
at a rate high enough that the held-out score gets worse, so ``best.pt`` stays at step 50 while the run goes
on. Everything runs in float64 on one thread (``OMP_NUM_THREADS=1``), where a run is deterministic."""
TRACER = Path(__file__).with_name("traced_train.py")

CHECKPOINT_EXCLUDED = ("elapsed_s", "resumes")
"""Checkpoint entries that legitimately differ after a kill and resume: ``elapsed_s`` is wall time;
``resumes`` records the resume itself (step, file, changed options)."""
RNG_EXCLUDED = ("numpy", "python")
"""The checkpoint's numpy and ``random`` generator states: flowplug neither seeds nor draws from them, so each
process starts them from OS entropy and two uninterrupted runs differ there too (torch's state is compared)."""
VALUE_ONLY = ("data_dep_init_done",)
"""Buffers compared by value only, not dtype: normflows' ActNorm replaces its flag buffer by a float32
``tensor(1.0)`` at its data-dependent initialisation, so a fresh float64 run stores a float32 flag and a
resumed one (which loads it into the model's float64 buffer) a float64 flag; both hold 1.0."""
CURVE_EXCLUDED = ("train_time_s",)
"""Per point of the evaluation curve: the budget clock's seconds (wall time)."""
REPORT_EXCLUDED = ("train_time_s", "budget_time_s", "steps_per_s", "steps_this_run")
"""``report.json`` entries of wall time and of this process's share of the steps (the resumed process trained
only the steps after its checkpoint)."""
CONFIG_EXCLUDED = ("resumes",)
"""``config.json``: the record of the resumes."""
METRICS_EXCLUDED = ("elapsed_s",)
"""``metrics.csv`` columns: the wall seconds at which a row was logged."""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _command(out: Path, config: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--steps", str(STEPS), "--out", str(out), "--no-progress",
            "--device", "cpu", *extra]


def _start(arguments: list[str], log: Path | None = None) -> subprocess.Popen:
    """``flowplug <arguments>`` in a new process: traced (markers to ``log``) when ``log`` is given."""
    env = _env()
    if log is not None:
        env["FLOWPLUG_PHASE_LOG"] = str(log)
        command = [sys.executable, str(TRACER), *arguments]
    else:
        command = [sys.executable, "-m", "flowplug", *arguments]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _markers(log: Path) -> list[tuple[str, str, float]]:
    """The markers of a traced run: ``(phase, step, time)`` each."""
    if not log.exists():
        return []
    found = []
    for line in log.read_text().splitlines():
        phase, step, moment = line.split(" ")
        found.append((phase, step, float(moment)))
    return found


# -- what a finished folder holds ---------------------------------------------------------------------------------
def _same(a: Any, b: Any, where: str, found: list[str]) -> None:
    """Append to ``found`` each place where ``a`` and ``b`` differ (tensors and arrays: dtype, shape and every
    element, bit for bit; floats: equal or both NaN)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and where.endswith(VALUE_ONLY):
        if not (a.shape == b.shape and torch.equal(a.double(), b.double())):
            found.append(where)
    elif isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b)):
            found.append(where)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not np.array_equal(a, b):
            found.append(where)
    elif isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            found.append(f"{where}: keys {sorted(set(a) ^ set(b), key=str)}")
        for key in sorted(set(a) & set(b), key=str):
            _same(a[key], b[key], f"{where}.{key}", found)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            found.append(f"{where}: {len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _same(x, y, f"{where}[{i}]", found)
    elif isinstance(a, float) and isinstance(b, float):
        if not (a == b or (math.isnan(a) and math.isnan(b))):
            found.append(f"{where}: {a!r} vs {b!r}")
    elif a != b or type(a) is not type(b):
        found.append(f"{where}: {a!r} vs {b!r}")


def _without(entries: dict[str, Any], excluded: tuple[str, ...]) -> dict[str, Any]:
    kept = {key: value for key, value in entries.items() if key not in excluded}
    if isinstance(kept.get("curve"), list):
        kept["curve"] = [_without(point, CURVE_EXCLUDED) for point in kept["curve"]]
    return kept


def _checkpoint(path: Path) -> dict[str, Any]:
    kept = _without(load_checkpoint(path).to_dict(), CHECKPOINT_EXCLUDED)
    if isinstance(kept.get("rng"), dict):
        kept["rng"] = _without(kept["rng"], RNG_EXCLUDED)
    return kept


def _metrics(path: Path, found: list[str]) -> dict[tuple[str, str, str], str]:
    """``{(step, split, metric): value}`` of ``metrics.csv``; a row logged twice is a difference."""
    with path.open(newline="") as file:
        rows = list(csv.reader(file))
    header = ["step", "elapsed_s", "split", "metric", "value"]
    if rows[:1] != [header]:
        found.append(f"{path.name}: header {rows[:1]}")
    kept = [[v for name, v in zip(header, row, strict=True) if name not in METRICS_EXCLUDED] for row in rows[1:]]
    counts = collections.Counter((step, split, metric) for step, split, metric, _ in kept)
    found += [f"{path.name}: step {key[0]} {key[1]}/{key[2]} logged {n} times" for key, n in counts.items() if n > 1]
    return {(step, split, metric): value for step, split, metric, value in kept}


def differences(expected: Path, got: Path) -> list[str]:
    """What the finished run folder ``got`` holds that differs from the uninterrupted run's ``expected``, with
    the wall-time entries (and resume records) left out as the ``*_EXCLUDED`` tuples say."""
    found: list[str] = []
    a, b = RunFolder(expected), RunFolder(got)
    names = [sorted(p.name for p in folder.checkpoints.iterdir()) for folder in (a, b)]
    if names[0] != names[1]:
        found.append(f"checkpoints/ holds {names[1]}, expected {names[0]}")
    for name in ("step_checkpoint", "best"):
        path_a = a.step_checkpoint(STEPS) if name == "step_checkpoint" else a.best
        path_b = b.step_checkpoint(STEPS) if name == "step_checkpoint" else b.best
        if not path_b.exists():
            found.append(f"{path_b.name} missing")
            continue
        _same(_checkpoint(path_a), _checkpoint(path_b), path_b.name, found)
    _same(_metrics(a.metrics, found), _metrics(b.metrics, found), "metrics.csv", found)
    for path_a, path_b, excluded in ((a.report_json, b.report_json, REPORT_EXCLUDED),
                                     (a.config, b.config, CONFIG_EXCLUDED)):
        if not path_b.exists():
            found.append(f"{path_b.name} missing")
            continue
        _same(_without(json.loads(path_a.read_text()), excluded),
              _without(json.loads(path_b.read_text()), excluded), path_b.name, found)
    samples = [sorted((folder.root / "samples").glob("*.png")) for folder in (a, b)]
    if [p.name for p in samples[0]] != [p.name for p in samples[1]]:
        found.append(f"samples: {[p.name for p in samples[1]]}, expected {[p.name for p in samples[0]]}")
    found += [f"samples/{p.name} differs" for p, q in zip(*samples, strict=False) if p.read_bytes() != q.read_bytes()]
    return found


# -- the trials -----------------------------------------------------------------------------------------------------
def _reference(folder: Path, config: Path) -> dict[str, Any]:
    """The uninterrupted run: its folder, its duration (start to exit), its markers and how long the process
    stayed at each (the last one: until the process ended), and the seconds before its first marker."""
    log = folder / "reference.log"
    start, started = time.monotonic(), time.time()
    process = _start(_command(folder / "reference", config), log)
    _, err = process.communicate(timeout=600)
    duration, ended = time.monotonic() - start, time.time()
    assert process.returncode == 0, err
    markers = _markers(log)
    return {"out": folder / "reference", "duration": duration, "markers": markers,
            "head": markers[0][2] - started,
            "lengths": [b[2] - a[2] for a, b in itertools.pairwise(markers)] + [ended - markers[-1][2]]}


def _wait_for_line(log: Path, count: int, process: subprocess.Popen) -> None:
    """Wait until ``log`` holds ``count`` lines (or the process ended)."""
    seen = 0
    with open(log, "a+b") as file:
        file.seek(0)
        while seen < count and process.poll() is None:
            chunk = file.read()
            if chunk:
                seen += chunk.count(b"\n")
            else:
                time.sleep(0.0002)


def _kill(process: subprocess.Popen, log: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """Kill ``process`` as ``plan`` says; returns where the kill landed."""
    start = time.monotonic()
    if plan["marker"] is not None:
        _wait_for_line(log, plan["marker"] + 1, process)
    time.sleep(plan["delay"])
    ended = process.poll() is not None
    process.send_signal(signal.SIGKILL)
    process.communicate()
    markers = _markers(log)
    phase, step = (markers[-1][0], markers[-1][1]) if markers else ("startup", "")
    if ended:
        phase = "ended"  # the process exited on its own before the kill
    return {"phase": phase, "step": int(step) if step else None, "at_s": round(time.monotonic() - start, 3)}


def _plan(rng: random.Random, reference: dict[str, Any], targeted: float, phase: str | None = None
          ) -> dict[str, Any]:
    """A uniform kill (a share ``1 - targeted`` of the trials, or when ``phase`` is "uniform") or one aimed at
    ``phase`` (default: a phase drawn uniformly): ``marker`` (None: the process start) and the seconds after it.

    A uniform kill's moment is drawn from the reference run's whole duration and then placed at the same point
    of the trial's own run (the same marker, the same seconds after it), so a machine busier or quieter than
    during the reference run still gets kills spread over the whole run rather than after its end."""
    markers = reference["markers"]
    if phase == "uniform" or (phase is None and rng.random() >= targeted):
        moment = rng.uniform(0.0, reference["duration"])
        plan = {"kind": "uniform", "at_reference_s": round(moment, 3), "marker": None, "delay": moment}
        moment -= reference["head"]
        for i, length in enumerate(reference["lengths"]):
            if moment < 0:
                break
            plan["marker"], plan["delay"] = i, min(moment, length)
            moment -= length
        if plan["marker"] is not None:
            plan["target"] = f"{markers[plan['marker']][0]} {markers[plan['marker']][1]}".strip()
        return plan
    phase = phase or rng.choice(sorted({m[0] for m in markers}))
    marker = rng.choice([i for i, m in enumerate(markers) if m[0] == phase])
    return {"kind": "targeted", "marker": marker, "target": f"{phase} {markers[marker][1]}".strip(),
            "delay": rng.uniform(0.0, reference["lengths"][marker])}


def _finish(out: Path, config: Path) -> tuple[list[str], str | None]:
    """Finish a killed run as a user would; returns the commands' outcomes and an error, if any."""
    folder, steps = RunFolder(out), []
    if not (folder.step_checkpoints() or folder.best.exists()):
        again = _start(_command(out, config))
        _, err = again.communicate(timeout=600)
        last = err.strip().splitlines()[-1] if err.strip() else ""
        if again.returncode == 0:
            return ["re-run: finished"], None
        if again.returncode != 2 or "--resume" not in last:
            return ["re-run: failed"], f"the same command again: exit {again.returncode}: {last}"
        steps.append("re-run: refused, names --resume")
    else:
        found = folder.load_latest()
        if found is not None and found[2]:
            return steps, f"the newest checkpoint is not intact: {found[2]}"
        if folder.best.exists():
            load_checkpoint(folder.best)
    resumed = _start(_command(out, config, "--resume"))
    _, err = resumed.communicate(timeout=600)
    if resumed.returncode != 0:
        return [*steps, "resume: failed"], f"--resume: exit {resumed.returncode}: {err.strip().splitlines()[-1:]}"
    return [*steps, "resume: finished"], None


def run_trials(trials: int, folder: Path, seed: int = 0, targeted: float = 0.5,
               phases: tuple[str, ...] | None = None, progress: Path | None = None) -> dict[str, Any]:
    """Run ``trials`` kill-and-finish trials in ``folder`` (a share ``targeted`` of them at a phase drawn at
    random; or, given ``phases``, trial ``i`` at ``phases[i % len(phases)]``, "uniform" for a uniform kill);
    returns the window, the phases hit, the failures and the time taken (and writes the kills so far to
    ``progress`` after each trial, when given)."""
    rng = random.Random(seed)
    config = folder / "config.json"
    config.write_text(json.dumps(CONFIG))
    start = time.monotonic()
    reference = _reference(folder, config)
    failures, kills = [], []
    for trial in range(trials):
        out, log = folder / f"trial-{trial}", folder / f"trial-{trial}.log"
        plan = _plan(rng, reference, targeted, phases[trial % len(phases)] if phases else None)
        hit = _kill(_start(_command(out, config), log), log, plan)
        try:
            hit["finished_by"], error = _finish(out, config)
            if error is None:
                found = differences(reference["out"], out)
                error = "; ".join(found[:8]) + (f" (+{len(found) - 8} more)" if len(found) > 8 else "") \
                    if found else None
        except Exception as exception:  # a trial's crash is its failure, not the series'
            error = f"{type(exception).__name__}: {exception}"
        kills.append({"trial": trial, **{k: v for k, v in plan.items() if k != "marker"}, **hit})
        if error is not None:
            failures.append(f"trial {trial} ({hit['phase']} {hit['step']}): {error}")
        if progress is not None:
            progress.write_text(json.dumps({"trials_done": trial + 1, "failures": failures, "kills": kills}) + "\n")
    phases = collections.Counter(k["phase"] for k in kills)
    spent: dict[str, float] = collections.defaultdict(float)
    for (phase, _, _), length in zip(reference["markers"], reference["lengths"], strict=True):
        spent[phase] += length
    return {"trials": trials, "failures": failures, "kill_window_s": round(reference["duration"], 2),
            "steps": STEPS, "phases_hit": dict(sorted(phases.items())),
            "steps_hit": sorted({k["step"] for k in kills if k["step"] is not None}),
            "reference_phase_s": {phase: round(seconds, 3) for phase, seconds in sorted(spent.items())},
            "kills": kills, "total_s": round(time.monotonic() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targeted", type=float, default=0.5, help="share of the trials aimed at a phase")
    parser.add_argument("--out", type=Path, help="write the result (every kill) here as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        progress = args.out.with_suffix(".partial.json") if args.out is not None else None
        result = run_trials(args.trials, Path(folder), args.seed, args.targeted, progress=progress)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "kills"}, indent=2))
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
