"""Context dependence, gradients by adjoint and by direct backpropagation, and the NFE counters."""

import pytest
import torch

from flowplug.cnf import CNF, ConvODENet, MLPODENet


def _conditional_mlp(perturb):
    torch.manual_seed(0)
    return perturb(MLPODENet(2, hidden_dim=8, context_dim=2).double(), std=0.5)


def test_output_depends_on_context(perturb):
    cnf = CNF(_conditional_mlp(perturb), train_solver={"method": "rk4", "step_size": 0.25})
    x = torch.randn(4, 2, dtype=torch.float64)
    context = torch.randn(4, 2, dtype=torch.float64)
    z, log_det = cnf.inverse(x, context)
    z_other, log_det_other = cnf.inverse(x, context + 1.0)
    assert (z - z_other).abs().min() > 1e-3
    assert (log_det - log_det_other).abs().min() > 1e-6


def _gradients(cnf, x, context):
    torch.manual_seed(7)  # the same Hutchinson probe in both runs
    z, log_det = cnf.inverse(x, context)
    loss = 0.5 * z.square().sum() - log_det.sum()
    params = [*cnf.net.parameters(), x, context]
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_adjoint_and_direct_gradients_agree(perturb, tight, divergence):
    net = _conditional_mlp(perturb)
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    context = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    direct = _gradients(CNF(net, divergence=divergence, train_solver=tight), x, context)
    adjoint_cnf = CNF(net, divergence=divergence, train_solver=tight, adjoint=True)
    adjoint = _gradients(adjoint_cnf, x, context)
    for a, b in zip(direct, adjoint, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("adjoint", [False, True])
def test_gradients_reach_a_conv_net(perturb, adjoint):
    torch.manual_seed(0)
    net = perturb(ConvODENet(1, hidden_channels=8, context_channels=1))
    cnf = CNF(net, adjoint=adjoint, train_solver={"method": "rk4", "step_size": 0.5})
    z, log_det = cnf.inverse(torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4))
    (z.square().sum() - log_det.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_nfe_counts_forward_and_adjoint_backward(perturb):
    net = _conditional_mlp(perturb)
    rk4 = {"method": "rk4", "step_size": 0.25}  # 4 steps of 4 evaluations
    x, context = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)

    direct = CNF(net, train_solver=rk4)
    z, log_det = direct.inverse(x, context)
    (z.sum() + log_det.sum()).backward()
    assert (direct.last_nfe, direct.last_nfe_backward) == (16, 0)

    adjoint = CNF(net, train_solver=rk4, adjoint=True)
    z, log_det = adjoint.inverse(x, context)
    assert (adjoint.last_nfe, adjoint.last_nfe_backward) == (16, 0)
    (z.sum() + log_det.sum()).backward()
    assert (adjoint.last_nfe, adjoint.last_nfe_backward) == (16, 16)

    adjoint.forward(z.detach(), context)
    assert (adjoint.nfe.forward, adjoint.nfe.backward, adjoint.nfe.total) == (32, 16, 48)
    adjoint.reset_nfe()
    assert adjoint.nfe.total == 0 and adjoint.last_nfe == 16


def test_adaptive_solver_nfe_grows_with_stiffness(perturb):
    net = perturb(MLPODENet(2, hidden_dim=8), std=0.3)
    cnf = CNF(net, train_solver={"method": "dopri5", "atol": 1e-6, "rtol": 1e-6})
    x = torch.randn(8, 2)
    with torch.no_grad():
        cnf.inverse(x)
        gentle = cnf.last_nfe
        perturb(net, std=3.0)
        cnf.inverse(x)
    assert cnf.last_nfe > gentle > 0


def test_train_and_eval_settings_follow_the_module_mode():
    cnf = CNF(MLPODENet(2, hidden_dim=8), divergence="hutchinson", eval_divergence="exact",
              train_solver={"method": "rk4", "step_size": 0.5},
              eval_solver={"method": "euler", "step_size": 0.1})
    x = torch.randn(2, 2)
    cnf.inverse(x)
    assert cnf.solver.method == "rk4" and cnf.last_nfe == 8
    cnf.eval()
    cnf.inverse(x)
    assert cnf.solver.method == "euler" and cnf.last_nfe == 10


def test_nets_accept_per_sample_times(perturb):
    for net, z in ((perturb(MLPODENet(2, hidden_dim=8)), torch.randn(3, 2)),
                   (perturb(ConvODENet(1, hidden_channels=8)), torch.randn(3, 1, 4, 4))):
        times = torch.tensor([0.0, 0.5, 1.0])
        batched = net(times, z)
        one_by_one = torch.cat([net(t, z[i : i + 1]) for i, t in enumerate(times)])
        torch.testing.assert_close(batched, one_by_one)
        assert not torch.allclose(net(0.0, z), net(1.0, z))
