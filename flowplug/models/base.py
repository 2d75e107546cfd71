"""The interface every flowplug model offers, so that the trainer, the CLI and the benchmarks treat all alike.

A model takes dequantised images ``v`` in ``[0, 1)`` of shape ``(B, *image_shape)`` (DESIGN.md §3) and exposes
normflows' model methods. ``config`` is a registry spec (``{"type": name, **kwargs}``) from which
:func:`flowplug.build` rebuilds an identical, untrained model; checkpoints store it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from flowplug._checks import check_floating
from flowplug.metrics import bits_per_dim

__all__ = ["FlowModel"]


class FlowModel(nn.Module, ABC):
    """Base class of flowplug's models (MRCNF, single-resolution CNF, Glow, RealNVP)."""

    image_shape: tuple[int, int, int]
    config: dict[str, Any]

    @abstractmethod
    def log_prob(self, v: torch.Tensor) -> torch.Tensor:
        """``log p(v)`` per sample, shape ``(B,)``, including every internal transform's log-determinant."""

    @abstractmethod
    def sample(
        self, num_samples: int = 1, temperature: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``num_samples`` images ``v`` and their ``log q(v)``; ``temperature`` scales the base's std."""

    def level_log_probs(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Per-level terms of ``log p(v)`` (one for single-scale models), summing to :meth:`log_prob`."""
        return [self.log_prob(v)]

    def initialize_from_data(self, v: torch.Tensor) -> None:
        """Data-dependent initialisation from a batch of training images; models without any do nothing."""

    def flow_matching_loss(self, v: torch.Tensor, sigma: float = 1e-4) -> torch.Tensor:
        """The flow-matching objective, for models whose flows are CNFs (see :class:`flowplug.MRCNF`)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no flow-matching objective; train it by likelihood"
        )

    def forward_kld(self, v: torch.Tensor) -> torch.Tensor:
        """Forward KL divergence up to a constant: the mean negative log-likelihood of the batch."""
        return -self.log_prob(v).mean()

    @property
    def num_dims(self) -> int:
        return math.prod(self.image_shape)

    def bits_per_dim(self, v: torch.Tensor, n_bins: int = 256) -> torch.Tensor:
        """Bits per dimension per sample (DESIGN.md §3)."""
        return bits_per_dim(self.log_prob(v), self.num_dims, n_bins)

    def check_input(self, v: torch.Tensor) -> None:
        """Raise a ``ValueError``/``TypeError`` naming the problem unless ``v`` is a batch of this model's images."""
        check_floating(v, "v")
        if v.ndim != 4 or tuple(v.shape[1:]) != tuple(self.image_shape):
            raise ValueError(
                f"{type(self).__name__} expects images of shape (B, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(v.shape)}"
            )
