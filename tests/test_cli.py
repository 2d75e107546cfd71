"""The flowplug command: train, sample, evaluate, info, and errors reported before training."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import flowplug.cli
from flowplug.cli import main
from flowplug.cnf.solver import ODESolverError
from flowplug.train import Trainer
from flowplug.train.evaluation import cnf_settings

TRAIN = ["train", "--recipe", "realnvp", "--steps", "4", "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def test_train_writes_a_run_folder(run_folder, capsys):
    report = json.loads((run_folder / "report.json").read_text())
    assert report["model"] == "realnvp" and report["steps"] == 4
    assert report["data"]["name"] == "digits[train]" and report["held_out"]["num_images"] == 180
    assert (run_folder / "metrics.csv").exists() and list((run_folder / "samples").glob("*.png"))
    assert (run_folder / "checkpoints" / "step-00000004.pt").exists()


def test_resume_continues_to_a_larger_budget(run_folder):
    assert main([*TRAIN[:3], "--steps", "6", "--batch-size", "16", "--no-progress",
                 "--out", str(run_folder), "--resume"]) == 0
    report = json.loads((run_folder / "report.json").read_text())
    assert report["steps"] == 6 and report["steps_this_run"] == 2


def test_sample_and_evaluate(run_folder, tmp_path, capsys):
    checkpoint = str(sorted((run_folder / "checkpoints").glob("step-*.pt"))[-1])
    assert main(["sample", checkpoint, "--num", "9", "--temperature", "0.8",
                 "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["evaluate", checkpoint, "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 180 and len(result["per_level_bpd"]) == 1


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "glow" in out and "realnvp" in out and "digits" in out and "devices:" in out
    assert "haar_squeeze" in out and "Drop-in for ``normflows.flows.Squeeze``" in out  # name, source, summary


def test_version_and_recipes(capsys):
    import flowplug

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"flowplug {flowplug.__version__}"
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "mrcnf (default):" in out and "single-resolution-cnf:" in out and "small_images" in out


def test_python_dash_m(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flowplug", "info"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "models" in result.stdout


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["train", "--recipe", "nope"], r"unknown recipe 'nope'; recipes: glow, mrcnf, realnvp"),
        (["train", "--config", "{squeeze}"], "'haar_squeeze' is a flow, not a model"),
        (["train", "--recipe", "glow", "--data", "nowhere"], "unknown dataset 'nowhere'"),
        (["train", "--recipe", "glow", "--data", "missing.npz"], "does not exist"),
        (["train", "--recipe", "glow", "--data", "{float}"], "uint8"),
        (["train", "--model-options", '{{"levels": 3}}', "--data", "{odd}"], r"divisible by 2\^\(levels-1\) = 4"),
        (["train", "--recipe", "glow", "--steps", "0"], "steps must be a positive"),
        (["train", "--recipe", "glow", "--device", "cuda:7"], "not available|out of range"),
        (["train", "--recipe", "glow", "--steps", "2", "--batch-size", "4000"], "exceeds"),
        (["train", "--config", "missing.json"], "does not exist"),
        (["evaluate", "missing.pt"], "does not exist"),
        (["train", "--levels", "-1"], r"level -1 does not exist; this model has levels 0\.\.2"),
        (["train", "--phases", '[{{"objective": "flow_matching", "until": 0.5}}, {{"objective": "likelihood", '
                               '"levels": [3]}}]'], r"level 3 does not exist; this model has levels 0\.\.2"),
        (["train", "--recipe", "glow", "--phases", '[{{"objective": "likelihood", "levels": [0]}}]'],
         r"trainable_levels needs a multi-level model, Glow has no levels"),
        (["train", "--phases", '[{{"objective": "likelihood", "until": 0.5}}]'], "the last phase runs to the end"),
        (["train", "--holdout", "0"], r"holdout must be a fraction in \(0, 1\), got 0\.0"),
        (["train", "--model", "glow"], r"--model was replaced by --recipe NAME .* got 'glow'\)"),
        (["train", "--model", ""], r"--model was replaced by --recipe NAME .* got ''\)"),
        (["train", "--config", "{extra}"], r"unknown top-level key\(s\) \['trian'\]"),
        (["train", "--recipe", "glow", "--lr", "inf"], r"lr must be a positive number of at most 1e\+06, got inf"),
        (["train", "--recipe", "glow", "--lr", "1e308"], r"at most 1e\+06, got 1e\+308"),
        (["train", "--recipe", "glow", "--objective", "flow_matching"],
         "phases.0.: the flow_matching objective trains CNFs and glow has none; train it with the likelihood "
         "objective"),
        (["train", "--config", "{grey}", "--data", "{rgb}"],
         r"1 channel\(s\) in the model, 3 in the data"),
        (["train", "--data", "{hwc}"], "looks like N×H×W×C"),
        (["train", "--data", "{bins}"], "bins.npz: key 'n_bins' must hold one integer"),
        (["train", "--data", "{obj}"], "obj.npz: key 'x' cannot be read"),
    ],
)
def test_errors_before_training(args, match, tmp_path, capsys):
    np.savez(tmp_path / "float.npz", x=np.zeros((4, 1, 8, 8), np.float32))
    np.savez(tmp_path / "odd.npz", x=np.zeros((40, 1, 6, 6), np.uint8))
    np.savez(tmp_path / "rgb.npz", x=np.zeros((58, 3, 8, 8), np.uint8))
    np.savez(tmp_path / "hwc.npz", x=np.zeros((40, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "bins.npz", x=np.zeros((40, 1, 8, 8), np.uint8), n_bins=np.array([17, 17]))
    np.savez(tmp_path / "obj.npz", x=np.array([None], dtype=object))
    (tmp_path / "extra.json").write_text(json.dumps({"model": "glow", "trian": {"steps": 2}}))
    (tmp_path / "squeeze.json").write_text(json.dumps({"model": "haar_squeeze"}))
    (tmp_path / "grey.json").write_text(json.dumps({"model": {"type": "glow", "image_shape": [1, 8, 8]},
                                                    "train": {"steps": 2}}))
    paths = {name: tmp_path / f"{name}.{'json' if name in ('extra', 'grey', 'squeeze') else 'npz'}"
             for name in ("float", "odd", "rgb", "hwc", "bins", "obj", "extra", "grey", "squeeze")}
    args = [a.format(**paths) for a in args]
    assert main([*args, "--out", str(tmp_path / "out")] if args[0] == "train" else args) == 2


    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_out_naming_a_file_or_a_path_under_one(where, tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    out = tmp_path / "taken" if where == "file" else tmp_path / "taken" / "run"
    assert main([*TRAIN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowplug: error: --out")
    assert ("existing file" if where == "file" else "which is a file") in err


def test_sample_writes_beside_the_run_zooms_and_refuses_bad_counts(run_folder, tmp_path, capsys):
    from PIL import Image

    checkpoint = sorted((run_folder / "checkpoints").glob("step-*.pt"))[-1]
    assert main(["sample", str(checkpoint), "--num", "4", "--temperature", "0.7", "--device", "cpu"]) == 0
    default = run_folder / "samples" / f"{checkpoint.stem}-t0.7.png"
    assert Image.open(default).size >= (256, 256)  # 2x2 grid of 8x8 digits, upscaled to stay readable
    assert main(["sample", str(checkpoint), "--num", "4", "--zoom", "2", "--out", str(tmp_path / "z.png")]) == 0
    assert Image.open(tmp_path / "z.png").size == (2 * 19, 2 * 19)  # 2 images of 8 + 3 pixels of padding
    capsys.readouterr()
    assert main(["sample", str(checkpoint), "--num", "-1", "--out", str(tmp_path / "n.png")]) == 2
    assert "flowplug: error: num_samples must be a positive integer, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("error", [FloatingPointError("non-finite loss at step 3"),
                                   ODESolverError("the ODE solver failed")])
def test_a_diverging_run_is_one_error_line(error, monkeypatch, tmp_path, capsys):
    def diverge(*args, **kwargs):
        raise error

    monkeypatch.setattr(Trainer, "fit", diverge)
    assert main([*TRAIN, "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"flowplug: error: {error}\n"
    with pytest.raises(type(error)):
        main(["--debug", *TRAIN, "--out", str(tmp_path / "run2")])


def test_a_user_error_prints_no_traceback_unless_debug(tmp_path):
    command = [sys.executable, "-m", "flowplug", "train", "--recipe", "glow", "--objective", "flow_matching",
               "--out", str(tmp_path / "run")]
    quiet = subprocess.run(command, capture_output=True, text=True)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines() == [
        "flowplug: error: phases[0]: the flow_matching objective trains CNFs and glow has none; "
        "train it with the likelihood objective"]
    loud = subprocess.run([command[0], "-m", "flowplug", "--debug", *command[3:]], capture_output=True, text=True)
    assert loud.returncode == 1 and "Traceback" in loud.stderr


def test_sample_refuses_an_infinite_temperature_and_a_huge_zoom(run_folder, tmp_path, capsys):
    checkpoint = str(sorted((run_folder / "checkpoints").glob("step-*.pt"))[-1])
    assert main(["sample", checkpoint, "--temperature", "inf", "--out", str(tmp_path / "t.png")]) == 2
    assert "--temperature must be a positive finite number, got inf" in capsys.readouterr().err
    assert main(["sample", checkpoint, "--zoom", "100000", "--out", str(tmp_path / "z.png")]) == 2
    assert "pixels a side; at most 16384" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists() and not (tmp_path / "z.png").exists()


def test_a_non_finite_evaluation_is_an_error(run_folder, monkeypatch, capsys):
    checkpoint = str(sorted((run_folder / "checkpoints").glob("step-*.pt"))[-1])
    monkeypatch.setattr(Trainer, "evaluate", lambda self, data, **options: {"bpd": float("nan")})
    assert main(["evaluate", checkpoint, "--device", "cpu"]) == 2
    assert "flowplug: error: the checkpoint's BPD on digits[held-out] is nan" in capsys.readouterr().err


def test_sample_and_evaluate_take_a_fixed_grid_or_a_tolerance(tmp_path, capsys, monkeypatch):
    out = tmp_path / "cnf"
    small = '{"hidden_channels": 8, "num_blocks": 1, "eval_solver": {"method": "rk4", "steps": 1}}'
    assert main(["train", "--recipe", "mrcnf", "--steps", "1", "--batch-size", "16", "--no-progress",
                 "--model-options", small, "--out", str(out)]) == 0
    checkpoint = str(out / "checkpoints" / "best.pt")
    capsys.readouterr()
    assert main(["evaluate", checkpoint, "--steps", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 2 and result["nfe"] == 3 * 4 * 2  # three levels, rk4's four evaluations a step
    given = []

    def spy(model, **options):
        given.append(options)
        return cnf_settings(model, **options)

    monkeypatch.setattr(flowplug.cli, "cnf_settings", spy)
    assert main(["evaluate", checkpoint, "--tolerance", "1e-3"]) == 0
    assert json.loads(capsys.readouterr().out)["tolerance"] == 1e-3 and given == [{"steps": None, "tolerance": 1e-3}]
    assert main(["evaluate", checkpoint, "--tolerance", "1e-3,1e-3,1e-2"]) == 0  # one per level, finest first
    assert json.loads(capsys.readouterr().out)["tolerance"] == [1e-3, 1e-3, 1e-2]
    assert given[-1] == {"steps": None, "tolerance": [1e-3, 1e-3, 1e-2]}
    assert main(["evaluate", checkpoint, "--tolerance", "1e-3,1e-2"]) == 2
    assert "2 values of tolerance given, one per level, but the model has 3 levels" in capsys.readouterr().err
    assert main(["sample", checkpoint, "--steps", "3", "--num", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main(["sample", checkpoint, "--steps", "0", "--out", str(tmp_path / "0.png")]) == 2
    assert "steps must be an integer from 1 to 1000, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", checkpoint, "--steps", "2", "--tolerance", "1e-3"])
    assert "not allowed with argument" in capsys.readouterr().err
