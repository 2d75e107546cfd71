"""What a trained CNF model's evaluation and sampling cost with each solver, and what the cheaper solvers lose.

    python benchmarks/solver_cost.py RUN_OR_CHECKPOINT --data FILE [--glow GLOW_RUN] [--images 100] [--reference 1e-5]

For a trained multi-resolution (or single-resolution) CNF checkpoint, on its own held-out images (the split its
training run recorded, :func:`flowplug.train.splits.evaluation_split`), the script prints one table row per
solver setting: the reference (dopri5 at ``--reference``, default the tolerance of the model's finest level's
evaluation solver, which is 3e-3 for the ``mrcnf`` recipe), the model's own solvers (the ``mrcnf`` recipe's
per-level evaluation tolerances and sampling grids), rows of one tolerance or one grid per level
(``--level-tolerances 3e-3,3e-3,1e-2``, ``--level-steps 2,4,4``, each repeatable), looser tolerances, and fixed
rk4 grids of a few steps (``flowplug evaluate/sample --steps N``):

- held-out BPD, its difference to the reference (the same dequantisation noise and Hutchinson probes in every
  row, so the difference is the solver's error alone) and function evaluations (NFE) per image, summed over the
  levels;
- sampling from **the same latents** in every row, images alone as ``flowplug sample`` draws them
  (:func:`flowplug.cnf.without_log_det`): the largest and the mean absolute pixel difference to the reference's
  images (pixels in [0, 1]; one 8-bit grey level is 1/256 = 0.0039) and seconds per image, and the seconds per
  image of the same draw with its log-density (``model.sample``'s work);
- with ``--glow``, a Glow checkpoint's sampling time per image, measured in the same process, and each row's
  ratio to it.

Timings are CPU seconds of this process (``time.process_time``, one thread unless ``--threads``), so work that
shares the cores slows them less than the wall clock; compare ratios within one run. ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import flowplug  # noqa: F401  (thread policy before torch)

# isort: split

import torch

from flowplug.cnf import without_log_det
from flowplug.threads import set_threads
from flowplug.train import load_checkpoint
from flowplug.train.checkpoint import build_model
from flowplug.train.evaluation import cnf_settings, count_nfe, evaluate
from flowplug.train.run_folder import RunFolder
from flowplug.train.splits import evaluation_split

TOLERANCES = (1e-4, 3e-4, 1e-3, 3e-3)
STEPS = (1, 2, 4, 8, 16)


def _settings(reference_tolerance: float, level_tolerances: list[list[float]] = (),
              level_steps: list[list[int]] = ()) -> list[tuple[str, dict[str, Any]]]:
    """The rows' solver settings, the reference first, then the given per-level ones (finest level first). Every
    row but the model's own sets the solver, so that a model's own sampling solver (``sample_solver``, e.g. the
    ``mrcnf`` recipe's rk4 grid) never stands in for a row's."""
    rows = [(f"dopri5 {reference_tolerance:g} (reference)", {"tolerance": reference_tolerance}),
            ("the model's own solvers", {})]
    rows += [(f"dopri5 {' / '.join(f'{t:g}' for t in tols)} per level", {"tolerance": tols})
             for tols in level_tolerances]
    rows += [(f"rk4 {' / '.join(map(str, steps))} steps per level", {"steps": steps}) for steps in level_steps]
    rows += [(f"dopri5 {tol:g}", {"tolerance": tol}) for tol in TOLERANCES if tol > reference_tolerance]
    rows += [(f"rk4 {n} steps", {"steps": n}) for n in STEPS]
    return rows


def _checkpoint_path(given: str) -> Path:
    """A checkpoint file, or a run folder's ``best.pt``."""
    path = Path(given)
    return RunFolder(path).best if path.is_dir() else path


def _latents(model: torch.nn.Module, n: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    return [torch.randn(n, *level.shape, generator=generator, dtype=dtype) for level in model.levels]


def _timed(function: Any) -> tuple[Any, float]:
    start = time.process_time()
    result = function()
    return result, time.process_time() - start


def measure(checkpoint_path: Path, data_name: str, images: int, samples: int, glow: Path | None,
            seed: int = 0, reference: float | None = None, level_tolerances: list[list[float]] = (),
            level_steps: list[list[int]] = ()) -> dict[str, Any]:
    """The table's rows for the CNF checkpoint (and Glow's sampling time); ``reference``: the reference row's
    tolerance (default: that of the checkpoint's finest level's evaluation solver); ``level_tolerances`` and
    ``level_steps``: further rows of one tolerance or one number of rk4 steps per level."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = build_model(checkpoint, use_ema=True).eval()
    data = evaluation_split(checkpoint, data_name, "held-out").first(images)
    own_tolerance = next(m.eval_solver.atol for m in model.modules() if hasattr(m, "eval_solver"))
    reference_tolerance = own_tolerance if reference is None else reference
    latents = _latents(model, samples, seed)
    rows, reference_images = [], None
    for name, options in _settings(reference_tolerance, level_tolerances, level_steps):
        with cnf_settings(model, **options):
            result, eval_s = _timed(lambda: evaluate(model, data, seed=seed, batch_size=images))
            with torch.no_grad():
                _, log_q_sample_s = _timed(lambda: model.forward_and_log_det(latents))
                with without_log_det(model):
                    (sampled, _), sample_s = _timed(lambda: model.forward_and_log_det(latents))
                sample_nfe = count_nfe(model)
        if reference_images is None:
            reference_images, reference_bpd = sampled, result["bpd"]
        difference = (sampled - reference_images).abs()
        rows.append({"solver": name, "bpd": result["bpd"], "bpd_error": result["bpd"] - reference_bpd,
                     "nfe": result["nfe"], "eval_s_per_image": eval_s / images,
                     "sample_nfe": sample_nfe, "sample_max_error": float(difference.max()),
                     "sample_mean_error": float(difference.mean()), "sample_s_per_image": sample_s / samples,
                     "log_q_sample_s_per_image": log_q_sample_s / samples})
    out: dict[str, Any] = {"checkpoint": str(checkpoint_path), "data": data.name, "images": images,
                           "samples": samples, "rows": rows}
    if glow is not None:
        glow_model = build_model(load_checkpoint(glow), use_ema=True).eval()
        torch.manual_seed(seed)
        with torch.no_grad():
            _, glow_s = _timed(lambda: glow_model.sample(samples))
        out["glow_sample_s_per_image"] = glow_s / samples
    return out


def table(result: dict[str, Any]) -> str:
    """The rows as a markdown table."""
    glow = result.get("glow_sample_s_per_image")
    lines = [f"{result['data']}: {result['images']} held-out images, {result['samples']} samples from the same "
             "latents" + (f"; Glow samples in {glow:.4f} s per image" if glow else ""),
             "| solver | BPD | Δ BPD | NFE / image | eval s / image | max Δ pixel | mean Δ pixel | sample s / image"
             " | with log q" + (" | × Glow |" if glow else " |"),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if glow else "")]
    for r in result["rows"]:
        ratio = f" {r['sample_s_per_image'] / glow:.1f} |" if glow else ""
        lines.append(f"| {r['solver']} | {r['bpd']:.4f} | {r['bpd_error']:+.4f} | {r['nfe']:.0f} | "
                     f"{r['eval_s_per_image']:.3f} | {r['sample_max_error']:.4f} | {r['sample_mean_error']:.5f} | "
                     f"{r['sample_s_per_image']:.3f} | {r['log_q_sample_s_per_image']:.3f} |{ratio}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a CNF model's checkpoint or run folder (its best.pt)")
    parser.add_argument("--data", required=True, help="the data set the run trained on")
    parser.add_argument("--glow", help="a Glow checkpoint or run folder whose sampling time is the yardstick")
    parser.add_argument("--images", type=int, default=100, help="held-out images scored (one batch)")
    parser.add_argument("--samples", type=int, default=16, help="images sampled per row")
    parser.add_argument("--reference", type=float,
                        help="the reference row's dopri5 tolerance (default: the checkpoint's evaluation solver's; "
                             "1e-5 for a model of the mrcnf recipe, which evaluates at 3e-3)")
    parser.add_argument("--level-tolerances", action="append", default=[], metavar="TOL,TOL,...",
                        type=lambda text: [float(t) for t in text.split(",")],
                        help="a further row: dopri5 at one tolerance per level, finest first (repeatable)")
    parser.add_argument("--level-steps", action="append", default=[], metavar="N,N,...",
                        type=lambda text: [int(n) for n in text.split(",")],
                        help="a further row: one number of rk4 steps per level, finest first (repeatable)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    set_threads(args.threads)
    glow = _checkpoint_path(args.glow) if args.glow else None
    result = measure(_checkpoint_path(args.checkpoint), args.data, args.images, args.samples, glow,
                     reference=args.reference, level_tolerances=args.level_tolerances, level_steps=args.level_steps)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
