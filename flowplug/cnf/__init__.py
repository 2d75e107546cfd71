"""Continuous normalizing flows on torchdiffeq: the :class:`CNF` component, ODE nets, solver
settings.

Importing this package registers ``"cnf"`` (kind ``"flow"``), ``"conv_odenet"``, ``"mlp_odenet"`` and ``"res_odenet"``
(kind ``"net"``) in :mod:`flowplug.registry`.
"""

from flowplug.cnf.divergence import exact_divergence, hutchinson_divergence, sample_probe
from flowplug.cnf.flow import CNF, DIVERGENCES, NFECount, without_log_det
from flowplug.cnf.guidance import Guidance, GuidedVelocity
from flowplug.cnf.nets import ACTIVATIONS, ConvODENet, MLPODENet
from flowplug.cnf.regularization import RNODE
from flowplug.cnf.resnet import ResODENet
from flowplug.cnf.solver import FIXED_STEP_METHODS, ODESolverError, SolverSettings

__all__ = [
    "ACTIVATIONS",
    "CNF",
    "DIVERGENCES",
    "FIXED_STEP_METHODS",
    "RNODE",
    "ConvODENet",
    "Guidance",
    "GuidedVelocity",
    "MLPODENet",
    "NFECount",
    "ODESolverError",
    "ResODENet",
    "SolverSettings",
    "exact_divergence",
    "hutchinson_divergence",
    "sample_probe",
    "without_log_det",
]
