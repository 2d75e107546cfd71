"""RNODE's regularisers (Finlay et al. 2020), integrated along a CNF solve as extra ODE states.

- **kinetic energy** ``∫₀ᵀ ‖f(t, z)‖² dt``: favours straight, constant-speed paths, which adaptive
  solvers integrate in few steps;
- **Jacobian Frobenius norm** ``∫₀ᵀ ‖∂f/∂z‖²_F dt``: favours smooth, non-stiff dynamics. Its
  integrand comes from the divergence computation at no extra cost: exactly with the exact
  divergence, as the unbiased estimate ``‖εᵀ ∂f/∂z‖²`` with Hutchinson's probe ``ε``.

Both integrands are divided by the dimension ``D`` of ``z`` (a mean over its entries), so one
coefficient suits every resolution of a multi-resolution model. The loss terms are the coefficients
times the batch means of the integrals. With a coefficient of 0 its state is not integrated at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["RNODE"]

_TERMS = ("kinetic_energy", "jacobian_norm")


@dataclass(frozen=True)
class RNODE:
    """The coefficients of RNODE's two terms; ``active`` names those with a nonzero one."""

    kinetic_energy: float = 0.0
    jacobian_norm: float = 0.0

    def __post_init__(self) -> None:
        for name in _TERMS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"RNODE coefficient {name} must be a number >= 0, got {value!r}")

    @property
    def active(self) -> tuple[str, ...]:
        """Names of the terms to integrate, in state order."""
        return tuple(name for name in _TERMS if getattr(self, name) > 0)

    def rates(
        self, dz: torch.Tensor, sq_frobenius: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        """Per-sample integrands ``(B,)`` of the active terms from ``dz/dt`` and ``‖∂f/∂z‖²_F``."""
        per_dim = 1.0 / dz[0].numel()
        rates = []
        if self.kinetic_energy > 0:
            rates.append(dz.reshape(dz.shape[0], -1).square().sum(dim=1) * per_dim)
        if self.jacobian_norm > 0:
            rates.append(sq_frobenius * per_dim)
        return tuple(rates)

    def loss_terms(self, integrals: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """Weighted batch means of the integrated active terms, keyed by term name."""
        return {
            name: getattr(self, name) * integral.mean()
            for name, integral in zip(self.active, integrals, strict=True)
        }
