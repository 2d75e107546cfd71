"""flowplug: multi-resolution continuous normalizing flows as normflows components."""

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
