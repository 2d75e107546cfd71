"""Labels through the data, the batches, the objectives, the trainer and evaluation (issue 27)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flowplug import MRCNF
from flowplug.cnf.coupling import ot_pairing
from flowplug.data import Batch, ImageData, load_dataset, load_npz
from flowplug.train import TrainConfig, Trainer
from flowplug.train.batches import batches
from flowplug.train.labels import check_labels_fit, grid_labels

STEPS = {"method": "rk4", "step_size": 0.5}


def _data(n: int = 32, classes: int = 3, labelled: bool = True) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % classes if labelled else None
    return ImageData(x, 4, "tiny", y=y)


def _model(**options) -> MRCNF:
    return MRCNF((1, 4, 4), levels=2, net="conv_odenet", net_options={"hidden_channels": 4, "num_layers": 2},
                 train_solver=STEPS, eval_solver=STEPS, **options)


def test_image_data_labels_follow_every_part():
    ids = torch.arange(32)
    data = ImageData(ids.to(torch.uint8).view(32, 1, 1, 1).expand(32, 1, 2, 2).contiguous(), 64, "ids", y=ids % 3)
    assert data.num_classes == 3
    for part in (*data.split(0.25, seed=1), data.first(5)):  # each image keeps its own label
        assert torch.equal(part.y, part.x[:, 0, 0, 0].long() % 3)
    assert _data(labelled=False).num_classes is None
    with pytest.raises(ValueError, match="has no class labels"):
        _data(labelled=False).labels()
    data = _data()
    with pytest.raises(ValueError, match=r"shape \(32,\)"):
        ImageData(data.x, 4, "bad", y=data.y[:5])
    with pytest.raises(TypeError, match="int64"):
        ImageData(data.x, 4, "bad", y=data.y.int())
    with pytest.raises(ValueError, match=">= 0"):
        ImageData(data.x, 4, "bad", y=data.y - 1)


def test_sources_carry_labels(tmp_path):
    assert load_dataset("digits").num_classes == 10
    x = np.zeros((4, 1, 2, 2), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([0, 1, 1, 2]))
    assert load_npz(tmp_path / "a.npz").y.tolist() == [0, 1, 1, 2]
    np.savez(tmp_path / "b.npz", x=x, y=np.array([0.5, 1, 1, 2]))
    with pytest.raises(ValueError, match="one integer class label per image"):
        load_npz(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=x, y=np.array([0, -1, 1, 2]))
    with pytest.raises(ValueError, match=">= 0"):
        load_npz(tmp_path / "c.npz")
    for name, count in (("cat", 2), ("dog", 1)):
        (tmp_path / "folder" / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(np.full((4, 4, 3), i, dtype=np.uint8)).save(tmp_path / "folder" / name / f"{i}.png")
    folder = load_dataset(tmp_path / "folder")
    assert folder.y.tolist() == [0, 0, 1] and folder.x.shape == (3, 3, 4, 4)


def test_batches_carry_their_images_labels():
    data = ImageData(torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1), 16, "ids", y=torch.arange(12))
    for _, (x, y) in zip(range(5), batches(data, 4, 0, 0), strict=False):
        assert torch.equal(x.view(-1).long(), y)
    unlabelled = ImageData(data.x, 16, "ids")
    assert next(batches(unlabelled, 4, 0, 0))[1] is None
    parts = Batch(torch.rand(4, 1, 1, 1), 16, torch.arange(4)).chunk(2)
    assert [p.y.tolist() for p in parts] == [[0, 1], [2, 3]]


def test_ot_pairs_within_each_class_only():
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(12, 3, generator=g), torch.randn(12, 3, generator=g)
    groups = torch.tensor([0, 1, 2] * 4)
    perm = ot_pairing(x, noise, groups)
    assert torch.equal(groups[perm], groups) and sorted(perm.tolist()) == list(range(12))
    for label in range(3):  # each class's pairing is the best among its own rows
        rows = (groups == label).nonzero().flatten()
        own = ot_pairing(x[rows], noise[rows])
        torch.testing.assert_close(perm[rows], rows[own])


def test_conditional_training_evaluation_and_samples(tmp_path):
    data = _data()
    model = _model(num_classes=3)
    config = TrainConfig(steps=2, batch_size=8, lr=1e-3, eval_batch_size=16, num_samples=6, progress=False,
                         objective="flow_matching")
    trainer = Trainer(model, config, out_dir=tmp_path / "run", device="cpu")
    report = trainer.fit(data, data.first(12))
    assert report["held_out"]["conditional"] is True and np.isfinite(report["held_out"]["bpd"])
    assert grid_labels(model, 5).tolist() == [0, 1, 2, 0, 1]
    assert trainer.sample(3, y=2).shape == (3, 1, 4, 4)
    # the embeddings moved: the labels reached the objective
    assert any(level.condition.embedding.weight.grad is not None for level in model.levels)


def test_labels_that_do_not_fit_are_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="has no class labels"):
        Trainer(_model(num_classes=3), TrainConfig(steps=1, batch_size=8, progress=False), device="cpu").fit(
            _data(labelled=False))
    with pytest.raises(ValueError, match="num_classes=5"):
        check_labels_fit(_model(num_classes=3), _data(classes=5))
    with pytest.raises(ValueError, match="class labels only"):
        check_labels_fit(_model(condition_dim=2), _data())
    check_labels_fit(_model(), _data(labelled=False))  # unconditional: labels are not needed (nor used)
    plain = Trainer(_model(), TrainConfig(steps=1, batch_size=8, progress=False), device="cpu")
    assert "conditional" not in plain.fit(_data(), _data().first(8))["held_out"]
