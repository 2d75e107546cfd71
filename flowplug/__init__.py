"""flowplug: multi-resolution continuous normalizing flows as normflows components."""

from flowplug.cnf import CNF, ConvODENet, MLPODENet, SolverSettings
from flowplug.distributions import StandardNormal
from flowplug.models.base import FlowModel
from flowplug.models.mrcnf import MRCNF
from flowplug.registry import build, components, get_component, register
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
    "ConvODENet",
    "FlowModel",
    "MLPODENet",
    "SolverSettings",
    "StandardNormal",
    "HaarMerge",
    "HaarSplit",
    "HaarSqueeze",
    "__version__",
    "build",
    "components",
    "get_component",
    "haar_decompose",
    "haar_pyramid",
    "haar_pyramid_reconstruct",
    "haar_reconstruct",
    "register",
]
