"""``flowplug train`` (the CLI's ``main``, unchanged) with a line written to the file ``$FLOWPLUG_PHASE_LOG`` each
time the process enters a part of its run, so that a test that kills it can tell what the kill interrupted.

Usage: ``python tests/fault/traced_train.py train --config ... --out ...``. The markers are written unbuffered
(``os.write``), so the file holds every marker written before a SIGKILL, and the last line names the phase the
process was in. A line holds the phase, the trainer's step (empty before ``fit``) and the wall time. Phases:
``startup`` (interpreter, imports, data, model), ``setup`` (``fit`` entered: folder claimed or resumed,
``config.json``, ``metrics.csv``), ``train`` (an optimiser step and its metrics row), ``evaluate`` (a held-out
evaluation during training), ``checkpoint`` (writing a step checkpoint; rotating the old ones), ``best``
(writing ``best.pt``), ``samples`` (a grid of samples), ``final`` (the last step done: building the report),
``final-evaluation`` (the evaluation after the last step), ``report`` (``report.json``/``report.txt``), ``exit``
(``fit`` returned: the CLI prints the report and exits). Nothing else changes: the hooks only write the markers
and call the original functions.
"""

from __future__ import annotations

import functools
import os
import sys
import time

PHASES = ("startup", "setup", "train", "evaluate", "checkpoint", "best", "samples", "final", "final-evaluation",
          "report", "exit")

_log = os.open(os.environ["FLOWPLUG_PHASE_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def _mark(phase: str, step: int | None) -> None:
    os.write(_log, f"{phase} {'' if step is None else step} {time.time():.4f}\n".encode())


_mark("startup", None)

from flowplug.cli import main  # noqa: E402
from flowplug.train import run_folder, trainer  # noqa: E402

_context = {"trainer": None, "base": "startup"}
"""The trainer being fitted, and the phase the process returns to after a marked call: ``setup`` until the first
step, ``train`` after it, ``final`` (building the report) once the last step is done."""


def _step() -> int | None:
    return _context["trainer"].step if _context["trainer"] is not None else None


def _phase(phase: str, original):
    """``original`` wrapped to mark ``phase`` while it runs (and the base phase when it returns)."""

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        name = phase
        if phase == "setup":
            _context["trainer"] = args[0]
        if phase in ("setup", "train"):
            _context["base"] = phase
        elif phase == "evaluate" and _context["base"] == "final":
            name = "final-evaluation"
        elif phase == "checkpoint" and os.path.basename(str(args[1])) == "best.pt":
            name = "best"
        _mark(name, _step())
        try:
            return original(*args, **kwargs)
        finally:
            if phase == "setup":
                _context["base"] = "exit"
            if phase != "train":
                _mark(_context["base"], _step())

    return wrapped


def _final(original):
    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        _context["base"] = "final"
        _mark("final", _step())
        return original(*args, **kwargs)

    return wrapped


Trainer = trainer.Trainer
Trainer.fit = _phase("setup", Trainer.fit)
Trainer.train_step = _phase("train", Trainer.train_step)
Trainer._score = _phase("evaluate", Trainer._score)
Trainer._save_samples = _phase("samples", Trainer._save_samples)
trainer.run_report = _final(trainer.run_report)  # called once, after the last step: the final part begins
trainer.write_report = _phase("report", trainer.write_report)
run_folder.save_checkpoint = _phase("checkpoint", run_folder.save_checkpoint)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
