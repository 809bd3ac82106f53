"""Classic 2-D training sets: shapes, determinism, structure, errors."""

import math

import pytest
import torch

import toy

N = 4000


def draw(name, seed=0, n=N):
    return toy.datasets.sample(name, n, generator=torch.Generator().manual_seed(seed))


def test_names():
    assert toy.datasets.names() == ("8gaussians", "checkerboard", "moons", "rings", "spirals")


@pytest.mark.parametrize("name", toy.datasets.names())
def test_shape_dtype_determinism(name):
    x = draw(name)
    assert x.shape == (N, 2) and x.dtype == torch.float32
    assert bool(torch.isfinite(x).all()) and float(x.abs().max()) < 6.0
    assert torch.equal(x, draw(name))
    assert not torch.equal(x, draw(name, seed=1))
    # roughly centred (every set is symmetric about the origin in law)
    assert float(x.mean(0).norm()) < 0.3


def test_checkerboard_only_black_cells_and_uniform():
    x = draw("checkerboard").double()
    cell = torch.floor((x + 4.0) / 2.0)
    assert bool(((cell >= 0) & (cell <= 3)).all())
    assert bool((cell.sum(-1) % 2 == 0).all())
    counts = torch.bincount((cell[:, 0] * 4 + cell[:, 1]).long(), minlength=16)
    black = counts[counts > 0]
    assert black.numel() == 8
    p = 1 / 8
    assert bool(((black / N - p).abs() < 5 * math.sqrt(p * (1 - p) / N)).all())


def test_rings_radii():
    r = draw("rings").double().norm(dim=-1)
    nearest = torch.round(r).clamp(1, 4)
    assert float((r - nearest).abs().max()) < 0.5
    freq = torch.bincount(nearest.long(), minlength=5)[1:] / N
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    assert bool(((freq - p).abs() < 5 * torch.sqrt(p * (1 - p) / N)).all())


def test_8gaussians_near_the_ring_modes():
    x = draw("8gaussians").double()
    modes = toy.ring(8, 4.0, 0.3, dtype=torch.float64).means
    d = torch.cdist(x, modes).min(dim=-1).values
    assert float(d.max()) < 5 * 0.3 * 1.5
    assert abs(float((d**2).mean()) - 2 * 0.09) < 0.02  # E|x − μ|² = 2 std²


def test_spirals_and_moons_structure():
    s = draw("spirals").double()
    assert float(s.norm(dim=-1).max()) < 4.6
    m = draw("moons").double()
    # the two moons: upper points sit above the lower ones on average
    assert float(m[:, 1].std()) > 0.5 and float(m[:, 0].std()) > 1.0


def test_errors():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="unknown dataset 'swissroll'; valid names are 8gaussians, checkerboard"):
        toy.datasets.sample("swissroll", 10, generator=g)
    with pytest.raises(ValueError, match="positive integer"):
        toy.datasets.sample("moons", 0, generator=g)
    with pytest.raises(TypeError, match="torch.Generator"):
        toy.datasets.sample("moons", 10, generator=42)
