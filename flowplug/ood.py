"""Out-of-distribution detection by resolution level: per-image bits per dimension, AUROC and histograms.

A model trained on one data set scores every image of a reference set (in-distribution, e.g. its held-out
images) and of other sets. Each score is a per-image bits per dimension (``docs/design.md`` §3): ``bpd``, the
total, and with ``per_level`` each level's share ``level{s}_bpd`` (level 0 the finest details, level ``S-1``
the coarsest image; the shares sum to ``bpd - log2(n_bins)``). **Higher scores are taken as more anomalous**:
the AUROC of a score is the probability that an image of the other set scores higher than one of the reference
set (ties count half). An AUROC below 0.5 means the other set looks *more* likely under that score; it is
reported as it is, never flipped.

Per-image scores and the trace: CNF log-likelihoods use a Hutchinson trace by default, unbiased in the mean
over a set but noisy for one image. ``trace="hutchinson"`` averages ``probes`` independent solves per image and
records, for ``probes >= 2``, each image's standard deviation of a one-probe score (the mean's is that over
``√probes``); ``trace="exact"`` computes the trace exactly (``D`` vector-Jacobian products per function
evaluation for a level of ``D`` dimensions: exact, but hundreds of times the cost). Dequantisation noise and
probes are drawn from ``seed`` as in :func:`flowplug.train.evaluation.evaluate`, so a score is reproducible
given the seed and batch size.

The AUROC is scipy's Mann-Whitney U statistic divided by ``n_ref · n_other`` (scipy: the ``ood`` or ``test``
extra); the histograms need matplotlib (the ``ood`` or ``bench`` extra).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowplug.cnf.flow import DIVERGENCES
from flowplug.data import ImageData
from flowplug.metrics import bits_per_dim, level_bits_per_dim
from flowplug.models.base import FlowModel
from flowplug.train.evaluation import cnf_settings, evaluation_inputs, level_terms

__all__ = ["ImageScores", "auroc", "auroc_table", "check_report_dependencies", "plot_histograms",
           "score_images", "write_report"]


def check_report_dependencies() -> None:
    """Raise ``ImportError`` naming the extra to install when scipy (AUROC) or matplotlib (histograms) is
    missing, e.g. before minutes of scoring whose report could not be written."""
    _scipy_mannwhitneyu()
    _pyplot()


def _scipy_mannwhitneyu() -> Any:
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        raise ImportError("the AUROC needs scipy: pip install 'flowplug[ood]'") from None
    return mannwhitneyu


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the histograms need matplotlib: pip install 'flowplug[ood]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


@dataclass(frozen=True)
class ImageScores:
    """Per-image scores of one data set: ``scores[name]`` is an array ``(N,)`` of bits per dimension.

    ``probe_sd[name]`` (Hutchinson with two or more probes) is each image's standard deviation of a one-probe
    score, estimated from its probes (with Bessel's correction; from two probes it is ``|a - b| / √2``);
    ``image_shape`` is the scored images' ``(C, H, W)``.
    """

    name: str
    image_shape: tuple[int, int, int]
    scores: dict[str, np.ndarray]
    probe_sd: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.scores.values())))


@torch.no_grad()
def score_images(
    model: FlowModel,
    data: ImageData,
    *,
    per_level: bool = False,
    trace: str = "hutchinson",
    probes: int = 1,
    seed: int = 0,
    batch_size: int = 100,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> ImageScores:
    """Per-image bits per dimension of every image of ``data`` under ``model`` (in eval mode).

    ``per_level`` adds each level's share and needs a multi-resolution model (two or more levels).
    ``probes`` Hutchinson solves are averaged per image (``trace="hutchinson"``); ``trace="exact"`` takes one.
    """
    if trace not in DIVERGENCES:
        raise ValueError(f"unknown trace {trace!r}; expected one of {DIVERGENCES}")
    for name, value in (("probes", probes), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if trace == "exact" and probes != 1:
        raise ValueError("probes average Hutchinson estimates; the exact trace takes probes=1")
    if len(data) == 0:
        raise ValueError(f"{data.name} has no images to score")
    device = torch.device(device)
    dims = math.prod(data.image_shape)
    inputs = evaluation_inputs(data, seed, dtype)
    with torch.random.fork_rng(devices=[]), cnf_settings(model, trace=trace):
        torch.manual_seed(seed)
        # probes x (levels, images): each probe is one pass of the evaluation path over all images
        draws = [torch.cat([terms.cpu() for terms in level_terms(model, inputs, batch_size=batch_size,
                                                                 device=device)], dim=1) for _ in range(probes)]
    if per_level and draws[0].shape[0] < 2:
        raise ValueError(f"per-level scores need a multi-resolution model; this {type(model).__name__} has one "
                         "level")
    levels = torch.stack(draws)  # (probes, levels, images)
    per_probe = {"bpd": bits_per_dim(list(levels.unbind(1)), dims, data.n_bins)}
    if per_level:
        shares = level_bits_per_dim(list(levels.unbind(1)), dims)
        per_probe.update({f"level{s}_bpd": share for s, share in enumerate(shares)})
    scores = {name: values.mean(0).numpy() for name, values in per_probe.items()}
    for name, values in scores.items():
        if not np.isfinite(values).all():
            raise FloatingPointError(f"{data.name}: {int((~np.isfinite(values)).sum())} image(s) have a "
                                     f"non-finite {name}")
    probe_sd = {name: values.std(0, correction=1).numpy() for name, values in per_probe.items()} if probes > 1 else {}
    return ImageScores(data.name, data.image_shape, scores, probe_sd)


def auroc(reference: np.ndarray, other: np.ndarray) -> float:
    """Area under the ROC curve of telling ``other`` from ``reference`` by a higher score: P(other > reference),
    ties counted half; scipy's Mann-Whitney U of ``other`` over ``len(reference) · len(other)``."""
    mannwhitneyu = _scipy_mannwhitneyu()
    reference, other = np.asarray(reference, dtype=float), np.asarray(other, dtype=float)
    if reference.ndim != 1 or other.ndim != 1 or not len(reference) or not len(other):
        raise ValueError("AUROC needs two non-empty one-dimensional score arrays")
    return float(mannwhitneyu(other, reference).statistic / (len(reference) * len(other)))


def auroc_table(reference: ImageScores, others: Sequence[ImageScores]) -> list[dict[str, Any]]:
    """One row per other set: ``{"reference", "other", "auroc": {score: AUROC}}`` for every shared score."""
    rows = []
    for other in others:
        if other.image_shape != reference.image_shape:
            raise ValueError(f"{other.name} has images {other.image_shape} and {reference.name} "
                             f"{reference.image_shape}; OOD scores compare sets of one image shape")
        if other.scores.keys() != reference.scores.keys():
            raise ValueError(f"{other.name} and {reference.name} were scored differently: "
                             f"{sorted(other.scores)} vs {sorted(reference.scores)}")
        rows.append({"reference": reference.name, "other": other.name,
                     "auroc": {name: auroc(reference.scores[name], other.scores[name])
                               for name in reference.scores}})
    return rows


def _markdown(sets: Sequence[ImageScores], table: list[dict[str, Any]]) -> str:
    reference = sets[0]
    lines = []
    for row, other in zip(table, sets[1:], strict=True):
        lines += [f"{other.name} against {reference.name} (AUROC: P(score of {other.name} > score of "
                  f"{reference.name}); higher score = more anomalous)", "",
                  f"| score | mean {reference.name} | mean {other.name} | AUROC |", "|---|---|---|---|"]
        lines += [f"| {name} | {reference.scores[name].mean():.4f} | {other.scores[name].mean():.4f} | "
                  f"{value:.4f} |" for name, value in row["auroc"].items()]
        lines.append("")
    return "\n".join(lines)


def plot_histograms(sets: Sequence[ImageScores], path: str | Path, bins: int = 50) -> None:
    """One panel per score, the sets' per-image score histograms overlaid (densities), saved as a PNG."""
    plt = _pyplot()
    names = list(sets[0].scores)
    figure, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        values = np.concatenate([s.scores[name] for s in sets])
        edges = np.histogram_bin_edges(values, bins=bins)
        for s in sets:  # a set named by a path is labelled by its last part
            axis.hist(s.scores[name], bins=edges, density=True, alpha=0.5, label=f"{Path(s.name).name} ({len(s)})")
        axis.set_xlabel(f"{name} (bits/dim)")
        axis.set_yticks([])
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", ncol=len(sets), fontsize="small")
    figure.tight_layout(rect=(0, 0, 1, 0.9))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(sets: Sequence[ImageScores], out: str | Path, info: dict[str, Any] | None = None) -> str:
    """Write ``scores.csv`` (one row per image), ``summary.json``, ``auroc.md`` and ``histograms.png`` into the
    folder ``out``; ``sets[0]`` is the reference set. Returns the markdown table. ``info`` (e.g. the checkpoint
    and settings) goes into the summary as it is; with probes, the summary gives each set's root-mean-square
    one-probe standard deviation per score (the mean of ``K`` probes has ``1/√K`` of it)."""
    if len(sets) < 2:
        raise ValueError("OOD scores compare a reference set with at least one other set")
    table = auroc_table(sets[0], sets[1:])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(sets[0].scores)
    noise = [f"{name}_probe_sd" for name in names] if sets[0].probe_sd else []
    with open(out / "scores.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["data", "index", *names, *noise])
        for s in sets:
            columns = [s.scores[n] for n in names] + [s.probe_sd[n] for n in names if noise]
            for i, values in enumerate(zip(*columns, strict=True)):
                writer.writerow([s.name, i, *(f"{v:.6f}" for v in values)])
    summary = {
        **(info or {}),
        "sets": [{"name": s.name, "num_images": len(s),
                  "mean": {n: float(s.scores[n].mean()) for n in names},
                  **({"rms_one_probe_sd": {n: float(np.sqrt(np.mean(s.probe_sd[n] ** 2))) for n in names}}
                     if s.probe_sd else {})} for s in sets],
        "auroc": table,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    markdown = _markdown(sets, table)
    (out / "auroc.md").write_text(markdown)
    plot_histograms(sets, out / "histograms.png")
    return markdown
