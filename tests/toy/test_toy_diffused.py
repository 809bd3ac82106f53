"""Exact diffused (VP-noised) Gaussian mixtures: Tweedie, per-sample t, endpoints, .at(t)."""

import copy
import math

import pytest
import torch

import ebmcompose as ec
import toy

F64 = torch.float64
SCHEDULES = {"cosine": ec.VPSchedule.cosine(), "linear": ec.VPSchedule.linear()}


def full_gmm(seed=0, k=3, d=2):
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(k, d, generator=g, dtype=F64)
    a = torch.randn(k, d, d, generator=g, dtype=F64)
    covs = a @ a.mT / d + 0.1 * torch.eye(d, dtype=F64)
    return toy.GaussianMixture(means, covs=covs, weights=torch.rand(k, generator=g, dtype=F64) + 0.3)


def posterior_mean_x0(gm, x, ab):
    """E[x0 | x_t] by the per-component Gaussian posterior (independent of toy's diffused code).

    With x_t = sqrt(ab) x0 + sqrt(1 - ab) eps and x0 ~ N(μ_k, Σ_k) in component k:
    E[x0 | x_t, k] = μ_k + sqrt(ab) Σ_k C_k⁻¹ (x_t − sqrt(ab) μ_k), C_k = ab Σ_k + (1 − ab) I,
    and p(k | x_t) ∝ w_k N(x_t; sqrt(ab) μ_k, C_k).
    """
    d = gm.dim
    mu, s, w = gm.means, gm.covs, gm.weights
    c = ab * s + (1 - ab) * torch.eye(d, dtype=F64)
    mvn = torch.distributions.MultivariateNormal(math.sqrt(ab) * mu, covariance_matrix=c)
    post = torch.softmax(mvn.log_prob(x[:, None, :]) + torch.log(w), dim=-1)  # (B, K)
    resid = (x[:, None, :] - math.sqrt(ab) * mu)[..., None]  # (B, K, D, 1)
    cond = mu + math.sqrt(ab) * (s @ torch.linalg.solve(c, resid))[..., 0]  # (B, K, D)
    return (post[..., None] * cond).sum(1)


@pytest.mark.parametrize("sched", sorted(SCHEDULES))
@pytest.mark.parametrize("t", [1e-3, 0.2, 0.5, 0.8, 1.0])
def test_score_matches_tweedie(sched, t):
    schedule = SCHEDULES[sched]
    gm = full_gmm(seed=1)
    dg = gm.diffused(schedule)
    ab = float(schedule.alpha_bar(torch.tensor(t, dtype=F64)))
    if t == 1.0:  # the noise end: cosine reaches the clamp alpha_bar_min, linear exp(-10.05)
        assert ab < 1e-4
        if sched == "cosine":
            assert ab == pytest.approx(schedule.alpha_bar_min, rel=1e-6)
    if t == 1e-3:
        assert ab > 0.999
    g = torch.Generator().manual_seed(2)
    x0 = gm.sample(32, generator=g)
    x = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * torch.randn(32, 2, generator=g, dtype=F64)
    tweedie = (math.sqrt(ab) * posterior_mean_x0(gm, x, ab) - x) / (1 - ab)
    score = dg.score(x, t)
    torch.testing.assert_close(score, tweedie, rtol=1e-7, atol=1e-7 * float(tweedie.abs().max()))


@pytest.mark.parametrize("d", [1, 3])
def test_diffused_energy_matches_noised_components(d):
    schedule = SCHEDULES["cosine"]
    gm = full_gmm(seed=3, k=2, d=d)
    t = 0.35
    ab = float(schedule.alpha_bar(torch.tensor(t, dtype=F64)))
    covs_t = ab * gm.covs + (1 - ab) * torch.eye(d, dtype=F64)
    mvn = torch.distributions.MultivariateNormal(math.sqrt(ab) * gm.means, covariance_matrix=covs_t)
    x = torch.randn(40, d, generator=torch.Generator().manual_seed(4), dtype=F64)
    ref = -torch.logsumexp(mvn.log_prob(x[:, None, :]) + torch.log(gm.weights), dim=-1)
    dg = gm.diffused(schedule)
    torch.testing.assert_close(dg.energy(x, t), ref, rtol=1e-10, atol=1e-10)
    # closed-form gradient vs autograd of the energy
    xg = x.clone().requires_grad_(True)
    (g_auto,) = torch.autograd.grad(dg.energy(xg, t).sum(), xg)
    torch.testing.assert_close(dg.grad(x, t), g_auto, rtol=1e-9, atol=1e-10)
    # .at(t) is the same density as a static mixture
    torch.testing.assert_close(dg.at(t).energy(x), ref, rtol=1e-9, atol=1e-9)


def test_per_sample_t_equals_scalar_t_row_by_row():
    gm = full_gmm(seed=5)
    dg = gm.diffused(SCHEDULES["linear"])
    g = torch.Generator().manual_seed(0)
    x = 2.0 * torch.randn(12, 2, generator=g, dtype=F64)
    t = torch.rand(12, generator=g, dtype=F64)
    t[0], t[1] = 0.0, 1.0
    e, grad = dg.energy_and_grad(x, t)
    for i in range(12):
        ei, gi = dg.energy_and_grad(x[i : i + 1], float(t[i]))
        torch.testing.assert_close(e[i : i + 1], ei, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad[i : i + 1], gi, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sched", sorted(SCHEDULES))
def test_t0_equals_static_energy(sched):
    schedule = SCHEDULES[sched]
    assert float(schedule.alpha(torch.tensor(0.0, dtype=F64))) == 1.0
    gm = full_gmm(seed=6)
    dg = gm.diffused(schedule)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    e, g = dg.energy_and_grad(x, 0.0)
    torch.testing.assert_close(e, gm.energy(x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(g, gm.grad(x), rtol=1e-13, atol=1e-13)


def test_at_samples_the_forward_process():
    """x_t = sqrt(ab) x0 + sigma eps, with x0 from the mixture, has the moments of .at(t)."""
    schedule = SCHEDULES["cosine"]
    gm = full_gmm(seed=7)
    t = 0.6
    ab = float(schedule.alpha_bar(torch.tensor(t, dtype=F64)))
    pt = gm.diffused(schedule).at(t)
    torch.testing.assert_close(pt.mean(), math.sqrt(ab) * gm.mean())
    torch.testing.assert_close(pt.covariance(), ab * gm.covariance() + (1 - ab) * torch.eye(2, dtype=F64))
    n = 100_000
    g = torch.Generator().manual_seed(3)
    xt = math.sqrt(ab) * gm.sample(n, generator=g) + math.sqrt(1 - ab) * torch.randn(n, 2, generator=g, dtype=F64)
    se = torch.sqrt(torch.diagonal(pt.covariance()) / n)
    assert bool(((xt.mean(0) - pt.mean()).abs() < 5 * se).all())
    ys = pt.sample(n, generator=torch.Generator().manual_seed(4))
    assert bool(((ys.mean(0) - pt.mean()).abs() < 5 * se).all())


def test_time_dependence_and_errors():
    gm = full_gmm(seed=8)
    dg = gm.diffused(SCHEDULES["cosine"])
    assert dg.time_dependent and not gm.time_dependent
    assert dg.event_shape == (2,)
    x = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="depends on diffusion time"):
        dg.energy(x)
    with pytest.raises(ValueError, match=r"t must be finite and in \[0, 1\]"):
        dg.energy(x, 1.5)
    with pytest.raises(ValueError, match="scalar t"):
        dg.at(torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
        dg.at(-0.1)
    with pytest.raises(TypeError, match="VP noise schedule"):
        gm.diffused("cosine")


def test_float32_diffused_is_close_to_float64():
    gm = full_gmm(seed=9)
    dg64 = gm.diffused(SCHEDULES["cosine"])
    dg32 = copy.deepcopy(gm).to(torch.float32).diffused(SCHEDULES["cosine"])  # .to is in place
    assert gm.dtype == F64
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    t = torch.rand(20, generator=torch.Generator().manual_seed(1))
    e32, g32 = dg32.energy_and_grad(x, t)
    e64, g64 = dg64.energy_and_grad(x.double(), t.double())
    assert e32.dtype == torch.float32
    torch.testing.assert_close(e32.double(), e64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-3, atol=1e-3)
