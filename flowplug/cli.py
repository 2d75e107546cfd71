"""The ``flowplug`` command: ``train``, ``sample``, ``evaluate``, ``ood`` and ``info``.

``flowplug train`` with no arguments trains the default model (MRCNF) on the embedded digits and
writes a run folder under ``runs/``. Every bad name, path or option is reported before training
starts, as ``flowplug: error: ...`` with exit status 2, as is a run stopped by non-finite values;
``flowplug --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from flowplug.cnf.solver import ODESolverError
from flowplug.data import DATASET_NAMES, ImageData, has_own_held_out, load_dataset
from flowplug.registry import KINDS, build, components, get_component
from flowplug.threads import THREADS_ENV, WAIT_POLICY_ENV, set_threads
from flowplug.train import CheckpointError, TrainConfig, Trainer, distributed, load_checkpoint, objectives
from flowplug.train.config import CLOCKS, PRECISIONS
from flowplug.train.feedback import save_image_grid
from flowplug.train.growth import load_parent
from flowplug.train.rotation import load_latest

__all__ = ["DEFAULT_MODEL", "OLD_LEVELS", "PRESETS", "main"]

DEFAULT_MODEL = "mrcnf"
OLD_LEVELS = ("frozen", "fine-tune")
"""``flowplug train --grow-from ... --old-levels``: keep the parent's levels fixed (as the paper does) or train
them together with the new finest level."""

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # Flow matching trains the CNF levels without ODE solves; evaluation is exact likelihood.
    # Residual level nets and logit alpha 1e-3 (issue 11): on the embedded digits, 1,000 steps in
    # 50 CPU-s (1 thread) reach held-out 2.31 bits/dim; the conv-net preset before reached 2.91 in
    # 2,000 steps and 48 CPU-s (docs/benchmarks.md).
    "mrcnf": {"model": {"levels": 3, "net": "res_odenet",
                        "net_options": [{"hidden_channels": 64, "num_blocks": 1},
                                        {"hidden_channels": 64, "num_blocks": 2},
                                        {"hidden_channels": 64, "num_blocks": 2}],
                        "logit_alpha": 1e-3},
              "train": {"objective": "flow_matching", "steps": 1000, "batch_size": 128,
                        "lr": 2e-3, "eval_every": 250}},
    "single_resolution_cnf": {"model": {"hidden_channels": 64},
                              "train": {"objective": "flow_matching", "steps": 2000,
                                        "batch_size": 128, "lr": 2e-3, "eval_every": 500}},
    "glow": {"model": {"levels": 2, "depth": 4, "hidden_channels": 32},
             "train": {"steps": 500, "batch_size": 64}},
    "realnvp": {"model": {"levels": 2, "depth": 3, "hidden_channels": 32},
                "train": {"steps": 500, "batch_size": 64}},
}
"""Per-model defaults for ``flowplug train --model NAME``: model keyword arguments (besides
``image_shape``) and trainer options used when the command line does not set them."""


def _level_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be comma-separated integers, got {text!r}") from None


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of net options, got {text!r}")
    return value


def _model_spec(args: argparse.Namespace, data: ImageData,
                resumed: dict[str, Any] | None) -> tuple[dict[str, Any], dict]:
    """The model spec and the trainer options the model or config file brings; a resume without
    ``--model`` or ``--config`` rebuilds the checkpoint's own model (a grown one too)."""
    if resumed is not None and args.model is None and args.config is None:
        spec, train = dict(resumed["model_config"]), {}
    elif args.config is not None:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"config file {str(path)!r} is not valid JSON: {error}") from None
        if not isinstance(config, dict) or "model" not in config:
            raise ValueError(f"config file {str(path)!r} needs a 'model' spec "
                             "(and optionally 'train' options)")
        unknown = sorted(set(config) - {"model", "train"})
        if unknown:
            raise ValueError(f"config file {str(path)!r} has unknown top-level key(s) {unknown}; "
                             "it holds 'model' and optionally 'train'")
        spec = config["model"] if isinstance(config["model"], dict) else {"type": config["model"]}
        train = config.get("train", {})
    else:
        name = args.model or DEFAULT_MODEL
        preset = PRESETS.get(name, {"model": {}, "train": {}})
        spec, train = {"type": name, **preset["model"]}, dict(preset["train"])
    info = get_component(spec.get("type", ""))
    if info.kind != "model":
        raise ValueError(f"{info.name!r} is a {info.kind}, not a model; models: "
                         f"{', '.join(components('model'))}")
    spec.setdefault("image_shape", list(data.image_shape))
    if list(spec["image_shape"]) != list(data.image_shape):
        raise ValueError(f"the model spec is for images {tuple(spec['image_shape'])} (C, H, W) but {data.name} "
                         f"has {data.image_shape}: {_shape_difference(spec['image_shape'], data.image_shape)}")
    return spec, train


def _shape_difference(model: Sequence[int], data: Sequence[int]) -> str:
    """What differs between a model's image shape and the data's, channels first."""
    if model[0] != data[0]:
        return f"{model[0]} channel(s) in the model, {data[0]} in the data"
    return f"size {tuple(model[1:])} in the model, {tuple(data[1:])} in the data"


def _check_out(path: Path, folder: bool) -> None:
    """Refuse an output path that cannot be created: an existing file where a folder goes (``folder``), an
    existing folder where a file goes, or a path under an existing file."""
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"--out {str(path)!r} is an existing {'file' if folder else 'folder'}; "
                         f"name a {'folder' if folder else 'file'}")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"--out {str(path)!r} lies under {str(parent)!r}, which is a file")


_TRAIN_FLAGS = ("steps", "epochs", "minutes", "clock", "batch_size", "accumulation", "lr", "ema_decay", "precision",
                "seed", "objective", "likelihood_after", "likelihood_minutes", "likelihood_lr", "trainable_levels",
                "likelihood_levels", "hflip", "eval_every", "sample_every", "checkpoint_every", "num_samples",
                "temperature")
"""The :class:`TrainConfig` fields ``flowplug train`` offers as flags (``--batch-size`` for ``batch_size``); a
flag that is not given leaves the preset's or config file's value, or the field's default."""
_FLAG_NAMES = {"trainable_levels": "levels"}
_LEVEL_FLAGS = ("trainable_levels", "likelihood_levels")
_FLAG_HELP = {
    "objective": "training objective (CNF models can use flow_matching; a spec with parameters goes in "
                 "a --config file)",
    "likelihood_after": "start the likelihood fine-tuning phase at this step (from the EMA weights, with fresh "
                        "optimiser moments)",
    "likelihood_minutes": "start the likelihood phase when this many minutes of the --minutes budget are left",
    "likelihood_lr": "learning rate of the likelihood phase (default: the run's schedule goes on)",
    "trainable_levels": "train only these levels of a multi-level model (e.g. 0,1)",
    "likelihood_levels": "train only these levels in the likelihood phase (e.g. 0); the others are frozen and "
                         "not solved in its steps",
    "hflip": "random left-right flips",
    "clock": "what --minutes counts: wall (elapsed) or process (this process's CPU seconds, for shared machines)",
}


def _flag_type(name: str) -> Any:
    """The argparse type of a TrainConfig field: its annotation without ``None`` (objective: a name)."""
    if name in _LEVEL_FLAGS:
        return _level_list
    if name == "objective":
        return str
    annotation = typing.get_type_hints(TrainConfig)[name]
    if isinstance(annotation, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    choices = {"precision": PRECISIONS, "objective": objectives(), "clock": CLOCKS}
    for name in _TRAIN_FLAGS:
        flag = "--" + _FLAG_NAMES.get(name, name).replace("_", "-")
        kind = _flag_type(name)
        if kind is bool:
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=_FLAG_HELP.get(name))
        else:
            parser.add_argument(flag, dest=name, type=kind, choices=choices.get(name),
                                metavar="S[,S...]" if name in _LEVEL_FLAGS else None,
                                help=_FLAG_HELP.get(name))


def _trainer_config(args: argparse.Namespace, preset: dict[str, Any]) -> TrainConfig:
    options = dict(preset)
    budgets = ("steps", "epochs", "minutes")
    if any(getattr(args, key) is not None for key in budgets):
        for key in budgets:
            options.pop(key, None)
    for key in _TRAIN_FLAGS:
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if args.minutes is not None and args.steps is None and args.epochs is None:
        options.setdefault("schedule", "constant")
    options["progress"] = not args.no_progress
    return TrainConfig.from_dict(options)


def _resumed_state(args: argparse.Namespace) -> dict[str, Any] | None:
    """The checkpoint ``--resume`` continues (its options are the defaults of the resumed run), if any."""
    if not args.resume:
        return None
    if args.out is None:
        raise ValueError("--resume continues the run in --out; name the run folder with --out")
    if args.resume is not True:
        return load_checkpoint(args.resume)
    found = load_latest(Path(args.out) / "checkpoints")
    return found[1] if found is not None else None


def _check_growth_flags(args: argparse.Namespace) -> None:
    """The flags that go with ``--grow-from``, and those that do not."""
    if args.grow_from is None:
        if args.old_levels is not None or args.new_level_net_options is not None:
            raise ValueError("--old-levels and --new-level-net-options apply to --grow-from")
        return
    if args.resume:
        raise ValueError("--grow-from starts a new run from a trained model; continue a grown run with "
                         "--resume alone")
    if args.trainable_levels is not None:
        raise ValueError("--levels cannot be combined with --grow-from, where --old-levels chooses the trained "
                         "levels (frozen: only the new level 0; fine-tune: all)")


def _parent(args: argparse.Namespace, data: ImageData) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``--grow-from``: the parent model, its record and the trainer options the grown run starts from (the
    parent run's, except its schedule when the flags give a budget, with the levels ``--old-levels`` trains)."""
    model, parent = load_parent(args.grow_from, data)
    # level indices shift by one in the grown model, so the parent's level choices do not carry over
    dropped = {"trainable_levels", "likelihood_levels", "progress", "checkpoint_every"}
    if any(getattr(args, key) is not None for key in ("steps", "epochs", "minutes")):
        dropped.add("schedule")  # the schedule follows the new budget
    preset = {k: v for k, v in (parent["trainer_config"] or {}).items() if k not in dropped}
    frozen = (args.old_levels or "frozen") == "frozen"
    preset["trainable_levels"] = [0] if frozen else list(range(model.num_levels + 1))
    return model, parent, preset


def _own_held_out(name: str, args: argparse.Namespace, split_flags: Sequence[str]) -> bool:
    """Whether data set ``name`` has its own held-out images; the ``split_flags`` given (``holdout``, evaluate's
    ``seed``) are refused for it, since they choose a split of the training images."""
    if not has_own_held_out(name):
        return False
    given = [f"--{flag}" for flag in split_flags if getattr(args, flag) is not None]
    if given:
        raise ValueError(f"{name} has its own held-out images (load_dataset(..., train=False)); "
                         f"{' and '.join(given)} choose a split of the training images and do not apply")
    return True


def _train(args: argparse.Namespace) -> int:
    _check_growth_flags(args)
    resumed = _resumed_state(args)
    data = load_dataset(args.data, root=args.data_root, size=args.size)
    parent_model, parent = None, None
    if args.grow_from is not None:
        parent_model, parent, preset = _parent(args, data)
    else:
        spec, preset = _model_spec(args, data, resumed)
    split: dict[str, Any] = {"holdout": 0.1}
    if resumed is not None:  # the run's own options, then a config file's, then the flags given
        preset = {**resumed["trainer_config"], **(preset if args.config is not None else {})}
        split = resumed["data"].get("split", split)
    config = _trainer_config(args, preset)
    if _own_held_out(args.data, args, ("holdout",)):
        train_data, val_data = data, load_dataset(args.data, train=False)
    else:
        train_data, val_data = data.split(args.holdout or split["holdout"], seed=config.seed)
    torch.manual_seed(config.seed)
    if parent_model is None:
        model, kind = build(spec), spec["type"]
    else:  # the new level's initialisation follows --seed
        model, kind = parent_model.grow(net_options=args.new_level_net_options), "mrcnf"
    if config.objective["type"] == "flow_matching" and not model.is_continuous:
        raise ValueError(f"the flow_matching objective trains CNFs and {kind} has none; "
                         "train it with --objective likelihood")
    out = Path(args.out or f"runs/{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
    _check_out(out, folder=True)
    if config.checkpoint_every is None:
        config.checkpoint_every = max(1, (config.steps or 1000) // 4)
    trainer = Trainer(model, config, out_dir=out, device=args.device, parent=parent)
    report = trainer.fit(train_data, val_data, resume=args.resume, overwrite=args.overwrite)
    if distributed.rank() == 0:
        print((out / "report.txt").read_text() if (out / "report.txt").exists() else report)
        print(f"run folder: {out}")
    return 0


def _restore(args: argparse.Namespace) -> tuple[Trainer, dict[str, Any]]:
    state = load_checkpoint(args.checkpoint)
    return Trainer.restore(state, device=args.device), state


def _sample(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else _samples_path(Path(args.checkpoint), args.temperature)
    _check_out(out, folder=False)
    trainer, _ = _restore(args)
    torch.manual_seed(args.seed)
    v = trainer.sample(args.num, args.temperature)
    save_image_grid(v, out, zoom=args.zoom)
    print(f"wrote {args.num} samples (temperature {args.temperature}) to {out}")
    return 0


_SEPARATE_TEST_SETS = ("cifar10", "mnist")
"""Datasets whose ``--split test`` is a separate set; for the others it is the training data itself."""


def _evaluation_data(args: argparse.Namespace, state: dict[str, Any], name: str, split: str) -> ImageData:
    """The ``split`` of data set ``name`` to score with the checkpoint ``state``; ``held-out`` is the checkpoint's
    own held-out images, or for data with their own held-out part (``crops<SIZE>``) that part (``test`` too;
    ``train`` their training images). A split that would score images the checkpoint was trained on as held out
    is refused, as are images of another shape or ``n_bins`` than the checkpoint's model."""
    if _own_held_out(name, args, ("holdout", "seed")):
        if split == "all":
            raise ValueError(f"{name} has a training and a held-out part; choose --split held-out or train")
        return _matching(load_dataset(name, train=split == "train", size=args.size), state)
    data = load_dataset(name, root=args.data_root, train=split != "test", size=args.size)
    trained = state["data"].get("split")
    same = trained is not None and trained["of"] == data.name
    if split in ("held-out", "train"):
        stored = trained if same else {"holdout": 0.1, "seed": 0}
        holdout = args.holdout if args.holdout is not None else stored["holdout"]
        seed = args.seed if args.seed is not None else stored["seed"]
        if same and (holdout, seed) != (trained["holdout"], trained["seed"]):
            raise ValueError(f"the checkpoint was trained on {data.name} with --holdout {trained['holdout']} "
                             f"--seed {trained['seed']}; another split would score its training images as "
                             "held out (leave --holdout and --seed out to use its own)")
        data = data.split(holdout, seed=seed)[split == "held-out"]
    elif same and (split == "all" or data.name not in _SEPARATE_TEST_SETS):
        raise ValueError(f"--split {split} of {data.name} includes the images the checkpoint was trained "
                         "on; use --split held-out (its own held-out images)")
    return _matching(data, state)


def _matching(data: ImageData, state: dict[str, Any]) -> ImageData:
    """``data``, after checking that its images have the shape and ``n_bins`` of the checkpoint's model."""
    expected = tuple(state["data"]["image_shape"]), state["data"]["n_bins"]
    if (data.image_shape, data.n_bins) != expected:
        raise ValueError(f"the checkpoint's model is for images {expected[0]} with n_bins="
                         f"{expected[1]}; {data.name} has {data.image_shape}, n_bins={data.n_bins}")
    return data


def _samples_path(checkpoint: Path, temperature: float) -> Path:
    """``<run>/samples/<checkpoint>-t<temperature>.png``: beside the run's own grids when the checkpoint lies in
    a run folder's ``checkpoints/``, else a ``samples/`` folder beside the checkpoint."""
    folder = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return folder / "samples" / f"{checkpoint.stem}-t{temperature:g}.png"


def _evaluate(args: argparse.Namespace) -> int:
    trainer, state = _restore(args)
    data = _evaluation_data(args, state, args.data, args.split)
    result = trainer.evaluate(data)
    print(json.dumps({"data": data.name, "step": state["step"], **result}, indent=2))
    return 0


def _ood(args: argparse.Namespace) -> int:
    from flowplug.ood import check_report_dependencies, score_images, write_report

    check_report_dependencies()
    if len(args.data) < 2:
        raise ValueError("flowplug ood needs two or more --data: the in-distribution set first, then the sets "
                         "to tell from it")
    if args.split is not None and len(args.split) != len(args.data):
        raise ValueError(f"give --split once per --data ({len(args.data)} times) or not at all")
    splits = args.split or ["held-out"] + ["all"] * (len(args.data) - 1)
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be a positive integer, got {args.max_images}")
    out = Path(args.out)
    _check_out(out, folder=True)
    trainer, state = _restore(args)
    sets = [_evaluation_data(args, state, name, split) for name, split in zip(args.data, splits, strict=True)]
    if args.max_images is not None:
        sets = [d.first(args.max_images) for d in sets]
    seed = args.score_seed if args.score_seed is not None else trainer.config.seed
    batch_size = args.batch_size if args.batch_size is not None else trainer.config.eval_batch_size
    scores = [score_images(trainer.eval_model(), d, per_level=args.per_level, trace=args.trace,
                           probes=args.probes, seed=seed, batch_size=batch_size, dtype=trainer.dtype,
                           device=trainer.device) for d in sets]
    info = {"checkpoint": str(args.checkpoint), "step": state["step"], "trace": args.trace,
            "probes": args.probes, "seed": seed, "batch_size": batch_size, "splits": splits}
    print(write_report(scores, out, info))
    print(f"wrote scores.csv, summary.json, auroc.md and histograms.png to {out}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from flowplug.train import resolve_device

    for kind in KINDS:
        names = components(kind)
        print(f"{kind}s ({len(names)}):")
        for name in names:
            info = get_component(name)
            print(f"  {name:42s} {info.source:10s} {info.summary}")
    print(f"datasets: {', '.join(DATASET_NAMES)}, or a path to an .npz file or image folder")
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"devices: cpu; cuda: {', '.join(cuda) if cuda else 'none'}; "
          f"mps: {'yes' if torch.backends.mps.is_available() else 'no'}; "
          f"auto picks {resolve_device('auto')}")
    print(f"torch {torch.__version__}; CPU threads: {torch.get_num_threads()} "
          f"(OpenMP wait policy: {os.environ.get(WAIT_POLICY_ENV, 'library default')})")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowplug", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model and write a run folder")
    which = train.add_mutually_exclusive_group()
    which.add_argument("--model", help=f"registered model name (default {DEFAULT_MODEL}; a resume: the run's)")
    which.add_argument("--config", help="JSON file with a 'model' spec and 'train' options")
    which.add_argument("--grow-from", metavar="RUN_OR_CHECKPOINT",
                       help="grow a trained MRCNF (a checkpoint, or a run folder's newest checkpoint) by a finer "
                            "level and train it on --data of twice its image size; the parent run's options "
                            "apply unless flags change them, and the run records its parent")
    train.add_argument("--old-levels", choices=OLD_LEVELS,
                       help="with --grow-from: keep the parent's levels frozen (default) or fine-tune them")
    train.add_argument("--new-level-net-options", type=_json_object, metavar="JSON",
                       help="with --grow-from: the new finest level's net options, e.g. "
                            "'{\"hidden_channels\": 64, \"num_blocks\": 1}' (default: the parent's finest "
                            "level's)")
    train.add_argument("--data", default="digits",
                       help=f"{', '.join(DATASET_NAMES)} or a path (default digits)")
    train.add_argument("--data-root", help="torchvision's data folder for cifar10/mnist")
    train.add_argument("--holdout", type=float,
                       help="held-out fraction (0.1; a resume keeps the run's; crops<SIZE> have their own "
                            "held-out crops)")
    _add_train_flags(train)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda[:i] or mps")
    train.add_argument("--out", help="run folder (default runs/<model>-<time>)")
    train.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                       help="continue the run in --out from its newest intact checkpoint, or from "
                            "CHECKPOINT (e.g. its checkpoints/best.pt); options given change the run "
                            "(applied and recorded) or are refused")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out instead of refusing")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    for name, run, text in (("sample", _sample, "save a PNG grid of samples from a checkpoint"),
                            ("evaluate", _evaluate, "BPD of a checkpoint on a dataset"),
                            ("ood", _ood, "out-of-distribution scores: per-image BPD of data sets (overall "
                                          "and per level), their AUROC against the first, histograms")):
        command = commands.add_parser(name, help=text)
        command.add_argument("checkpoint")
        command.add_argument("--device", default="auto")
        command.add_argument("--seed", type=int, default=0 if name == "sample" else None,
                             help="sampling seed" if name == "sample" else
                             "split seed (default: the checkpoint's)")
        command.set_defaults(run=run)
        if name == "sample":
            command.add_argument("--num", type=int, default=64)
            command.add_argument("--temperature", type=float, default=1.0)
            command.add_argument("--out", help="PNG path (default: <run>/samples/<checkpoint>-t<temperature>.png)")
            command.add_argument("--zoom", type=int,
                                 help="upscale the grid this many times (default: to at least 256 pixels a side)")
        elif name == "evaluate":
            command.add_argument("--data", default="digits")
            command.add_argument("--data-root")
            command.add_argument("--split", default="held-out",
                                 choices=("held-out", "train", "all", "test"),
                                 help="held-out (default)/train: the training run's split, as "
                                      "stored in the checkpoint; all; test: torchvision's test set "
                                      "(splits holding training images are refused)")
            command.add_argument("--holdout", type=float,
                                 help="held-out fraction (default: the checkpoint's)")
        else:
            command.add_argument("--data", action="append", required=True,
                                 help="a data set to score, given two or more times: the in-distribution set "
                                      "first (the reference), then the sets to tell from it")
            command.add_argument("--data-root")
            command.add_argument("--split", action="append", choices=("held-out", "train", "all", "test"),
                                 help="once per --data (default: held-out for the first, all for the others); "
                                      "as for evaluate, splits holding training images are refused")
            command.add_argument("--holdout", type=float,
                                 help="held-out fraction (default: the checkpoint's)")
            command.add_argument("--max-images", type=int, metavar="N",
                                 help="score only the first N images of each set")
            command.add_argument("--per-level", action="store_true",
                                 help="also score each level's share of the BPD (multi-resolution models)")
            command.add_argument("--trace", default="hutchinson", choices=("hutchinson", "exact"),
                                 help="CNF trace: hutchinson (default; averaged over --probes) or exact "
                                      "(D products per evaluation for D dimensions: slow, memory-hungry)")
            command.add_argument("--probes", type=int, default=1,
                                 help="Hutchinson probes averaged per image (default 1)")
            command.add_argument("--score-seed", type=int,
                                 help="seed of the dequantisation noise and probes (default: the checkpoint's)")
            command.add_argument("--batch-size", type=int,
                                 help="images per solve (default: the checkpoint's eval batch size)")
            command.add_argument("--out", required=True,
                                 help="folder for scores.csv, summary.json, auroc.md, histograms.png")
    for command in (train, commands.choices["evaluate"], commands.choices["ood"]):
        command.add_argument("--size", type=int, metavar="S",
                             help="for an image folder: resize each image's centred square to S x S "
                                  "(images of any sizes)")

    for command in commands.choices.values():
        command.add_argument("--threads", type=int, metavar="N",
                             help=f"CPU threads for torch (default: ${THREADS_ENV}, else one per core)")
    commands.add_parser("info", help="registered components and devices").set_defaults(run=_info, threads=None)
    return parser


_USER_ERRORS = (ValueError, TypeError, OSError, CheckpointError, NotImplementedError, FloatingPointError,
                ODESolverError, ImportError)
"""What the command line reports as one ``flowplug: error: ...`` line (exit status 2): bad input, unreadable or
unwritable paths, unsupported combinations, runs stopped by non-finite values, and a missing optional dependency
(its message names the extra to install) (``--debug`` shows the traceback)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 for a reported error)."""
    args = _parser().parse_args(argv)
    try:
        set_threads(args.threads)
        return args.run(args)
    except _USER_ERRORS as error:
        if args.debug:
            raise
        print(f"flowplug: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
