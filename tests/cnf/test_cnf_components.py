"""The nets' construction, solver settings as plain data, and building CNFs from registry specs."""

import normflows as nf
import pytest
import torch

import flowplug
from flowplug.cnf import CNF, ConvODENet, MLPODENet, SolverSettings


def test_registered_kinds():
    assert {"conv_odenet", "mlp_odenet"} <= set(flowplug.components("net"))
    assert "cnf" in flowplug.components("flow")


def test_spec_builds_a_cnf_with_solver_dicts():
    cnf = flowplug.build({
        "type": "cnf",
        "net": {"type": "conv_odenet", "channels": 3, "hidden_channels": 16},
        "divergence": "exact",
        "train_solver": {"method": "rk4", "step_size": 0.25},
    })
    assert isinstance(cnf, CNF) and isinstance(cnf.net, ConvODENet)
    assert cnf.train_solver == cnf.eval_solver == SolverSettings("rk4", step_size=0.25)
    z, log_det = cnf.inverse(torch.randn(2, 3, 4, 4))
    assert z.shape == (2, 3, 4, 4) and log_det.shape == (2,)


def test_spec_places_a_cnf_among_normflows_layers():
    flows = flowplug.build([
        {"type": "cnf", "net": {"type": "mlp_odenet", "dim": 2, "hidden_dim": 8},
         "train_solver": {"method": "rk4", "step_size": 0.5}},
        {"type": "act_norm", "shape": (2,)},
    ])
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(2), flows)
    log_prob = model.log_prob(torch.randn(5, 2))
    assert log_prob.shape == (5,) and torch.isfinite(log_prob).all()
    samples, log_q = model.sample(3)
    assert samples.shape == (3, 2) and log_q.shape == (3,)


def test_solver_settings_round_trip_through_plain_data():
    settings = SolverSettings("dopri5", atol=1e-6, rtol=1e-4, options={"max_num_steps": 100})
    assert SolverSettings.coerce(settings.to_dict()) == settings
    assert SolverSettings.coerce("bosh3") == SolverSettings("bosh3")
    assert SolverSettings.coerce(settings) is settings


@pytest.mark.parametrize("num_layers", [1, 2, 4])
@pytest.mark.parametrize("activation", ["softplus", "tanh", "silu", "gelu"])
def test_net_depth_width_and_activation(num_layers, activation):
    net = ConvODENet(2, hidden_channels=8, num_layers=num_layers, context_channels=1,
                     activation=activation)
    assert len(net.layers) == num_layers
    assert net.layers[0].in_channels == 2 + 1 + 1  # z, context, time
    assert net.layers[-1].out_channels == 2
    assert net.needs_context
    mlp = MLPODENet(3, hidden_dim=8, num_layers=num_layers, activation=activation)
    assert len(mlp.layers) == num_layers and not mlp.needs_context
    out = net(0.3, torch.randn(2, 2, 4, 4), torch.randn(2, 1, 4, 4))
    assert torch.equal(out, torch.zeros(2, 2, 4, 4))  # zero-initialised last layer


def test_channels_last_conv_net_computes_the_same_field():
    torch.manual_seed(0)
    standard = ConvODENet(3, hidden_channels=8, context_channels=2)
    with torch.no_grad():
        standard.layers[-1].weight.normal_(0, 0.1)
    fast = ConvODENet(3, hidden_channels=8, context_channels=2, channels_last=True)
    fast.load_state_dict(standard.state_dict())
    z, context, t = torch.randn(4, 3, 6, 6), torch.randn(4, 2, 6, 6), torch.rand(4)
    out = fast(t, z, context)
    torch.testing.assert_close(out, standard(t, z, context), rtol=1e-5, atol=1e-6)
    assert out.is_contiguous()
