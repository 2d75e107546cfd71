"""The thread policy: ``import flowplug`` leaves torch unloaded and makes idle OpenMP threads sleep before torch
loads (as the ``flowplug`` command does), unless the user chose a policy; ``--threads`` / ``$FLOWPLUG_NUM_THREADS``
set torch's thread count."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from flowplug import threads
from flowplug.cli import _parser
from flowplug.threads import THREADS_ENV, WAIT_POLICY_ENV, WaitPolicyWarning, apply_import_policy, set_threads

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


# After a few parallel operations on 2 threads, the CPU seconds the process spends during a 1 s sleep: a worker
# thread that spins while it waits burns most of that second (0.93-0.99 s measured at load 5.6 on 2 cores), a
# sleeping one nothing (0.000 s).
IDLE_CPU = """
import time, torch
torch.set_num_threads(2)
x = torch.randn(256, 256)
for _ in range(20):
    x = torch.tanh(x @ x.T / 256)
start = time.process_time()
time.sleep(1.0)
print(time.process_time() - start)
"""
needs_two_cores = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenMP spins only with 2+ threads")


def test_import_flowplug_makes_openmp_threads_sleep_before_torch_loads():
    code = ("import os, flowplug, torch; from flowplug.threads import wait_policy; "
            "print(os.environ['OMP_WAIT_POLICY']); print(wait_policy())")
    policy, described = _run(code).splitlines()
    assert policy == "PASSIVE"
    assert described == "PASSIVE (set by flowplug before torch loaded)"


def test_import_flowplug_keeps_a_wait_policy_the_user_chose():
    code = "import os, flowplug, torch; from flowplug.threads import wait_policy; print(wait_policy())"
    assert _run(code, OMP_WAIT_POLICY="ACTIVE").strip() == "ACTIVE (from the environment)"


@needs_two_cores
def test_the_policy_set_in_python_reaches_openmp():
    # the mechanism flowplug relies on: os.environ set in the process before torch loads is what OpenMP reads.
    # ACTIVE (set the same way, in Python) must make the idle worker spin, PASSIVE (flowplug's) must not.
    spinning = float(_run("import os; os.environ['OMP_WAIT_POLICY'] = 'ACTIVE'; import flowplug\n" + IDLE_CPU))
    sleeping = float(_run("import flowplug\n" + IDLE_CPU))
    assert spinning > 0.2, spinning
    assert sleeping < 0.1, sleeping


def test_torch_imported_first_on_a_busy_machine_warns_once_at_the_import(tmp_path):
    script = tmp_path / "user.py"
    script.write_text("import os, warnings\nwarnings.simplefilter('always')\nos.getloadavg = lambda: (99.0, 0.0, 0.0)\n"
                      "import torch\nimport flowplug\nimport flowplug\n")
    environment = {k: v for k, v in os.environ.items() if k != WAIT_POLICY_ENV}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=True,
                            env={**environment, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
    assert result.stderr.count("WaitPolicyWarning") == 1, result.stderr
    assert f"{script}:5: WaitPolicyWarning: torch was imported before flowplug" in result.stderr
    assert "Import flowplug before torch, or start Python with OMP_WAIT_POLICY=PASSIVE" in result.stderr


@pytest.mark.parametrize(("busy", "policy", "warns"), [(True, None, True), (False, None, False),
                                                      (True, "ACTIVE", False)])
def test_late_import_warns_only_when_busy_and_no_policy_was_chosen(monkeypatch, busy, policy, warns):
    # torch is loaded in this process, so flowplug can no longer choose the policy
    monkeypatch.setattr(threads, "_busy", lambda: busy)
    if policy is None:
        monkeypatch.delenv(WAIT_POLICY_ENV, raising=False)
    else:
        monkeypatch.setenv(WAIT_POLICY_ENV, policy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert apply_import_policy() is False
    assert [w.category for w in caught] == ([WaitPolicyWarning] if warns else [])
    assert os.environ.get(WAIT_POLICY_ENV) == policy  # nothing set once torch is loaded


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
