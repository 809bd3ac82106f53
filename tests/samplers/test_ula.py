"""ULA: biased exactly as theory says, score-only, divergences, adaptation rule, contract."""

import math

import pytest
import torch

import ebmcompose as ec
from samplers import ULA, ULAInfo

from _kernel_targets import gaussian, isotropic, single_thread, z_scores  # noqa: F401


def ula_variance(h, s2):
    """Stationary variance of x' = x - h x/s² + sqrt(2h) ξ on N(0, s²): 2h / (1 - (1 - h/s²)²)."""
    return 2 * h / (1 - (1 - h / s2) ** 2)


@pytest.mark.parametrize("scales", [(1.0,), (1.0, 2.0)])
def test_stationary_variance_is_the_closed_form_bias(generator, scales):
    h = 0.3
    s2 = torch.tensor(scales) ** 2
    var = torch.tensor([ula_variance(h, float(v)) for v in s2])
    energy, _ = gaussian(torch.zeros(len(scales)), torch.diag(s2))
    x0 = torch.randn(4000, len(scales), generator=generator) * var.sqrt()  # ULA's own stationary law
    res = ULA(step_size=h, n_steps=60).sample(energy, x0, generator=generator, trace_every=1)
    sq = res.info["trace"].square()
    z, est, se = z_scores(sq, var)
    assert (z < 4.5).all(), (est, var)
    z_exact, _, _ = z_scores(sq, s2)  # and clearly not the target's variance
    assert (z_exact[0] > 8).all(), z_exact


def test_score_only_and_divergent_gradients(generator):
    score = ec.ScoreFunction(lambda x: torch.where(x[:, :1] < 1.0, -x, torch.full_like(x, math.nan)), name="s")
    x0 = torch.cat([torch.zeros(100, 2), torch.full((100, 2), 0.99)])
    res = ULA(step_size=0.01, n_steps=1).sample(score, x0, generator=generator)
    assert torch.isfinite(res.samples).all()
    assert res.state.energy is None
    assert 20 < res.info["divergences"] < 80
    assert res.info["nfe"] == 2


def test_adaptive_rule_has_small_bias(generator):
    """Without step_size: dual averaging on the gradient-only proxy (target 0.99) keeps the bias small."""
    energy, draw = gaussian([0.0, 0.0], torch.diag(torch.tensor([1.0, 4.0])))
    res = ULA(n_steps=100).sample(energy, draw(2000, generator), generator=generator, trace_every=1)
    h = float(res.info["step_size"])
    assert 0.03 < h < 0.3  # relative to the narrow scale s² = 1
    var = res.info["trace"].square().mean((0, 1))
    assert (var / torch.tensor([1.0, 4.0]) - 1).abs().max() < 0.1, var
    assert abs(float(res.info["warmup_acceptance"]) - 0.99) < 0.03  # includes the early transient


def test_images_shape_and_same_seed(generator):
    x0 = torch.randn(50, 1, 4, 4, generator=generator)
    a = ULA(step_size=0.1, n_steps=10).sample(isotropic(1.0), x0, generator=torch.Generator().manual_seed(4))
    b = ULA(step_size=0.1, n_steps=10).sample(isotropic(1.0), x0, generator=torch.Generator().manual_seed(4))
    assert a.samples.shape == (50, 1, 4, 4)
    assert torch.equal(a.samples, b.samples)


def test_step_matches_formula(generator):
    energy = isotropic(2.0)
    k = ULA(step_size=0.2)
    x = torch.randn(16, 3, generator=generator)
    state = k.init(energy, x)
    g_state = generator.get_state()
    new, info = k.step(state, energy, generator)
    noise = torch.randn(x.shape, generator=torch.Generator().set_state(g_state))
    torch.testing.assert_close(new.x, x - 0.2 * x / 4.0 + math.sqrt(0.4) * noise)
    torch.testing.assert_close(new.grad, new.x / 4.0)
    assert isinstance(info, ULAInfo) and info.accepted.all() and not info.divergent.any()
    assert (info.acceptance == 1).all() and info.proxy_acceptance is None and info.nfe == 1
    assert info.acceptance.dtype == x.dtype and info.accepted.dtype == info.divergent.dtype == torch.bool
    assert info.acceptance.shape == info.accepted.shape == info.divergent.shape == (16,)


@pytest.mark.slow
@pytest.mark.parametrize("h", [0.05, 0.5, 1.0])
def test_long_stationary_variance(h):
    g = torch.Generator().manual_seed(3)
    var = ula_variance(h, 1.0)
    res = ULA(step_size=h, n_steps=2000).sample(isotropic(1.0), torch.randn(5000, 1, generator=g), generator=g, trace_every=4)
    trace = res.info["trace"][100:]
    z, est, _ = z_scores(trace.square(), torch.tensor([var]))
    assert (z < 4.0).all(), (est, var)


@pytest.mark.slow
def test_compiled_ula_same_variance(generator):
    var = ula_variance(0.3, 1.0)
    import warnings

    import toy

    energy = toy.GaussianMixture(torch.zeros(1, 1), stds=torch.ones(1))  # closed form: traced into the graph
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would warn
        res = ULA(step_size=0.3, n_steps=300).compiled().sample(
            energy, torch.randn(4000, 1, generator=generator) * var**0.5, generator=generator, trace_every=1
        )
    z, est, _ = z_scores(res.info["trace"].square(), torch.tensor([var]))
    assert (z < 4.5).all(), est


def test_all_finite_shortcut_gives_the_per_chain_path_s_samples(monkeypatch):
    """The CPU shortcut (no per-chain check or select when every proposal is finite) changes no sample."""
    import samplers.ula as ula_mod
    from samplers import ULA

    energy = ec.EnergyFunction(lambda x: 0.5 * (x ** 2).sum(-1))
    x0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    kernel = ULA(step_size=0.05, n_steps=30)
    fast = kernel.sample(energy, x0, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(ula_mod, "all_finite", lambda v: False)
    slow = kernel.sample(energy, x0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(fast.samples, slow.samples)
    assert fast.info["divergences"] == slow.info["divergences"] == 0
    assert torch.equal(fast.info["acceptance"], slow.info["acceptance"])
