"""Every example in ``examples/`` runs end to end in its quick mode, on the data a fresh clone has or the example
makes, and writes what it promises.

Each runs in a subprocess from the repository root with ``PYTHONPATH`` set to it (as a user's checkout
without installing flowplug), with its outputs in ``tmp_path``. The examples' ``--data``-style options for real
files are exercised with tiny random ``.npz`` files. The quick modes are meant to take under a minute on 2 CPU
cores: each run's wall time is printed (``-s``) so that a slower one shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(script: str, *args: str, status: int = 0, pythonpath: tuple[str, ...] = ()) -> str:
    """Run ``examples/<script>`` with ``args``; assert its exit status; return its standard output (its error
    output when ``status`` is not 0)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*pythonpath, str(ROOT)]), "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    print(f"{script} {' '.join(args)}: {time.monotonic() - start:.1f} s wall")
    assert result.returncode == status, f"{script} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "torch.lu is deprecated" not in result.stderr  # normflows' warning is filtered in the examples
    return result.stdout if status == 0 else result.stderr


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


def test_train_cifar10_cli_quick_on_photo_crops(tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    out = tmp_path / "run"
    run_example("train_cifar10_cli.py", "--data", "crops32", "--quick", "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["image_shape"] == [3, 32, 32]
    assert np.isfinite(report["held_out"]["bpd"])
    assert (out / "samples.png").stat().st_size > 0


def test_super_resolution(tmp_path: Path) -> None:
    out = run_example("super_resolution.py", "--quick", "--out", str(tmp_path))
    assert (tmp_path / "super_resolution.png").stat().st_size > 0
    assert "the coarse part of every output equals its input" in out
    assert out.count("max |coarse part of output - input|") == 2


def test_super_resolution_of_a_checkpoint_from_flowplug_train(tmp_path: Path) -> None:
    from flowplug.cli import main

    run = tmp_path / "run"
    assert main(["train", "--steps", "2", "--no-progress", "--threads", "1", "--out", str(run)]) == 0
    out = run_example("super_resolution.py", "--checkpoint", str(run / "checkpoints" / "best.pt"),
                      "--out", str(tmp_path / "sr"))
    assert "loaded" in out and "trained on digits[train]" in out
    assert "the coarse part of every output equals its input" in out


def test_property_test_custom_flow() -> None:
    out = run_example("property_test_custom_flow.py", "--quick")
    assert out.count("PASS ") == 3
    assert "all 3 properties hold" in out


def test_property_test_example_passes_under_plain_pytest() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "property_test_custom_flow.py"], cwd=EXAMPLES, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "3 passed" in result.stdout


def test_ood_quick_runs_from_a_clone_on_digits_against_blobs(tmp_path: Path) -> None:
    out = run_example("ood_mnist_fashion.py", "--quick", "--out", str(tmp_path / "ood"))
    for folder in ("digits-vs-blobs", "blobs-vs-digits"):
        summary = json.loads((tmp_path / "ood" / folder / "summary.json").read_text())
        assert set(summary["auroc"][0]["auroc"]) == {"bpd", "level0_bpd", "level1_bpd"}
    assert (tmp_path / "ood" / "data" / "blobs.npz").is_file()
    assert out.count("| level1_bpd |") == 2


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


def test_glow_with_haar_squeeze_quick() -> None:
    out = run_example("glow_with_haar_squeeze.py", "--quick")
    assert "held-out bits/dim before training" in out
    assert "held-out bits/dim after 50 steps" in out


def test_progressive_128_without_scikit_image_says_which_extra(tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "skimage"
    fake.mkdir(parents=True)  # an skimage that cannot be imported, as when scikit-image is not installed
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'skimage'\", name='skimage')\n")
    err = run_example("progressive_128.py", "--quick", "--out", str(tmp_path / "run"), status=1,
                      pythonpath=(str(tmp_path / "fake"),))
    assert err.strip() == 'progressive_128.py: error: the photo crops need scikit-image: pip install -e ".[images]"'


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


def test_conditional_digits(tmp_path: Path) -> None:
    out = run_example("conditional_digits.py", "--quick", "--out", str(tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    assert np.isfinite(results["held_out"]["bpd"]) and results["held_out"]["conditional"] is True
    # trained with label dropout: judged as the model (guidance 0) and guided (4), each with its own grid
    assert results["samples_judged"] > 0 and [j["guidance"] for j in results["judgements"]] == [0, 4]
    assert all(0 <= j["recognised"] <= 1 for j in results["judgements"])
    assert (tmp_path / "samples_per_class.png").stat().st_size > 0
    assert (tmp_path / "samples_per_class-guidance4.png").stat().st_size > 0
    assert "one class per column (0..9)" in out


def test_conditional_digits_judges_a_conditional_glow_from_flowplug_train(tmp_path: Path) -> None:
    from flowplug.cli import main

    run = tmp_path / "run"
    assert main(["train", "--recipe", "glow", "--conditional", "--steps", "2", "--no-progress", "--threads", "1",
                 "--out", str(run)]) == 0
    out = run_example("conditional_digits.py", "--checkpoint", str(run / "checkpoints" / "best.pt"),
                      "--judge", "20", "--epochs", "1", "--out", str(tmp_path / "judged"))
    results = json.loads((tmp_path / "judged" / "results.json").read_text())
    assert "trained on digits[train]" in out and results["samples_judged"] == 20
    assert results["held_out"]["num_images"] == 180 and results["held_out"]["conditional"] is True
    run_example("conditional_digits.py", "--checkpoint", str(run / "checkpoints" / "best.pt"), "--no-score",
                "--judge", "20", "--epochs", "1", "--out", str(tmp_path / "unscored"))
    unscored = json.loads((tmp_path / "unscored" / "results.json").read_text())
    assert unscored["held_out"] is None and unscored["judgements"] == results["judgements"]
    refused = run_example("conditional_digits.py", "--checkpoint", str(run / "checkpoints" / "best.pt"),
                          "--guidance", "0", "2", "--out", str(tmp_path / "guided"), status=1)
    assert "--guidance needs a model trained with label_dropout" in refused
