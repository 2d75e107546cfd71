"""CPU threading for training on a shared machine.

PyTorch's CPU kernels run on an OpenMP thread pool. By default OpenMP lets a thread that finished its share of an
operation *spin* for a while, waiting for the next one. On a quiet machine that saves a wake-up per operation; on a
busy one (other jobs, other training processes) the spinning threads take the cores that the lagging thread of the
same operation needs, and every operation waits for its slowest thread. Measured on 2 cores with three busy
processes beside it, the default job's flow-matching step took 195–549 ms with spinning threads and 71 ms with
sleeping ones (16–18 ms on the quiet machine). From Python, 200 flow-matching steps of the README's model beside
two busy processes took 23–25 s wall (17–18 CPU-s) with sleeping threads and 52–58 s wall (50–58 CPU-s) with
spinning ones; on the quiet machine spinning was a little faster, 9.8–10.0 s against 10.6 s wall, for 19 CPU-s
against 15.5.

OpenMP reads its wait policy once, when the library loads with torch, so the policy must be chosen before
``import torch``. flowplug chooses it in two places, both through :func:`prefer_passive_waiting`:

- ``import flowplug`` (:func:`apply_import_policy`, from ``flowplug/__init__.py``), which imports no torch itself:
  a Python program that imports flowplug before torch gets ``OMP_WAIT_POLICY=PASSIVE``;
- the ``flowplug`` command (:mod:`flowplug.console`).

Either way a policy already in the environment is kept: set ``OMP_WAIT_POLICY`` yourself (e.g. ``ACTIVE``, the
faster choice on a machine you have to yourself) to override flowplug's. Setting it changes ``os.environ``, so
processes the program starts inherit it, and other OpenMP libraries loaded later in the process follow it too.

If torch was imported before flowplug and no policy is set, OpenMP keeps its default (spinning) and flowplug
cannot change that any more; ``import flowplug`` then warns once (:class:`WaitPolicyWarning`) if the machine is
busy (a one-minute load average of at least the number of cores this process may use), since that is where
the spinning costs. The remedy: import flowplug before torch, or start Python with ``OMP_WAIT_POLICY=PASSIVE``.

This module imports nothing from torch at import time.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = [
    "THREADS_ENV",
    "WAIT_POLICY_ENV",
    "WaitPolicyWarning",
    "apply_import_policy",
    "prefer_passive_waiting",
    "set_threads",
    "wait_policy",
]

_chosen_here = False
"""Whether :func:`prefer_passive_waiting` set the policy (rather than finding one in the environment)."""

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
THREADS_ENV = "FLOWPLUG_NUM_THREADS"
"""Environment variable the command line reads when ``--threads`` is not given."""


def prefer_passive_waiting() -> bool:
    """Let idle OpenMP threads sleep instead of spinning, unless the environment already chose a policy.

    Returns whether the policy can still take effect (False once torch is imported: OpenMP has read its
    environment by then).
    """
    global _chosen_here
    if "torch" in sys.modules:
        return False
    if WAIT_POLICY_ENV not in os.environ:
        os.environ[WAIT_POLICY_ENV] = "PASSIVE"
        _chosen_here = True
    return True


def wait_policy() -> str:
    """The OpenMP wait policy this process runs with, and who chose it, in words (for reports and test headers),
    e.g. ``"PASSIVE (set by flowplug before torch loaded)"``."""
    value = os.environ.get(WAIT_POLICY_ENV)
    if value is None:
        late = "torch was imported before flowplug" if "torch" in sys.modules else "flowplug has not been imported"
        return f"OpenMP's default, idle threads spin ({late})"
    return f"{value} ({'set by flowplug before torch loaded' if _chosen_here else 'from the environment'})"


class WaitPolicyWarning(UserWarning):
    """torch was imported before flowplug on a busy machine, so OpenMP's idle threads spin (see the module)."""



def _busy() -> bool:
    """Whether the one-minute load average reaches the number of cores this process may run on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        return os.getloadavg()[0] >= cores
    except OSError:  # no load average (Windows)
        return False


def apply_import_policy() -> bool:
    """What ``import flowplug`` does: :func:`prefer_passive_waiting`, and when that is too late (torch already
    imported) while the user has chosen no policy, one :class:`WaitPolicyWarning` if the machine is busy.

    Returns whether OpenMP's threads will sleep by flowplug's choice (True when it set or could still set
    ``PASSIVE``).
    """
    if prefer_passive_waiting():
        return True
    if WAIT_POLICY_ENV not in os.environ and _busy():
        warnings.warn(
            "torch was imported before flowplug, so OpenMP's idle threads keep spinning, which made training "
            "2 to 5 times slower on busy machines like this one. Import flowplug before torch, or start Python with "
            f"{WAIT_POLICY_ENV}=PASSIVE (set {WAIT_POLICY_ENV} to any value to silence this).",
            WaitPolicyWarning,
            stacklevel=3,
        )
    return False


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count: ``threads`` if given, else ``$FLOWPLUG_NUM_THREADS`` if set, else torch's
    default (one per physical core). Returns the count in force; a bad value raises ``ValueError`` naming it."""
    import torch

    source = "--threads"
    if threads is None and os.environ.get(THREADS_ENV):
        source, text = THREADS_ENV, os.environ[THREADS_ENV]
        try:
            threads = int(text)
        except ValueError:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {text!r}") from None
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"{source} must be a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()
