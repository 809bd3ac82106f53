"""Shared analytic targets and Monte-Carlo-error assertions for the kernel tests (ULA, MALA, HMC).

Tolerances are z-scores against Monte-Carlo standard errors estimated from the chains
themselves (``samplers.diagnostics``: FFT autocorrelation + Geyer initial monotone sequence ESS).
"""

import math

import pytest
import torch

import ebmcompose as ec
from samplers.diagnostics import mcse_mean

Z_MAX = 4.5  # per-coordinate z-score threshold (a handful of coordinates per test)


def gaussian(mean, cov, dtype=torch.float32):
    """``N(mean, cov)`` as an EnergyFunction ``½ (x-m)ᵀ Σ⁻¹ (x-m)``; also returns a sampler."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    prec = torch.linalg.inv(cov).to(dtype)
    m = mean.to(dtype)
    chol = torch.linalg.cholesky(cov)

    def fn(x):
        d = x - m.to(x.dtype)
        return 0.5 * ((d @ prec.to(x.dtype)) * d).sum(-1)

    def draw(n, generator, dt=dtype):
        z = torch.randn(n, mean.shape[0], generator=generator, dtype=torch.float64)
        return (mean + z @ chol.T).to(dt)

    return ec.EnergyFunction(fn, name="gauss"), draw


def isotropic(scale, dims=2):
    """``N(0, scale² I)`` as an EnergyFunction on any event shape."""
    s2 = float(scale) ** 2

    def fn(x):
        return 0.5 * x.reshape(x.shape[0], -1).square().sum(1) / s2

    return ec.EnergyFunction(fn, name="iso")


def z_scores(trace, expected):
    """``|mean - expected| / MCSE`` per coordinate of a ``(T, B, *event)`` trace."""
    est = trace.double().mean(dim=(0, 1))
    se = mcse_mean(trace)
    return ((est - torch.as_tensor(expected, dtype=torch.float64)).abs() / se), est, se


def assert_moments(trace, mean, cov, z_max=Z_MAX):
    """Check mean and covariance (centred at the exact mean) of a ``(T, B, D)`` trace."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    z, est, se = z_scores(trace, mean)
    assert (z < z_max).all(), f"mean {est} vs {mean} (MCSE {se}, z {z})"
    d = trace.double() - mean
    prods = d[..., :, None] * d[..., None, :]  # (T, B, D, D)
    z, est, se = z_scores(prods, cov)
    assert (z < z_max).all(), f"covariance {est} vs {cov} (MCSE {se}, z {z})"


def wall_energy():
    """Flat for ``x_0 < 1``, ``+inf`` beyond (gradient 0 everywhere): proposals past the wall diverge."""

    def fn(x):
        inside = x[:, 0] < 1.0
        return torch.where(inside, 0.0 * x.sum(1), torch.full_like(x[:, 0], math.inf))

    return ec.EnergyFunction(fn, name="wall")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Run these small-tensor tests on one intra-op thread (restored afterwards).

    On a shared 2-core machine OpenMP spin-waiting makes tiny ops 10-50x slower with 2 threads.
    Import this fixture into a test module to activate it.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
