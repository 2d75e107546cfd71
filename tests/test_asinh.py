"""The asinh stretch: invertible, with the exact log-determinant of its Jacobian."""

import pytest
import torch

import flowplug
from flowplug.asinh import AsinhStretch


def test_asinh_stretch_round_trip_and_exact_log_det():
    stretch = flowplug.build({"type": "asinh_stretch", "scale": 0.01})
    assert isinstance(stretch, AsinhStretch)
    x = 0.05 * torch.randn(3, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z, log_det = stretch.inverse(x)
    back, log_det_back = stretch.forward(z)
    torch.testing.assert_close(back, x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(log_det + log_det_back, torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda q: stretch.inverse(q.view(1, 8))[0].view(8), x[i].flatten())
        assert torch.logdet(jac).item() == pytest.approx(log_det[i].item(), abs=1e-10)
    # identity near 0, logarithmic in the tails
    small = torch.tensor([[1e-6]], dtype=torch.float64)
    assert stretch.inverse(small)[0].item() == pytest.approx(1e-6, rel=1e-6)
    assert stretch.inverse(torch.tensor([[10.0]]))[0].item() < 0.1
    with pytest.raises(ValueError, match="scale must be positive"):
        AsinhStretch(0.0)


def test_mrcnf_detail_stretch_adds_its_exact_log_det_and_rebuilds():
    rk4 = {"method": "rk4", "step_size": 0.5}
    model = flowplug.build({"type": "mrcnf", "image_shape": [1, 4, 4], "levels": 2, "hidden_channels": 4,
                            "num_blocks": 1, "train_solver": rk4, "eval_solver": rk4, "detail_stretch": 0.01})
    v = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    model.initialize_from_data(v)
    model.eval()
    with torch.no_grad():
        _, details = flowplug.haar_decompose(v)
        level = model.levels[0]
        stretched = 0.01 * torch.asinh(details / 0.01)
        z = (stretched - level.standardize.mean.view(1, -1, 1, 1)) / level.standardize.log_std.exp().view(1, -1, 1, 1)
        expected = (level.base.log_prob(z) - 0.5 * torch.log1p((details / 0.01) ** 2).flatten(1).sum(1)
                    - 4 * level.standardize.log_std.sum())
        torch.testing.assert_close(model.level_log_probs(v)[0], expected, atol=1e-4, rtol=1e-5)
    rebuilt = flowplug.build(model.config)
    assert isinstance(rebuilt.levels[0].preprocess, AsinhStretch) and rebuilt.levels[0].preprocess.scale == 0.01
