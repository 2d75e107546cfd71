"""The thread policy: ``import flowplug`` leaves torch unloaded, so the ``flowplug`` command can make idle OpenMP
threads sleep before torch loads; ``--threads`` / ``$FLOWPLUG_NUM_THREADS`` set torch's thread count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flowplug.cli import _parser
from flowplug.threads import THREADS_ENV, WAIT_POLICY_ENV, set_threads

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k not in (WAIT_POLICY_ENV, THREADS_ENV)}
    environment.update(env, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                            cwd=ROOT, timeout=300, check=True)
    return result.stdout


def test_import_flowplug_does_not_import_torch():
    assert _run("import sys, flowplug; print('torch' in sys.modules)").strip() == "False"


def test_public_names_load_on_first_use():
    out = _run("import flowplug; print(flowplug.MRCNF.__name__, flowplug.Trainer.__name__, 'MRCNF' in dir(flowplug))")
    assert out.split() == ["MRCNF", "Trainer", "True"]


def test_command_makes_openmp_threads_sleep_before_torch_loads():
    # flowplug.console sets the policy; info reports the policy torch's process was started with
    out = _run("import sys; sys.argv = ['flowplug', 'info']; from flowplug.console import main; main()")
    assert "OpenMP wait policy: PASSIVE" in out


def test_command_keeps_a_wait_policy_the_user_chose():
    out = _run("import sys; sys.argv = ['flowplug', 'info']; from flowplug.console import main; main()",
               OMP_WAIT_POLICY="ACTIVE")
    assert "OpenMP wait policy: ACTIVE" in out


def test_threads_option_and_environment_set_torch_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 == torch.get_num_threads()
        monkeypatch.setenv(THREADS_ENV, "2")
        assert set_threads() == 2
        assert set_threads(1) == 1  # the option wins over the environment
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_bad_thread_count_is_refused(value):
    with pytest.raises(ValueError, match="--threads must be a positive integer"):
        set_threads(value)


def test_bad_thread_environment_is_refused(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=f"{THREADS_ENV} must be a positive integer, got 'many'"):
        set_threads()


@pytest.mark.parametrize("command", [["train"], ["sample", "ckpt.pt"], ["evaluate", "ckpt.pt"]])
def test_every_running_command_takes_threads(command):
    assert _parser().parse_args([*command, "--threads", "3"]).threads == 3
