"""MRCNF: the whole likelihood pipeline, sampling, super-resolution, level-wise training, growth, errors."""

import math

import pytest
import torch

import flowplug
from flowplug import haar_decompose, haar_pyramid
from flowplug.models.mrcnf import MRCNF

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def perturb(model, scale=0.05, seed=1):
    """Move every parameter off its (identity) initialisation so the flows do something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model


def images(n, shape=(2, 8, 8), seed=0):
    return torch.rand(n, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def gaussian_log_prob(t):
    return -0.5 * t.flatten(1).pow(2).sum(1) - 0.5 * t[0].numel() * math.log(2 * math.pi)


def test_identity_model_matches_analytic_density(tiny_cnf_options):
    """Fresh CNFs are the identity: log p(v) = N(logit(x_2)) + logit log-det + Σ N(y_s)."""
    model = MRCNF((2, 8, 8), levels=3, logit_alpha=0.05, standardize=False, **tiny_cnf_options)
    model = model.double().eval()
    v = images(4)
    details, coarsest = haar_pyramid(v, 3)
    alpha = 0.05
    squeezed = alpha + (1 - 2 * alpha) * coarsest
    u = torch.log(squeezed) - torch.log1p(-squeezed)
    logit_log_det = (math.log(1 - 2 * alpha) - torch.log(squeezed) - torch.log1p(-squeezed)).flatten(1).sum(1)
    expected_levels = [gaussian_log_prob(y) for y in details] + [gaussian_log_prob(u) + logit_log_det]
    got_levels = model.level_log_probs(v)
    for got, expected in zip(got_levels, expected_levels, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(model.log_prob(v), sum(expected_levels), rtol=1e-12, atol=1e-10)


def test_log_prob_is_sum_of_level_terms_and_bits_per_dim_adds_up(tiny_cnf_options):
    model = perturb(MRCNF((2, 8, 8), levels=3, **tiny_cnf_options).double()).eval()
    v = images(3)
    terms = model.level_log_probs(v)
    assert len(terms) == 3 and all(t.shape == (3,) for t in terms)
    torch.testing.assert_close(model.log_prob(v), torch.stack(terms).sum(0))
    bpd = model.bits_per_dim(v, n_bins=256)
    torch.testing.assert_close(bpd, torch.stack(model.level_bits_per_dim(v)).sum(0) + 8.0)


@pytest.mark.parametrize("warp", [None, {"n_bins": 4}])
def test_samples_outside_the_unit_cube_are_scored_and_log_q_equals_log_prob(tiny_cnf_options, warp):
    torch.manual_seed(0)
    # the conv net and logit alpha of versions before 0.3, with which many samples land outside [0, 1]
    options = {**tiny_cnf_options, "net": "conv_odenet", "num_layers": 2, "logit_alpha": 0.05, "bin_warp": warp}
    del options["num_blocks"]
    model = perturb(MRCNF((1, 4, 4), levels=2, **options).double()).eval()
    model.initialize_from_data(images(256, (1, 4, 4)) * 0.5 + 0.25)  # samples on the data's scale, as trained
    with torch.no_grad():
        v, log_q = model.sample(64)
        assert v.shape == (64, 1, 4, 4) and v.dtype == torch.float64
        outside = ((v < 0) | (v > 1)).flatten(1).any(1)
        assert 1 <= int(outside.sum()) < 64  # details are unbounded: the support is wider than [0, 1]
        torch.testing.assert_close(model.log_prob(v), log_q, rtol=1e-6, atol=1e-6)
        latents, log_det = model.inverse_and_log_det(v)
        assert [z.shape for z in latents] == [(64, 3, 2, 2), (64, 1, 2, 2)]
        back, log_det_back = model.forward_and_log_det(latents)
        torch.testing.assert_close(back, v, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(log_det, -log_det_back, rtol=1e-6, atol=1e-6)
        low, high = model.support()
        coarse = haar_pyramid(v, 2)[1]
        assert low < coarse.min() and coarse.max() < high
        cold, _ = model.sample(2, temperature=0.5)
        assert torch.isfinite(cold).all()


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0])
def test_super_resolution_keeps_the_given_coarse_image(tiny_cnf_options, temperature):
    model = perturb(MRCNF((2, 8, 8), levels=3, **tiny_cnf_options).double()).eval()
    for size, steps in ((4, 1), (2, 2)):
        coarse = images(3, (2, size, size), seed=size)
        with torch.no_grad():
            fine = model.super_resolve(coarse, temperature=temperature)
        assert fine.shape == (3, 2, 8, 8)
        x = fine
        for _ in range(steps):
            x, _ = haar_decompose(x)
        torch.testing.assert_close(x, coarse, rtol=0, atol=1e-12)


def test_super_resolution_at_zero_temperature_is_deterministic(tiny_cnf_options):
    model = perturb(MRCNF((1, 4, 4), levels=2, **tiny_cnf_options).double()).eval()
    coarse = images(2, (1, 2, 2))
    with torch.no_grad():
        assert torch.equal(model.super_resolve(coarse, 0.0), model.super_resolve(coarse, 0.0))


def test_levels_trained_separately_combine_into_the_same_model(tiny_cnf_options):
    torch.manual_seed(0)
    source = perturb(MRCNF((1, 4, 4), levels=2, **tiny_cnf_options).double()).eval()
    run_a = MRCNF((1, 4, 4), levels=2, **tiny_cnf_options).double().eval()
    run_b = MRCNF((1, 4, 4), levels=2, **tiny_cnf_options).double().eval()
    run_a.load_levels(source, [0])  # "trained" level 0 in one run
    run_b.load_levels(source.state_dict(), [1])  # level 1 in another, from a state dict
    combined = MRCNF((1, 4, 4), levels=2, **tiny_cnf_options).double().eval()
    combined.load_levels(run_a, [0])
    combined.load_levels(run_b, [1])
    v = images(3, (1, 4, 4))
    with torch.no_grad():
        torch.testing.assert_close(combined.log_prob(v), source.log_prob(v), rtol=0, atol=0)


def test_training_only_chosen_levels_leaves_the_others_untouched(tiny_cnf_options):
    model = MRCNF((1, 4, 4), levels=2, **tiny_cnf_options).double()
    v = images(8, (1, 4, 4))
    model.initialize_from_data(v)
    model.set_trainable_levels([1])
    frozen = {k: v.clone() for k, v in model.levels[0].state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model.forward_kld(v).backward()
        optimizer.step()
    for key, value in model.levels[0].state_dict().items():
        assert torch.equal(value, frozen[key]), key
    assert any(p.requires_grad for p in model.levels[1].parameters())
    with pytest.raises(ValueError, match=r"level 5 does not exist; this model has levels 0\.\.1"):
        model.set_trainable_levels([5])


def test_checking_levels_names_the_missing_one_and_changes_no_trainable_flag(tiny_cnf_options):
    model = MRCNF((1, 4, 4), levels=2, **tiny_cnf_options)
    model.set_trainable_levels([1])
    flags = [p.requires_grad for p in model.parameters()]
    assert model.check_levels((0, 1)) == [0, 1]
    with pytest.raises(ValueError, match=r"level 2 does not exist; this model has levels 0\.\.1"):
        model.check_levels([0, 2])
    assert [p.requires_grad for p in model.parameters()] == flags


@pytest.mark.parametrize("warp", [False, True])
def test_trainable_log_prob_leaves_out_exactly_the_frozen_levels_terms_without_solving_them(tiny_cnf_options, warp):
    bin_warp = {"n_bins": 256, "power": 0.5} if warp else None
    model = perturb(MRCNF((1, 4, 4), levels=2, bin_warp=bin_warp, **tiny_cnf_options).double())
    v = images(4, (1, 4, 4))
    warp_log_det = model.bin_warp.inverse(v)[1] if warp else 0.0
    with torch.no_grad():
        terms = model.level_log_probs(v)  # the finest level's term includes the warp's log-determinant
        assert model.frozen_levels() == []
        torch.testing.assert_close(model.trainable_log_prob(v), model.log_prob(v), rtol=0, atol=1e-12)

        def no_solve(*args, **kwargs):
            raise AssertionError("a frozen level's term was computed")

        for frozen, expected in (([1], terms[0]), ([0], terms[1] + warp_log_det)):
            model.set_trainable_levels([s for s in range(2) if s not in frozen])
            assert model.frozen_levels() == frozen
            model.levels[frozen[0]].log_prob = no_solve
            torch.testing.assert_close(model.trainable_log_prob(v), expected, rtol=0, atol=1e-12)
            del model.levels[frozen[0]].log_prob
    model.set_trainable_levels([])
    with pytest.raises(ValueError, match="every level of this MRCNF is frozen"):
        model.trainable_log_prob(v)


def test_growing_keeps_the_old_levels_terms(tiny_cnf_options):
    torch.manual_seed(0)
    small = perturb(MRCNF((1, 4, 4), levels=2, **tiny_cnf_options).double()).eval()
    grown = small.grow().eval()
    assert grown.image_shape == (1, 8, 8) and grown.num_levels == 3
    assert not any(p.requires_grad for p in grown.levels[1].parameters())
    assert all(p.requires_grad for p in grown.levels[0].parameters())
    v_big = images(3, (1, 8, 8))
    v_small, _ = haar_decompose(v_big)  # the grown model's x_1 is the small model's image
    with torch.no_grad():
        old_terms = small.level_log_probs(v_small)
        new_terms = grown.level_log_probs(v_big)
    for old, new in zip(old_terms, new_terms[1:], strict=True):
        torch.testing.assert_close(new, old, rtol=0, atol=1e-12)
    # the grown model is rebuildable from its config
    rebuilt = flowplug.build(grown.config).double().eval()
    rebuilt.load_state_dict(grown.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.log_prob(v_big), grown.log_prob(v_big))


def test_mixed_model_glow_at_the_coarsest_level_cnfs_above_trains(tiny_cnf_options):
    torch.manual_seed(0)
    glow_level = [
        {"type": "glow_block", "channels": 2, "hidden_channels": 16, "split_mode": "checkerboard"},
        {"type": "glow_block", "channels": 2, "hidden_channels": 16, "split_mode": "checkerboard"},
    ]
    model = MRCNF((2, 4, 4), levels=2, level_flows=[None, glow_level], **tiny_cnf_options)
    assert type(model.levels[1].flows[0]).__name__ == "GlowBlock"
    assert type(model.levels[0].flows[0]).__name__ == "CNF"
    data = (torch.rand(64, 2, 1, 1) * 0.6 + 0.2 + 0.02 * torch.randn(64, 2, 4, 4)).clamp(0, 0.999)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(12):
        loss = model.forward_kld(data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses
    assert model.config["level_flows"][1] == glow_level  # still rebuildable


def test_spec_rebuilds_identical_model(tiny_cnf_options):
    torch.manual_seed(5)
    model = MRCNF((1, 4, 4), levels=2, **tiny_cnf_options)
    torch.manual_seed(5)
    rebuilt = flowplug.build(model.config)
    for (k, a), (_, b) in zip(model.state_dict().items(), rebuilt.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert "mrcnf" in flowplug.components(kind="model")
    single = flowplug.build({"type": "single_resolution_cnf", "image_shape": [1, 4, 4], **tiny_cnf_options})
    assert single.num_levels == 1 and single.config["levels"] == 1


def test_bad_input_errors(tiny_cnf_options):
    with pytest.raises(ValueError, match=r"divisible by 2\^\(levels-1\) = 4 for 3 levels, got H=6, W=8"):
        MRCNF((1, 6, 8), levels=3)
    with pytest.raises(ValueError, match="levels must be a positive integer, got 0"):
        MRCNF((1, 4, 4), levels=0)
    model = MRCNF((2, 4, 4), levels=2, **tiny_cnf_options)
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 2, 4, 4\), got \(1, 3, 4, 4\)"):
        model.log_prob(torch.rand(1, 3, 4, 4))
    support = r"outside the model's support \(-0.001002, 1.001\), the domain of the coarsest level's logit"
    with pytest.raises(ValueError, match=r"coarsest image \(2x2 block means\) holds values in \[2, 2\], " + support):
        model.log_prob(torch.full((1, 2, 4, 4), 2.0))
    with pytest.raises(TypeError, match="floating-point dtype"):
        model.log_prob(torch.zeros(1, 2, 4, 4, dtype=torch.uint8))
    outside_unit_cube = torch.full((1, 2, 4, 4), 0.5) + torch.tensor([[-1.0, 1.0], [1.0, -1.0]]).repeat(2, 2)
    assert torch.isfinite(model.log_prob(outside_unit_cube)).all()  # block means 0.5: inside the support
    nan = torch.full((1, 2, 4, 4), 0.5)
    nan[0, 1, 2, 3] = math.nan
    with pytest.raises(ValueError, match=r"v holds 1 non-finite value\(s\) \(NaN or inf\); "
                       r"first at index \(0, 1, 2, 3\)"):
        model.log_prob(nan)
    with pytest.raises(ValueError, match=r"empty batch v of shape \(0, 2, 4, 4\)"):
        model.log_prob(torch.rand(0, 2, 4, 4))
    with pytest.raises(TypeError, match=r"v is torch\.float64 but MRCNF's parameters are torch\.float32"):
        model.log_prob(torch.rand(1, 2, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_samples must be a positive integer, got -3"):
        model.sample(-3)
    with pytest.raises(ValueError, match=r"level -1 does not exist; this model has levels 0..1"):
        model.set_trainable_levels([-1])
    with pytest.raises(ValueError, match=r"with \(h, w\) one of \[\(2, 2\)\], got \(1, 2, 3, 3\)"):
        model.super_resolve(torch.rand(1, 2, 3, 3))
    solver = {"method": "rk4", "step_size": 0.5}
    other = MRCNF((2, 4, 4), levels=2, hidden_channels=4, num_blocks=1, train_solver=solver)
    with pytest.raises(ValueError, match=r"level 0: entry .* has shape .* in the source but .* here"):
        model.load_levels(other, [0])
    with pytest.raises(TypeError, match="MRCNF has no option 'hiden_channels' with net='res_odenet'; did you mean "
                                        "'hidden_channels'"):
        MRCNF((1, 4, 4), levels=2, hiden_channels=8)
    with pytest.raises(ValueError, match="one component list per level"):
        MRCNF((1, 4, 4), levels=2, level_flows=[None])
