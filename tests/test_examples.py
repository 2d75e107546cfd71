"""Every example in ``examples/`` runs end to end in its quick mode and writes what it promises.

Each runs in a subprocess from the repository root with ``PYTHONPATH`` set to it (as a user's checkout
without installing flowplug), with its outputs in ``tmp_path``. The CIFAR-10 example gets a tiny random
3×8×8 ``.npz`` instead of the real data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(script: str, *args: str) -> str:
    """Run ``examples/<script>`` with ``args``; assert exit status 0; return its standard output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_custom_mrcnf(tmp_path: Path) -> None:
    out = run_example("custom_mrcnf.py", "--quick", "--out", str(tmp_path))
    result = json.loads((tmp_path / "held_out.json").read_text())
    assert len(result["per_level_bpd"]) == 2
    assert np.isfinite(result["bpd"])
    assert (tmp_path / "samples.png").stat().st_size > 0
    assert f"held-out bits/dim ({result['num_images']} images, exact trace): {result['bpd']:.4f}" in out


def test_train_cifar10_cli_on_any_npz(tmp_path: Path) -> None:
    data = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, 256, size=(80, 3, 8, 8), dtype=np.uint8))
    out = tmp_path / "run"
    run_example("train_cifar10_cli.py", "--data", str(data), "--quick", "--out", str(out),
                "--holdout", "0.1")
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 40
    assert report["data"]["image_shape"] == [3, 8, 8]
    assert np.isfinite(report["held_out"]["bpd"])
    assert len(report["held_out"]["per_level_bpd"]) == 3
    assert list((out / "checkpoints").glob("step-*.pt"))
    assert (out / "samples.png").stat().st_size > 0


def test_super_resolution(tmp_path: Path) -> None:
    out = run_example("super_resolution.py", "--quick", "--out", str(tmp_path))
    assert (tmp_path / "super_resolution.png").stat().st_size > 0
    assert "the coarse part of every output equals its input" in out
    assert out.count("max |coarse part of output - input|") == 2


def test_property_test_custom_flow() -> None:
    out = run_example("property_test_custom_flow.py", "--quick")
    assert out.count("PASS ") == 3
    assert "all 3 properties hold" in out


def test_ood_mnist_fashion_on_any_grey_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.savez(tmp_path / f"{name}.npz", x=rng.integers(0, 256, size=(60, 1, 8, 8), dtype=np.uint8))
    out = run_example("ood_mnist_fashion.py", "--quick", "--mnist", str(tmp_path / "a.npz"),
                      "--fashion", str(tmp_path / "b.npz"), "--out", str(tmp_path / "ood"))
    for folder, sizes in (("mnist-vs-fashion", [6, 50]), ("fashion-vs-mnist", [15, 50])):
        summary = json.loads((tmp_path / "ood" / folder / "summary.json").read_text())
        assert [s["num_images"] for s in summary["sets"]] == sizes
        assert set(summary["auroc"][0]["auroc"]) == {"bpd", "level0_bpd", "level1_bpd"}
        assert (tmp_path / "ood" / folder / "histograms.png").stat().st_size > 0
    assert out.count("| level1_bpd |") == 2


def test_progressive_128_quick(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    out = run_example("progressive_128.py", "--quick", "--out", str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [stage["size"] for stage in summary["stages"]] == [8, 16]
    assert [len(stage["held_out"]["per_level_bpd"]) for stage in summary["stages"]] == [3, 4]
    assert all(np.isfinite(stage["held_out"]["bpd"]) and stage["train_command"]["cpu_s"] > 0
               for stage in summary["stages"])
    grown = json.loads((tmp_path / "stage-16" / "config.json").read_text())
    assert grown["parent"]["checkpoint"].startswith(str((tmp_path / "stage-8").resolve()))
    assert (tmp_path / "samples-16.png").stat().st_size > 0
    assert "16x16: held-out" in out
