"""Hypothesis settings profiles for flow property tests.

``flowplug-ci`` (default): 10 examples per test and no deadline, since flows on shared CPUs are slow and
their timing varies. ``flowplug-thorough``: 300 examples per test, for nightly or pre-release runs. Choose
with the environment variable ``FLOWPLUG_HYPOTHESIS_PROFILE`` and call :func:`load_profile` from a
``conftest.py``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from flowplug.testing import strategies  # noqa: F401  (its clear ImportError if Hypothesis is missing)

__all__ = ["CI_PROFILE", "ENV_VAR", "THOROUGH_PROFILE", "load_profile"]

ENV_VAR = "FLOWPLUG_HYPOTHESIS_PROFILE"
CI_PROFILE = "flowplug-ci"
THOROUGH_PROFILE = "flowplug-thorough"

_SLOW_INPUTS = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    CI_PROFILE, max_examples=10, deadline=None, suppress_health_check=_SLOW_INPUTS, print_blob=True
)
settings.register_profile(
    THOROUGH_PROFILE,
    max_examples=300,
    deadline=None,
    suppress_health_check=_SLOW_INPUTS,
    print_blob=True,
)


def load_profile(name: str | None = None) -> str:
    """Load profile ``name``, else the one named by ``FLOWPLUG_HYPOTHESIS_PROFILE``, else ``flowplug-ci``;
    returns the name. Any profile registered with Hypothesis may be named; an unknown one raises
    ``ValueError``."""
    chosen = name or os.environ.get(ENV_VAR) or CI_PROFILE
    try:
        settings.load_profile(chosen)
    except Exception as error:  # Hypothesis raises InvalidArgument for unknown profiles
        raise ValueError(
            f"unknown Hypothesis profile {chosen!r} (from {'the argument' if name else ENV_VAR}); "
            f"flowplug registers {CI_PROFILE!r} and {THOROUGH_PROFILE!r}"
        ) from error
    return chosen
