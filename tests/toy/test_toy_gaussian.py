"""GaussianMixture: closed-form energy/grad, normalisation, exact sampling, moments, errors."""

import copy
import math

import pytest
import torch

import ebmcompose as ec
from ebmcompose.grid import grid_density
import toy

F64 = torch.float64


def random_gmm(k, d, seed, full=True):
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(k, d, generator=g, dtype=F64)
    if full:
        a = torch.randn(k, d, d, generator=g, dtype=F64)
        covs = a @ a.mT / d + 0.2 * torch.eye(d, dtype=F64)
    else:
        covs = None
    weights = torch.rand(k, generator=g, dtype=F64) + 0.2
    if full:
        return toy.GaussianMixture(means, covs=covs, weights=weights)
    stds = 0.5 + torch.rand(k, generator=g, dtype=F64)
    return toy.GaussianMixture(means, stds=stds, weights=weights)


def reference_energy(means, covs, weights, x):
    """-log Σ w_k N(x; μ_k, Σ_k) via torch.distributions (independent of toy)."""
    mvn = torch.distributions.MultivariateNormal(means, covariance_matrix=covs)
    return -torch.logsumexp(mvn.log_prob(x[:, None, :]) + torch.log(weights / weights.sum()), dim=-1)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_energy_and_grad_match_reference_and_autograd(k, d):
    gm = random_gmm(k, d, seed=10 * k + d)
    g = torch.Generator().manual_seed(1)
    x = 3.0 * torch.randn(64, d, generator=g, dtype=F64)
    ref = reference_energy(gm.means, gm.covs, gm.weights, x)
    torch.testing.assert_close(gm.energy(x), ref, rtol=1e-10, atol=1e-10)
    # closed-form gradient vs autograd through the (independent) reference energy
    xg = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(reference_energy(gm.means, gm.covs, gm.weights, xg).sum(), xg)
    e, grad = gm.energy_and_grad(x)
    torch.testing.assert_close(grad, g_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(e, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gm.grad(x), grad)
    torch.testing.assert_close(gm.score(x), -grad)


def test_isotropic_stds_equal_full_covs():
    gm = random_gmm(4, 2, seed=3, full=False)
    stds = gm.covs[:, 0, 0].sqrt()
    full = toy.GaussianMixture(gm.means, covs=stds[:, None, None] ** 2 * torch.eye(2, dtype=F64), weights=gm.weights)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(gm.energy(x), full.energy(x))
    torch.testing.assert_close(gm.grad(x), full.grad(x))


def test_create_graph_gives_hessian_of_a_gaussian():
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=F64)
    gm = toy.GaussianMixture(torch.tensor([[1.0, -1.0]], dtype=F64), covs=cov[None])
    x = torch.tensor([[0.3, 0.2]], dtype=F64, requires_grad=True)
    grad = gm.grad(x, create_graph=True)
    rows = [torch.autograd.grad(grad[0, i], x, retain_graph=True)[0][0] for i in range(2)]
    torch.testing.assert_close(torch.stack(rows), torch.linalg.inv(cov))
    # without create_graph the gradient is detached
    assert not gm.grad(x).requires_grad


def test_normalised_in_1d_and_2d():
    gm1 = toy.GaussianMixture(torch.tensor([[-1.0], [2.0]], dtype=F64), stds=[0.5, 1.0], weights=[1, 3])
    xs = torch.linspace(-12, 14, 20001, dtype=F64)[:, None]
    mass = torch.trapezoid(torch.exp(-gm1.energy(xs)), xs[:, 0])
    assert abs(float(mass) - 1.0) < 1e-9
    gm2 = random_gmm(3, 2, seed=5)
    dens = grid_density(gm2, (-14.0, 14.0), resolution=400)
    assert abs(float(dens.log_z)) < 1e-4


def test_log_prob_is_minus_energy():
    gm = random_gmm(2, 2, seed=1)
    x = torch.randn(8, 2, dtype=F64)
    torch.testing.assert_close(gm.log_prob(x), -gm.energy(x))


def test_sample_moments_within_monte_carlo_error():
    gm = random_gmm(3, 2, seed=7)
    n = 200_000
    x = gm.sample(n, generator=torch.Generator().manual_seed(11))
    assert x.shape == (n, 2) and x.dtype == F64
    mean, cov = gm.mean(), gm.covariance()
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert bool(((x.mean(0) - mean).abs() < 5 * se_mean).all()), (x.mean(0), mean, se_mean)
    xc = x - x.mean(0)
    prods = xc[:, :, None] * xc[:, None, :]  # (n, 2, 2)
    emp_cov = prods.mean(0)
    se_cov = prods.std(0) / math.sqrt(n)
    assert bool(((emp_cov - cov).abs() < 5 * se_cov).all()), (emp_cov, cov, se_cov)


def test_closed_form_moments_of_a_known_mixture():
    means = torch.tensor([[-1.0, 0.0], [3.0, 2.0]], dtype=F64)
    gm = toy.GaussianMixture(means, stds=[1.0, 2.0], weights=[3.0, 1.0])
    torch.testing.assert_close(gm.mean(), torch.tensor([0.0, 0.5], dtype=F64))
    # law of total covariance: E[Σ_k] + Cov(μ_k)
    within = torch.diag(torch.tensor([0.75 * 1 + 0.25 * 4] * 2, dtype=F64))
    between = 0.75 * 0.25 * torch.outer(means[0] - means[1], means[0] - means[1])
    torch.testing.assert_close(gm.covariance(), within + between)


def test_sample_component_frequencies_match_weights():
    means = torch.tensor([[-20.0], [0.0], [20.0]], dtype=F64)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    gm = toy.GaussianMixture(means, stds=[1.0, 1.0, 1.0], weights=w)
    n = 50_000
    x = gm.sample(n, generator=torch.Generator().manual_seed(2))[:, 0]
    freq = torch.stack([(x < -10).double().mean(), ((x > -10) & (x < 10)).double().mean(), (x > 10).double().mean()])
    se = torch.sqrt(w * (1 - w) / n)
    assert bool(((freq - w).abs() < 5 * se).all()), (freq, w)


def test_sampling_is_reproducible():
    gm = random_gmm(3, 2, seed=2)
    a = gm.sample(100, generator=torch.Generator().manual_seed(5))
    b = gm.sample(100, generator=torch.Generator().manual_seed(5))
    c = gm.sample(100, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_properties_and_weight_normalisation():
    gm = toy.GaussianMixture(torch.zeros(3, 2, dtype=F64), stds=[1.0, 2.0, 3.0], weights=[1.0, 1.0, 2.0], name="g")
    assert gm.dim == 2 and gm.n_components == 3 and gm.event_shape == (2,)
    torch.testing.assert_close(gm.weights, torch.tensor([0.25, 0.25, 0.5], dtype=F64))
    torch.testing.assert_close(gm.covs[2], 9.0 * torch.eye(2, dtype=F64))
    assert repr(gm) == "g"
    # default weights are uniform
    gm2 = toy.GaussianMixture(torch.zeros(4, 1), stds=1.0)
    torch.testing.assert_close(gm2.weights, torch.full((4,), 0.25))
    # returned tensors are copies: no hidden mutable state
    m = gm.means
    m += 1.0
    assert float(gm.means.abs().sum()) == 0.0


def test_dtype_follows_inputs_and_x():
    gm32 = toy.GaussianMixture(torch.zeros(2, 2), stds=[1.0, 2.0])
    assert gm32.dtype == torch.float32 and gm32.sample(3, generator=torch.Generator()).dtype == torch.float32
    x64 = torch.randn(5, 2, dtype=F64)
    assert gm32.energy(x64).dtype == F64 and gm32.grad(x64).dtype == F64
    gm64 = copy.deepcopy(gm32).to(F64)  # Module.to is in place: copy first
    assert gm64.dtype == F64 and gm32.dtype == torch.float32
    torch.testing.assert_close(gm64.energy(x64), gm32.energy(x64))


def test_algebra_with_other_energies():
    gm = random_gmm(2, 2, seed=4)
    x = torch.randn(6, 2, dtype=F64)
    other = ec.EnergyFunction(lambda z: 0.5 * (z**2).sum(-1), event_shape=(2,))
    e, g = (gm + 2.0 * other).energy_and_grad(x)
    torch.testing.assert_close(e, gm.energy(x) + (x**2).sum(-1))
    torch.testing.assert_close(g, gm.grad(x) + 2.0 * x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(means=torch.zeros(3), stds=[1.0, 1.0, 1.0]), r"means must have shape \(K, D\)"),
        (dict(means=torch.zeros(2, 2)), "give the component spreads"),
        (dict(means=torch.zeros(2, 2), stds=[1.0, 1.0], covs=torch.eye(2).expand(2, 2, 2)), "not both"),
        (dict(means=torch.zeros(2, 2), stds=[1.0, 1.0, 1.0]), r"stds must have shape \(2,\)"),
        (dict(means=torch.zeros(2, 2), stds=[1.0, -1.0]), "stds must be positive"),
        (dict(means=torch.zeros(2, 2), covs=torch.eye(3).expand(2, 3, 3)), r"covs must have shape \(2, 2, 2\)"),
        (dict(means=torch.zeros(1, 2), covs=torch.tensor([[[1.0, 2.0], [2.0, 1.0]]])), r"covs\[0\] is not positive definite"),
        (dict(means=torch.zeros(1, 2), covs=torch.tensor([[[1.0, 0.5], [0.0, 1.0]]])), r"covs\[0\] is not symmetric"),
        (dict(means=torch.zeros(2, 2), stds=[1.0, 1.0], weights=[1.0, -0.5]), "weights must be non-negative"),
        (dict(means=torch.zeros(2, 2), stds=[1.0, 1.0], weights=[0.0, 0.0]), "must not all be zero"),
        (dict(means=torch.zeros(2, 2), stds=[1.0, 1.0], weights=[1.0, 1.0, 1.0]), r"weights must have shape \(2,\)"),
        (dict(means=torch.tensor([[0.0, float("nan")]]), stds=[1.0]), "means must be finite"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        toy.GaussianMixture(**kwargs)


def test_sample_and_evaluation_errors():
    gm = toy.GaussianMixture(torch.zeros(1, 2), stds=[1.0])
    with pytest.raises(ValueError, match="positive integer"):
        gm.sample(0, generator=torch.Generator())
    with pytest.raises(TypeError, match="torch.Generator"):
        gm.sample(3, generator=0)
    with pytest.raises(ValueError, match=r"expects points of shape \(B, 2\)"):
        gm.energy(torch.zeros(4, 3))
