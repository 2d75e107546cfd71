"""``FlowModel.sample_images``: the images of ``sample`` without their log-density."""

import pytest
import torch

import flowplug


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (the default nets' zero-initialised outputs would make every flow the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model.eval()


def _both(model, seed=1, **options):
    torch.manual_seed(seed)
    images, log_q = model.sample(5, **options)
    torch.manual_seed(seed)
    return images, log_q, model.sample_images(5, **options)


GRID = {"method": "rk4", "steps": 2}


def test_mrcnf_images_are_its_samples_on_a_fixed_grid():
    """Hutchinson traces draw probes from the random stream: the images-only solve must draw them too, or the
    later levels' latents would differ."""
    model = _perturbed(flowplug.MRCNF((1, 8, 8), levels=3, hidden_channels=4, num_blocks=1, train_solver=GRID,
                                      eval_solver=GRID).double())
    images, log_q, alone = _both(model, temperature=0.9)
    assert torch.equal(alone, images)
    assert bool(torch.isfinite(log_q).all())


def test_guided_conditional_mrcnf_images_are_its_samples_on_a_fixed_grid():
    model = _perturbed(flowplug.MRCNF((1, 4, 4), levels=2, hidden_channels=4, num_blocks=1, num_classes=3,
                                      label_dropout=0.1, train_solver=GRID, eval_solver=GRID).double())
    images, _, alone = _both(model, y=torch.tensor([0, 1, 2, 1, 0]), guidance=2.0)
    assert torch.equal(alone, images)


def test_adaptive_images_agree_within_the_solvers_tolerance():
    tight = {"method": "dopri5", "atol": 1e-9, "rtol": 1e-9}
    model = _perturbed(flowplug.MRCNF((1, 4, 4), levels=2, hidden_channels=4, num_blocks=1, train_solver=tight,
                                      eval_solver=tight).double())
    images, _, alone = _both(model)
    torch.testing.assert_close(alone, images, atol=1e-7, rtol=0)


@pytest.mark.parametrize("build", [lambda: flowplug.Glow((1, 8, 8), levels=1, depth=1, hidden_channels=8),
                                   lambda: flowplug.RealNVP((1, 8, 8), levels=1, depth=2, hidden_channels=8)])
def test_models_without_a_cnf_give_their_samples(build):
    model = build().double().eval()
    images, _, alone = _both(model)
    assert torch.equal(alone, images)
