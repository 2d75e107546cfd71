"""Griffe extension: turn the Sphinx roles in flowplug's docstrings into mkdocstrings cross-references.

flowplug's docstrings name other objects with Sphinx roles (``:class:`TrainConfig```, ``:meth:`MRCNF.grow```,
``:func:`~flowplug.cnf.CNF```). Each role is resolved the way Python would, in the scope of the object whose
docstring holds it, and rewritten:

- a name that resolves to a public object becomes an autorefs link (``<autoref optional>``): a link where the
  object has a page, plain code where it is documented nowhere (a public helper left out of ``__all__``);
- a name that resolves to a private object (a ``_``-prefixed part) or to another package's object becomes
  plain code;
- a name the scope does not bind (a lazy export through a module ``__getattr__``) is looked up across the
  package: one match is linked as above, several make plain code;
- a name that does not resolve at all is a broken reference: it is logged as a warning, so
  ``mkdocs build --strict`` fails.
"""

from __future__ import annotations

import ast
import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|meth|func|mod|attr|data|exc|obj|const):`(~?)([\w.]+)(?:\(\))?`")
_logger = griffe.get_logger("flowplug.docs.rst_roles")


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias and member.parent is obj:
            yield from _walk(member)


def _lookup(root: griffe.Module, path: str) -> str | None:
    """Canonical path of the flowplug object named by the dotted ``path``, or ``None``."""
    parts = path.split(".")
    if parts[0] != root.name:
        return None
    try:
        obj = root[".".join(parts[1:])] if len(parts) > 1 else root
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    try:
        return obj.target_path if obj.is_alias else obj.path
    except griffe.AliasResolutionError:
        return None


_EXTERNAL = "external"
_AMBIGUOUS = "ambiguous"


def _scope_lookup(obj: griffe.Object, root: griffe.Module, name: str) -> str | None:
    """Path that ``name`` stands for in the scope of ``obj``: its members (a class's inherited ones too),
    then its parents'."""
    scope: griffe.Object | None = obj
    while scope is not None:
        members = scope.all_members if scope.is_class else scope.members
        if name in members:
            member = members[name]
            return member.target_path if member.is_alias else member.path
        scope = scope.parent
    return root.path if name == root.name else None


def _lazy_exports(root: griffe.Module) -> dict[str, str]:
    """The package's ``_EXPORTS`` table (public name → the module it is imported from on first access)."""
    table = root.members.get("_EXPORTS")
    if table is None or getattr(table, "value", None) is None:
        return {}
    return ast.literal_eval(str(table.value))


def _resolve(obj: griffe.Object, root: griffe.Module, name: str) -> str | None:
    """Resolve ``name`` (maybe dotted) in the scope of ``obj``, as the docstring's reader would: the canonical
    path of a flowplug object, ``_EXTERNAL`` for another package's object, ``None`` when nothing matches."""
    if name == root.name or name.startswith(root.name + "."):
        found = _lookup(root, name)
        if found is None and "." in name:  # through a top-level name that the package exports lazily
            exported, _, rest = name.partition(".")[2].partition(".")
            module = _lazy_exports(root).get(exported)
            if module is not None:
                found = _lookup(root, f"{module}.{exported}" + (f".{rest}" if rest else ""))
        return found
    head, _, tail = name.partition(".")
    base = _scope_lookup(obj, root, head)
    if base is None:
        return _search(root, name)
    if base != root.name and not base.startswith(root.name + "."):
        return _EXTERNAL
    path = _lookup(root, base)
    if path is None:
        return None
    return _lookup(root, f"{path}.{tail}") if tail else path


def _search(root: griffe.Module, name: str) -> str | None:
    """Fallback for names that the scope does not bind (a package's lazy ``__getattr__`` exports): the one
    flowplug object whose path ends with ``name``; ``_AMBIGUOUS`` when several do, ``None`` when none does."""
    found = {o.path for o in _walk(root) if o.path.endswith("." + name)}
    if len(found) > 1:
        return _AMBIGUOUS
    return found.pop() if found else None


class RstRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _ROLE.sub(lambda m, o=obj: self._replace(o, pkg, m), obj.docstring.value)

    @staticmethod
    def _replace(obj: griffe.Object, root: griffe.Module, match: re.Match[str]) -> str:
        role, short, target = match.groups()
        shown = target.rsplit(".", 1)[-1] if short else target
        if role in ("meth", "func"):
            shown += "()"
        path = _resolve(obj, root, target)
        if path is None:
            _logger.warning(
                f"{obj.relative_filepath}:{obj.lineno}: broken reference :{role}:`{target}` in the docstring "
                f"of {obj.path}: no such object"
            )
            return f"`{shown}`"
        private = any(part.startswith("_") and not part.startswith("__") for part in path.split("."))
        if path in (_EXTERNAL, _AMBIGUOUS) or private:
            return f"`{shown}`"
        return f'<autoref identifier="{html.escape(path)}" optional><code>{html.escape(shown)}</code></autoref>'
