"""The continuous normalizing flow component (FFJORD with RNODE's regularisers), a normflows Flow.

Time runs as in FFJORD (docs/design.md §4): data at ``t = 0``, latent at ``t = T``. The density direction
``inverse(x)`` integrates ``dz/dt = f(t, z, context)`` from 0 to T together with
``dL/dt = tr(∂f/∂z)``; then ``L(T) = log|det ∂z(T)/∂x|``. The sampling direction ``forward(z)``
integrates the same system from T to 0, and ``L(0)`` is the log-determinant of that map (the
negative of the other).

**Divergence** (``divergence`` in training, ``eval_divergence`` in evaluation, the same by default):
``"hutchinson"`` is the default everywhere. It costs one vector-Jacobian product per evaluation
whatever the dimension, and since ``log p(x) = log p(z) + L`` is linear in the estimate, the
estimated log-likelihood is unbiased, so its mean over a test set is the right figure. ``"exact"``
costs ``D`` products (batched, with ``D·B·D`` memory): use it for tiny dimensions (2-D toy
densities, tests) or exact per-sample values.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from normflows.flows import Flow
from torch import nn

from flowplug._checks import check_finite, check_floating, check_same_dtype_and_device
from flowplug.cnf.coupling import COUPLINGS, ot_pairing, sample_times
from flowplug.cnf.divergence import PROBES, exact_divergence, hutchinson_divergence, sample_probe
from flowplug.cnf.flow_matching import straight_path
from flowplug.cnf.guidance import Guidance, GuidedVelocity
from flowplug.cnf.regularization import RNODE
from flowplug.cnf.solver import DEFAULT_SOLVER, ODESolverError, SolverSettings, solve
from flowplug.registry import register

__all__ = ["CNF", "DIVERGENCES", "NFECount", "without_log_det"]

DIVERGENCES = ("hutchinson", "exact")

SolverLike = SolverSettings | Mapping[str, Any] | str


@dataclass
class NFECount:
    """Numbers of ODE-net evaluations: in forward solves, and in adjoint backward solves."""

    forward: int = 0
    backward: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.backward


class _Dynamics:
    """The augmented ODE of one solve: state ``(z, L, *RNODE integrals)``, or ``(z,)`` alone when ``trace`` is
    off (a sampling solve whose log-determinant nobody reads: one pass of the net per evaluation, no
    vector-Jacobian product).

    One instance per solve, so the Hutchinson probe and the context stay fixed for that solve and
    its adjoint backward pass even if the CNF is called again before ``backward()``.
    """

    def __init__(
        self,
        net: nn.Module,
        context: torch.Tensor | None,
        probe: torch.Tensor | None,
        rnode: RNODE | None,
        settings: SolverSettings,
        counts: tuple[NFECount, ...],
        check_finite: bool,
        trace: bool = True,
    ) -> None:
        self.net = net
        self.context = context
        self.probe = probe
        self.rnode = rnode
        self.settings = settings
        self.counts = counts
        self.check_finite = check_finite
        self.trace = trace
        self.phase = "forward"
        """``"backward"`` once the forward solve has returned: later calls are the adjoint's."""

    def __call__(
        self, t: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...]:
        for count in self.counts:
            setattr(count, self.phase, getattr(count, self.phase) + 1)
        if not self.trace:
            z = state[0]
            dz = self._velocity(t, z)
            self._check_finite(t, z, dz)
            return (dz,)
        create_graph = torch.is_grad_enabled()
        frobenius = self.rnode is not None and self.rnode.jacobian_norm > 0
        with torch.enable_grad():
            z = state[0]
            if not (create_graph and z.requires_grad):
                # a fresh leaf: the state carries no graph we need (no-grad solves, adjoint forward)
                z = z.detach().requires_grad_(True)
            dz = self._velocity(t, z)
            if self.probe is None:
                trace, sq_frobenius = exact_divergence(
                    dz, z, create_graph=create_graph, frobenius=frobenius
                )
            else:
                trace, sq_frobenius = hutchinson_divergence(
                    dz, z, self.probe, create_graph=create_graph, frobenius=frobenius
                )
        self._check_finite(t, z, dz, trace)
        rates = self.rnode.rates(dz, sq_frobenius) if self.rnode is not None else ()
        derivatives = (dz, trace, *rates)
        return derivatives if create_graph else tuple(d.detach() for d in derivatives)

    def _velocity(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dz = self.net(t, z, context=self.context)
        if dz.shape != z.shape:
            raise ValueError(
                f"the ODE net returned dz/dt of shape {tuple(dz.shape)} for z of shape {tuple(z.shape)}"
            )
        return dz

    def _check_finite(self, t: torch.Tensor, *tensors: torch.Tensor) -> None:
        if not self.check_finite:
            return
        finite = torch.stack([torch.isfinite(x).all() for x in tensors]).all()
        if not bool(finite):  # a host synchronisation per evaluation: only when asked for
            raise ODESolverError(
                f"non-finite ODE state or dynamics (NaN or inf) at t={float(t):.6g} in the "
                f"{self.phase} solve with {self.settings.describe()}; the flow has diverged: lower "
                "the learning rate, regularise it (kinetic_energy / jacobian_norm), or check the "
                "inputs' scale"
            )


@register("cnf")
class CNF(Flow):
    """Continuous normalizing flow ``dz/dt = net(t, z, context)`` over ``[0, T]`` (FFJORD, RNODE).

    Args: net: any module called as ``net(t, z, context=None)`` returning ``dz/dt`` of ``z``'s
    shape, e.g. :class:`~flowplug.cnf.ConvODENet` (images) or :class:`~flowplug.cnf.MLPODENet`
    (vectors). T: integration time. divergence: ``"hutchinson"`` or ``"exact"`` trace in training
    (see the module docstring). probe: Hutchinson probe, ``"rademacher"`` (lower variance) or
    ``"gaussian"``; one draw per solve. train_solver, eval_solver: :class:`SolverSettings` (or a
    dict of its fields, or a method name) used in ``train()`` and ``eval()`` mode;
    ``eval_solver=None`` means the training settings. Their tolerances hold each coordinate of
    ``z`` and the log-density's error per dimension (``D · atol`` for the sum over ``z``'s ``D``
    dimensions; docs/design.md §4). Likelihood training learns the solver's error along with the
    field: with a fixed grid or a loose tolerance in ``train_solver`` the trained log-density can
    be far from the ODE's (an MRCNF's likelihood phase on 4 rk4 steps reached 3.13 bits/dim at
    dopri5 where 1e-3 reached 1.56), so judge such a model at a tight ``eval_solver``.
    sample_solver: the settings of the solves that draw samples without their log-density (within
    :func:`without_log_det`, as :meth:`flowplug.FlowModel.sample_images` draws); ``None`` means the
    current mode's. A fixed grid there (e.g. ``{"method": "rk4", "steps": 4}``) gives every image
    the same cost and leaves log-densities and round trips, which use ``eval_solver``, untouched.
    adjoint: backpropagate by the adjoint method
    (``odeint_adjoint``: memory independent of the number of steps, at the price of a backward
    solve) instead of through the solver's operations. kinetic_energy, jacobian_norm: RNODE
    coefficients (see :mod:`flowplug.cnf.regularization`); the terms are integrated only in
    training-mode density passes, and only when their coefficient is nonzero. eval_divergence: the
    trace in ``eval()`` mode; ``None`` means ``divergence``. check_finite: check the state and
    dynamics for NaN/inf at every function evaluation and raise :class:`ODESolverError` naming the
    time and solver at the first; off by default because each check waits for the device (a host
    synchronisation per evaluation). Without it a diverging adaptive solve fails with torchdiffeq's
    step-size underflow (reported as :class:`ODESolverError`), and a non-finite result surfaces in
    the loss, which the trainer checks once per step.

    After each solve ``last_nfe`` holds its number of net evaluations and ``last_nfe_backward`` the
    number the adjoint backward solve took (it grows during ``backward()``; 0 without adjoint, where
    autograd backpropagates through the recorded evaluations instead). ``nfe`` accumulates both over
    all solves until :meth:`reset_nfe`.
    """

    def __init__(
        self,
        net: nn.Module,
        T: float = 1.0,
        *,
        divergence: str = "hutchinson",
        probe: str = "rademacher",
        train_solver: SolverLike = DEFAULT_SOLVER,
        eval_solver: SolverLike | None = None,
        sample_solver: SolverLike | None = None,
        adjoint: bool = False,
        kinetic_energy: float = 0.0,
        jacobian_norm: float = 0.0,
        eval_divergence: str | None = None,
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(
                f"net must be an nn.Module called as net(t, z, context), got {type(net).__name__}"
            )
        if isinstance(T, bool) or not isinstance(T, (int, float)) or not 0 < T < math.inf:
            raise ValueError(f"integration time T must be a positive finite number, got {T!r}")
        eval_divergence = divergence if eval_divergence is None else eval_divergence
        for name, value in (("divergence", divergence), ("eval_divergence", eval_divergence)):
            if value not in DIVERGENCES:
                raise ValueError(f"unknown {name} {value!r}; expected one of {DIVERGENCES}")
        if probe not in PROBES:
            raise ValueError(f"unknown Hutchinson probe {probe!r}; expected one of {PROBES}")
        self.net = net
        self.T = float(T)
        self.divergence = divergence
        self.eval_divergence = eval_divergence
        self.probe = probe
        self.train_solver = SolverSettings.coerce(train_solver)
        self.eval_solver = (
            self.train_solver if eval_solver is None else SolverSettings.coerce(eval_solver)
        )
        self.sample_solver = None if sample_solver is None else SolverSettings.coerce(sample_solver)
        self.adjoint = bool(adjoint)
        self.check_finite = bool(check_finite)
        self.rnode = RNODE(kinetic_energy=kinetic_energy, jacobian_norm=jacobian_norm)
        self.nfe = NFECount()
        self._last_nfe = NFECount()
        self._extra_terms: dict[str, torch.Tensor] = {}
        self._sample_log_det = True
        """False within :func:`without_log_det`: sampling solves integrate the state alone."""

    @property
    def solver(self) -> SolverSettings:
        """The settings of the current mode: ``train_solver`` in training, else ``eval_solver``."""
        return self.train_solver if self.training else self.eval_solver

    @property
    def last_nfe(self) -> int:
        """Net evaluations of the last forward solve."""
        return self._last_nfe.forward

    @property
    def last_nfe_backward(self) -> int:
        """Net evaluations in the last solve's adjoint backward pass (0 before it or without)."""
        return self._last_nfe.backward

    def reset_nfe(self) -> None:
        """Zero the cumulative counter :attr:`nfe`."""
        self.nfe = NFECount()

    def extra_loss_terms(self) -> dict[str, torch.Tensor]:
        """Weighted RNODE terms of the last training-mode density pass (``{}`` if none)."""
        return dict(self._extra_terms)

    def forward(
        self, z: torch.Tensor, context: torch.Tensor | None = None, *, guidance: Guidance | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling: latent ``z`` (time T) → data (time 0); returns ``(x, log|det ∂x/∂z|)``. With ``guidance``
        the solve follows the guided field of :mod:`flowplug.cnf.guidance` instead of the net's."""
        return self._integrate(z, context, density=False, guidance=guidance)

    def inverse(
        self, x: torch.Tensor, context: torch.Tensor | None = None, *, guidance: Guidance | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density: data ``x`` (time 0) → latent (time T); returns ``(z, log|det ∂z/∂x|)``, of the guided flow
        with ``guidance`` (the inverse of a guided :meth:`forward`)."""
        return self._integrate(x, context, density=True, guidance=guidance)

    def flow_matching_loss(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        sigma: float = 1e-4,
        generator: torch.Generator | None = None,
        coupling: str = "independent",
        time_sampling: str = "uniform",
        time_options: dict | None = None,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample conditional flow-matching losses ``(B,)`` of the net on data ``x`` (no ODE solve).

        One time and one noise draw per sample on the straight path of :mod:`flowplug.cnf.flow_matching`;
        ``context`` is passed to the net as in the CNF's own solves; ``sigma`` (``0 ≤ σ < 1``) is the path's
        blur at the data end. ``coupling`` (``"independent"`` or ``"ot"``: minibatch optimal transport) pairs
        the batch's data with its noise draws; ``time_sampling`` (``"uniform"``, ``"stratified"``,
        ``"logit_normal"``, ``"power"``; options ``time_options``) draws the times -- see
        :mod:`flowplug.cnf.coupling`. ``groups`` (``(B,)`` class labels) restricts the ``"ot"`` pairing to rows
        of one class. The defaults draw exactly as before these options existed.
        """
        if not 0.0 <= sigma < 1.0:
            raise ValueError(f"sigma must lie in [0, 1), got {sigma}")
        if coupling not in COUPLINGS:
            raise ValueError(f"unknown coupling {coupling!r}; choose one of {COUPLINGS}")
        self._check_inputs(x, context)
        s = sample_times(time_sampling, x.shape[0], generator=generator, device=x.device, dtype=x.dtype,
                         **(time_options or {}))
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if coupling == "ot":
            noise = noise[ot_pairing(x, noise, groups)]
        z, target = straight_path(x, noise, s, sigma, self.T)
        predicted = self.net(s * self.T, z, context=context)
        return (predicted - target).pow(2).flatten(1).mean(1)

    def _check_inputs(self, x: torch.Tensor, context: torch.Tensor | None) -> None:
        check_floating(x, "CNF input")
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(
                f"CNF input must be a non-empty batch (B, ...), got shape {tuple(x.shape)}"
            )
        check_finite(x, "CNF input")
        if context is None:
            if getattr(self.net, "needs_context", False):
                raise ValueError(
                    f"{type(self.net).__name__} needs context, but none was given (input shape "
                    f"{tuple(x.shape)})"
                )
            return
        check_floating(context, "CNF context")
        if context.shape[:1] != x.shape[:1]:
            raise ValueError(
                f"CNF context of shape {tuple(context.shape)} does not match the batch size of "
                f"the input of shape {tuple(x.shape)}"
            )
        check_same_dtype_and_device(context, "CNF context", x, "the input")
        check_finite(context, "CNF context")

    def _integrate(
        self, x: torch.Tensor, context: torch.Tensor | None, *, density: bool, guidance: Guidance | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_inputs(x, context)
        net = self.net
        if guidance is not None:
            if context is None:
                raise ValueError("guidance contrasts a context with a null context; this solve has no context")
            check_same_dtype_and_device(guidance.null_context, "the null context", context, "the context")
            net = GuidedVelocity(self.net, guidance)
        divergence = self.divergence if self.training else self.eval_divergence
        trace = density or self._sample_log_det
        settings = self.solver if trace or self.sample_solver is None else self.sample_solver
        # drawn even for a solve without trace, so that the random stream (the later levels' draws) stays the same
        probe = sample_probe(x, self.probe) if divergence == "hutchinson" else None
        regularize = density and self.training and bool(self.rnode.active)
        rnode = self.rnode if regularize else None
        self._last_nfe = NFECount()
        dynamics = _Dynamics(
            net, context, probe, rnode, settings, (self.nfe, self._last_nfe), self.check_finite, trace
        )

        zeros = x.new_zeros(x.shape[0])
        num_integrals = len(rnode.active) if rnode else 0
        state = (x, zeros) + (zeros,) * num_integrals if trace else (x,)
        # the log-density is a sum over the D dimensions of z: D times one dimension's absolute tolerance holds
        # its error per dimension (what bits per dimension are made of) to atol, as z's; the RNODE integrals
        # are means over dimensions already
        atol_scales = ((1.0, float(x[0].numel())) + (1.0,) * num_integrals)[:len(state)]
        adjoint_params = None
        if self.adjoint and torch.is_grad_enabled():
            adjoint_params = [p for p in self.net.parameters() if p.requires_grad]
            if context is not None and context.requires_grad:
                adjoint_params.append(context)
        t0, t1 = (0.0, self.T) if density else (self.T, 0.0)
        out, *rest = solve(
            dynamics, state, t0, t1, settings, adjoint_params=adjoint_params, atol_scales=atol_scales
        )
        dynamics.phase = "backward"
        if not trace:
            return out, torch.full_like(zeros, math.nan)
        log_det, *integrals = rest

        if density:
            self._extra_terms = rnode.loss_terms(tuple(integrals)) if rnode else {}
        return out, log_det

    def extra_repr(self) -> str:
        rnode = ", ".join(f"{name}={getattr(self.rnode, name)}" for name in self.rnode.active)
        return (
            f"T={self.T}, divergence={self.divergence!r}, "
            f"eval_divergence={self.eval_divergence!r}, "
            f"adjoint={self.adjoint}, check_finite={self.check_finite}, train_solver=({self.train_solver.describe()}), "
            f"eval_solver=({self.eval_solver.describe()})"
            + (f", sample_solver=({self.sample_solver.describe()})" if self.sample_solver is not None else "")
            + (f", {rnode}" if rnode else "")
        )


@contextlib.contextmanager
def without_log_det(module: nn.Module) -> Iterator[None]:
    """Within the block, every :class:`CNF` in ``module`` solves its sampling direction (``forward``) for the
    state alone: no divergence, so a function evaluation is one pass of the net instead of a pass and a
    vector-Jacobian product, and an adaptive solver controls the state's error only. The log-determinant such a
    solve returns is NaN (a ``log q`` computed inside the block is NaN, never silently wrong). A CNF with a
    ``sample_solver`` solves with it here. On the same fixed grid the samples are those of the full solve; density
    passes (``inverse``) are unchanged. Restored on exit.
    :meth:`flowplug.FlowModel.sample_images` samples this way."""
    cnfs = [m for m in module.modules() if isinstance(m, CNF)]
    saved = [m._sample_log_det for m in cnfs]
    for m in cnfs:
        m._sample_log_det = False
    try:
        yield
    finally:
        for m, flag in zip(cnfs, saved, strict=True):
            m._sample_log_det = flag
