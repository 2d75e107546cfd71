"""Built-in ODE nets ``f(t, z, context) → dz/dt`` for :class:`~flowplug.cnf.CNF`: convolutional and
MLP.

Any ``nn.Module`` called as ``net(t, z, context=None)`` that returns a tensor of ``z``'s shape can
drive a CNF; these two cover images and vectors. Common to both:

- **time**: ``t`` is a scalar (0-d tensor or number, as during an ODE solve) or one time per sample,
  shape ``(B,)`` (as flow matching evaluates the net). It enters every layer as one extra input
  feature/channel, constant over space (FFJORD's *concat* conditioning): cheap, and lets each
  layer's response change with time.
- **context** (conditioning data, e.g. the coarse image of an MRCNF level) is concatenated to ``z``
  at the input; its batch (and spatial) size must match ``z``'s. ``needs_context`` says whether the
  net takes one.
- **smooth activations** only (the divergence and RNODE's Jacobian term differentiate the net twice,
  and the ODE's solution is well behaved only for smooth dynamics).
- the **last layer starts at zero**, so ``f ≡ 0`` and a new CNF is exactly the identity.

Samples are processed independently (no batch statistics), which the divergence estimators rely on.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod

import torch
from torch import nn

from flowplug._checks import check_positive_integers
from flowplug.registry import register

__all__ = ["ACTIVATIONS", "ConvODENet", "MLPODENet"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}
"""Activation names the built-in nets accept (all smooth)."""


def _activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown or non-smooth activation {name!r}; ODE nets take one of {sorted(ACTIVATIONS)}"
        ) from None


def _time_per_sample(t: torch.Tensor | float, z: torch.Tensor) -> torch.Tensor:
    """``t`` as a ``(B,)`` tensor in ``z``'s dtype and device."""
    t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
    if t.ndim == 0:
        return t.expand(z.shape[0])
    if t.shape != (z.shape[0],):
        raise ValueError(
            f"time t must be a scalar or have shape (B,) = ({z.shape[0]},), "
            f"got shape {tuple(t.shape)}"
        )
    return t


class _ODENetInputs(nn.Module):
    """Shape checks every built-in ODE net shares: ``z`` is ``(B, size)`` or, for image nets,
    ``(B, size, H, W)``; ``context``, when the net was built with ``context_size > 0``, is ``z``'s batch
    and spatial size with ``context_size`` channels/features."""

    def __init__(self, size: int, context_size: int, *, spatial: bool) -> None:
        super().__init__()
        self.size = size
        self.context_size = context_size
        self.spatial = spatial

    @property
    def needs_context(self) -> bool:
        """Whether the net was built with conditioning inputs (``context`` is then required)."""
        return self.context_size > 0

    def _check(self, z: torch.Tensor, context: torch.Tensor | None) -> None:
        name = type(self).__name__
        z_shape = f"(B, {self.size}, H, W)" if self.spatial else f"(B, {self.size})"
        if z.ndim != (4 if self.spatial else 2) or z.shape[1] != self.size:
            raise ValueError(f"{name} expects z of shape {z_shape}, got {tuple(z.shape)}")
        if not self.needs_context:
            if context is not None:
                raise ValueError(
                    f"{name} was built without context inputs but got context of shape "
                    f"{tuple(context.shape)}; build it with a context size to condition on it"
                )
            return
        expected = (z.shape[0], self.context_size, *z.shape[2:])
        if context is None:
            raise ValueError(
                f"{name} needs context of shape {expected} (for z of shape {tuple(z.shape)})"
            )
        if tuple(context.shape) != expected:
            raise ValueError(
                f"{name}: context has shape {tuple(context.shape)}, expected {expected} "
                f"for z of shape {tuple(z.shape)}"
            )


class _ODENet(_ODENetInputs, ABC):
    """The layer stack both plain nets share; subclasses say how the time enters."""

    def __init__(
        self, size: int, context_size: int, layers: list[nn.Module], activation: str, *, spatial: bool
    ) -> None:
        super().__init__(size, context_size, spatial=spatial)
        self.layers = nn.ModuleList(layers)
        self.activation = _activation(activation)
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    @abstractmethod
    def _time_input(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per-sample times ``(B,)`` as one extra input feature/channel shaped like ``z``'s."""

    def forward(
        self, t: torch.Tensor | float, z: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``dz/dt`` at time ``t`` (scalar or ``(B,)``), same shape as ``z``."""
        self._check(z, context)
        time = self._time_input(_time_per_sample(t, z), z)
        h = z if context is None else torch.cat([z, context], dim=1)
        for i, layer in enumerate(self.layers):
            h = layer(self._layer_input(torch.cat([h, time], dim=1)))
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h.contiguous()

    def _layer_input(self, h: torch.Tensor) -> torch.Tensor:
        """A layer's input as the layer wants it laid out in memory (as it is, by default)."""
        return h


def _widths(size: int, context_size: int, hidden: int, num_layers: int) -> list[tuple[int, int]]:
    """(inputs, outputs) of each layer; every layer gets one extra input for the time."""
    widths = [size + context_size] + [hidden] * (num_layers - 1) + [size]
    return [(w_in + 1, w_out) for w_in, w_out in itertools.pairwise(widths)]


def _check_context_size(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


class ConvODENet(_ODENet):
    """Convolutional ODE net for images ``(B, channels, H, W)``, optionally conditioned on ``(B, Cc,
    H, W)``.

    ``num_layers`` convolutions (``kernel_size``, same padding; ``hidden_channels`` wide) with
    ``activation`` between them; each takes the time as one extra constant channel; ``context`` is
    concatenated to ``z`` at the input. ``channels_last=True`` runs the convolutions in the
    channels-last memory format (measured 0.81–0.88× the time of a training step of the net on
    CPU, see CHANGELOG); outputs are returned in the standard layout either way.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int = 64,
        num_layers: int = 3,
        context_channels: int = 0,
        activation: str = "softplus",
        kernel_size: int = 3,
        channels_last: bool = False,
    ) -> None:
        check_positive_integers(channels=channels, hidden_channels=hidden_channels, num_layers=num_layers,
                     kernel_size=kernel_size)
        _check_context_size("context_channels", context_channels)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        layers = [
            nn.Conv2d(w_in, w_out, kernel_size, padding=kernel_size // 2)
            for w_in, w_out in _widths(channels, context_channels, hidden_channels, num_layers)
        ]
        super().__init__(channels, context_channels, layers, activation, spatial=True)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def _layer_input(self, h: torch.Tensor) -> torch.Tensor:
        return h.contiguous(memory_format=torch.channels_last) if self.channels_last else h

    def _time_input(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return t.view(-1, 1, 1, 1).expand(-1, 1, *z.shape[2:])


class MLPODENet(_ODENet):
    """MLP ODE net for vectors ``(B, dim)`` (2-D toy densities, tabular data), optionally
    conditioned on ``(B, context_dim)``.

    ``num_layers`` linear layers (``hidden_dim`` wide) with ``activation`` between them; each takes
    the time as one extra input; ``context`` is concatenated to ``z`` at the input.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int = 64,
        num_layers: int = 3,
        context_dim: int = 0,
        activation: str = "softplus",
    ) -> None:
        check_positive_integers(dim=dim, hidden_dim=hidden_dim, num_layers=num_layers)
        _check_context_size("context_dim", context_dim)
        layers = [
            nn.Linear(w_in, w_out)
            for w_in, w_out in _widths(dim, context_dim, hidden_dim, num_layers)
        ]
        super().__init__(dim, context_dim, layers, activation, spatial=False)

    def _time_input(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(1)


register("conv_odenet", ConvODENet, kind="net")
register("mlp_odenet", MLPODENet, kind="net")
