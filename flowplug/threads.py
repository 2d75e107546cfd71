"""CPU threading for training on a shared machine.

PyTorch's CPU kernels run on an OpenMP thread pool. By default OpenMP lets a thread that finished its share of an
operation *spin* for a while, waiting for the next one. On a quiet machine that saves a wake-up per operation; on a
busy one (other jobs, other training processes) the spinning threads take the cores that the lagging thread of the
same operation needs, and every operation waits for its slowest thread. Measured on 2 cores with three busy
processes beside it, the default job's flow-matching step took 195–549 ms with spinning threads and 71 ms with
sleeping ones (16–18 ms on the quiet machine).

OpenMP reads its wait policy once, when the library loads with torch, so :func:`prefer_passive_waiting` must run
before ``import torch``: the ``flowplug`` command does so (:mod:`flowplug.console`). Python programs that use
flowplug as a library set ``OMP_WAIT_POLICY=PASSIVE`` in their environment to get the same behaviour.

This module imports nothing from torch at import time.
"""

from __future__ import annotations

import os
import sys

__all__ = ["THREADS_ENV", "WAIT_POLICY_ENV", "prefer_passive_waiting", "set_threads"]

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
THREADS_ENV = "FLOWPLUG_NUM_THREADS"
"""Environment variable the command line reads when ``--threads`` is not given."""


def prefer_passive_waiting() -> bool:
    """Let idle OpenMP threads sleep instead of spinning, unless the environment already chose a policy.

    Returns whether the policy can still take effect (False once torch is imported: OpenMP has read its
    environment by then).
    """
    if "torch" in sys.modules:
        return False
    os.environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")
    return True


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
