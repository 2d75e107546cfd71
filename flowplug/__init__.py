"""flowplug: multi-resolution continuous normalizing flows as normflows components.

Every public name loads on first use (``flowplug.MRCNF`` imports the models, ``flowplug.Trainer`` the trainer), so
``import flowplug`` itself imports neither torch nor the trainer. It does choose the OpenMP thread policy before
torch loads: idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless ``OMP_WAIT_POLICY`` is already set, which on a
busy machine made training 2 to 5 times faster; import flowplug before torch to get it (:mod:`flowplug.threads`).
Built-in components register with :mod:`flowplug.registry` when the registry is first consulted.
"""

import importlib
from typing import Any

from flowplug.threads import apply_import_policy as _apply_thread_policy

_apply_thread_policy()  # before any torch import: OpenMP reads its wait policy once, when torch loads
del _apply_thread_policy

_EXPORTS: dict[str, str] = {
    "AsinhStretch": "flowplug.asinh",
    "EdgeBinWarp": "flowplug.bin_warp",
    "CNF": "flowplug.cnf",
    "ConvODENet": "flowplug.cnf",
    "MLPODENet": "flowplug.cnf",
    "SolverSettings": "flowplug.cnf",
    "ImageData": "flowplug.data",
    "load_dataset": "flowplug.data",
    "StandardNormal": "flowplug.distributions",
    "FlowModel": "flowplug.models.base",
    "Glow": "flowplug.models.baselines",
    "RealNVP": "flowplug.models.baselines",
    "MRCNF": "flowplug.models.mrcnf",
    "build": "flowplug.registry",
    "components": "flowplug.registry",
    "get_component": "flowplug.registry",
    "register": "flowplug.registry",
    "recipe": "flowplug.recipes",
    "recipes": "flowplug.recipes",
    "Standardize": "flowplug.standardize",
    "CheckpointError": "flowplug.train",
    "TrainConfig": "flowplug.train",
    "Trainer": "flowplug.train",
    "load_checkpoint": "flowplug.train",
    "HaarMerge": "flowplug.wavelet",
    "HaarSplit": "flowplug.wavelet",
    "HaarSqueeze": "flowplug.wavelet",
    "haar_decompose": "flowplug.wavelet",
    "haar_pyramid": "flowplug.wavelet",
    "haar_pyramid_reconstruct": "flowplug.wavelet",
    "haar_reconstruct": "flowplug.wavelet",
}
"""Where each public name lives; it is imported on first access."""

__version__ = "0.3.0.dev0"
"""The package version, in this one place (``pyproject.toml`` reads it; ``flowplug --version`` shows it)."""

__all__ = [
    "CNF",
    "MRCNF",
    "AsinhStretch",
    "CheckpointError",
    "ConvODENet",
    "EdgeBinWarp",
    "FlowModel",
    "Glow",
    "HaarMerge",
    "HaarSplit",
    "HaarSqueeze",
    "ImageData",
    "MLPODENet",
    "RealNVP",
    "SolverSettings",
    "StandardNormal",
    "Standardize",
    "TrainConfig",
    "Trainer",
    "__version__",
    "build",
    "components",
    "get_component",
    "haar_decompose",
    "haar_pyramid",
    "haar_pyramid_reconstruct",
    "haar_reconstruct",
    "load_checkpoint",
    "load_dataset",
    "recipe",
    "recipes",
    "register",
]



def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'flowplug' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
