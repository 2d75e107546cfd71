"""The documentation site (``mkdocs.yml``, ``docs/``) builds in strict mode, and strict mode catches broken
references. Skipped unless the ``docs`` extra is installed (``pip install -e ".[docs]"``)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")
pytest.importorskip("material")
griffe = pytest.importorskip("griffe")

ROOT = Path(__file__).resolve().parents[1]


def _build(config_dir: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(config_dir)}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config_dir / "mkdocs.yml"),
         "--site-dir", str(site_dir)],
        cwd=config_dir, env=env, capture_output=True, text=True, timeout=300,
    )


def _public_units() -> list[str]:
    return sorted(
        p.stem for p in (ROOT / "flowplug").iterdir()
        if not p.name.startswith("_") and (p.suffix == ".py" or (p / "__init__.py").is_file())
    )


def test_site_builds_in_strict_mode(tmp_path):
    result = _build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    site = tmp_path / "site"
    for page in ("quickstart", "design", "testing", "benchmarks"):
        assert (site / page / "index.html").is_file(), page
    # one API page per public module or subpackage, found without a list to maintain
    assert (site / "api" / "index.html").is_file()
    for unit in _public_units():
        assert (site / "api" / unit / "index.html").is_file(), unit
    models = (site / "api" / "models" / "index.html").read_text(encoding="utf-8")
    assert 'id="flowplug.models.mrcnf.MRCNF"' in models
    assert ":class:" not in models and ":meth:" not in models  # Sphinx roles became links or code
    train = (site / "api" / "train" / "index.html").read_text(encoding="utf-8")
    assert 'id="flowplug.train.Trainer"' in train and 'id="flowplug.train.TrainConfig"' in train
    # flowplug.testing's __all__ is computed at run time: documented module by module instead
    testing = (site / "api" / "testing" / "index.html").read_text(encoding="utf-8")
    assert 'id="flowplug.testing.assertions.assert_invertible"' in testing
    # benchmarks.md's figures live in benchmarks/results/, outside docs/: copied into the site
    assert (site / "repo" / "benchmarks" / "results" / "cifar10-cpu" / "bpd_vs_time.png").is_file()


def _project_copy(tmp_path: Path) -> Path:
    """mkdocs.yml, docs/ and flowplug/ copied (benchmarks/ linked) so that a test can change them."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", project / "docs")
    shutil.copytree(ROOT / "flowplug", project / "flowplug", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "benchmarks").symlink_to(ROOT / "benchmarks", target_is_directory=True)
    return project


def test_a_new_module_gets_its_api_page(tmp_path):
    project = _project_copy(tmp_path)
    (project / "flowplug" / "extra.py").write_text(
        '"""An extra module, documented with no list to edit."""\n\n'
        'def helper(x: int) -> int:\n    """Twice :func:`flowplug.haar_decompose`\'s ``x``."""\n    return 2 * x\n',
        encoding="utf-8",
    )
    result = _build(project, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "site" / "api" / "extra" / "index.html").read_text(encoding="utf-8")
    assert 'id="flowplug.extra.helper"' in page
    assert 'href="../wavelet/#flowplug.wavelet.haar_decompose"' in page
    assert "flowplug.extra" in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")  # in the nav


def test_strict_build_fails_on_broken_references(tmp_path):
    project = _project_copy(tmp_path)
    (project / "docs" / "quickstart.md").write_text(
        "# Quick start\n\nSee [`Nothing`][flowplug.models.mrcnf.NoSuchThing], [a page](no_such_page.md) and "
        "![a figure](../benchmarks/results/no_such_run/plot.png).\n",
        encoding="utf-8",
    )
    (project / "flowplug" / "extra.py").write_text(
        '"""Names :class:`NoSuchClass`, which does not exist."""\n', encoding="utf-8"
    )
    result = _build(project, tmp_path / "site")
    assert result.returncode != 0
    assert "flowplug.models.mrcnf.NoSuchThing" in result.stderr
    assert "no_such_page.md" in result.stderr
    assert "no_such_run/plot.png" in result.stderr
    assert "broken reference :class:`NoSuchClass`" in result.stderr


def test_docstring_roles_become_links_code_or_warnings(tmp_path, caplog):
    """The griffe extension that reads flowplug's Sphinx roles (docs/_ext/rst_roles.py)."""
    package = tmp_path / "demo"
    package.mkdir()
    (package / "__init__.py").write_text(
        'from demo.core import Thing\n\n__all__ = ["Thing"]\n', encoding="utf-8"
    )
    (package / "core.py").write_text(
        '"""Core: :class:`Thing`, :func:`~demo.core.helper`, :func:`_private`, :meth:`Thing.go`,\n'
        ':class:`Missing`, :func:`os.path.join`, :mod:`demo`, :class:`Lazy`, :meth:`run`."""\n'
        "import os\n\n"
        'class Base:\n    def inherited(self):\n        """Base."""\n\n'
        'class Thing(Base):\n    """Uses :meth:`inherited` and :meth:`go`."""\n\n'
        '    def go(self):\n        """Go."""\n\n'
        'def helper():\n    """Help."""\n\n'
        'def _private():\n    """Private."""\n',
        encoding="utf-8",
    )
    # a name exported lazily (module __getattr__) is bound in no scope: found by a search of the package
    (package / "lazy.py").write_text(
        'class Lazy:\n    def run(self):\n        """Run."""\n\nclass Other:\n    def run(self):\n        """Run."""\n',
        encoding="utf-8",
    )
    extension = griffe.load_extensions(str(ROOT / "docs" / "_ext" / "rst_roles.py") + ":RstRoles")
    with caplog.at_level(logging.WARNING):
        demo = griffe.load("demo", search_paths=[str(tmp_path)], extensions=extension)
    core = demo["core"].docstring.value
    assert '<autoref identifier="demo.core.Thing" optional><code>Thing</code></autoref>' in core
    assert '<autoref identifier="demo.core.helper" optional><code>helper()</code></autoref>' in core
    assert '<autoref identifier="demo.core.Thing.go" optional><code>Thing.go()</code></autoref>' in core
    assert '<autoref identifier="demo" optional><code>demo</code></autoref>' in core
    assert '<autoref identifier="demo.lazy.Lazy" optional><code>Lazy</code></autoref>' in core
    assert "`run()`" in core  # Lazy.run and Other.run: ambiguous, plain code
    assert "`_private()`" in core and "`Missing`" in core
    assert ":class:" not in core and ":func:" not in core
    thing = demo["core.Thing"].docstring.value
    assert 'identifier="demo.core.Base.inherited"' in thing and 'identifier="demo.core.Thing.go"' in thing
    broken = [r.getMessage() for r in caplog.records if "broken reference" in r.getMessage()]
    assert len(broken) == 1 and ":class:`Missing`" in broken[0]
