"""Conditional flow matching for flowplug's CNFs: training the velocity field by regression, with no ODE solve.

Time follows the CNF's convention (data at ``t = 0``, noise at ``t = T``). With ``s = t / T`` the straight
(optimal-transport) path between a data point ``x`` and a Gaussian draw ``ε`` is

    z_s = (1 − s) · x + (σ + (1 − σ) · s) · ε,

so ``z_0 = x + σε`` is the data blurred by ``σ`` and ``z_1 = ε``. Its velocity in ``t`` is
``u = ((1 − σ) ε − x) / T``; the loss is ``E_{s, x, ε} ‖net(t, z_s, context) − u‖²`` averaged over dimensions.
Its minimiser is the velocity field whose flow carries the data distribution to N(0, I) at ``t = T``; the trained
net is evaluated exactly like any CNF, so likelihoods and samples use the ordinary solver path.
:meth:`flowplug.CNF.flow_matching_loss` computes the loss of one CNF; a model sums its CNFs' losses
(:meth:`flowplug.FlowModel.level_flow_matching_losses`).
"""

from __future__ import annotations

import torch

__all__ = ["straight_path"]


def straight_path(
    x: torch.Tensor, noise: torch.Tensor, s: torch.Tensor, sigma: float, T: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point ``z_s`` of the straight path and its velocity ``dz/dt``; ``s`` has shape ``(B,)`` in ``[0, 1]``."""
    s = s.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    z = (1 - s) * x + (sigma + (1 - sigma) * s) * noise
    velocity = ((1 - sigma) * noise - x) / T
    return z, velocity
