"""Property-testing toolkit for flows: assertions (torch only) and Hypothesis strategies (optional).

The assertions and :mod:`flowplug.testing.modules` need only torch. The strategies, component strategies and
settings profiles need Hypothesis (``pip install flowplug[test]``); their names are importable from here and
load :mod:`flowplug.testing.strategies` on first use, which raises an ``ImportError`` saying what to install
when Hypothesis is missing.
"""

from __future__ import annotations

import importlib
from typing import Any

from flowplug.conditioning import ComposedFlow
from flowplug.testing.assertions import (
    assert_batch_independent,
    assert_invertible,
    assert_log_det_correct,
    assert_sample_log_prob_consistent,
    default_tolerances,
)
from flowplug.testing.conditional import (
    ConditionedModel,
    assert_condition_matters,
    assert_conditional_flow,
    assert_conditional_sampling,
    class_labels,
    conditioned,
)
from flowplug.testing.modules import perturb_parameters

_LAZY = {
    "available_devices": "strategies",
    "devices": "strategies",
    "dtypes": "strategies",
    "image_shapes": "strategies",
    "images": "strategies",
    "labels": "strategies",
    "tensors": "strategies",
    "vector_shapes": "strategies",
    "vectors": "strategies",
    "ComponentCase": "component_strategies",
    "ComponentStrategy": "component_strategies",
    "CompositionCase": "component_strategies",
    "component_cases": "component_strategies",
    "component_strategy": "component_strategies",
    "exclude_component": "component_strategies",
    "excluded_components": "component_strategies",
    "image_compositions": "component_strategies",
    "missing_component_strategies": "component_strategies",
    "register_component_strategy": "component_strategies",
    "sizes": "strategies",
    "load_profile": "profiles",
}

__all__ = [
    "ComposedFlow",
    "ConditionedModel",
    "assert_batch_independent",
    "assert_condition_matters",
    "assert_conditional_flow",
    "assert_conditional_sampling",
    "assert_invertible",
    "assert_log_det_correct",
    "assert_sample_log_prob_consistent",
    "class_labels",
    "conditioned",
    "default_tolerances",
    "perturb_parameters",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"flowplug.testing.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'flowplug.testing' has no attribute {name!r}")
