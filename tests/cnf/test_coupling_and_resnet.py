"""Minibatch OT pairing, time sampling, the residual ODE net, and exact likelihood after the new recipe."""

import itertools
import math

import pytest
import torch
from torchdiffeq import odeint

import flowplug
from flowplug.cnf import CNF, ResODENet
from flowplug.cnf.coupling import ot_pairing, sample_times, transport_cost

RK4 = {"method": "rk4", "step_size": 0.25}


def _pair_cost(x, noise):
    return (x - noise).flatten(1).pow(2).sum(1).sum().item()


def test_ot_pairing_is_a_permutation_that_lowers_the_cost_and_keeps_the_noise():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 4, 4, generator=generator) * 0.3 + 1.0
    noise = torch.randn(64, 3, 4, 4, generator=generator)
    perm = ot_pairing(x, noise)
    assert perm.dtype == torch.long
    assert torch.equal(torch.sort(perm).values, torch.arange(64))
    paired = noise[perm]
    # the same multiset of noise rows: sort the rows lexicographically on both sides
    def rows_sorted(t):
        flat = t.flatten(1)
        order = sorted(range(len(flat)), key=lambda i: flat[i].tolist())
        return flat[order]
    torch.testing.assert_close(rows_sorted(paired), rows_sorted(noise), rtol=0, atol=0)
    assert _pair_cost(x, paired) < _pair_cost(x, noise)


def test_ot_pairing_is_optimal_against_brute_force():
    generator = torch.Generator().manual_seed(3)
    x, noise = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    cost = transport_cost(x, noise)
    best = min(sum(cost[i, p[i]].item() for i in range(6)) for p in itertools.permutations(range(6)))
    perm = ot_pairing(x, noise)
    assert sum(cost[i, perm[i]].item() for i in range(6)) == pytest.approx(best, rel=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        ot_pairing(x, noise[:5])


def test_time_samplings_lie_in_the_unit_interval_and_have_their_laws():
    generator = torch.Generator().manual_seed(0)
    for kind in ("uniform", "stratified", "logit_normal", "power"):
        s = sample_times(kind, 20000, generator=generator)
        assert s.shape == (20000,) and bool(((s >= 0) & (s <= 1)).all())
    # E[u**2] = 1/3: more times near the data end
    assert sample_times("power", 20000, power=2.0, generator=generator).mean().item() == pytest.approx(1 / 3, abs=0.01)
    assert sample_times("logit_normal", 20000, loc=-1.0, generator=generator).median().item() == pytest.approx(
        1 / (1 + math.e), abs=0.02)
    with pytest.raises(ValueError, match="unknown time sampling"):
        sample_times("cosine", 4)


def test_stratified_times_put_one_uniform_time_in_each_nth_of_the_interval():
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_times("stratified", 8, generator=generator) for _ in range(4000)])
    assert torch.equal(torch.sort((draws * 8).floor(), dim=1).values, torch.arange(8.0).expand(4000, 8))
    # every position's time is marginally uniform: mean 1/2, variance 1/12, no nth preferred
    assert draws.mean(0).sub(0.5).abs().max().item() < 0.02
    assert draws.var(0).sub(1 / 12).abs().max().item() < 0.01
    counts = torch.bincount((draws[:, 0] * 8).long(), minlength=8)
    assert counts.min().item() > 400 and counts.max().item() < 600


def test_res_odenet_cnf_starts_as_the_identity_flow():
    net = flowplug.build({"type": "res_odenet", "channels": 3, "context_channels": 1, "hidden_channels": 8,
                          "num_blocks": 2, "time_dim": 8, "groups": 4})
    assert isinstance(net, ResODENet)
    # a fixed-step solver adds exactly 0 (dopri5's dense output may round at the 1e-6 level)
    cnf = CNF(net, eval_solver=RK4)
    cnf.eval()
    x, context = torch.randn(5, 3, 4, 4), torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        z, log_det = cnf.inverse(x, context=context)
    assert torch.equal(z, x)
    assert torch.equal(log_det, torch.zeros(5))
    # inside an MRCNF: log_prob equals the base's log-density of the prepared (standardised) tensor exactly
    level = [{"type": "cnf", "net": {"type": "res_odenet", "channels": 3, "context_channels": 1,
                                     "hidden_channels": 8, "num_blocks": 1, "time_dim": 8}, "eval_solver": RK4}]
    coarse = [{"type": "cnf", "net": {"type": "res_odenet", "channels": 1, "hidden_channels": 8,
                                      "num_blocks": 1, "time_dim": 8}, "eval_solver": RK4}]
    model = flowplug.build({"type": "mrcnf", "image_shape": [1, 4, 4], "levels": 2, "level_flows": [level, coarse]})
    v = torch.rand(6, 1, 4, 4)
    model.initialize_from_data(v)
    model.eval()
    with torch.no_grad():
        for lvl, (y, ctx) in zip(model.levels, model._level_inputs(v), strict=True):
            prepared, prep_log_det = flowplug.conditioning.run_inverse(lvl._preparation(), y)
            assert torch.equal(lvl.log_prob(y, ctx), lvl.base.log_prob(prepared) + prep_log_det)


def test_res_odenet_checks_its_inputs():
    net = ResODENet(3, hidden_channels=8, context_channels=1, time_dim=8)
    with pytest.raises(ValueError, match="needs context"):
        net(0.5, torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="time_dim must be even"):
        ResODENet(3, time_dim=7)


def test_res_odenet_adds_a_condition_vector_to_its_time_embedding():
    torch.manual_seed(0)
    net = ResODENet(2, hidden_channels=8, num_blocks=2, context_channels=1 + 3, time_dim=8, groups=4,
                    vector_context=3).double()
    flowplug.testing.perturb_parameters(net, std=0.3, seed=1)  # the output layer starts at zero
    z, image = torch.randn(4, 2, 5, 5, dtype=torch.float64), torch.randn(4, 1, 5, 5, dtype=torch.float64)
    vector = torch.randn(1, 3, dtype=torch.float64)
    context = torch.cat([image, vector[:, :, None, None].expand(4, -1, 5, 5)], dim=1)
    # the same net without the vector, its time embedding's last bias moved by the vector's linear map
    plain = ResODENet(2, hidden_channels=8, num_blocks=2, context_channels=1, time_dim=8, groups=4).double()
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("condition.")})
    with torch.no_grad():
        plain.time_mlp[-1].bias += net.condition(vector)[0]
        torch.testing.assert_close(net(0.3, z, context), plain(0.3, z, image), rtol=1e-12, atol=1e-12)
        other = torch.cat([image, (vector + 1)[:, :, None, None].expand(4, -1, 5, 5)], dim=1)
        assert (net(0.3, z, other) - net(0.3, z, context)).abs().max() > 1e-3
    assert net.input.in_channels == 2 + 1 and net.blocks[0].context.in_channels == 1  # no convolution of it
    only_vector = ResODENet(2, hidden_channels=8, context_channels=3, vector_context=3, time_dim=8)
    assert only_vector.blocks[0].context is None
    assert only_vector(0.5, z.float(), context[:, 1:].float()).shape == z.shape
    with pytest.raises(ValueError, match=r"vector_context \(4\) counts context channels"):
        ResODENet(2, context_channels=3, vector_context=4)
    with pytest.raises(ValueError, match="vector_context must be a non-negative integer"):
        ResODENet(2, context_channels=3, vector_context=-1)


def test_flow_trained_with_ot_and_power_times_keeps_exact_likelihood():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    net = ResODENet(2, hidden_channels=8, num_blocks=1, context_channels=1, time_dim=8, groups=4)
    cnf = CNF(net, divergence="exact", eval_solver={"method": "dopri5", "atol": 1e-6, "rtol": 1e-6})
    optimizer = torch.optim.Adam(cnf.parameters(), lr=3e-3)
    for _ in range(10):
        context = torch.randn(32, 1, 2, 2, generator=generator)
        x = 0.5 * context.expand(-1, 2, -1, -1) + 0.2 * torch.randn(32, 2, 2, 2, generator=generator)
        loss = cnf.flow_matching_loss(x, context, sigma=1e-3, generator=generator, coupling="ot",
                                  time_sampling="power", time_options={"power": 2.0}).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert net.output.weight.abs().sum() > 0  # trained away from the identity
    cnf.eval()
    cnf.double()
    context = torch.randn(4, 1, 2, 2, generator=generator).double()
    x = torch.randn(4, 2, 2, 2, generator=generator).double()
    with torch.no_grad():
        z, log_det = cnf.inverse(x, context=context)
    assert log_det.abs().min() > 1e-4  # a non-trivial flow

    def augmented(t, state):
        with torch.enable_grad():
            zt = state[:, :8].reshape(4, 2, 2, 2).detach().requires_grad_(True)
            f = net(t, zt, context).reshape(4, 8)
            trace = sum(torch.autograd.grad(f[:, i].sum(), zt, retain_graph=True)[0].reshape(4, 8)[:, i]
                        for i in range(8))
        return torch.cat([f.detach(), trace.detach()[:, None]], 1)

    state0 = torch.cat([x.reshape(4, 8), torch.zeros(4, 1, dtype=torch.float64)], 1)
    final = odeint(augmented, state0, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1e-6, atol=1e-6)[-1]
    torch.testing.assert_close(z.reshape(4, 8), final[:, :8], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(log_det, final[:, 8], atol=1e-4, rtol=1e-4)
