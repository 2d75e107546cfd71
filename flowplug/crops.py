"""An offline colour image set at any size: random square crops of scikit-image's bundled photographs.

``load_dataset("crops64")`` (generally ``"crops<SIZE>"``) calls :func:`sample_crops`. The photographs are
read as files from the installed scikit-image package (``pip install "flowplug[images]"``), never through
``skimage.data``'s downloader, so nothing is fetched. The five used ship inside the scikit-image wheel and
are free to reuse by the licence scikit-image's documentation states for each:

| file | size (W×H) | licence (scikit-image's ``skimage.data`` docstrings) |
|---|---|---|
| astronaut.png | 512×512 | NASA photograph, released into the public domain |
| chelsea.png | 451×300 | CC0 (photographer Stefan van der Walt) |
| coffee.png | 600×400 | CC0 (photographer Rachel Michetti) |
| hubble_deep_field.jpg | 1000×872 | NASA/HubbleSite, public domain |
| rocket.jpg | 640×427 | SpaceX launch photo, released into the public domain |

**Held-out part: disjoint image regions.** Each photograph's columns are cut at ``floor(0.7 W)``: training
crops lie wholly in the left 70 %, held-out crops (``part="held-out"``) wholly in the right 30 %, so no
held-out pixel was ever in a training crop, at every size and seed (a model grown from ``crops32`` to
``crops128`` has still never seen a held-out pixel). The cut does not depend on the size; sizes up to
:data:`MAX_CROP_SIZE` fit every region. Score on this part, not on :meth:`~flowplug.data.ImageData.split` of the
training crops: random crops of one region overlap, so such a split holds pixels that were trained on. The
right 30 % is not distributed like the rest (more background in some photographs), so held-out BPD is not
the same figure as a BPD on fresh training-region crops.

**Recipe** (per crop, from ``numpy.random.default_rng([seed, part])``, part 0 for training, 1 for held-out):
a photograph chosen uniformly; a square side ``round(size · 2**u)``, ``u ~ U[0, 1)``, cut down to fit the
region; its top-left corner uniform over the positions that keep it in the region; the square resized to
``size × size`` with pillow's antialiased Lanczos filter; a left-right mirror with probability 1/2.
"""

from __future__ import annotations

import math
import re
from importlib import resources

import numpy as np
import torch

from flowplug.images import ImageData, resize_square

__all__ = ["CROP_SOURCES", "HELD_OUT_FROM", "MAX_CROP_SIZE", "crops_size", "sample_crops"]

CROP_SOURCES = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "rocket.jpg")
"""The scikit-image sample photographs cropped (files in the ``skimage/data`` folder of the package)."""

HELD_OUT_FROM = 0.7
"""Held-out crops come from the columns right of ``floor(HELD_OUT_FROM · W)`` of every photograph."""

MAX_CROP_SIZE = 135
"""The largest crop side that fits every region: chelsea's held-out strip is 451 − 315 = 136 columns wide
(kept one below, so that even the largest size has more than one position)."""

_NAME = re.compile(r"crops(\d+)")
_PARTS = ("train", "held-out")


def crops_size(name: str) -> int | None:
    """The size in a dataset name ``"crops<SIZE>"`` (e.g. 64 for ``"crops64"``), else ``None``."""
    match = _NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def _photographs() -> list[np.ndarray]:
    """The source photographs as uint8 ``(H, W, 3)`` arrays, read from the installed scikit-image."""
    from PIL import Image

    try:
        folder = resources.files("skimage").joinpath("data")
    except ModuleNotFoundError:
        raise ValueError('the crops datasets need scikit-image\'s sample images: pip install "flowplug[images]"'
                         ) from None
    arrays = []
    for file in CROP_SOURCES:
        source = folder.joinpath(file)
        if not source.is_file():
            raise ValueError(f"this scikit-image installation does not ship {file} (needed by the crops "
                             "datasets; scikit-image 0.19 or later bundles it)")
        with resources.as_file(source) as path, Image.open(path) as image:
            arrays.append(np.asarray(image.convert("RGB")))
    return arrays


def sample_crops(size: int, *, part: str = "train", num: int | None = None, seed: int = 0) -> ImageData:
    """``num`` random ``size × size`` RGB crops (module docstring: recipe, licences, held-out regions).

    ``part`` is ``"train"`` (default ``num`` 4,000) or ``"held-out"`` (default 200); the same arguments give
    the same images. The result is named ``crops<SIZE>`` (``crops<SIZE>[held-out]`` for the held-out part), 256
    levels, and its ``origin`` records the part and seed.
    """
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_CROP_SIZE:
        raise ValueError(f"crop size must be an integer from 1 to {MAX_CROP_SIZE} (the narrowest held-out "
                         f"region), got {size!r}")
    if part not in _PARTS:
        raise ValueError(f"part must be one of {_PARTS}, got {part!r}")
    if num is None:
        num = 4000 if part == "train" else 200
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive integer, got {num!r}")
    held_out = part == "held-out"
    rng = np.random.default_rng([seed, int(held_out)])
    regions = []
    for photo in _photographs():
        cut = math.floor(HELD_OUT_FROM * photo.shape[1])
        regions.append(photo[:, cut:] if held_out else photo[:, :cut])
    crops = np.empty((num, 3, size, size), dtype=np.uint8)
    for i in range(num):
        region = regions[rng.integers(len(regions))]
        height, width = region.shape[:2]
        side = min(round(size * 2 ** rng.random()), height, width)
        top, left = rng.integers(height - side + 1), rng.integers(width - side + 1)
        crop = resize_square(region, (left, top, left + side, top + side), size)
        crops[i] = (crop[:, ::-1] if rng.random() < 0.5 else crop).transpose(2, 0, 1)
    name = f"crops{size}"
    return ImageData(torch.from_numpy(crops), 256, f"{name}[held-out]" if held_out else name,
                     {"of": name, "part": part, "seed": seed, "held_out": "disjoint image regions"})
