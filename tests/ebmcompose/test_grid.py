"""Tests of grid normalisation of 2-D energies (the exact reference for toy densities)."""

import math

import pytest
import torch
from torch import nn

import ebmcompose as ec
from ebmcompose.grid import GridDensity, grid_density, parse_bounds

DT = torch.float64


def gaussian(mu, std, const=0.0, name="g"):
    mu_t, std_t = torch.tensor(mu, dtype=DT), torch.tensor(std, dtype=DT)

    def fn(x):
        return 0.5 * (((x - mu_t.to(x.dtype)) / std_t.to(x.dtype)) ** 2).sum(-1) + const

    return ec.EnergyFunction(fn, name=name, event_shape=(2,))


def test_gaussian_log_z_probs_and_mean():
    mu, std = (1.0, -0.5), (0.7, 1.3)
    g = grid_density(gaussian(mu, std), ((-6.0, 8.0), (-12.0, 11.0)), resolution=200)
    assert isinstance(g, GridDensity)
    assert g.probs.shape == (200, 200) and g.probs.dtype == DT
    assert float(g.probs.sum()) == pytest.approx(1.0, abs=1e-12)
    assert bool((g.probs >= 0).all())
    assert float(g.log_z) == pytest.approx(math.log(2 * math.pi * std[0] * std[1]), abs=1e-8)
    torch.testing.assert_close(g.mean(), torch.tensor(mu, dtype=DT), rtol=0, atol=1e-8)
    # probs[i, j]: i indexes x, j indexes y
    xc = 0.5 * (g.x_edges[1:] + g.x_edges[:-1])
    yc = 0.5 * (g.y_edges[1:] + g.y_edges[:-1])
    assert float((g.probs.sum(1) * xc).sum()) == pytest.approx(mu[0], abs=1e-8)
    assert float((g.probs.sum(0) * yc).sum()) == pytest.approx(mu[1], abs=1e-8)
    var_x = float((g.probs.sum(1) * (xc - mu[0]) ** 2).sum())
    assert var_x == pytest.approx(std[0] ** 2, rel=1e-4)  # midpoint rule: O(dx^2 / 12)


def test_log_z_tracks_constant_and_bounds():
    base = grid_density(gaussian((0.0, 0.0), (1.0, 1.0)), (-8, 8), resolution=128)
    shifted = grid_density(gaussian((0.0, 0.0), (1.0, 1.0), const=3.0), (-8, 8), resolution=128)
    assert float(shifted.log_z) == pytest.approx(float(base.log_z) - 3.0, abs=1e-12)
    torch.testing.assert_close(shifted.probs, base.probs)
    flat = ec.EnergyFunction(lambda x: x.new_zeros(x.shape[0]), name="flat")
    u = grid_density(flat, ((0.0, 2.0), (-1.0, 2.0)), resolution=16)
    assert float(u.log_z) == pytest.approx(math.log(6.0), abs=1e-12)
    torch.testing.assert_close(u.probs, torch.full((16, 16), 1 / 256, dtype=DT))
    torch.testing.assert_close(u.mean(), torch.tensor([1.0, 0.5], dtype=DT))
    # truncation: mass outside the bounds is dropped, so log_z of a half-plane is log(Z/2)
    half = grid_density(gaussian((0.0, 0.0), (1.0, 1.0)), ((0.0, 8.0), (-8.0, 8.0)), resolution=256)
    assert float(half.log_z) == pytest.approx(math.log(math.pi), abs=1e-5)


def test_geometry_and_centers():
    g = grid_density(gaussian((0.0, 0.0), (1.0, 1.0)), ((-1.0, 3.0), (0.0, 2.0)), resolution=4)
    torch.testing.assert_close(g.x_edges, torch.tensor([-1.0, 0.0, 1.0, 2.0, 3.0], dtype=DT))
    torch.testing.assert_close(g.y_edges, torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0], dtype=DT))
    assert g.cell_size == (1.0, 0.5)
    c = g.centers
    assert c.shape == (16, 2)
    torch.testing.assert_close(c[1], torch.tensor([-0.5, 0.75], dtype=DT))  # (i=0, j=1)
    torch.testing.assert_close(c[4], torch.tensor([0.5, 0.25], dtype=DT))  # (i=1, j=0)
    # probs follow the same order as centers
    e = gaussian((0.0, 0.0), (1.0, 1.0)).energy(c)
    torch.testing.assert_close(g.probs.reshape(-1), torch.softmax(-e, 0))


def test_chunking_time_and_module_dtype():
    e = gaussian((0.3, -0.2), (0.8, 1.1))
    a = grid_density(e, (-5, 5), resolution=64)
    b = grid_density(e, (-5, 5), resolution=64, chunk_size=1000)  # not a divisor of 64**2
    torch.testing.assert_close(a.probs, b.probs, rtol=0, atol=0)
    torch.testing.assert_close(a.log_z, b.log_z, rtol=0, atol=0)

    seen = []

    def td(x, t):
        seen.append(t)
        return 0.5 * (x**2).sum(-1) / (0.5 + t)

    g = grid_density(ec.EnergyFunction(td, name="td"), (-8, 8), resolution=128, t=0.5)
    assert float(seen[0][0]) == 0.5
    assert float(g.log_z) == pytest.approx(math.log(2 * math.pi * 1.0), abs=1e-6)
    with pytest.raises(ValueError, match="diffusion time"):
        grid_density(ec.EnergyFunction(td, name="td"), (-8, 8), resolution=8)

    class Net(nn.Module):  # float32 parameters: evaluated in float32, accumulated in float64
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            return 0.5 * self.scale * (x**2).sum(-1)

    g = grid_density(ec.EnergyFunction(Net()), (-8, 8), resolution=128)
    assert g.probs.dtype == DT
    assert float(g.log_z) == pytest.approx(math.log(2 * math.pi), abs=1e-5)


@pytest.mark.parametrize(
    "bounds,want",
    [
        ((-1, 2), ((-1.0, 2.0), (-1.0, 2.0))),
        ([-1.5, 2.5], ((-1.5, 2.5), (-1.5, 2.5))),
        (((0, 1), (2, 5)), ((0.0, 1.0), (2.0, 5.0))),
        ([[0.0, 1.0], [-3.0, -2.0]], ((0.0, 1.0), (-3.0, -2.0))),
    ],
)
def test_parse_bounds(bounds, want):
    got = parse_bounds(bounds)
    assert got == want and all(isinstance(v, float) for ax in got for v in ax)


@pytest.mark.parametrize(
    "bounds",
    [
        (1, 1),
        (2, 1),
        ((0, 1), (1, 0)),
        ((0, 1), (0, 0)),
        (0, float("inf")),
        (float("nan"), 1),
        ((0, 1), (0, float("nan"))),
        (1, 2, 3),
        "ab",
        None,
        ((0, 1),),
        ((0, 1, 2), (0, 1)),
        ("a", "b"),
    ],
)
def test_bad_bounds(bounds):
    with pytest.raises(ValueError, match="bounds"):
        parse_bounds(bounds)
    with pytest.raises(ValueError, match="bounds"):
        grid_density(gaussian((0.0, 0.0), (1.0, 1.0)), bounds, resolution=4)


def test_bad_arguments():
    g = gaussian((0.0, 0.0), (1.0, 1.0))
    for res in (1, 0, 2.5, "64"):
        with pytest.raises(ValueError, match="resolution"):
            grid_density(g, (-1, 1), resolution=res)
    with pytest.raises(ValueError, match="chunk_size"):
        grid_density(g, (-1, 1), resolution=4, chunk_size=0)
    with pytest.raises(TypeError, match="EnergyFunction"):
        grid_density(lambda x: (x**2).sum(-1), (-1, 1))
    with pytest.raises(ValueError, match="2-D only"):
        grid_density(ec.EnergyFunction(lambda x: (x**2).sum(-1), event_shape=(3,)), (-1, 1))
    with pytest.raises(ec.ScoreOnlyError, match="scores only"):
        grid_density(ec.ScoreFunction(lambda x: -x, name="s"), (-1, 1), resolution=4)
    inf = ec.EnergyFunction(lambda x: torch.full_like(x[:, 0], float("inf")), name="inf")
    with pytest.raises(ValueError, match="infinite .* everywhere"):
        grid_density(inf, (-1, 1), resolution=4)
    nan = ec.EnergyFunction(lambda x: torch.where(x[:, 0] > 0, float("nan"), 0.0), name="nan")
    with pytest.raises(ValueError, match="NaN"):
        grid_density(nan, (-1, 1), resolution=4)
    neg_inf = ec.EnergyFunction(lambda x: torch.where(x[:, 0] > 0, -float("inf"), 0.0), name="ninf")
    with pytest.raises(ValueError, match=r"-inf .*infinite density"):
        grid_density(neg_inf, (-1, 1), resolution=4)


def test_zero_density_regions_are_allowed():
    # +inf energy = zero density: a uniform density on the right half of the square
    half = ec.EnergyFunction(lambda x: torch.where(x[:, 0] > 0, 0.0, float("inf")).to(x.dtype), name="half")
    g = grid_density(half, (-1, 1), resolution=8)
    assert float(g.probs[:4].sum()) == 0.0
    assert float(g.probs.sum()) == pytest.approx(1.0)
    assert float(g.log_z) == pytest.approx(math.log(2.0))


def test_parse_bounds_accepts_numpy_and_tensor_scalars():
    import numpy as np

    from ebmcompose.grid import parse_bounds

    assert parse_bounds((np.float32(-2), np.float64(3))) == ((-2.0, 3.0), (-2.0, 3.0))
    assert parse_bounds((torch.tensor(-1.0), torch.tensor(1.0))) == ((-1.0, 1.0), (-1.0, 1.0))
    assert parse_bounds(((np.float32(0), 1), (torch.tensor(2.0), 4))) == ((0.0, 1.0), (2.0, 4.0))
