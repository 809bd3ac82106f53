"""gmm_product: exact product of two Gaussian mixtures vs numerical integration."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import toy

F64 = torch.float64


def random_gmm(k, d, seed):
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(k, d, generator=g, dtype=F64)
    a = torch.randn(k, d, d, generator=g, dtype=F64)
    covs = a @ a.mT / d + 0.3 * torch.eye(d, dtype=F64)
    return toy.GaussianMixture(means, covs=covs, weights=torch.rand(k, generator=g, dtype=F64) + 0.2)


def component_log_probs(gm, x):
    """(B, K) log w_k N(x; μ_k, Σ_k) by torch.distributions (independent of toy)."""
    mvn = torch.distributions.MultivariateNormal(gm.means, covariance_matrix=gm.covs)
    return mvn.log_prob(x[:, None, :]) + torch.log(gm.weights)


def test_product_vs_grid_integration_2d():
    a, b = random_gmm(2, 2, seed=1), random_gmm(3, 2, seed=2)
    prod = toy.gmm_product(a, b)
    assert prod.n_components == 6 and prod.dim == 2
    n = 600
    xs = torch.linspace(-9, 9, n, dtype=F64)
    h = float(xs[1] - xs[0])
    gx, gy = torch.meshgrid(xs, xs, indexing="ij")
    x = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)
    la, lb = component_log_probs(a, x), component_log_probs(b, x)  # (N, Ka), (N, Kb)
    pair = torch.exp(la[:, :, None] + lb[:, None, :]).reshape(x.shape[0], -1)  # (N, Ka*Kb)
    dens = pair.sum(-1)
    z = dens.sum() * h * h
    target = dens / z
    # the product is normalised and equals p_a p_b / Z pointwise
    p_prod = torch.exp(-prod.energy(x))
    assert abs(float(p_prod.sum() * h * h) - 1.0) < 1e-6
    torch.testing.assert_close(p_prod, target, rtol=1e-6, atol=1e-9)
    # moments
    mean = (target[:, None] * x).sum(0) * h * h
    xc = x - mean
    cov = (target[:, None, None] * xc[:, :, None] * xc[:, None, :]).sum(0) * h * h
    torch.testing.assert_close(prod.mean(), mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(prod.covariance(), cov, rtol=0, atol=1e-6)
    # weights: ∫ w_i N_i w_j N_j / Z, in the order i * Kb + j
    weights = pair.sum(0) * h * h / z
    torch.testing.assert_close(prod.weights, weights, rtol=1e-6, atol=1e-9)


def test_product_vs_quadrature_1d():
    a = toy.GaussianMixture(torch.tensor([[-1.0], [2.0]], dtype=F64), stds=[0.7, 1.2], weights=[2.0, 1.0])
    b = toy.GaussianMixture(torch.tensor([[0.5], [3.0], [-2.0]], dtype=F64), stds=[1.0, 0.4, 2.0])
    prod = toy.gmm_product(a, b)
    xs = torch.linspace(-15, 15, 30001, dtype=F64)
    dens = torch.exp(-a.energy(xs[:, None]) - b.energy(xs[:, None]))
    z = torch.trapezoid(dens, xs)
    p = dens / z
    torch.testing.assert_close(torch.exp(-prod.energy(xs[:, None])), p, rtol=1e-8, atol=1e-12)
    mean = torch.trapezoid(p * xs, xs)
    var = torch.trapezoid(p * (xs - mean) ** 2, xs)
    assert float(prod.mean()[0]) == pytest.approx(float(mean), abs=1e-8)
    assert float(prod.covariance()[0, 0]) == pytest.approx(float(var), abs=1e-8)


@settings(max_examples=8, deadline=None)
@given(
    ka=st.integers(1, 3),
    kb=st.integers(1, 3),
    d=st.integers(1, 5),
    seed=st.integers(0, 10_000),
)
def test_product_log_density_is_sum_up_to_a_constant(ka, kb, d, seed):
    """In any D: log p_a + log p_b − log p_prod is the constant log Z (checked at random points)."""
    a, b = random_gmm(ka, d, seed), random_gmm(kb, d, seed + 1)
    prod = toy.gmm_product(a, b)
    x = torch.randn(50, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    diff = prod.energy(x) - a.energy(x) - b.energy(x)
    assert float(diff.max() - diff.min()) < 1e-8 * max(1.0, float(diff.abs().max()))
    # log Z = log Σ_ij w_i w_j N(μ_i; μ_j, Σ_i + Σ_j)
    mvn = torch.distributions.MultivariateNormal(b.means, covariance_matrix=a.covs[:, None] + b.covs[None, :])
    log_z = torch.logsumexp((mvn.log_prob(a.means[:, None, :]) + torch.log(a.weights)[:, None] + torch.log(b.weights)).reshape(-1), 0)
    assert float(diff.mean()) == pytest.approx(float(log_z), abs=1e-8)


def test_product_with_a_single_gaussian_is_bayes_rule():
    """Prior N(0, 1) times likelihood N(x; 2, 0.5²): posterior N(1.6, 0.2)."""
    a = toy.GaussianMixture(torch.tensor([[0.0]], dtype=F64), stds=[1.0])
    b = toy.GaussianMixture(torch.tensor([[2.0]], dtype=F64), stds=[0.5])
    p = toy.gmm_product(a, b)
    assert float(p.means[0, 0]) == pytest.approx(1.6)
    assert float(p.covs[0, 0, 0]) == pytest.approx(0.2)


def test_product_errors_and_dtype():
    a = toy.GaussianMixture(torch.zeros(1, 2), stds=[1.0])
    b = toy.GaussianMixture(torch.zeros(1, 3), stds=[1.0])
    with pytest.raises(ValueError, match="same dimension"):
        toy.gmm_product(a, b)
    with pytest.raises(TypeError, match="two toy.GaussianMixture"):
        toy.gmm_product(a, toy.SmoothBox([-1.0, -1.0], [1.0, 1.0], 0.1))
    assert toy.gmm_product(a, a).dtype == torch.float32
    a64 = copy.deepcopy(a).to(F64)  # Module.to is in place: copy first
    assert toy.gmm_product(a, a64).dtype == F64
