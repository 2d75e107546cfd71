"""MkDocs hooks: the API reference pages, and links from the pages to files of the repository.

One API reference page per public module or subpackage of flowplug, found on disk.

A new public module (``flowplug/foo.py``) or subpackage (``flowplug/foo/__init__.py``) gets its page and its nav
entry without editing anything here or in ``mkdocs.yml``; names starting with ``_`` are private and skipped.
A subpackage whose ``__all__`` griffe can read is documented through its exports (so modules may move inside
it without changing the page); one without (or with an ``__all__`` computed at run time) is documented module
by module. The ``flowplug`` page
lists the top-level exports, each linked to where it is documented.

The pages in ``docs/`` link to repository files outside it as GitHub shows them (``../benchmarks/results/x.png``).
Each such file that exists is copied into the site under ``repo/`` and the link pointed there; a link to a
missing file, or to a Markdown file outside ``docs/``, is left alone, so ``mkdocs build --strict`` reports it.
"""

from __future__ import annotations

import ast
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

PACKAGE = "flowplug"
API_DIR = "api"
_REPO_DIR = "repo"
_LINK = re.compile(r"(\]\()([^)\s#]+)")
_ROLE = re.compile(r":\w+:`(~?)([\w.]+)(?:\(\))?`")


def _repo_root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _package_dir(config) -> Path:
    return _repo_root(config) / PACKAGE


def _outside_target(config, src_uri: str, link: str) -> str | None:
    """The repository path of an existing file outside ``docs/`` that ``link`` (on page ``src_uri``) names."""
    if "://" in link or link.startswith(("/", "mailto:")):
        return None
    path = posixpath.normpath(posixpath.join(posixpath.dirname(src_uri), link))
    docs_rel = Path(config.docs_dir).resolve().relative_to(_repo_root(config)).as_posix()
    if not path.startswith("../"):
        return None
    repo_path = posixpath.normpath(posixpath.join(docs_rel, path))
    # a Markdown file outside docs/ would become a page whose own links break: such links are reported instead
    if repo_path.startswith("../") or repo_path.endswith(".md") or not (_repo_root(config) / repo_path).is_file():
        return None
    return repo_path


def _public_units(package_dir: Path) -> list[str]:
    """The public top-level modules and subpackages, sorted by name."""
    return sorted(
        path.stem
        for path in package_dir.iterdir()
        if not path.name.startswith("_")
        and (path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").is_file()))
    )


def _load(package_dir: Path):
    import griffe

    return griffe.load(PACKAGE, search_paths=[str(package_dir.parent)], resolve_aliases=True)


def _role_as_code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def _unit_page(package, name: str) -> str:
    unit = package[name]
    by_exports = not unit.is_init_module or bool(unit.exports)
    options = "\n    options:\n      show_root_heading: false" + ("" if by_exports else "\n      show_submodules: true")
    return f"# `{PACKAGE}.{name}`\n\n::: {PACKAGE}.{name}{options}\n"


def _exported(package, name: str):
    """The object that ``package.name`` is: a member, or a lazy ``__getattr__`` export, found through the
    package's ``_EXPORTS`` table or as the member of that name of one of the public subpackages."""
    if name in package.members:
        return package.members[name]
    table = package.members.get("_EXPORTS")  # flowplug/__init__.py: public name -> module it loads from
    if table is not None and getattr(table, "value", None) is not None:
        module = ast.literal_eval(str(table.value)).get(name)
        if module is not None:
            return package.modules_collection[module][name]
    for unit in package.modules.values():
        if not unit.name.startswith("_") and name in unit.members:
            return unit.members[name]
    return None


def _index_page(package) -> str:
    import griffe

    rows = []
    for name in package.exports or []:
        if name.startswith("__"):
            continue
        member = _exported(package, name)
        if member is None:
            rows.append(f"| `{name}` | |")
            continue
        try:
            target = member.final_target if member.is_alias else member
        except griffe.AliasResolutionError:  # another package's object: named, not linked
            rows.append(f"| `{name}` | from `{member.target_path}` |")
            continue
        summary = target.docstring.value.strip().split("\n\n")[0].replace("\n", " ") if target.docstring else ""
        summary = _ROLE.sub(_role_as_code, summary)
        summary = summary.replace("|", "\\|")
        rows.append(f"| [`{name}`][{target.path}] | {summary} |")
    table = "\n".join(["| name | what it is |", "| --- | --- |", *rows])
    return (
        f"# `{PACKAGE}`\n\n::: {PACKAGE}\n    options:\n      members: false\n      show_root_heading: false\n\n"
        f"## Top-level names\n\n`import {PACKAGE}` gives these names; each links to its full entry.\n\n{table}\n"
    )


def on_config(config):
    units = _public_units(_package_dir(config))
    api = [{f"{PACKAGE}": f"{API_DIR}/index.md"}]
    api += [{f"{PACKAGE}.{name}": f"{API_DIR}/{name}.md"} for name in units]
    nav = config.nav or []
    for entry in nav:
        if isinstance(entry, dict) and "API reference" in entry:
            entry["API reference"] = api
            break
    else:
        nav.append({"API reference": api})
    config.nav = nav
    return config


def on_files(files, config):
    for page in [f for f in files if f.is_documentation_page() and f.abs_src_path]:
        text = Path(page.abs_src_path).read_text(encoding="utf-8")
        for match in _LINK.finditer(text):
            target = _outside_target(config, page.src_uri, match.group(2))
            if target is not None and files.get_file_from_path(f"{_REPO_DIR}/{target}") is None:
                files.append(
                    File.generated(config, f"{_REPO_DIR}/{target}", abs_src_path=str(_repo_root(config) / target))
                )
    package = _load(_package_dir(config))
    files.append(File.generated(config, f"{API_DIR}/index.md", content=_index_page(package)))
    for name in _public_units(_package_dir(config)):
        files.append(File.generated(config, f"{API_DIR}/{name}.md", content=_unit_page(package, name)))
    return files


def on_page_markdown(markdown, page, config, files):
    def relink(match: re.Match[str]) -> str:
        target = _outside_target(config, page.file.src_uri, match.group(2))
        if target is None:
            return match.group(0)
        return match.group(1) + posixpath.relpath(f"{_REPO_DIR}/{target}", posixpath.dirname(page.file.src_uri) or ".")

    return _LINK.sub(relink, markdown)
