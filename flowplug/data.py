"""Image datasets for training and evaluation: integer images in memory with their grey levels.

Every source becomes an :class:`ImageData`: ``x`` of dtype uint8 and shape ``(N, C, H, W)``
holding levels ``0 .. n_bins-1``. :func:`dequantize` turns them into the continuous input
``v`` in ``[0, 1)`` that every model sees (``docs/design.md`` §3), once per pixel; a :class:`Batch`
carries ``v`` together with its ``n_bins``.

Sources (:func:`load_dataset`):

- ``"digits"`` (the default): embedded in the package, the UCI handwritten digits, 1,797 images
  of 1x8x8 with 17 levels (``n_bins=17``), CC BY 4.0 (see ``flowplug/datasets/README.txt``);
- a ``.npz`` file with ``x`` (uint8, NxCxHxW), optionally ``n_bins`` (default 256) and class labels ``y``
  (N integers ``≥ 0``); an ``x`` that looks channels-last (NxHxWxC: last axis 1 or 3, axis 1 not) is refused
  with the transpose to apply;
- a folder of image files (PNG, JPEG, ... read with pillow), all of one size, as 8-bit RGB or,
  with ``channels=1``, grey; with ``size=S`` images of any sizes, each centre-cropped to a square and
  resized to ``S × S`` (:func:`load_image_folder`); a folder holding one sub-folder of images per class
  (and no images of its own) is labelled by sub-folder, in the sorted order of their names;
- ``"cifar10"`` / ``"mnist"`` through torchvision (when installed) under ``root``, with their labels;
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

from flowplug.crops import crops_size, sample_crops
from flowplug.images import ImageData, check_images, check_size, resize_square

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
class Batch:
    """Dequantised images ``v`` in ``[0, 1)`` and the ``n_bins`` levels of the integer data they came from.

    ``n_bins`` is needed to turn ``log p(v)`` into bits per dimension of the discrete data; ``y`` holds the
    images' class labels ``(B,)`` (int64, on ``v``'s device) when the data have them, else ``None``. Only a
    conditional model uses them (:attr:`flowplug.FlowModel.is_conditional`).
    """

    v: torch.Tensor
    n_bins: int
    y: torch.Tensor | None = None

    def chunk(self, chunks: int) -> list[Batch]:
        """The batch split into ``chunks`` parts along the batch dimension (for accumulation)."""
        labels = [None] * len(self.v.chunk(chunks)) if self.y is None else self.y.chunk(chunks)
        return [Batch(part, self.n_bins, y) for part, y in zip(self.v.chunk(chunks), labels, strict=True)]


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
    """Images from an ``.npz`` holding ``x`` (uint8, NxCxHxW) and optionally ``n_bins`` and labels ``y``."""
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
        labels = _npz_labels(archive, path, len(x)) if "y" in archive else None
    if x.dtype != np.uint8:
        raise TypeError(f"{path}: 'x' must have dtype uint8, got {x.dtype}")
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        raise ValueError(
            f"{path}: 'x' has shape {x.shape}, which looks like N×H×W×C (channels last); store it as N×C×H×W, "
            "e.g. np.savez(path, x=x.transpose(0, 3, 1, 2))"
        )
    chosen = next((b for b in (n_bins, stored_bins) if b is not None), 256)  # a given 0 is checked, not skipped
    return ImageData(torch.from_numpy(x), chosen, name or str(path), y=labels)


def _npz_labels(archive: np.lib.npyio.NpzFile, path: Path, num_images: int) -> torch.Tensor:
    """The archive's ``y`` as int64 labels, or ``ValueError`` naming the file and what is wrong with them."""
    y = _npz_array(archive, "y", path)
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (num_images,):
        raise ValueError(f"{path}: 'y' must hold one integer class label per image, shape ({num_images},); got "
                         f"an array of shape {y.shape} and dtype {y.dtype}")
    if num_images and int(y.min()) < 0:
        raise ValueError(f"{path}: 'y' must hold class indices >= 0, found {int(y.min())}")
    return torch.from_numpy(y.astype(np.int64))


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


def _centre_square(height: int, width: int) -> tuple[int, int, int, int]:
    """The largest centred square of a ``height × width`` image as a ``(left, top, right, bottom)`` box."""
    side = min(height, width)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)


def load_image_folder(path: str | Path, *, channels: int = 3, size: int | None = None) -> ImageData:
    """Every image file directly in ``path`` (by name), 8-bit RGB (``channels=3``) or grey (1).

    A folder with no image files of its own but sub-folders holding images is a labelled set: each sub-folder
    is a class, numbered in the sorted order of the sub-folders' names (label 0 the first), and its images
    are read by name. Without ``size`` all images must have one size; with ``size=S`` each image's centred
    square (the shorter side's length) is resized to ``S × S``, so images of any sizes and shapes load together.
    """
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size is not None:
        check_size(size)
    files, labels = _image_files(Path(path)), None
    if not files:
        classes = [d for d in sorted(Path(path).iterdir()) if d.is_dir() and _image_files(d)]
        per_class = [_image_files(d) for d in classes]
        files = [file for group in per_class for file in group]
        labels = torch.tensor([k for k, group in enumerate(per_class) for _ in group], dtype=torch.int64)
    if not files:
        raise ValueError(
            f"image folder {str(path)!r} holds no image files "
            f"({', '.join(sorted(_IMAGE_SUFFIXES))}), nor sub-folders of them (one per class)"
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
    return ImageData(torch.from_numpy(np.ascontiguousarray(x)), 256, str(path), y=labels)


def _torchvision(name: str, root: str | Path | None, train: bool) -> ImageData:
    # Any failure to import torchvision becomes one ImportError naming torch's version and the fix. A torchvision
    # built for another torch fails inside its own import (e.g. RuntimeError: operator torchvision::nms does not
    # exist, or an undefined symbol), so every exception is caught, not only ImportError.
    try:
        import torchvision
    except Exception as error:
        version = torch.__version__
        try:  # torch 2.N ↔ torchvision 0.(N+15), e.g. 2.13 ↔ 0.28
            major, minor = (int(part) for part in version.split(".")[:2])
            matching = f"0.{minor + 15}" if major == 2 else None
        except ValueError:
            matching = None
        index = " --index-url https://download.pytorch.org/whl/cpu" if "+cpu" in version else ""
        install = (f'pip install "torchvision=={matching}.*"{index}' if matching
                   else "install the torchvision release made for it")
        if isinstance(error, ImportError) and error.name == "torchvision":
            problem = "which is not installed"
            fix = (f'pip install -e ".[vision]" in a clone of flowplug (a torchvision for torch 2.13); for torch '
                   f"{version}: {install}")
        else:
            first_line = (str(error).strip().splitlines() or [""])[0][:200]
            problem = (f"which is installed but does not import beside torch {version} ({type(error).__name__}: "
                       f"{first_line}): it was built for another torch version")
            fix = f"install the torchvision release that matches torch {version}: {install}"
        raise ImportError(f"dataset {name!r} needs torchvision, {problem}. Fix: {fix}") from error
    if root is None:
        raise ValueError(
            f"dataset {name!r} needs a root folder holding torchvision's files (data_root=...)"
        )
    cls = {"cifar10": torchvision.datasets.CIFAR10, "mnist": torchvision.datasets.MNIST}[name]
    dataset = cls(str(root), train=train, download=False)
    x = torch.as_tensor(np.asarray(dataset.data))
    x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)
    return ImageData(x.contiguous(), 256, name, y=labels)


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
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"a data set is a name or a path, got {type(name_or_path).__name__} {name_or_path!r}")
    path = Path(name_or_path)
    if size is not None and not path.is_dir():
        raise ValueError(f"size={size!r} resizes the images of a folder; {str(name_or_path)!r} is not a folder "
                         "(the crops take their size from the name, e.g. crops64)")
    if has_own_held_out(str(name_or_path)):
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
    return crops_size(name) is not None
