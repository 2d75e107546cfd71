"""Class-conditional MRCNF: train on labelled digits, sample a grid with one class per column, score p(x | y),
and judge the samples with a small classifier trained on the real training images.

An MRCNF built with ``num_classes=K`` conditions every level, the coarsest included, on a learned embedding
of the label (docs/conditional.md): ``model.log_prob(v, y)`` is ``log p(v | y)`` and ``model.sample(n, y=k)``
draws class ``k``. This script

1. trains a small two-level conditional MRCNF by flow matching on the embedded 8×8 digits (or any labelled
   data set: ``--data`` an ``.npz`` with ``y``, ``mnist``/``cifar10`` under ``--data-root``, a folder of
   class sub-folders), with label dropout, or loads a conditional checkpoint written by ``flowplug train
   --conditional`` (``--checkpoint``; ``--data`` defaults to the data set it was trained on);
2. reports its held-out conditional bits per dimension (unless ``--no-score``);
3. trains a small convolutional classifier on the real training images and states its accuracy on the held-out
   images;
4. at every classifier-free guidance weight ``--guidance`` (default 0, the model itself, and 4 for a model trained
   with label dropout), saves a grid of ``--rows`` samples of every class, one class per column
   (``samples_per_class.png`` for the first weight), and reports how often the classifier recognises ``--judge``
   conditional samples as the class they were drawn for.

Run (from the repository root):

    python examples/conditional_digits.py            # full: 2000 training steps
    python examples/conditional_digits.py --quick    # 200 steps, a quick look
    python examples/conditional_digits.py --checkpoint runs/mrcnf-.../checkpoints/best.pt --solver-steps 4

Outputs go to ``--out`` (default ``runs/examples/conditional_digits``): the grid, ``results.json`` and, when
trained here, the run folder ``train/``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import flowplug  # before torch: lets torch's idle OpenMP threads sleep (flowplug.threads)

# isort: split
import torch
from torch import nn

from flowplug.data import dequantize
from flowplug.train import Trainer, load_checkpoint
from flowplug.train.evaluation import cnf_settings
from flowplug.train.feedback import save_samples
from flowplug.train.splits import evaluation_split, training_split

GUIDED = 4.0
"""The guidance weight judged beside the model itself by default."""


def train_model(data: flowplug.ImageData, steps: int, seed: int, out: Path) -> Trainer:
    """A small two-level conditional MRCNF trained by flow matching on ``data``'s training split."""
    train = training_split("given", data, seed=seed)[0]
    solver = {"method": "rk4", "step_size": 0.125}
    torch.manual_seed(seed)
    model = flowplug.MRCNF(data.image_shape, levels=2, num_classes=data.num_classes, label_dropout=0.1,
                           hidden_channels=32, num_blocks=1, train_solver=solver, eval_solver=solver)
    config = flowplug.TrainConfig(steps=steps, batch_size=64, lr=2e-3, seed=seed, objective="flow_matching",
                                  warmup_steps=min(50, steps // 5), progress=False, tensorboard=False,
                                  checkpoint_every=steps, eval_batch_size=200)
    trainer = Trainer(model, config, out_dir=out / "train", device="cpu")
    report = trainer.fit(train)
    print(f"trained a conditional {model.num_levels}-level MRCNF ({report['parameters']} parameters, "
          f"{model.num_classes} classes) by flow matching: {report['steps']} steps in {report['train_time_s']:.1f} s")
    return trainer


class Classifier(nn.Module):
    """A small convolutional classifier of dequantised images: two 3×3 convolution and 2×2 max-pooling stages,
    then a hidden layer of 128 and the linear head."""

    def __init__(self, shape: tuple[int, int, int], classes: int, width: int = 32) -> None:
        super().__init__()
        channels, height, width_px = shape
        pooled = math.ceil(math.ceil(height / 2) / 2) * math.ceil(math.ceil(width_px / 2) / 2)
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(),
            nn.Linear(2 * width * pooled, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.net(v - 0.5)


def train_classifier(train: flowplug.ImageData, classes: int, epochs: int, seed: int) -> Classifier:
    """The classifier trained on the real training images (fresh dequantisation noise each epoch)."""
    torch.manual_seed(seed)
    classifier = Classifier(train.image_shape, classes)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(train)).split(64):
            v = dequantize(train.x[batch], train.n_bins)
            loss = nn.functional.cross_entropy(classifier(v), train.y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return classifier.eval()


@torch.no_grad()
def accuracy(classifier: Classifier, v: torch.Tensor, y: torch.Tensor) -> float:
    return float((classifier(v.clamp(0, 1)).argmax(1) == y).float().mean())


@torch.no_grad()
def conditional_samples(
    model: flowplug.FlowModel, labels: torch.Tensor, temperature: float = 1.0, guidance: float = 0.0,
    batch: int = 100,
) -> torch.Tensor:
    """Samples of ``model`` given ``labels`` at ``temperature`` (and classifier-free ``guidance`` when not 0),
    ``batch`` at a time."""
    guided = {"guidance": guidance} if guidance else {}
    return torch.cat([model.sample_images(len(part), temperature=temperature, y=part, **guided)
                      for part in labels.split(batch)])


def recognised(classifier: Classifier, samples: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """The fraction of ``samples`` the classifier puts in their ``labels``' class (a sample with non-finite pixels
    counts as not recognised), and the number of those non-finite samples."""
    finite = torch.isfinite(samples.flatten(1)).all(1)
    if not finite.any():
        return 0.0, len(samples)
    return accuracy(classifier, samples[finite], labels[finite]) * float(finite.float().mean()), int((~finite).sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a conditional checkpoint written by `flowplug train --conditional`")
    parser.add_argument("--data", help="labelled data set, name or path (default digits; with --checkpoint: the "
                        "one it was trained on)")
    parser.add_argument("--data-root", help="torchvision's data folder for cifar10/mnist")
    parser.add_argument("--steps", type=int, help="training steps when no checkpoint (2000, quick 200)")
    parser.add_argument("--rows", type=int, default=8, help="samples of each class in the grid (8)")
    parser.add_argument("--judge", type=int, default=1000, help="conditional samples the classifier judges (1000)")
    parser.add_argument("--epochs", type=int, default=10, help="classifier training epochs (10)")
    parser.add_argument("--solver-steps", type=int,
                        help="sample with a fixed grid of this many rk4 steps per level (default: the model's own "
                             "evaluation solver, which also scores the held-out images)")
    parser.add_argument("--no-score", action="store_true",
                        help="skip the held-out BPD (a checkpoint's run reports it: flowplug evaluate CHECKPOINT)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature (scales the base distributions' std; 1 samples the model)")
    parser.add_argument("--guidance", type=float, nargs="+", metavar="W",
                        help="classifier-free guidance weights to sample and judge at, 0 being the model itself "
                             f"(default: 0 and {GUIDED} for a model trained with label_dropout, else 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="200 training steps, 100 judged samples, 3 epochs")
    parser.add_argument("--out", default="runs/examples/conditional_digits", help="output folder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.judge, args.epochs = min(args.judge, 100), min(args.epochs, 3)

    if args.checkpoint:
        checkpoint = load_checkpoint(args.checkpoint)
        trainer = Trainer.restore(checkpoint, device="cpu")
        held_out = evaluation_split(checkpoint, args.data, root=args.data_root)
        train = evaluation_split(checkpoint, args.data, "train", root=args.data_root)
        print(f"loaded {args.checkpoint} (step {checkpoint.step}, trained on {checkpoint.data['name']})")
    else:
        data = flowplug.load_dataset(args.data or "digits", root=args.data_root)
        trainer = train_model(data, args.steps or (200 if args.quick else 2000), args.seed, out)
        train, held_out = training_split("given", data, seed=args.seed)
    model = trainer.eval_model().eval()
    if model.num_classes is None:
        raise SystemExit("the model is not class-conditional: train it with `flowplug train --conditional`")
    classes = model.num_classes
    args.guidance = args.guidance or ([0.0, GUIDED] if model.can_guide else [0.0])
    if any(args.guidance) and not model.can_guide:
        raise SystemExit("--guidance needs a model trained with label_dropout (flowplug train --conditional with the "
                         "mrcnf recipe); judge this one with --guidance 0")

    result = None
    if not args.no_score:  # with the model's own evaluation solver: fixed grids bias the BPD
        result = trainer.evaluate(held_out)
        print(f"held-out conditional bits/dim -log2 p(x | y) / D: {result['bpd']:.4f} "
              f"({result['num_images']} images)")
    classifier = train_classifier(train, classes, args.epochs, args.seed)
    real = accuracy(classifier, dequantize(held_out.x, held_out.n_bins), held_out.labels())
    print(f"classifier accuracy on the {len(held_out)} held-out real images: {real:.3f}")
    judged_labels = torch.arange(args.judge) % classes
    judgements = []
    for weight in args.guidance:  # the same latents at every weight
        with cnf_settings(model, steps=args.solver_steps):
            torch.manual_seed(args.seed)
            grid = conditional_samples(model, torch.arange(args.rows * classes) % classes, args.temperature, weight)
            path = out / ("samples_per_class.png" if weight == args.guidance[0] else
                          f"samples_per_class-guidance{weight:g}.png")
            save_samples(grid, path, columns=classes)
            print(f"wrote {path}: {args.rows} samples of each class, one class per column (0..{classes - 1})")
            judged = conditional_samples(model, judged_labels, args.temperature, weight)
        fraction, not_finite = recognised(classifier, judged, judged_labels)
        print(f"guidance {weight:g}: conditional samples recognised as their class: {fraction:.3f} "
              f"(of {args.judge}; {not_finite} with non-finite pixels)")
        judgements.append({"guidance": weight, "recognised": fraction, "not_finite": not_finite})
    results = {"held_out": result, "classifier_accuracy_real": real, "samples_judged": args.judge,
               "judgements": judgements, "classifier_epochs": args.epochs, "solver_steps": args.solver_steps,
               "temperature": args.temperature}
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
