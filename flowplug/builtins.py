"""flowplug's own registry entries, loaded through the ``flowplug.plugins`` entry point like any plugin's.

:func:`register_builtins` imports the modules whose components register themselves when imported, and registers
normflows' layers (:mod:`flowplug._normflows_components`). The registry calls it on first use through the entry
point that ``pyproject.toml`` declares, so :mod:`flowplug.registry` imports nothing of the packages above it.
"""

from __future__ import annotations

import importlib

__all__ = ["BUILTIN_MODULES", "register_builtins"]

BUILTIN_MODULES = (
    "flowplug.wavelet",
    "flowplug.asinh",
    "flowplug.bin_warp",
    "flowplug.standardize",
    "flowplug.distributions",
    "flowplug.cnf",
    "flowplug.models.baselines",
    "flowplug.models.mrcnf",
    "flowplug.train.objectives",
)
"""flowplug's modules that register components when imported."""


def register_builtins() -> None:
    """Register flowplug's components and normflows' layers."""
    from flowplug import _normflows_components as normflows_components
    from flowplug.registry import register

    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for kind, table in (("flow", normflows_components.FLOWS), ("distribution", normflows_components.DISTRIBUTIONS)):
        for name, factory in table.items():
            register(name, factory, kind=kind, source=normflows_components.SOURCE)
