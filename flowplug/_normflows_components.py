"""normflows' layers, as registry entries, so that one spec can mix them with flowplug's components.

Layers whose constructor takes only plain values are listed as they are. Layers that take a network
(``AffineCouplingBlock``) get a small factory that builds normflows' own ``ConvNet2d``/``MLP`` from widths.
This module only lists them (:data:`FLOWS`, :data:`DISTRIBUTIONS`); :mod:`flowplug.registry` registers them on
first use, so the dependency runs one way.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator
from typing import Any

import normflows as nf
import torch
from torch import nn

__all__ = ["DISTRIBUTIONS", "FLOWS", "SOURCE", "SoftClampedScales", "torch_lu_deprecation_silenced"]

SOURCE = "normflows"
"""The ``source`` the registry records for these entries."""


@contextlib.contextmanager
def torch_lu_deprecation_silenced() -> Iterator[None]:
    """Hide PyTorch's ``torch.lu is deprecated`` warning, which normflows' ``Invertible1x1Conv`` (in every
    ``GlowBlock``) triggers when built: the user cannot act on it. Only that warning, only inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.lu is deprecated", category=UserWarning,
                                module=r"torch\._tensor")
        yield


class SoftClampedScales(nn.Module):
    """A coupling net whose raw scale outputs (the odd channels, which normflows' ``AffineCoupling`` reads as
    scales) pass through ``clamp * tanh(raw / clamp)``: with the ``"exp"`` scale map each coupling then scales by
    a factor within ``exp(±clamp)``. Smooth and the identity near 0, so a zero-initialised net still starts the
    coupling as the identity; the coupling's log-determinant is exact for the clamped scales it applies."""

    def __init__(self, net: nn.Module, clamp: float) -> None:
        super().__init__()
        if not (math.isfinite(clamp) and clamp > 0):
            raise ValueError(f"scale_clamp must be positive and finite, got {clamp}")
        self.net = net
        self.clamp = float(clamp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        shift, raw_scale = out[:, 0::2], out[:, 1::2]
        scale = self.clamp * torch.tanh(raw_scale / self.clamp)
        return torch.stack((shift, scale), dim=2).flatten(1, 2)  # interleaved again: shift, scale, shift, ...


def affine_coupling_block(
    channels: int,
    hidden_channels: int,
    *,
    kernel_size: int = 3,
    scale: bool = True,
    scale_map: str = "exp",
    split_mode: str = "channel",
    leaky: float = 0.0,
    scale_clamp: float | None = None,
) -> nf.flows.AffineCouplingBlock:
    """normflows ``AffineCouplingBlock`` on images with a ``ConvNet2d`` (RealNVP's coupling layer).

    The net maps the conditioning half of the channels to a shift (and scale) for the other half through two
    hidden layers of ``hidden_channels``; its last layer starts at zero so the block starts as the identity.
    ``scale_clamp`` bounds the raw scales softly (:class:`SoftClampedScales`).
    """
    if split_mode not in ("channel", "channel_inv", "checkerboard", "checkerboard_inv"):
        raise ValueError(f"unknown split_mode {split_mode!r}")
    if scale_clamp is not None and not scale:
        raise ValueError("scale_clamp bounds the scales of a coupling with scale=True")
    if split_mode.startswith("checkerboard"):
        in_channels = out_channels = channels
    else:
        in_channels, out_channels = (channels + 1) // 2, channels // 2
        if split_mode == "channel_inv":
            in_channels, out_channels = out_channels, in_channels
    num_params = 2 if scale else 1
    net: nn.Module = nf.nets.ConvNet2d(
        [in_channels, hidden_channels, hidden_channels, num_params * out_channels],
        [kernel_size, 1, kernel_size],
        leaky=leaky,
        init_zeros=True,
    )
    if scale_clamp is not None:
        net = SoftClampedScales(net, scale_clamp)
    return nf.flows.AffineCouplingBlock(net, scale=scale, scale_map=scale_map, split_mode=split_mode)


def _quiet(layer: type) -> Any:
    """``layer``'s constructor, built without the ``torch.lu`` deprecation warning (same signature and docs)."""

    @functools.wraps(layer)
    def build(*args: Any, **kwargs: Any) -> Any:
        with torch_lu_deprecation_silenced():
            return layer(*args, **kwargs)

    return build


FLOWS = {
    "glow_block": _quiet(nf.flows.GlowBlock),
    "act_norm": nf.flows.ActNorm,
    "affine_const": nf.flows.AffineConstFlow,
    "invertible_1x1_conv": _quiet(nf.flows.Invertible1x1Conv),
    "invertible_affine": nf.flows.InvertibleAffine,
    "permute": nf.flows.Permute,
    "lu_linear_permute": nf.flows.LULinearPermute,
    "squeeze": nf.flows.Squeeze,
    "split": nf.flows.Split,
    "merge": nf.flows.Merge,
    "planar": nf.flows.Planar,
    "radial": nf.flows.Radial,
    "masked_affine_autoregressive": nf.flows.MaskedAffineAutoregressive,
    "coupled_rational_quadratic_spline": nf.flows.CoupledRationalQuadraticSpline,
    "autoregressive_rational_quadratic_spline": nf.flows.AutoregressiveRationalQuadraticSpline,
    "logit": nf.transforms.Logit,
    "shift": nf.transforms.Shift,
    "affine_coupling_block": affine_coupling_block,
}
"""Flow layers by registry name."""
DISTRIBUTIONS = {"diag_gaussian": nf.distributions.DiagGaussian}
"""Base distributions by registry name."""
