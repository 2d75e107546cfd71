"""Conditional flow matching for flowplug's CNFs: training the velocity field by regression, with no ODE solve.

Time follows the CNF's convention (data at ``t = 0``, noise at ``t = T``). With ``s = t / T`` the straight
(optimal-transport) path between a data point ``x`` and a Gaussian draw ``ε`` is

    z_s = (1 − s) · x + (σ + (1 − σ) · s) · ε,

so ``z_0 = x + σε`` is the data blurred by ``σ`` and ``z_1 = ε``. Its velocity in ``t`` is
``u = ((1 − σ) ε − x) / T``; the loss is ``E_{s, x, ε} ‖net(t, z_s, context) − u‖²`` averaged over dimensions.
Its minimiser is the velocity field whose flow carries the data distribution to N(0, I) at ``t = T``; the trained
net is evaluated exactly like any CNF, so likelihoods and samples use the ordinary solver path.
"""

from __future__ import annotations

import torch

from flowplug._checks import check_floating
from flowplug.cnf.flow import CNF

__all__ = ["flow_matching_loss", "straight_path"]


def straight_path(
    x: torch.Tensor, noise: torch.Tensor, s: torch.Tensor, sigma: float, T: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point ``z_s`` of the straight path and its velocity ``dz/dt``; ``s`` has shape ``(B,)`` in ``[0, 1]``."""
    s = s.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    z = (1 - s) * x + (sigma + (1 - sigma) * s) * noise
    velocity = ((1 - sigma) * noise - x) / T
    return z, velocity


def flow_matching_loss(
    cnf: CNF,
    x: torch.Tensor,
    context: torch.Tensor | None = None,
    *,
    sigma: float = 1e-4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample flow-matching losses ``(B,)`` of ``cnf``'s net on data ``x`` (one time and noise per sample).

    ``context`` is passed to the net as in the CNF's own solves. ``sigma`` (``0 ≤ σ < 1``) is the path's blur
    at the data end.
    """
    if not isinstance(cnf, CNF):
        raise TypeError(f"flow matching trains a flowplug CNF, got {type(cnf).__name__}")
    check_floating(x, "flow-matching data")
    if not 0.0 <= sigma < 1.0:
        raise ValueError(f"sigma must lie in [0, 1), got {sigma}")
    cnf._check_inputs(x, context)
    s = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    z, target = straight_path(x, noise, s, sigma, cnf.T)
    predicted = cnf.net(s * cnf.T, z, context=context)
    return (predicted - target).pow(2).flatten(1).mean(1)
