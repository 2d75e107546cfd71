"""Where and in which precision a run computes: device selection and the precision policy."""

from __future__ import annotations

import contextlib

import torch

from flowplug.models.base import FlowModel

__all__ = ["autocast", "resolve_device", "resolve_precision"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; an unavailable device raises ``ValueError``."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available")
    return device


def resolve_precision(precision: str, model: FlowModel, device: torch.device) -> str:
    """``"auto"`` becomes bf16 for discrete flows on CUDA and float32 otherwise (ODE solves want float32);
    bf16 needs CUDA."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and not model.is_continuous else "float32"
    if precision == "bf16" and device.type != "cuda":
        raise ValueError(f"precision='bf16' needs a CUDA device, got {device}")
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` (bf16), or a context that changes nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
