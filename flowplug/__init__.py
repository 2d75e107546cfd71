"""flowplug: multi-resolution continuous normalizing flows as normflows components.

The training API (:class:`Trainer`, :class:`TrainConfig`, checkpoints) loads on first use, so that importing
flowplug for its components does not import the trainer's dependencies.
"""

from typing import Any

from flowplug.asinh import AsinhStretch
from flowplug.cnf import CNF, ConvODENet, MLPODENet, SolverSettings
from flowplug.data import ImageData, load_dataset
from flowplug.distributions import StandardNormal
from flowplug.models.base import FlowModel
from flowplug.models.baselines import Glow, RealNVP
from flowplug.models.mrcnf import MRCNF
from flowplug.registry import build, components, get_component, register
from flowplug.standardize import Standardize
from flowplug.wavelet import (
    HaarMerge,
    HaarSplit,
    HaarSqueeze,
    haar_decompose,
    haar_pyramid,
    haar_pyramid_reconstruct,
    haar_reconstruct,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "CNF",
    "MRCNF",
    "AsinhStretch",
    "CheckpointError",
    "ConvODENet",
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
    "register",
]

_TRAINING = frozenset({"CheckpointError", "TrainConfig", "Trainer", "load_checkpoint"})


def __getattr__(name: str) -> Any:
    if name in _TRAINING:
        import flowplug.train

        return getattr(flowplug.train, name)
    raise AttributeError(f"module 'flowplug' has no attribute {name!r}")
