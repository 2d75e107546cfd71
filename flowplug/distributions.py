"""Base distributions of flowplug's models."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from flowplug.registry import register

__all__ = ["StandardNormal"]


@register("standard_normal", kind="distribution")
class StandardNormal(nn.Module):
    """``N(0, I)`` over tensors of ``shape`` (per sample), with temperature for sampling.

    It holds no parameters; a zero-size buffer tracks the module's dtype and device so that ``model.double()``
    or ``model.cuda()`` move the samples too.
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @property
    def num_dims(self) -> int:
        return math.prod(self.shape)

    def log_prob(self, z: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """``log N(z; 0, t² I)`` per sample (``t = temperature``, default 1)."""
        if tuple(z.shape[1:]) != self.shape:
            raise ValueError(f"expected latents of shape (B, {', '.join(map(str, self.shape))}), got {tuple(z.shape)}")
        t = 1.0 if temperature is None else float(temperature)
        squares = z.flatten(1).pow(2).sum(1)
        return -0.5 * squares / t**2 - self.num_dims * (math.log(t) + 0.5 * math.log(2 * math.pi))

    def sample(self, num_samples: int, temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, log q(z))`` with ``z ~ N(0, t² I)``; ``temperature=0`` gives the mode (zeros, ``log q = +inf``)."""
        t = 1.0 if temperature is None else float(temperature)
        if t < 0:
            raise ValueError(f"temperature must be non-negative, got {temperature}")
        eps = torch.randn(num_samples, *self.shape, dtype=self._anchor.dtype, device=self._anchor.device)
        if t == 0:
            return torch.zeros_like(eps), torch.full((num_samples,), math.inf, dtype=eps.dtype, device=eps.device)
        z = t * eps
        return z, self.log_prob(z, t)
