"""Image datasets for training and evaluation: integer images in memory with their grey levels.

Every source becomes an :class:`ImageData`: ``x`` of dtype uint8 and shape ``(N, C, H, W)``
holding levels ``0 .. n_bins-1``. :func:`dequantize` turns them into the continuous input
``v`` in ``[0, 1)`` that every model sees (``docs/design.md`` §3), once per pixel; a :class:`Batch`
carries ``v`` together with its ``n_bins``.

Sources (:func:`load_dataset`):

- ``"digits"`` (the default): embedded in the package, the UCI handwritten digits, 1,797 images
  of 1x8x8 with 17 levels (``n_bins=17``), CC BY 4.0 (see ``flowplug/datasets/README.txt``);
- a ``.npz`` file with ``x`` (uint8, NxCxHxW) and optionally ``n_bins`` (default 256); an ``x`` that looks
  channels-last (NxHxWxC: last axis 1 or 3, axis 1 not) is refused with the transpose to apply;
- a folder of image files (PNG, JPEG, ... read with pillow), all of one size, as 8-bit RGB or,
  with ``channels=1``, grey; with ``size=S`` images of any sizes, each centre-cropped to a square and
  resized to ``S × S`` (:func:`load_image_folder`);
- ``"cifar10"`` / ``"mnist"`` through torchvision (when installed) under ``root``;
- ``"crops<SIZE>"`` (``"crops32"``, ``"crops64"``, ``"crops128"``, ...): random RGB crops of scikit-image's
  bundled photographs, built offline, with a held-out part (``train=False``) from image regions no training
  crop touches (:mod:`flowplug.crops`; needs the ``images`` extra).
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASET_NAMES",
    "Batch",
    "ImageData",
    "check_images",
    "dequantize",
    "has_own_held_out",
    "load_dataset",
    "load_image_folder",
    "load_npz",
    "random_hflip",
    "resize_square",
]

DATASET_NAMES = ("digits", "cifar10", "mnist", "crops32", "crops64", "crops128")
"""Names :func:`load_dataset` accepts besides paths (the crops at any size ``"crops<SIZE>"``)."""

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class ImageData:
    """A set of integer images held in memory.

    ``x``: uint8 tensor ``(N, C, H, W)`` with values in ``[0, n_bins)``; ``name``: where it came
    from (recorded in checkpoints and reports).
    """

    x: torch.Tensor
    n_bins: int
    name: str
    origin: dict[str, object] | None = None
    """For a part made by :meth:`split`: ``{"of": name, "part": "train"|"held-out", "holdout": fraction,
    "seed": seed}``, so a checkpoint records which images it was trained on; for a part of a set that has its
    own held-out images (:func:`has_own_held_out`), ``"held_out"`` says how they were kept apart instead of
    ``"holdout"``."""

    def __post_init__(self) -> None:
        check_images(self.x, self.n_bins, self.name)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.x.shape[0]

    def info(self) -> dict[str, object]:
        """Plain description stored in checkpoints: name, ``n_bins``, image shape and size."""
        return {
            "name": self.name,
            "n_bins": self.n_bins,
            "image_shape": list(self.image_shape),
            "num_images": len(self),
            **({"split": dict(self.origin)} if self.origin is not None else {}),
        }

    def first(self, n: int) -> ImageData:
        """The first ``n`` images (named ``name[:n]``), or this set itself when it holds no more than ``n``."""
        if len(self) <= n:
            return self
        return ImageData(self.x[:n], self.n_bins, f"{self.name}[:{n}]", self.origin)

    def split(self, holdout: float, seed: int = 0) -> tuple[ImageData, ImageData]:
        """``(train, held_out)``, ``held_out`` being a seeded random fraction ``holdout``."""
        if not 0.0 < holdout < 1.0:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {holdout}")
        n_held = max(1, round(holdout * len(self)))
        if n_held >= len(self):
            raise ValueError(f"holdout={holdout} of {len(self)} images leaves none to train on")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        held, train = order[:n_held].sort().values, order[n_held:].sort().values
        made = {"of": self.name, "holdout": holdout, "seed": seed}
        return (
            ImageData(self.x[train], self.n_bins, f"{self.name}[train]", {**made, "part": "train"}),
            ImageData(self.x[held], self.n_bins, f"{self.name}[held-out]", {**made, "part": "held-out"}),
        )


@dataclass(frozen=True)
class Batch:
    """Dequantised images ``v`` in ``[0, 1)`` and the ``n_bins`` levels of the integer data they came from.

    ``n_bins`` is needed to turn ``log p(v)`` into bits per dimension of the discrete data.
    """

    v: torch.Tensor
    n_bins: int

    def chunk(self, chunks: int) -> list[Batch]:
        """The batch split into ``chunks`` parts along the batch dimension (for accumulation)."""
        return [Batch(part, self.n_bins) for part in self.v.chunk(chunks)]


def dequantize(
    x: torch.Tensor, n_bins: int, *, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Uniform dequantisation ``v = (x + u) / n_bins``, ``u ~ U[0, 1)`` drawn once per pixel of ``x``.

    ``x`` holds integer levels in ``[0, n_bins)`` (any integer or float dtype); the result is floating
    (``dtype``, default float32) and lies in ``[0, 1)``: where ``x + u`` rounds up to the next level in
    low precision, ``v`` is clamped to the largest value below 1.
    """
    if x.is_floating_point():
        levels = x
    else:
        levels = x.to(dtype or torch.get_default_dtype())
    if dtype is None:
        dtype = levels.dtype if levels.is_floating_point() else torch.get_default_dtype()
    levels = levels.to(dtype)
    lo, hi = float(levels.min()), float(levels.max())
    if lo < 0 or hi > n_bins - 1:
        raise ValueError(f"data values must lie in [0, {n_bins - 1}] for n_bins={n_bins}, got range [{lo}, {hi}]")
    u = torch.rand(levels.shape, generator=generator, dtype=dtype, device=levels.device)
    v = (levels + u) / n_bins
    # In low precision (levels + u) can round up to the next level; keep v strictly below 1.
    below_one = torch.nextafter(torch.ones((), dtype=dtype), torch.zeros((), dtype=dtype))
    return v.clamp_(max=float(below_one))


def check_images(x: object, n_bins: int, name: str) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``name`` unless ``x`` is uint8 ``(N, C, H, W)``
    with values below ``n_bins``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: images must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(f"{name}: images must have dtype uint8, got {x.dtype}")
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(
            f"{name}: images must have shape (N, C, H, W) with N > 0, got {tuple(x.shape)}"
        )
    if not isinstance(n_bins, int) or not 2 <= n_bins <= 256:
        raise ValueError(f"{name}: n_bins must be an integer in [2, 256], got {n_bins!r}")
    top = int(x.max())
    if top >= n_bins:
        raise ValueError(f"{name}: pixel value {top} is not below n_bins={n_bins}")


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of a batch left-right with probability 1/2 (draws from ``generator``)."""
    flip = (
        torch.rand(x.shape[0], generator=generator, device=generator.device if generator else "cpu")
        < 0.5
    )
    flip = flip.to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def _embedded_digits() -> ImageData:
    source = resources.files("flowplug").joinpath("datasets", "digits.npz")
    with resources.as_file(source) as path:
        return load_npz(path, n_bins=17, name="digits")


def load_npz(path: str | Path, *, n_bins: int | None = None, name: str | None = None) -> ImageData:
    """Images from an ``.npz`` holding ``x`` (uint8, NxCxHxW) and optionally ``n_bins``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: not an .npz archive (np.load read a single array)")
    with archive:
        if "x" not in archive:
            raise ValueError(
                f"{path}: an .npz dataset needs an array 'x', found {sorted(archive.files)}"
            )
        x = _npz_array(archive, "x", path)
        stored_bins = _npz_n_bins(archive, path) if "n_bins" in archive else None
    if x.dtype != np.uint8:
        raise TypeError(f"{path}: 'x' must have dtype uint8, got {x.dtype}")
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        raise ValueError(
            f"{path}: 'x' has shape {x.shape}, which looks like N×H×W×C (channels last); store it as N×C×H×W, "
            "e.g. np.savez(path, x=x.transpose(0, 3, 1, 2))"
        )
    return ImageData(torch.from_numpy(x), n_bins or stored_bins or 256, name or str(path))


def _npz_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """``archive[key]``, or ``ValueError`` naming the file and the key (object arrays need pickle: refused)."""
    try:
        return archive[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: key {key!r} cannot be read ({error}); store plain numeric arrays") from None


def _npz_n_bins(archive: np.lib.npyio.NpzFile, path: Path) -> int:
    """The archive's ``n_bins``: a single integer, or ``ValueError`` naming the file and the key."""
    value = _npz_array(archive, "n_bins", path)
    if value.size != 1 or not np.issubdtype(value.dtype, np.integer):
        raise ValueError(
            f"{path}: key 'n_bins' must hold one integer, got an array of shape {value.shape} and dtype {value.dtype}"
        )
    return int(value.reshape(()))


def _check_size(size: object) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"image size must be a positive integer (pixels a side), got {size!r}")


def resize_square(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The pixels of ``image`` (uint8, ``(H, W)`` or ``(H, W, C)``) inside ``box = (left, top, right, bottom)``
    resized to ``size × size`` with pillow's Lanczos filter (antialiased when shrinking); no pixel outside
    the box enters the result."""
    from PIL import Image

    _check_size(size)
    left, top, right, bottom = box
    inside = np.ascontiguousarray(image[top:bottom, left:right])
    return np.asarray(Image.fromarray(inside).resize((size, size), Image.Resampling.LANCZOS))


def _centre_square(height: int, width: int) -> tuple[int, int, int, int]:
    """The largest centred square of a ``height × width`` image as a ``(left, top, right, bottom)`` box."""
    side = min(height, width)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def load_image_folder(path: str | Path, *, channels: int = 3, size: int | None = None) -> ImageData:
    """Every image file directly in ``path`` (by name), 8-bit RGB (``channels=3``) or grey (1).

    Without ``size`` all images must have one size; with ``size=S`` each image's centred square (the
    shorter side's length) is resized to ``S × S``, so images of any sizes and shapes load together.
    """
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size is not None:
        _check_size(size)
    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"image folder {str(path)!r} holds no image files "
            f"({', '.join(sorted(_IMAGE_SUFFIXES))})"
        )
    arrays = []
    for file in files:
        with Image.open(file) as image:
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
        if size is not None:
            array = resize_square(array, _centre_square(*array.shape[:2]), size)
        if arrays and array.shape != arrays[0].shape:
            raise ValueError(
                f"{file}: size {array.shape[:2]} differs from the first image's "
                f"{arrays[0].shape[:2]}"
            )
        arrays.append(array)
    x = np.stack(arrays)
    x = x[:, None] if channels == 1 else x.transpose(0, 3, 1, 2)
    return ImageData(torch.from_numpy(np.ascontiguousarray(x)), 256, str(path))


def _torchvision(name: str, root: str | Path | None, train: bool) -> ImageData:
    try:
        import torchvision
    except ImportError:
        raise ValueError(
            f"dataset {name!r} needs torchvision, which is not installed: pip install \"flowplug[vision]\""
        ) from None
    if root is None:
        raise ValueError(
            f"dataset {name!r} needs a root folder holding torchvision's files (data_root=...)"
        )
    cls = {"cifar10": torchvision.datasets.CIFAR10, "mnist": torchvision.datasets.MNIST}[name]
    dataset = cls(str(root), train=train, download=False)
    x = torch.as_tensor(np.asarray(dataset.data))
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return ImageData(x.contiguous(), 256, name)


def load_dataset(
    name_or_path: str | Path = "digits",
    *,
    root: str | Path | None = None,
    train: bool = True,
    channels: int = 3,
    size: int | None = None,
) -> ImageData:
    """Load a dataset by name (:data:`DATASET_NAMES`) or path (``.npz`` file or image folder).

    ``root`` is torchvision's data folder; ``train`` picks torchvision's training or test set, or the
    training or held-out crops of ``"crops<SIZE>"``; ``channels`` and ``size`` (centred square resized to
    ``size × size``) apply to image folders. Unknown names and missing paths raise ``FileNotFoundError``,
    unreadable or ill-shaped data and a ``size`` for another source ``ValueError``/``TypeError``.
    """
    path = Path(name_or_path)
    if size is not None and not path.is_dir():
        raise ValueError(f"size={size!r} resizes the images of a folder; {str(name_or_path)!r} is not a folder "
                         "(the crops take their size from the name, e.g. crops64)")
    if has_own_held_out(str(name_or_path)):
        from flowplug.crops import crops_size, sample_crops

        return sample_crops(crops_size(str(name_or_path)), part="train" if train else "held-out")
    if str(name_or_path) == "digits":
        return _embedded_digits()
    if str(name_or_path) in ("cifar10", "mnist"):
        return _torchvision(str(name_or_path), root, train)
    if path.is_dir():
        return load_image_folder(path, channels=channels, size=size)
    if path.suffix == ".npz":
        return load_npz(path)
    if path.exists():
        raise ValueError(f"{str(path)!r} is neither an .npz file nor a folder of images")
    raise FileNotFoundError(
        f"unknown dataset {str(name_or_path)!r}: not one of {', '.join(DATASET_NAMES)} "
        "(crops at any size: crops<SIZE>) and no such file or folder"
    )


def has_own_held_out(name: str) -> bool:
    """Whether ``load_dataset(name, train=False)`` gives held-out images kept apart from the training ones
    (the crops, :mod:`flowplug.crops`), so that a held-out split of the training images is not needed."""
    from flowplug.crops import crops_size

    return crops_size(name) is not None
