"""The divergence ``tr(∂f/∂z)`` of an ODE net's output with respect to its state, per sample.

Two estimators, both returning ``(trace, squared_frobenius)`` per sample (``squared_frobenius`` only
when asked, for RNODE's Jacobian regulariser, which then costs nothing extra):

- :func:`hutchinson_divergence`: ``εᵀ (∂f/∂z) ε`` with one probe ``ε`` (``E[εεᵀ] = I``), one
  vector-Jacobian product per evaluation whatever the dimension. Unbiased; the probe must stay fixed
  during one solve so that the integrated log-density is the integral of one estimator (see
  :func:`sample_probe`). ``‖εᵀ ∂f/∂z‖²`` is an unbiased estimate of ``‖∂f/∂z‖²_F``.
- :func:`exact_divergence`: all ``D`` rows of the Jacobian by one batched vector-Jacobian product
  (``is_grads_batched``, i.e. ``vmap`` over the basis vectors), memory ``D·B·D``: for tiny
  dimensions (2-D toy densities, tests, evaluating small models).

Both assume the net treats samples independently (no batch statistics), as every ODE net of a CNF
must. ``create_graph=True`` keeps the result differentiable (training, and the adjoint's backward
solve).
"""

from __future__ import annotations

import torch

__all__ = ["PROBES", "exact_divergence", "hutchinson_divergence", "sample_probe"]

PROBES = ("rademacher", "gaussian")
"""Hutchinson probes. Rademacher (±1) has the lower variance (no diagonal term)."""


def sample_probe(like: torch.Tensor, kind: str = "rademacher") -> torch.Tensor:
    """A Hutchinson probe shaped like ``like`` (same dtype, device): Rademacher ±1 or Gaussian."""
    if kind == "rademacher":
        return torch.randint(0, 2, like.shape, device=like.device).to(like.dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn_like(like)
    raise ValueError(f"unknown Hutchinson probe {kind!r}; expected one of {PROBES}")


def _per_sample_sum(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


def _vector_jacobian(
    dz: torch.Tensor, z: torch.Tensor, vectors: torch.Tensor, *, create_graph: bool, batched: bool
) -> torch.Tensor:
    """``vectorsᵀ ∂dz/∂z``; zeros when ``dz`` does not depend on ``z`` (a net ignoring it)."""
    if not dz.requires_grad:
        return torch.zeros_like(vectors)
    if batched:
        try:
            (product,) = torch.autograd.grad(dz, z, vectors, create_graph=create_graph, is_grads_batched=True,
                                             retain_graph=True, materialize_grads=True)
            return product
        except RuntimeError:
            # some backward formulas have no batching rule (group_norm's, in ResODENet): one product per vector
            return torch.stack([
                torch.autograd.grad(dz, z, v, create_graph=create_graph, retain_graph=True,
                                    materialize_grads=True)[0] for v in vectors])
    (product,) = torch.autograd.grad(dz, z, vectors, create_graph=create_graph, materialize_grads=True)
    return product


def hutchinson_divergence(
    dz: torch.Tensor,
    z: torch.Tensor,
    probe: torch.Tensor,
    *,
    create_graph: bool,
    frobenius: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hutchinson estimate of ``tr(∂dz/∂z)`` (and of ``‖∂dz/∂z‖²_F`` if ``frobenius``)."""
    probe_jacobian = _vector_jacobian(dz, z, probe, create_graph=create_graph, batched=False)
    trace = _per_sample_sum(probe_jacobian * probe)
    return trace, _per_sample_sum(probe_jacobian.square()) if frobenius else None


def exact_divergence(
    dz: torch.Tensor,
    z: torch.Tensor,
    *,
    create_graph: bool,
    frobenius: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exact ``tr(∂dz/∂z)`` (and ``‖∂dz/∂z‖²_F`` if ``frobenius``) per sample."""
    batch, dim = z.shape[0], z[0].numel()
    basis = torch.eye(dim, dtype=z.dtype, device=z.device).view(dim, 1, *z.shape[1:])
    rows = _vector_jacobian(
        dz, z, basis.expand(dim, *z.shape), create_graph=create_graph, batched=True
    ).reshape(dim, batch, dim)  # rows[i, b] = ∂dz_i/∂z for sample b
    trace = rows.diagonal(dim1=0, dim2=2).sum(dim=-1)
    return trace, rows.square().sum(dim=(0, 2)) if frobenius else None
