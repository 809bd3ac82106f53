"""SmoothBox: closed-form energy/grad, stability in the tails, normalisation, exact diffusion."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import ebmcompose as ec
from ebmcompose.grid import grid_density
import toy
from toy.box import log_ndtr_diff

F64 = torch.float64


def make_box(**kw):
    args = dict(lo=[-1.0, -2.0], hi=[2.0, 1.0], smoothing=0.4, dtype=F64)
    args.update(kw)
    return toy.SmoothBox(**args)


def test_energy_matches_scipy_formula():
    """Where the naive CDF difference is accurate (within 2.5 smoothings of the box)."""
    box = make_box()
    lo, hi, s = [-1.0, -2.0], [2.0, 1.0], 0.4
    u = torch.rand(200, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = torch.tensor(lo, dtype=F64) - 1.0 + u * (torch.tensor(hi, dtype=F64) - torch.tensor(lo, dtype=F64) + 2.0)
    xn = x.numpy()
    dens = 1.0
    for d in range(2):
        dens = dens * (stats.norm.cdf((xn[:, d] - lo[d]) / s) - stats.norm.cdf((xn[:, d] - hi[d]) / s)) / (hi[d] - lo[d])
    torch.testing.assert_close(box.energy(x), -torch.log(torch.as_tensor(dens)), rtol=1e-9, atol=1e-9)


def test_grad_matches_autograd_inside_edges_and_tails():
    box = make_box()
    g = torch.Generator().manual_seed(1)
    x = torch.cat([
        torch.randn(100, 2, generator=g, dtype=F64),                   # inside / near the box
        torch.tensor([[-1.0, 1.0], [2.0, -2.0], [0.5, 0.5]], dtype=F64),  # on edges and centre
        torch.tensor([[12.0, 0.0], [-15.0, -9.0], [0.0, 20.0]], dtype=F64),  # far tails
    ])
    xg = x.clone().requires_grad_(True)
    (g_auto,) = torch.autograd.grad(box.energy(xg).sum(), xg)
    assert bool(torch.isfinite(g_auto).all())
    torch.testing.assert_close(box.grad(x), g_auto, rtol=1e-8, atol=1e-9)


def test_far_tails_are_finite_and_asymptotically_gaussian():
    box = make_box(lo=[-1.0], hi=[1.0], smoothing=0.5)
    x = torch.tensor([[-400.0], [-60.0], [60.0], [400.0]], dtype=F64)
    e, g = box.energy_and_grad(x)
    assert bool(torch.isfinite(e).all()) and bool(torch.isfinite(g).all())
    # far above hi: E ≈ (x − hi)²/(2 s²) + log(x − hi) + ..., grad ≈ (x − hi)/s² + 1/(x − hi)
    d = x[2:, 0] - 1.0
    torch.testing.assert_close(g[2:, 0], d / 0.25 + 1.0 / d, rtol=1e-3, atol=0)
    torch.testing.assert_close(g[:2, 0], -g[2:, 0].flip(0))  # symmetric box
    # float32 stays finite too
    e32 = toy.SmoothBox([-1.0], [1.0], 0.5).energy(x.float())
    assert bool(torch.isfinite(e32).all())


@settings(max_examples=30, deadline=None)
@given(b=st.floats(-30, 30), w=st.floats(1e-3, 20))
def test_log_ndtr_diff_matches_scipy(b, w):
    a = b + w
    expected = math.log(stats.norm.cdf(a) - stats.norm.cdf(b)) if max(a, -b) < 5 else None
    if expected is None:  # use scipy's stable tails on the side away from 0
        if b > 0:
            expected = stats.norm.logsf(b) + math.log1p(-math.exp(stats.norm.logsf(a) - stats.norm.logsf(b)))
        elif a < 0:
            expected = stats.norm.logcdf(a) + math.log1p(-math.exp(stats.norm.logcdf(b) - stats.norm.logcdf(a)))
        else:
            expected = math.log1p(-(stats.norm.cdf(b) + stats.norm.sf(a)))
    got = float(log_ndtr_diff(torch.tensor(a, dtype=F64), torch.tensor(b, dtype=F64)))
    assert got == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_normalises_on_a_grid():
    box = make_box()
    dens = grid_density(box, (-6.0, 6.0), resolution=512)
    assert abs(float(dens.log_z)) < 1e-4


def test_sample_moments_within_monte_carlo_error():
    box = make_box()
    n = 100_000
    x = box.sample(n, generator=torch.Generator().manual_seed(3))
    cov = box.covariance()
    torch.testing.assert_close(cov, torch.diag(torch.tensor([9 / 12 + 0.16, 9 / 12 + 0.16], dtype=F64)))
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert bool(((x.mean(0) - box.mean()).abs() < 5 * se).all())
    xc = x - x.mean(0)
    sq = xc**2
    assert bool(((sq.mean(0) - torch.diagonal(cov)).abs() < 5 * sq.std(0) / math.sqrt(n)).all())
    a = box.sample(10, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, box.sample(10, generator=torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("t", [0.05, 0.4, 0.9, 1.0])
def test_diffused_box_matches_1d_quadrature(t):
    """p_t(x) = ∫ p_0(x0) N(x; sqrt(ab) x0, 1 − ab) dx0, per axis (both factorise)."""
    schedule = ec.VPSchedule.cosine()
    lo, hi, s = [-1.0, -2.0], [2.0, 1.0], 0.4
    box = make_box()
    dbox = box.diffused(schedule)
    ab = float(schedule.alpha_bar(torch.tensor(t, dtype=F64)))
    x = torch.randn(25, 2, generator=torch.Generator().manual_seed(5), dtype=F64) * 2.0
    x0 = torch.linspace(-8.0, 8.0, 16001, dtype=F64)
    dens = torch.ones(25, dtype=F64)
    for d in range(2):
        p0 = torch.exp(-toy.SmoothBox([lo[d]], [hi[d]], s, dtype=F64).energy(x0[:, None]))  # (M,)
        var = 1.0 - ab
        kern = torch.exp(-0.5 * (x[:, d : d + 1] - math.sqrt(ab) * x0) ** 2 / var) / math.sqrt(2 * math.pi * var)
        dens = dens * torch.trapezoid(p0 * kern, x0, dim=-1)
    torch.testing.assert_close(dbox.energy(x, t), -torch.log(dens), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dbox.at(t).energy(x), dbox.energy(x, t), rtol=1e-12, atol=1e-12)


def test_diffused_grad_per_sample_t_and_t0():
    schedule = ec.VPSchedule.linear()
    box = make_box()
    dbox = box.diffused(schedule)
    assert dbox.time_dependent and dbox.event_shape == (2,)
    g = torch.Generator().manual_seed(6)
    x = 3.0 * torch.randn(10, 2, generator=g, dtype=F64)
    t = torch.rand(10, generator=g, dtype=F64)
    xg = x.clone().requires_grad_(True)
    (g_auto,) = torch.autograd.grad(dbox.energy(xg, t).sum(), xg)
    e, grad = dbox.energy_and_grad(x, t)
    torch.testing.assert_close(grad, g_auto, rtol=1e-8, atol=1e-9)
    for i in range(10):
        torch.testing.assert_close(e[i : i + 1], dbox.energy(x[i : i + 1], float(t[i])), rtol=1e-12, atol=1e-12)
    e0, g0 = dbox.energy_and_grad(x, 0.0)
    torch.testing.assert_close(e0, box.energy(x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(g0, box.grad(x), rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="depends on diffusion time"):
        dbox.energy(x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lo=[1.0, 0.0], hi=[0.0, 1.0], smoothing=0.1), "need lo < hi"),
        (dict(lo=[0.0, 0.0], hi=[1.0, 1.0], smoothing=0.0), "smoothing must be positive"),
        (dict(lo=[0.0, 0.0], hi=[1.0, 1.0, 1.0], smoothing=0.1), "same length D"),
        (dict(lo=[[0.0]], hi=[1.0], smoothing=0.1), "scalars or 1-D"),
        (dict(lo=[0.0, float("inf")], hi=[1.0, 1.0], smoothing=0.1), "lo must be finite"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        toy.SmoothBox(**kwargs)
