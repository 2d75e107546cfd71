"""Shared test setup: the OpenMP thread policy and the Hypothesis profile.

``import flowplug`` comes first, before anything here imports torch, so that idle OpenMP threads sleep
(``OMP_WAIT_POLICY=PASSIVE``, :mod:`flowplug.threads`) in this process and in every subprocess a test starts. On a
shared 2-core machine the spinning default made the suite several times slower: ``tests/cnf`` and ``tests/models``
took 438 s wall with it and 67 s with sleeping threads beside two busy processes (24 s quiet). A policy already in
the environment is kept. The plugins pytest loads before this file (Hypothesis's, pytest-benchmark's) do not import
torch; if one ever does, the header line below says so and ``OMP_WAIT_POLICY=PASSIVE pytest`` is the remedy.
"""

import flowplug  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
from flowplug.testing.profiles import load_profile
from flowplug.threads import wait_policy

load_profile()


def pytest_report_header(config):
    return f"OpenMP wait policy: {wait_policy()}"
