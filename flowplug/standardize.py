"""Per-channel standardisation with data-initialised statistics, as a normflows flow with its exact log-det.

MRCNF's levels see very differently scaled tensors (a logit image, and detail coefficients whose spread shrinks
with resolution); a fixed affine map per channel that brings each to zero mean and unit variance makes one set
of CNF settings (tolerances, time horizon, flow-matching noise) fit every level.
"""

from __future__ import annotations

import torch
from normflows.flows import Flow

from flowplug._checks import check_floating
from flowplug.registry import register

__all__ = ["Standardize"]


@register("standardize")
class Standardize(Flow):
    """``inverse`` (density): ``z = (x − mean) / std`` per channel; ``forward`` (sampling): ``x = mean + std·z``.

    ``mean`` and ``log_std`` are buffers of shape ``(C,)`` saved in checkpoints. They start as the identity and
    are set from data by :meth:`initialize` (e.g. a large training batch), or — as normflows' ActNorm does —
    from the first batch that passes through ``inverse`` in training mode if nothing initialised them.
    The statistics are then fixed: they are not trained. Tensors are ``(B, C, ...)`` (images or vectors).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        if not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive integer, got {num_channels!r}")
        self.num_channels = num_channels
        self.eps = float(eps)
        self.register_buffer("mean", torch.zeros(num_channels))
        self.register_buffer("log_std", torch.zeros(num_channels))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def _check(self, x: torch.Tensor) -> None:
        check_floating(x, "Standardize input")
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"Standardize({self.num_channels}) expects (B, {self.num_channels}, ...), got {tuple(x.shape)}"
            )

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set the statistics to the per-channel mean and standard deviation of ``x`` (``(N, C, ...)``)."""
        self._check(x)
        if x.shape[0] * x[0, 0].numel() < 2:
            raise ValueError(f"need at least two values per channel to estimate a spread, got shape {tuple(x.shape)}")
        per_channel = x.detach().transpose(0, 1).reshape(self.num_channels, -1)
        std = per_channel.std(dim=1)
        self.mean.copy_(per_channel.mean(dim=1))
        self.log_std.copy_(torch.log(std + self.eps))
        self.initialized.fill_(True)

    def _broadcast(self, stat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return stat.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))

    def _log_det(self, x: torch.Tensor) -> torch.Tensor:
        """``log|det|`` of the sampling map: ``(elements per channel) · Σ log_std``."""
        per_channel = x[0, 0].numel()
        total = self.log_std.to(x.dtype).sum() * per_channel
        return total.expand(x.shape[0]).clone()

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        if self.training and not bool(self.initialized):
            self.initialize(x)
        z = (x - self._broadcast(self.mean, x)) * torch.exp(-self._broadcast(self.log_std, x))
        return z, -self._log_det(x)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(z)
        x = z * torch.exp(self._broadcast(self.log_std, z)) + self._broadcast(self.mean, z)
        return x, self._log_det(z)

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, initialized={bool(self.initialized)}"

