"""The README's Usage snippet, run verbatim: it trains, prints the held-out BPD and writes a readable grid.

Slow (about a minute on 2 quiet CPU cores): deselected by ``-m "not slow"``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def usage_snippet(readme: str) -> str:
    """The first ```python block under the README's "## Usage" heading."""
    usage = readme.split("\n## Usage\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", usage, re.DOTALL)
    assert match, "no ```python block under ## Usage"
    return match.group(1)


def test_the_snippet_trains_the_default_recipe_shortened():
    from flowplug.recipes import DEFAULT_RECIPE

    snippet = usage_snippet(README.read_text())
    assert f'flowplug.recipe("{DEFAULT_RECIPE}", data, train={{"steps": 500' in snippet
    assert 'load_dataset("digits")' in snippet and "split(0.1, seed=0)" in snippet


@pytest.mark.slow
def test_the_usage_snippet_runs_verbatim(tmp_path):
    from PIL import Image

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(README.parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", usage_snippet(README.read_text())], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    bpd = float(re.search(r"held-out bits/dim: ([\d.]+)", result.stdout).group(1))
    assert bpd < 3.6, result.stdout  # well under the uniform density's log2(17) = 4.09
    assert "step" in result.stderr  # the progress bar
    grid = Image.open(tmp_path / "runs" / "usage" / "digits.png")
    assert min(grid.size) >= 256
    assert (tmp_path / "runs" / "usage" / "report.txt").exists()


def test_the_quick_start_shows_the_same_snippet():
    quickstart = (README.parent / "docs" / "quickstart.md").read_text()
    in_python = quickstart.split("\n## In Python\n", 1)[1]
    assert re.search(r"```python\n(.*?)```", in_python, re.DOTALL).group(1) == usage_snippet(README.read_text())
