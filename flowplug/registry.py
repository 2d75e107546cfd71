"""Name → component factory registry, and building modules from plain specs.

A *spec* is plain data (what a YAML or JSON file holds):

- a string ``"haar_squeeze"`` builds that component with its defaults;
- a dict ``{"type": "glow_block", "channels": 8, "hidden_channels": 32}`` builds ``type`` with the other keys
  as keyword arguments; any argument that is itself a dict with a ``"type"`` key, or a list of such specs, is
  built first (so a model spec can hold its layers' specs);
- a list of specs builds a list of modules.

Names come from plugins, registered on first use of the registry: every entry point of the ``flowplug.plugins``
group names a function that registers a package's components (flowplug's own components and normflows' layers
come this way, :mod:`flowplug.builtins`), and third-party packages may also declare one entry point per component
in the ``flowplug.components`` group, whose name is the component name and whose object is the factory. This
module imports nothing of flowplug's.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

from torch import nn

__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "PLUGIN_GROUP",
    "ComponentInfo",
    "build",
    "components",
    "get_component",
    "register",
]

ENTRY_POINT_GROUP = "flowplug.components"
KINDS = ("flow", "model", "distribution", "net", "objective")
"""What a registered entry is: a factory of a flow layer, a whole model, a base distribution or a network, or a
training objective (see :mod:`flowplug.train.objectives`)."""

REGISTER_HINT = (
    "a custom one must be registered by your own code (flowplug.register(name, factory, kind=...)) or "
    f"declared as a {ENTRY_POINT_GROUP!r} entry point before a spec, config or checkpoint naming it is loaded; "
    "flowplug never imports a module because a file names it"
)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ComponentInfo:
    """One registry entry."""

    name: str
    factory: Callable[..., Any]
    kind: str
    source: str
    """Where the entry came from: ``"flowplug"``, ``"normflows"`` or the distribution of an entry point."""

    @property
    def summary(self) -> str:
        """First line of the factory's docstring."""
        doc = inspect.getdoc(self.factory) or ""
        return doc.splitlines()[0] if doc else ""


_registry: dict[str, ComponentInfo] = {}
_external_loaded = False


def register(
    name: str,
    factory: F | None = None,
    *,
    kind: str = "flow",
    source: str = "flowplug",
    overwrite: bool = False,
) -> Any:
    """Register ``factory`` under ``name``; used as ``@register("name")`` or ``register("name", factory)``.

    Raises ``ValueError`` if the name is taken (unless ``overwrite``) or ``kind`` is not one of :data:`KINDS`.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"component name must be a non-empty string, got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {KINDS}")

    def decorator(obj: F) -> F:
        if not callable(obj):
            raise TypeError(f"component {name!r}: factory must be callable, got {type(obj).__name__}")
        if name in _registry and not overwrite and _registry[name].factory is not obj:
            raise ValueError(
                f"component name {name!r} is already registered (by {_registry[name].source}); "
                "pass overwrite=True to replace it"
            )
        _registry[name] = ComponentInfo(name=name, factory=obj, kind=kind, source=source)
        return obj

    return decorator if factory is None else decorator(factory)


PLUGIN_GROUP = "flowplug.plugins"
"""Entry points of this group name a function that registers a package's components; flowplug's own built-ins
come this way (:mod:`flowplug.builtins`)."""


def _load_external() -> None:
    """Register the plugins' components (flowplug's built-ins and normflows' layers among them) and the
    ``flowplug.components`` entry points, once."""
    global _external_loaded
    if _external_loaded:
        return
    _external_loaded = True
    plugins = {entry_point.name: entry_point for entry_point in metadata.entry_points(group=PLUGIN_GROUP)}
    if "flowplug" not in plugins:
        raise ImportError(f"flowplug's own components are registered through its {PLUGIN_GROUP!r} entry point, "
                          "which is missing: install the package (pip install -e . in a clone)")
    for entry_point in plugins.values():
        entry_point.load()()

    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in _registry:
            continue
        dist = getattr(entry_point, "dist", None)
        source = f"entry point {entry_point.value}" + (f" ({dist.name})" if dist else "")
        _registry[entry_point.name] = ComponentInfo(
            name=entry_point.name, factory=_LazyEntryPoint(entry_point), kind="flow", source=source
        )


class _LazyEntryPoint:
    """Defers importing a third-party component until it is built."""

    def __init__(self, entry_point: metadata.EntryPoint) -> None:
        self.entry_point = entry_point
        self._loaded: Callable[..., Any] | None = None

    def load(self) -> Callable[..., Any]:
        if self._loaded is None:
            self._loaded = self.entry_point.load()
        return self._loaded

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)


def components(kind: str | None = None) -> list[str]:
    """Sorted names of registered components, optionally only those of one ``kind``."""
    _load_external()
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {KINDS}")
    return sorted(name for name, info in _registry.items() if kind is None or info.kind == kind)


def get_component(name: str, kind: str | None = None) -> ComponentInfo:
    """Look a registered entry up by name (of ``kind``, when given).

    Only registered names resolve: an unknown name raises ``ValueError`` naming it, the closest registered names
    and how to register one. Nothing is imported because of the name.
    """
    _load_external()
    what = kind or "component"
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be a string, got {type(name).__name__}")
    info = _registry.get(name)
    if info is not None and (kind is None or info.kind == kind):
        return info
    candidates = components(kind)
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    everything = "`flowplug info` or flowplug.components() lists all"
    known = f"registered {what}s: {', '.join(candidates)}" if kind else everything
    raise ValueError(f"unknown {what} {name!r}{hint} ({known}; {REGISTER_HINT})") from None


def _factory_signature(info: ComponentInfo) -> inspect.Signature | None:
    factory = info.factory.load() if isinstance(info.factory, _LazyEntryPoint) else info.factory
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):
        return None


def check_arguments(info: ComponentInfo, kwargs: Mapping[str, Any], supplied: int = 0) -> None:
    """Raise ``TypeError`` naming an unknown or missing parameter of ``info``'s factory for ``kwargs``.

    ``supplied`` leading positional parameters are passed by the caller (an objective's model and batch).
    """
    signature = _factory_signature(info)
    if signature is None:
        return
    params = dict(list(signature.parameters.items())[supplied:])
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        n for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"component {info.name!r} has no parameter {key!r}{hint} "
                f"(parameters: {', '.join(accepted) or 'none'})"
            )
    missing = [
        n for n, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and n not in kwargs
    ]
    if missing:
        raise TypeError(f"component {info.name!r} is missing required parameter(s) {', '.join(missing)}")


def _is_spec(value: Any) -> bool:
    if isinstance(value, Mapping):
        return "type" in value
    if isinstance(value, Sequence) and not isinstance(value, str) and value:
        return all(_is_spec(v) for v in value)
    return False


def build(spec: str | Mapping[str, Any] | Sequence[Any]) -> Any:
    """Build a module (or a list of modules) from a spec; see the module docstring for the format.

    A built module whose ``config`` is unset records the spec there (``{"type": name, ...}``), so that it can be
    rebuilt and checkpointed like flowplug's models.
    """
    if isinstance(spec, str):
        return build({"type": spec})
    if isinstance(spec, Mapping):
        if "type" not in spec:
            raise ValueError(f"spec {dict(spec)!r} has no 'type' key naming the component")
        info = get_component(spec["type"])
        kwargs = {
            key: build(value) if _is_spec(value) else value
            for key, value in spec.items()
            if key != "type"
        }
        check_arguments(info, kwargs)
        built = info.factory(**kwargs)
        if isinstance(built, nn.Module) and getattr(built, "config", None) is None:
            built.config = copy.deepcopy(dict(spec))  # the module remembers the spec that rebuilds it
        return built
    if isinstance(spec, Sequence):
        return [build(item) for item in spec]
    raise TypeError(
        f"a spec must be a component name, a dict with a 'type' key, or a list of specs; "
        f"got {type(spec).__name__}"
    )
