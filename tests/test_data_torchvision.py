"""A torchvision that cannot be imported (missing, or built for another torch) gives one clear ImportError that
names torch's version and the fix, from ``load_dataset`` and as one line from ``flowplug train``."""

from __future__ import annotations

import re
import sys

import pytest
import torch

from flowplug.data import load_dataset


@pytest.fixture
def mismatched_torchvision(tmp_path, monkeypatch):
    """A ``torchvision`` package that fails inside its import as one built for another torch does."""
    package = tmp_path / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))


def _matching_release() -> str:
    minor = int(torch.__version__.split(".")[1])
    return f"0.{minor + 15}"  # torch 2.N ↔ torchvision 0.(N+15)


def test_mismatched_torchvision_names_torch_the_problem_and_the_fix(mismatched_torchvision):
    with pytest.raises(ImportError) as caught:
        load_dataset("cifar10", root=".")
    message = str(caught.value)
    assert f"does not import beside torch {torch.__version__}" in message
    assert "RuntimeError: operator torchvision::nms does not exist" in message
    assert f"matches torch {torch.__version__}" in message
    assert f'pip install "torchvision=={_matching_release()}.*"' in message
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_the_command_reports_it_in_one_line(mismatched_torchvision, tmp_path, capsys):
    from flowplug.cli import main

    status = main(["train", "--data", "cifar10", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("flowplug: error: dataset 'cifar10' needs torchvision")
    assert torch.__version__ in lines[0]


def test_missing_torchvision_names_the_extra_and_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if not installed: importing it fails
    expected = re.escape('which is not installed. Fix: pip install -e ".[vision]"')
    with pytest.raises(ImportError, match=expected) as caught:
        load_dataset("mnist", root=".")
    assert torch.__version__ in str(caught.value)


def test_torch_2_13_is_paired_with_torchvision_0_28(mismatched_torchvision, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    expected = re.escape('"torchvision==0.28.*" --index-url https://download.pytorch.org/whl/cpu')
    with pytest.raises(ImportError, match=expected):
        load_dataset("cifar10", root=".")
