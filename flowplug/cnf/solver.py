"""Solver settings for a CNF: which torchdiffeq method, its tolerances and step size, validated up
front.

A :class:`SolverSettings` is a small frozen value, so a CNF can hold one for training and one for
evaluation and a spec can give either as a plain dict (``{"method": "rk4", "step_size": 0.25}``).
:func:`solve` runs ``torchdiffeq.odeint`` (or ``odeint_adjoint``) with them and turns torchdiffeq's
bare assertions (step-size underflow, too many steps) into an :class:`ODESolverError` that names the
settings and suggests a remedy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torchdiffeq import odeint, odeint_adjoint

__all__ = [
    "DEFAULT_EVAL_SOLVER",
    "DEFAULT_SOLVER",
    "DEFAULT_TRAIN_SOLVER",
    "FIXED_STEP_METHODS",
    "MAX_ADAPTIVE_STEPS",
    "METHODS",
    "ODESolverError",
    "SolverSettings",
    "solve",
]

FIXED_STEP_METHODS = frozenset(
    {"euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams",
     "fixed_adams"}
)
"""torchdiffeq methods that step on a fixed grid and therefore need ``step_size``."""
METHODS = frozenset(
    {"dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun", "scipy_solver"} | FIXED_STEP_METHODS
)
"""The method names ``torchdiffeq.odeint`` accepts (its public documentation's list; a test checks each)."""


class ODESolverError(RuntimeError):
    """A solve failed (non-finite state, step-size underflow, too many steps)."""


MAX_ADAPTIVE_STEPS = 1000
"""The steps an adaptive solve may take before it fails (a trained MRCNF level takes about 10 to 40 at 1e-5): a
diverged model's evaluation stops with an error instead of running for hours."""


@dataclass(frozen=True)
class SolverSettings:
    """How to integrate one CNF solve.

    ``method`` is any torchdiffeq method name. Adaptive methods (``dopri5``, ``bosh3``, ...) are
    controlled by ``atol``/``rtol`` and stop with :class:`ODESolverError` after
    :data:`MAX_ADAPTIVE_STEPS` steps unless ``options`` give their own ``max_num_steps``; fixed-step methods
    (``rk4``, ``euler``, ...) need ``step_size`` and ignore the tolerances. ``options`` are passed to the
    torchdiffeq solver (e.g. ``{"max_num_steps": 5000}`` or ``{"first_step": 0.1}`` for adaptive methods).
    """

    method: str = "dopri5"
    atol: float = 1e-5
    rtol: float = 1e-5
    step_size: float | None = None
    options: Mapping[str, Any] | None = field(default=None, hash=False)
    steps: int | None = None
    """Fixed-step methods: solve in exactly this many equal steps (instead of ``step_size``, whose grid gains a
    step when the interval is not a float multiple of it)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"unknown ODE solver method {self.method!r}; torchdiffeq offers {sorted(METHODS)}"
            )
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"solver {name} must be a positive number, got {value!r}")
        fixed = self.method in FIXED_STEP_METHODS
        if fixed and (self.step_size is None) == (self.steps is None):
            raise ValueError(
                f"fixed-step solver {self.method!r} needs step_size (e.g. step_size=0.25) or steps (e.g. steps=8), "
                "one of them; without either torchdiffeq would take a single step over the whole interval"
            )
        if self.steps is not None:
            if not fixed:
                raise ValueError(f"steps applies only to fixed-step methods {sorted(FIXED_STEP_METHODS)}; "
                                 f"adaptive method {self.method!r} takes atol/rtol")
            if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not self.steps >= 1:
                raise ValueError(f"solver steps must be a positive integer, got {self.steps!r}")
        if self.step_size is not None:
            if not fixed:
                raise ValueError(
                    f"step_size applies only to fixed-step methods {sorted(FIXED_STEP_METHODS)}; "
                    f"adaptive method {self.method!r} takes atol/rtol "
                    "(and options={'first_step': ...})"
                )
            if not isinstance(self.step_size, (int, float)) or not self.step_size > 0:
                raise ValueError(
                    f"solver step_size must be a positive number, got {self.step_size!r}"
                )
        if self.options is not None and not isinstance(self.options, Mapping):
            raise TypeError(f"solver options must be a dict, got {type(self.options).__name__}")
        if self.options is not None and "step_size" in self.options:
            raise ValueError("give the step size as SolverSettings(step_size=...), not in options")

    @classmethod
    def coerce(cls, value: SolverSettings | Mapping[str, Any] | str) -> SolverSettings:
        """Accept settings, a dict of their fields (as in a spec), or a method name."""
        if isinstance(value, SolverSettings):
            return value
        if isinstance(value, str):
            return cls(method=value)
        if isinstance(value, Mapping):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(
                    f"unknown solver setting(s) {sorted(unknown)}; "
                    f"expected some of {list(cls.__dataclass_fields__)}"
                )
            return cls(**value)
        raise TypeError(
            "solver settings must be SolverSettings, a dict or a method name, "
            f"got {type(value).__name__}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (the inverse of :meth:`coerce`), for specs and logs; ``steps`` only when set, so the
        specs of settings without it read as before it existed."""
        out = asdict(self)
        out["options"] = dict(self.options) if self.options is not None else None
        if self.steps is None:
            del out["steps"]
        return out

    def describe(self) -> str:
        """One line for error messages: method and the settings that control it."""
        if self.steps is not None:
            return f"method={self.method!r}, steps={self.steps}"
        if self.method in FIXED_STEP_METHODS:
            return f"method={self.method!r}, step_size={self.step_size}"
        return f"method={self.method!r}, atol={self.atol}, rtol={self.rtol}"

    def odeint_kwargs(self) -> dict[str, Any]:
        options = dict(self.options or {})
        if self.steps is not None:
            options["grid_constructor"] = functools.partial(_even_grid, steps=self.steps)
        elif self.step_size is not None:
            options["step_size"] = self.step_size
        elif self.method not in FIXED_STEP_METHODS:
            options.setdefault("max_num_steps", MAX_ADAPTIVE_STEPS)
        return {"method": self.method, "atol": self.atol, "rtol": self.rtol, "options": options}


def _even_grid(func: Any, y0: torch.Tensor, t: torch.Tensor, *, steps: int) -> torch.Tensor:
    """torchdiffeq's ``grid_constructor``: ``steps`` equal steps from ``t[0]`` to ``t[-1]``."""
    return torch.linspace(float(t[0]), float(t[-1]), steps + 1, dtype=t.dtype, device=t.device)


DEFAULT_SOLVER = SolverSettings()
"""A CNF's default: dopri5 at atol = rtol = 1e-5, FFJORD's training setting."""
DEFAULT_TRAIN_SOLVER = SolverSettings(atol=1e-3, rtol=1e-3)
"""MRCNF's training solves: loose tolerances (the likelihood gradient tolerates them; RNODE keeps NFE low)."""
DEFAULT_EVAL_SOLVER = SolverSettings(atol=1e-5, rtol=1e-5)
"""MRCNF's evaluation solves: tight enough that the reported bits per dimension is converged in the tolerance."""

_SOLVER_FAILURES = ("underflow in dt", "max_num_steps exceeded")


def solve(
    func: Callable[[torch.Tensor, tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]],
    state: tuple[torch.Tensor, ...],
    t0: float,
    t1: float,
    settings: SolverSettings,
    *,
    adjoint_params: Sequence[torch.Tensor] | None = None,
    atol_scales: Sequence[float] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Integrate ``d state/dt = func(t, state)`` from ``t0`` to ``t1``; returns the state at ``t1``.

    With ``adjoint_params`` (the tensors gradients must reach) the solve uses ``odeint_adjoint``
    (O(1) memory in the number of steps, re-solving backwards in the backward pass); without,
    autograd backpropagates through the solver's operations. ``atol_scales`` (one factor per state
    tensor) multiplies ``settings.atol`` for each tensor of the forward solve, e.g. ``D`` for a sum
    over ``D`` dimensions; the adjoint's backward solve keeps the plain ``atol``. Step-size underflow
    and exceeding ``max_num_steps`` raise :class:`ODESolverError`.
    """
    reference = state[0]
    times = torch.tensor([t0, t1], dtype=reference.dtype, device=reference.device)
    kwargs = settings.odeint_kwargs()
    if atol_scales is not None:
        if len(atol_scales) != len(state):
            raise ValueError(f"atol_scales has {len(atol_scales)} factors for {len(state)} state tensors")
        kwargs["atol"] = tuple(settings.atol * float(scale) for scale in atol_scales)
    try:
        if adjoint_params is None:
            solution = odeint(func, state, times, **kwargs)
        else:
            solution = odeint_adjoint(
                func, state, times, adjoint_params=tuple(adjoint_params),
                adjoint_atol=settings.atol, **kwargs
            )
    except AssertionError as error:
        if not any(failure in str(error) for failure in _SOLVER_FAILURES):
            raise
        raise ODESolverError(
            f"ODE solve from t={t0} to t={t1} failed ({error}) with {settings.describe()}. The "
            "dynamics are too stiff for these settings: loosen atol/rtol, use a fixed-step "
            "solver (e.g. method='rk4', step_size=0.1), or regularise the flow (kinetic_energy / "
            "jacobian_norm coefficients)."
        ) from None
    return tuple(s[-1] for s in solution)
