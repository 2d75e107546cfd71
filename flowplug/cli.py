"""The ``flowplug`` command: ``train``, ``sample``, ``evaluate``, ``ood``, ``recipes`` and ``info``.

``flowplug train`` with no arguments trains the default recipe (``mrcnf``, :mod:`flowplug.recipes`) fitted to
the embedded digits and writes a run folder under ``runs/``. The command parses its arguments into the objects
a Python user builds (a recipe plan, a :class:`~flowplug.train.TrainConfig`, a :class:`~flowplug.train.Trainer`);
the policies (splits, checkpoints, resume) are the library's. Every bad name, path or option is reported before training
starts, as ``flowplug: error: ...`` with exit status 2, as is a run stopped by non-finite values;
``flowplug --debug ...`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from flowplug import __version__
from flowplug.cnf.solver import ODESolverError
from flowplug.data import DATASET_NAMES, ImageData
from flowplug.recipes import DEFAULT_RECIPE, RecipePlan, load_recipe, plan, recipes
from flowplug.registry import KINDS, components, get_component
from flowplug.threads import THREADS_ENV, set_threads, wait_policy
from flowplug.train import CheckpointError, Trainer, distributed, load_checkpoint, objectives
from flowplug.train.budget import CLOCKS
from flowplug.train.config import PRECISIONS, TrainConfig, override_options
from flowplug.train.evaluation import cnf_settings
from flowplug.train.feedback import save_samples
from flowplug.train.growth import load_parent
from flowplug.train.run_folder import RunFolder
from flowplug.train.splits import SPLITS, RecordedData, evaluation_split, training_split
from flowplug.train.state import resume_point

__all__ = ["OLD_LEVELS", "main"]

OLD_LEVELS = ("frozen", "fine-tune")
"""``flowplug train --grow-from ... --old-levels``: keep the parent's levels fixed (as the paper does) or train
them together with the new finest level."""


def _level_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be comma-separated integers, got {text!r}") from None


def _per_level(kind: type, what: str) -> Any:
    """An argparse type: one number of ``kind`` (every level) or a comma-separated list of one per level (finest
    first), described as ``what`` in errors."""

    def parse(text: str) -> Any:
        try:
            values = [kind(s) for s in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}, or one per level separated by commas, got {text!r}") from None
        return values[0] if len(values) == 1 else values

    return parse


def _json(kind: type, what: str) -> Any:
    """An argparse type: JSON text holding a ``kind`` (a list or a dict), described as ``what`` in errors."""

    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
        if not isinstance(value, kind):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_json_object = _json(dict, "a JSON object")


def _config_file(path: str) -> dict[str, Any]:
    """A ``--config`` file: ``{"model": spec, "train": options}``."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {str(file)!r} does not exist")
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"config file {str(file)!r} is not valid JSON: {error}") from None
    if not isinstance(config, dict) or "model" not in config:
        raise ValueError(f"config file {str(file)!r} needs a 'model' spec (and optionally 'train' options)")
    unknown = sorted(set(config) - {"model", "train"})
    if unknown:
        raise ValueError(f"config file {str(file)!r} has unknown top-level key(s) {unknown}; "
                         "it holds 'model' and optionally 'train'")
    return config


def _plan(args: argparse.Namespace, data: ImageData, resumed: Any) -> RecipePlan:
    """What ``flowplug train`` builds: a recipe fitted to the data (``--recipe``, default ``mrcnf``) or a
    ``--config`` file's model and options, the flags over them. A resume keeps the run's own options (a config
    file's over them, then the flags) and, without ``--recipe`` or ``--config``, its own model."""
    flags = _train_flags(args)
    config = _config_file(args.config) if args.config is not None else None
    if config is not None:
        spec = config["model"] if isinstance(config["model"], dict) else {"type": config["model"]}
        spec = {"image_shape": list(data.image_shape), **spec, **(args.model_options or {})}
        fitted = RecipePlan(f"config file {args.config}", spec, override_options(config.get("train", {}), flags))
    elif resumed is not None and args.recipe is None:
        fitted = RecipePlan("the resumed checkpoint", {**resumed.model_config, **(args.model_options or {})}, {})
    else:
        fitted = plan(args.recipe or DEFAULT_RECIPE, data, model=args.model_options, train=flags)
    if resumed is not None:
        fitted.train = override_options({**(resumed.trainer_config or {}), **(config or {}).get("train", {})}, flags)
    fitted.train["progress"] = not args.no_progress
    info = get_component(fitted.model.get("type", ""))
    if info.kind != "model":
        raise ValueError(f"{info.name!r} is a {info.kind}, not a model; models: {', '.join(components('model'))}")
    if list(fitted.model["image_shape"]) != list(data.image_shape):
        raise ValueError(f"the model spec is for images {tuple(fitted.model['image_shape'])} (C, H, W) but "
                         f"{data.name} has {data.image_shape}: "
                         f"{_shape_difference(fitted.model['image_shape'], data.image_shape)}")
    return fitted


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
                "seed", "objective", "phases", "trainable_levels", "hflip", "eval_every", "eval_points",
                "sample_every", "checkpoint_every", "num_samples", "temperature")
"""The :class:`TrainConfig` fields ``flowplug train`` offers as flags (``--batch-size`` for ``batch_size``); a
flag that is not given leaves the recipe's, config file's or resumed run's value."""
_FLAG_NAMES = {"trainable_levels": "levels"}
_FLAG_HELP = {
    "steps": "train this many optimiser steps (a budget given replaces the recipe's whole budget)",
    "epochs": "train this many passes over the training images",
    "minutes": "train this many minutes (of --clock); evaluations and checkpoints do not count",
    "clock": "what --minutes counts: wall (elapsed) or process (this process's CPU seconds, for shared machines)",
    "batch_size": "images per optimiser step",
    "accumulation": "micro-batches per step (gradient accumulation)",
    "lr": "learning rate (the base of the schedule)",
    "ema_decay": "decay of the weights' moving average that evaluation and samples use",
    "precision": "number format (auto: bf16 on CUDA for discrete flows, float32 otherwise)",
    "seed": "seed of the model's initialisation, the data order, the noise and the held-out split",
    "objective": "the objective of a one-phase run (CNF models can use flow_matching); replaces the plan",
    "phases": "the training plan as JSON, e.g. '[{\"objective\": \"flow_matching\", \"until\": 0.65}, "
              "{\"objective\": \"likelihood\", \"levels\": [0], \"lr\": 0.002}]'",
    "trainable_levels": "train only these levels of a multi-level model (e.g. 0,1)",
    "hflip": "random left-right flips",
    "eval_every": "evaluate the held-out images every this many steps",
    "eval_points": "evaluate the held-out images at this many evenly spaced points of the budget",
    "sample_every": "save a grid of samples every this many steps",
    "checkpoint_every": "checkpoint every this many steps (default: at each quarter of the budget)",
    "num_samples": "images per saved grid",
    "temperature": "temperature of the saved grids",
}


def _flag_type(name: str) -> Any:
    """The argparse type of a TrainConfig field: its annotation without ``None`` (objective: a name)."""
    special = {"trainable_levels": _level_list, "objective": str, "phases": _json(list, "a JSON list of phases")}
    if name in special:
        return special[name]
    annotation = typing.get_type_hints(TrainConfig)[name]
    if isinstance(annotation, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    choices = {"precision": PRECISIONS, "objective": objectives(), "clock": CLOCKS}
    metavars = {"trainable_levels": "S[,S...]", "phases": "JSON"}
    for name in _TRAIN_FLAGS:
        flag = "--" + _FLAG_NAMES.get(name, name).replace("_", "-")
        kind = _flag_type(name)
        if kind is bool:
            parser.add_argument(flag, dest=name, action="store_true", default=None, help=_FLAG_HELP[name])
        else:
            parser.add_argument(flag, dest=name, type=kind, choices=choices.get(name), metavar=metavars.get(name),
                                help=_FLAG_HELP[name])


def _train_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The trainer options the flags give (``--objective`` alone replaces the plan: a one-phase run)."""
    flags = {key: getattr(args, key) for key in _TRAIN_FLAGS if getattr(args, key) is not None}
    if "objective" in flags and "phases" not in flags:
        flags["phases"] = None
    return flags


def _resumed_state(args: argparse.Namespace) -> Any:
    """The checkpoint ``--resume`` continues (its options are the defaults of the resumed run), if any."""
    if not args.resume:
        return None
    if args.out is None:
        raise ValueError("--resume continues the run in --out; name the run folder with --out")
    return resume_point(args.resume, RunFolder(Path(args.out)))


def _conditional_options(args: argparse.Namespace, data: ImageData) -> None:
    """``--conditional``: the model is conditioned on the data's class labels (``num_classes`` from the data,
    unless ``--model-options`` gives it); a resumed or grown run keeps its own model's condition."""
    if not args.conditional:
        return
    if args.resume or args.grow_from is not None:
        raise ValueError("--conditional chooses a new model; a resumed or grown run keeps its own model (and its "
                         "condition)")
    data.labels()  # refuses unlabelled data, naming the sources that carry labels
    args.model_options = {"num_classes": data.num_classes, **(args.model_options or {})}


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
    if args.recipe is not None or args.config is not None:
        raise ValueError("--grow-from takes the parent's model and options; --recipe and --config do not apply")


def _grown(args: argparse.Namespace, data: ImageData) -> tuple[Any, dict[str, Any], TrainConfig]:
    """``--grow-from``: the grown model, its parent's record and the config of the grown run (the parent run's
    options under the flags, with the levels ``--old-levels`` trains)."""
    parent_model, parent = load_parent(args.grow_from, data)
    # level indices shift by one in the grown model, so the parent's level choices do not carry over
    options = {k: v for k, v in (parent["trainer_config"] or {}).items()
               if k not in ("trainable_levels", "progress", "checkpoint_every")}
    if options.get("phases"):
        options["phases"] = [{**phase, "levels": None} for phase in options["phases"]]
    frozen = (args.old_levels or "frozen") == "frozen"
    options["trainable_levels"] = [0] if frozen else list(range(parent_model.num_levels + 1))
    config = TrainConfig.from_dict({**override_options(options, _train_flags(args)), "progress": not args.no_progress})
    torch.manual_seed(config.seed)  # the new level's initialisation follows --seed
    return parent_model.grow(net_options=args.new_level_net_options), parent, config


def _train(args: argparse.Namespace) -> int:
    if args.removed_model is not None:
        raise ValueError(f"--model was replaced by --recipe NAME (`flowplug recipes` lists them; got "
                         f"{args.removed_model!r}), --model-options JSON or --config FILE naming any registered model")
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    _check_growth_flags(args)
    resumed = _resumed_state(args)
    source = _data_source(args, resumed.data if resumed is not None else None)
    data = source.load(args.data_root)
    _conditional_options(args, data)
    record, parent = None, None
    if args.grow_from is not None:
        model, parent, config = _grown(args, data)
    else:
        fitted = _plan(args, data, resumed)
        if args.recipe is not None or (args.config is None and resumed is None):
            record = fitted.record()
        model, config = fitted.build()
    split = resumed.data.get("split", {}) if resumed is not None else {}
    holdout = args.holdout if args.holdout is not None else split.get("holdout")
    train_data, val_data = training_split(source.source, data, holdout=holdout, seed=config.seed)
    kind = (model.config or {}).get("type", "model")
    out = Path(args.out or f"runs/{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
    _check_out(out, folder=True)
    trainer = Trainer(model, config, out_dir=out, device=args.device, parent=parent, recipe=record)
    report = trainer.fit(train_data, val_data, resume=resumed or args.resume, overwrite=args.overwrite)  # read once
    if distributed.rank() == 0:
        folder = RunFolder(out)
        print(folder.report_txt.read_text() if folder.report_txt.exists() else "no report written")
        print(f"run folder: {out}")
    _check_finite(report["held_out"]["bpd"], "the final held-out evaluation")
    return 0


def _data_source(args: argparse.Namespace, record: dict[str, Any] | None) -> RecordedData:
    """The data set ``flowplug train`` loads: ``--data`` (default digits) with ``--size`` and ``--channels``, or,
    when ``--data`` is not given, the data set of ``record`` (a resumed checkpoint's ``data``: the images the run
    was trained on), with the flags given over its own."""
    if args.data is None and record is not None:
        recorded = RecordedData.of(record)
        return RecordedData(recorded.source, args.channels or recorded.channels, args.size or recorded.size)
    return RecordedData(args.data or "digits", args.channels, args.size)


def _check_finite(bpd: float, what: str) -> None:
    """A non-finite score is an error (exit status 2), not a result."""
    if not math.isfinite(bpd):
        raise FloatingPointError(f"{what} is {bpd}: the model's weights or its solves are not finite")


def _restore(args: argparse.Namespace) -> tuple[Trainer, Any]:
    checkpoint = load_checkpoint(_checkpoint_path(args.checkpoint))
    return Trainer.restore(checkpoint, device=args.device), checkpoint


def _checkpoint_path(given: str) -> Path:
    """A checkpoint file, or a run folder's ``best.pt`` (else its newest step checkpoint)."""
    path = Path(given)
    if not path.is_dir():
        return path
    folder = RunFolder(path)
    found = folder.best if folder.best.exists() else folder.latest()
    if found is None:
        raise FileNotFoundError(f"run folder {str(path)!r} holds no checkpoint in checkpoints/")
    return found


def _sample(args: argparse.Namespace) -> int:
    if not 0 < args.temperature < math.inf:
        raise ValueError(f"--temperature must be a positive finite number, got {args.temperature}")
    if not math.isfinite(args.guidance):
        raise ValueError(f"--guidance must be a finite number, got {args.guidance}")
    out = Path(args.out) if args.out else RunFolder.samples_of(_checkpoint_path(args.checkpoint), args.temperature,
                                                               args.guidance)
    _check_out(out, folder=False)
    trainer, _ = _restore(args)
    classes = trainer.model.num_classes
    if args.label is not None and classes is None:
        raise ValueError("--label needs a class-conditional model; this checkpoint's model is not one")
    if args.guidance and not trainer.model.can_guide:
        raise ValueError("--guidance needs a class-conditional MRCNF trained with label_dropout (`flowplug train "
                         "--conditional` of the mrcnf recipe trains one); this checkpoint's model is not one")
    torch.manual_seed(args.seed)
    with _solver(args, trainer):
        v = trainer.sample(args.num, args.temperature, y=args.label, guidance=args.guidance)
    per_class = classes is not None and args.label is None
    save_samples(v, out, zoom=args.zoom, columns=classes if per_class else None)
    if out.exists():
        what = (f" of class {args.label}" if args.label is not None else
                f", one class per column (0..{classes - 1})" if per_class else "")
        guided = f", guidance {args.guidance:g}" if args.guidance else ""
        print(f"wrote {args.num} samples{what} (temperature {args.temperature}{guided}) to {out}")
    return 0


def _solver(args: argparse.Namespace, trainer: Trainer) -> typing.ContextManager[None]:
    """The CNFs' solver of a sample/evaluate/ood command: ``--steps`` (a fixed rk4 grid) or ``--tolerance`` (the
    adaptive solver's), else the checkpoint's own (``sample``: its sampling solver where it has one)."""
    return cnf_settings(trainer.eval_model(), steps=args.steps, tolerance=args.tolerance)


def _solver_record(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in ("steps", "tolerance") if getattr(args, key) is not None}


def _evaluate(args: argparse.Namespace) -> int:
    trainer, checkpoint = _restore(args)
    data = evaluation_split(checkpoint, args.data, args.split, holdout=args.holdout, seed=args.seed,
                            root=args.data_root, size=args.size, channels=args.channels)
    with _solver(args, trainer):
        result = trainer.evaluate(data)
    print(json.dumps({"data": data.name, "step": checkpoint.step, **_solver_record(args), **result}, indent=2))
    _check_finite(result["bpd"], f"the checkpoint's BPD on {data.name}")
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
    trainer, checkpoint = _restore(args)
    sets = [evaluation_split(checkpoint, name, split, holdout=args.holdout, seed=args.seed, root=args.data_root,
                             size=args.size, channels=args.channels)
            for name, split in zip(args.data, splits, strict=True)]
    if args.max_images is not None:
        sets = [d.first(args.max_images) for d in sets]
    seed = args.score_seed if args.score_seed is not None else trainer.config.seed
    batch_size = args.batch_size if args.batch_size is not None else trainer.config.eval_batch_size
    with _solver(args, trainer):
        scores = [score_images(trainer.eval_model(), d, per_level=args.per_level, trace=args.trace,
                               probes=args.probes, seed=seed, batch_size=batch_size, dtype=trainer.dtype,
                               device=trainer.device) for d in sets]
    info = {"checkpoint": str(args.checkpoint), "step": checkpoint.step, "trace": args.trace,
            "probes": args.probes, "seed": seed, "batch_size": batch_size, "splits": splits, **_solver_record(args)}
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
          f"(OpenMP wait policy: {wait_policy()})")
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from flowplug.recipes import rules

    for name in recipes():
        stored = load_recipe(name)
        default = " (default)" if name == DEFAULT_RECIPE else ""
        print(f"{name}{default}: {stored['description']}")
        print(f"  model: {json.dumps(stored['model'])}")
        print(f"  train: {json.dumps(stored['train'])}")
        if stored.get("adapt"):
            print(f"  fitted to the data by: {', '.join(stored['adapt'])}")
        if stored.get("conditional"):
            print(f"  class-conditional models also take: {json.dumps(stored['conditional']['model'])}")
    print("\nthe rules (flowplug.recipes.rules):\n" + (rules.__doc__ or "").split("\n\n", 1)[1].rstrip())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowplug", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"flowplug {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model and write a run folder")
    which = train.add_mutually_exclusive_group()
    which.add_argument("--recipe", help=f"a recipe of `flowplug recipes` (default {DEFAULT_RECIPE}, fitted to "
                                        "--data; a resume: the run's own model and options)")
    which.add_argument("--config", help="JSON file with a 'model' spec and 'train' options")
    train.add_argument("--model", dest="removed_model", help=argparse.SUPPRESS)  # named by versions before 0.3
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
    train.add_argument("--model-options", type=_json_object, metavar="JSON",
                       help="model spec keys over the recipe's (or the config file's), e.g. '{\"levels\": 3}'")
    train.add_argument("--data", help=f"{', '.join(DATASET_NAMES)} or a path (default digits; a resume: the "
                                      "data the run was trained on)")
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
    train.add_argument("--conditional", action="store_true",
                       help="condition the model on the data's class labels (num_classes from the data: an "
                            ".npz's y, the digits, one sub-folder per class, cifar10/mnist)")
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
        solver = command.add_mutually_exclusive_group()
        own = ("the checkpoint's sampling solver (mrcnf recipe: 4 rk4 steps per level, 2 on the finest of three "
               "levels; else its evaluation solver)"
               if name == "sample" else "the checkpoint's adaptive solver")
        solver.add_argument("--steps", type=_per_level(int, "a number of steps"), metavar="N[,N...]",
                            help=f"solve each CNF on a fixed grid of N rk4 steps (4N function evaluations per "
                                 f"level), or give one N per level, finest first, instead of {own}: fewer steps "
                                 f"are faster, within the error docs/benchmarks.md measures")
        solver.add_argument("--tolerance", type=_per_level(float, "a tolerance"), metavar="TOL[,TOL...]",
                            help=f"solve each CNF adaptively at atol = rtol = TOL instead of {own}, or give one "
                                 f"TOL per level, finest first (the mrcnf recipe evaluates at 3e-3, the coarsest "
                                 f"of three levels at 1e-2)")
        if name == "sample":
            command.add_argument("--num", type=int, default=64)
            command.add_argument("--temperature", type=float, default=1.0)
            command.add_argument("--label", type=int, metavar="K",
                                 help="a class-conditional model's class to sample (default: every class, one "
                                      "per column of the grid)")
            command.add_argument("--guidance", type=float, default=0.0, metavar="W",
                                 help="classifier-free guidance weight of a class-conditional MRCNF trained with "
                                      "label_dropout: sample along (1+W) f(x|label) - W f(x) (default 0: the "
                                      "model itself)")
            command.add_argument("--out", help="PNG path (default: <run>/samples/<checkpoint>-t<temperature>.png)")
            command.add_argument("--zoom", type=int,
                                 help="upscale the grid this many times (default: to at least 256 pixels a side)")
        elif name == "evaluate":
            command.add_argument("--data", help="the data set to score (default: the one the checkpoint was "
                                                "trained on)")
            command.add_argument("--data-root")
            command.add_argument("--split", default="held-out",
                                 choices=SPLITS,
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
            command.add_argument("--split", action="append", choices=SPLITS,
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
        command.add_argument("--channels", type=int, choices=(1, 3),
                             help="for an image folder: 1 reads the images as grey, 3 (default) as RGB")

    for command in commands.choices.values():
        command.add_argument("--threads", type=int, metavar="N",
                             help=f"CPU threads for torch (default: ${THREADS_ENV}, else one per core)")
    commands.add_parser("info", help="registered components and devices").set_defaults(run=_info, threads=None)
    commands.add_parser("recipes", help="the recipes flowplug train can train, and their rules").set_defaults(
        run=_recipes, threads=None)
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
    except KeyboardInterrupt:
        print("flowplug: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as error:
        if args.debug:
            raise
        print(f"flowplug: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
