"""Every ```python block of the documentation runs as written: ``README.md`` and ``docs/*.md`` (not
``docs/benchmarks.md``, whose blocks are excerpts of benchmark code, nor the dated ``docs/notes/``).

The blocks are read from the files at test time, so the test follows whatever the pages say now. Each block runs
as its own program, in a fresh Python process, in an empty temporary working directory, with the repository on
``PYTHONPATH`` (as from a clone). A block that defines ``test_...`` functions is a pytest file: it is written to
``test_block.py`` and run with ``python -m pytest``, which must pass.

Conventions, written in the Markdown (an HTML comment on the line right before the opening fence, which neither
GitHub nor MkDocs shows; or, inside the block, a first line ``# test: ...``):

- ``<!-- test: slow -->``: the block takes more than about 20 s, so it runs only with ``-m slow``. A block that
  trains (calls ``.fit(``) counts as slow unless marked ``<!-- test: fast -->``.
- ``<!-- test: continues -->``: the block goes on from the page's previous block (it uses its variables), so it
  runs appended to it, as one program, and is slow if that one is.
- ``<!-- test: skip REASON -->``: the block is not run (say why: it needs a GPU, a download, ...).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "benchmarks.md")]
"""The Markdown files whose blocks run (``docs/*.md`` does not reach into ``docs/notes/``)."""

FAST_TIMEOUT_S = 300
SLOW_TIMEOUT_S = 1800

_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_MARKER = re.compile(r"^\s*(?:<!--\s*test:\s*(.*?)\s*-->|#\s*test:\s*(.*?))\s*$")
_MARKS = ("slow", "fast", "continues", "skip")


@dataclass
class Program:
    """One or more consecutive blocks of a page, run as one program."""

    page: str
    line: int
    code: str
    marks: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def slow(self) -> bool:
        return "slow" in self.marks or (".fit(" in self.code and "fast" not in self.marks)

    @property
    def is_test_file(self) -> bool:
        return re.search(r"^def test_\w*\(", self.code, re.MULTILINE) is not None


def _marks(texts: list[str], where: str) -> dict[str, str]:
    marks = {}
    for text in texts:
        name, _, detail = text.partition(" ")
        if name not in _MARKS:
            raise ValueError(f"{where}: unknown test marker {text!r} (known: {', '.join(_MARKS)})")
        marks[name] = detail.strip()
    return marks


def programs(text: str, page: str) -> list[Program]:
    """The programs of a Markdown text: its ```python blocks, with their markers, continuations joined."""
    found: list[Program] = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        code = match.group(1)
        first = code.split("\n", 1)[0]
        texts = [m.group(1) or m.group(2) for m in map(_MARKER.match, (before, first)) if m]
        marks = _marks([t for t in texts if t], f"{page}:{line}")
        if "continues" in marks:
            if not found or found[-1].page != page:
                raise ValueError(f"{page}:{line}: a block marked 'continues' needs a block before it")
            previous = found[-1]
            previous.code += "\n" + code
            previous.marks.update({k: v for k, v in marks.items() if k != "continues"})
            continue
        found.append(Program(page, line, code, marks))
    return found


def _all_programs() -> list[Program]:
    return [p for page in PAGES for p in programs(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))]


def _params() -> list:
    params = []
    for program in _all_programs():
        marks = [pytest.mark.slow] if program.slow else []
        if "skip" in program.marks:
            marks.append(pytest.mark.skip(reason=program.marks["skip"] or "marked skip in the page"))
        params.append(pytest.param(program, id=program.id, marks=marks))
    return params


@pytest.mark.parametrize("program", _params())
def test_doc_code_block_runs(program: Program, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    timeout = SLOW_TIMEOUT_S if program.slow else FAST_TIMEOUT_S
    if program.is_test_file:
        (tmp_path / "test_block.py").write_text(program.code, encoding="utf-8")
        (tmp_path / "pytest.ini").write_text("[pytest]\n")  # the temporary folder is the rootdir
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_block.py"]
    else:
        (tmp_path / "block.py").write_text(program.code, encoding="utf-8")
        command = [sys.executable, "block.py"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"the block at {program.id} failed (exit status {result.returncode}):\n{program.code}\n"
                    f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}")


def test_the_pages_have_blocks_to_run() -> None:
    pages = {p.page for p in _all_programs()}
    assert {"README.md", os.path.join("docs", "quickstart.md"), os.path.join("docs", "testing.md")} <= pages
    assert all("notes" not in page and not page.endswith("benchmarks.md") for page in pages)


def test_markers_and_continuations() -> None:
    text = (
        "intro\n\n```python\nx = 1\n```\n\n<!-- test: continues -->\n```python\nprint(x)\n```\n\n"
        "```python\n# test: skip needs a GPU\nimport torch\n```\n\n<!-- test: slow -->\n```python\ny = 2\n```\n\n"
        "```python\ntrainer.fit(data)\n```\n\n<!-- test: fast -->\n```python\ntrainer.fit(tiny)\n```\n\n"
        "```bash\nflowplug train\n```\n\n```python\ndef test_a():\n    assert True\n```\n"
    )
    found = programs(text, "page.md")
    assert [p.line for p in found] == [3, 12, 18, 22, 27, 35]
    assert found[0].code == "x = 1\n\nprint(x)\n" and not found[0].slow
    assert found[1].marks == {"skip": "needs a GPU"}
    assert [p.slow for p in found[2:5]] == [True, True, False]
    assert found[5].is_test_file and not found[0].is_test_file
    with pytest.raises(ValueError, match="unknown test marker 'slower'"):
        programs("<!-- test: slower -->\n```python\nx = 1\n```\n", "page.md")
