"""How flow matching draws its training pairs: the coupling of data and noise, and the times.

**Coupling.** Independent coupling pairs each data row ``x_i`` with a fresh Gaussian draw ``ε_i``.
Minibatch optimal transport (Tong et al. 2023; Pooladian et al. 2023) re-pairs the rows of one batch by
the permutation ``π`` that minimises ``Σ_i ‖x_i − ε_{π(i)}‖²``; the assignment problem is solved exactly
by ``scipy.optimize.linear_sum_assignment`` (a kept library, Jonker–Volgenant). The noise rows are
only reordered, so the batch still holds exactly the same Gaussian draws: the marginal of the noise is
untouched, and the paths cross less, so the regression target has less variance and the learned field is
straighter (fewer solver steps).

For a **conditional** level (details ``y`` given the coarse image ``c``) the pairing ignores ``c``: the
noise that ends up next to a given ``c`` is no longer exactly N(0, I) given ``c`` for a finite batch
(only its batch marginal is). The flow-matching minimiser is then the field that carries p(y | c) to the
conditional law of the paired noise, not exactly to N(0, I); the likelihood stays exact (the trained
field is solved with its exact log-determinant against the N(0, I) base), only the objective's optimum
moves away from the one that maximises it. :func:`ot_pairing` is therefore applied per level by choice.

For a **class-conditional** model the pairing is made within each class (``groups``: the batch's labels):
a data row is only ever paired with a noise row drawn for a row of its own class, so the noise that meets a
class is a fresh N(0, I) sample of that class's size, as at test time, where each class is carried to the
base on its own. Pairing across classes would give the rows of one class the noise nearest to them among all
classes' draws, a train/test mismatch.

**Time.** Times are ``s = t / T`` in ``[0, 1]``, data at 0. :func:`sample_times` draws them uniformly,
stratified (one uniform offset ``u`` shared by the batch, ``s_i = (u + i / n) mod 1``: each ``s_i`` is still
uniform, and the batch covers ``[0, 1]`` evenly, which lowers the variance of the batch's loss), from a
logit-normal law (``s = sigmoid(m + τ n)``, ``n ~ N(0, 1)``), or as ``u ** k`` (denser near the
data end for ``k > 1``). Any law with full support on ``(0, 1)`` keeps the flow-matching minimiser; it
only moves the regression's effort between times.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["COUPLINGS", "TIME_OPTIONS", "TIME_SAMPLINGS", "ot_pairing", "sample_times", "transport_cost"]

COUPLINGS = ("independent", "ot")
TIME_SAMPLINGS = ("uniform", "stratified", "logit_normal", "power")
TIME_OPTIONS = {"uniform": (), "stratified": (), "logit_normal": ("loc", "scale"), "power": ("power",)}
"""The options of :func:`sample_times` that each time law reads (the others would be ignored)."""


def transport_cost(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Matrix of squared distances ``C[i, j] = ‖x_i − noise_j‖²`` (rows flattened), float64."""
    a = x.detach().flatten(1).double()
    b = noise.detach().flatten(1).double()
    return torch.cdist(a, b).pow(2)


def ot_pairing(x: torch.Tensor, noise: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """The permutation ``perm`` of the noise rows that minimises ``Σ_i ‖x_i − noise[perm[i]]‖²``.

    Exact for the batch (``scipy.optimize.linear_sum_assignment``); ``noise[perm]`` is the re-paired
    noise, the same multiset of rows. ``x`` and ``noise`` are ``(B, ...)`` of the same shape. With ``groups``
    (``(B,)`` integer labels) rows are paired only within their group: ``perm[i]`` has the group of ``i``, and
    each group's pairing is the optimal one among its own rows.
    """
    if x.shape != noise.shape:
        raise ValueError(f"x and noise must have the same shape, got {tuple(x.shape)} and {tuple(noise.shape)}")
    if groups is not None and tuple(groups.shape) != (x.shape[0],):
        raise ValueError(f"groups must hold one label per row, shape ({x.shape[0]},), got {tuple(groups.shape)}")
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        raise ImportError('coupling="ot" needs scipy: pip install "flowplug[ot]"') from None

    cost = transport_cost(x, noise).cpu().numpy()
    labels = np.zeros(x.shape[0], dtype=np.int64) if groups is None else groups.detach().cpu().numpy()
    perm = np.empty(x.shape[0], dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rows, cols = linear_sum_assignment(cost[np.ix_(members, members)])
        perm[members[rows]] = members[cols]
    return torch.as_tensor(perm, dtype=torch.long, device=x.device)


def sample_times(
    kind: str,
    n: int,
    *,
    loc: float = 0.0,
    scale: float = 1.0,
    power: float = 2.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``n`` times ``s`` in ``[0, 1]`` (data at 0): ``"uniform"``, ``"stratified"`` (one time in each of the
    ``n`` intervals ``[i / n, (i + 1) / n)``, each uniform), ``"logit_normal"`` (``loc``, ``scale``) or
    ``"power"`` (``u ** power``; ``power > 1`` puts more times near the data end)."""
    u_kwargs = {"generator": generator, "device": device, "dtype": dtype}
    if kind == "uniform":
        return torch.rand(n, **u_kwargs)
    if kind == "stratified":
        offset = torch.rand(1, **u_kwargs)
        return (offset + torch.arange(n, device=offset.device, dtype=offset.dtype) / n) % 1
    if kind == "logit_normal":
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        return torch.sigmoid(loc + scale * torch.randn(n, **u_kwargs))
    if kind == "power":
        if not power > 0:
            raise ValueError(f"power must be positive, got {power}")
        return torch.rand(n, **u_kwargs).pow(power)
    raise ValueError(f"unknown time sampling {kind!r}; choose one of {TIME_SAMPLINGS}")
