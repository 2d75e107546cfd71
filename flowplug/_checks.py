"""Input validation shared by flowplug's components: errors that name the offending shape, dtype or value."""

from __future__ import annotations

import torch

__all__ = [
    "check_finite",
    "check_floating",
    "check_image",
    "check_num_samples",
    "check_positive_integers",
    "check_same_dtype_and_device",
]


def check_floating(x: torch.Tensor, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` is a floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must have a floating-point dtype (float32, float64, ...), got {x.dtype}; "
            "convert integer images with x.float() (and dequantise them first for likelihoods)"
        )


def check_image(x: torch.Tensor, name: str, *, even: bool = False, divisor: int = 1) -> None:
    """Raise unless ``x`` is a floating ``(B, C, H, W)`` tensor whose H and W are divisible as asked.

    ``even=True`` is ``divisor=2``. Errors are ``TypeError`` for the dtype and ``ValueError`` for the shape.
    """
    check_floating(x, name)
    if x.ndim != 4:
        raise ValueError(f"{name} must be a 4-d image batch (B, C, H, W), got shape {tuple(x.shape)}")
    divisor = max(divisor, 2 if even else 1)
    height, width = x.shape[-2:]
    if divisor > 1 and (height % divisor or width % divisor):
        what = "even" if divisor == 2 else f"divisible by {divisor}"
        raise ValueError(
            f"{name} height and width must be {what}, got H={height}, W={width} (shape {tuple(x.shape)})"
        )


def check_same_dtype_and_device(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    """Raise ``TypeError`` naming both unless ``a`` and ``b`` share dtype and device."""
    if a.dtype != b.dtype or a.device != b.device:
        raise TypeError(
            f"{a_name} is {a.dtype} on {a.device} but {b_name} is {b.dtype} on {b.device}; they must share "
            "dtype and device: convert one to the other"
        )


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite values, saying how many and where the first is."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        first = tuple(bad[0].tolist())
        raise ValueError(
            f"{name} holds {bad.shape[0]} non-finite value(s) (NaN or inf); first at index {first}: "
            f"{x[first].item()}"
        )


def check_num_samples(num_samples: object) -> None:
    """Raise ``ValueError`` unless ``num_samples`` is a positive integer (``bool`` is refused)."""
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")


def check_positive_integers(**sizes: object) -> None:
    """Raise ``ValueError`` naming the first of ``sizes`` that is not a positive integer (``bool`` is refused)."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
