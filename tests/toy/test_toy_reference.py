"""reference_sample: exact grid sampling of any 2-D energy."""

import math

import pytest
import torch

import ebmcompose as ec
import toy

F64 = torch.float64

B, S = 0.5, 0.5  # banana: x1 ~ N(0, 1), x2 | x1 ~ N(B x1², S²)


def banana_energy(x):
    return 0.5 * x[:, 0] ** 2 + 0.5 * (x[:, 1] - B * x[:, 0] ** 2) ** 2 / S**2


BANANA = ec.EnergyFunction(banana_energy, name="banana", event_shape=(2,))
BANANA_BOUNDS = ((-6.0, 6.0), (-3.0, 14.0))


def test_banana_moments_match_closed_form():
    """Non-Gaussian target with known moments: E x1 = 0, E x2 = B, Var x1 = 1,
    Var x2 = S² + 2B², E[x1² x2] = 3B (a non-Gaussian signature), E[x1 x2] = 0."""
    n = 200_000
    x = toy.reference_sample(BANANA, n, BANANA_BOUNDS, resolution=512, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert x.shape == (n, 2) and x.dtype == F64
    x1, x2 = x[:, 0], x[:, 1]
    stats = {
        "E x1": (x1, 0.0),
        "E x2": (x2, B),
        "E x1^2": (x1**2, 1.0),
        "E (x2-B)^2": ((x2 - B) ** 2, S**2 + 2 * B**2),
        "E x1 x2": (x1 * x2, 0.0),
        "E x1^2 x2": (x1**2 * x2, 3 * B),
    }
    for name, (f, exact) in stats.items():
        se = float(f.std()) / math.sqrt(n)
        assert abs(float(f.mean()) - exact) < 5 * se + 1e-3, (name, float(f.mean()), exact, se)


def test_diffused_energy_at_t_matches_at_t_mixture():
    """Sampling a time-dependent energy at t matches the exact p_t moments."""
    gm = toy.GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0]], dtype=F64), stds=[0.5, 0.8], weights=[1.0, 2.0])
    dg = gm.diffused(ec.VPSchedule.cosine())
    pt = dg.at(0.5)
    n = 100_000
    x = toy.reference_sample(dg, n, (-7.0, 7.0), resolution=256, t=0.5, generator=torch.Generator().manual_seed(1), dtype=F64)
    cov = pt.covariance()
    se = torch.sqrt(torch.diagonal(cov) / n)
    assert bool(((x.mean(0) - pt.mean()).abs() < 5 * se + 1e-3).all()), (x.mean(0), pt.mean())
    xc = x - x.mean(0)
    prods = xc[:, :, None] * xc[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)
    # grid jitter adds h²/12 to the variance (h = 14/256): well inside the tolerance
    assert bool(((prods.mean(0) - cov).abs() < 5 * se_cov + 1e-3).all()), (prods.mean(0), cov)


def test_same_seed_same_samples_and_bounds_respected():
    kw = dict(bounds=((-1.0, 2.0), (0.0, 5.0)), resolution=64)
    a = toy.reference_sample(BANANA, 1000, generator=torch.Generator().manual_seed(3), **kw)
    b = toy.reference_sample(BANANA, 1000, generator=torch.Generator().manual_seed(3), **kw)
    c = toy.reference_sample(BANANA, 1000, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.get_default_dtype()
    assert bool((a[:, 0] >= -1).all() and (a[:, 0] <= 2).all() and (a[:, 1] >= 0).all() and (a[:, 1] <= 5).all())


def test_zero_density_cells_are_never_drawn():
    """An energy that is +inf on the left half: no sample lands there; jitter fills the cells."""
    half = ec.EnergyFunction(lambda x: torch.where(x[:, 0] < 0, torch.full_like(x[:, 0], float("inf")), torch.zeros_like(x[:, 0])), event_shape=(2,))
    x = toy.reference_sample(half, 20_000, (-1.0, 1.0), resolution=8, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert bool((x[:, 0] >= 0).all())
    # uniform on [0, 1] x [-1, 1]: mean (0.5, 0), within MC error
    se = math.sqrt(1 / 12 / 20_000)
    assert abs(float(x[:, 0].mean()) - 0.5) < 5 * se and abs(float(x[:, 1].mean())) < 5 * 2 * se


def test_a_million_samples():
    x = toy.reference_sample(BANANA, 10**6, BANANA_BOUNDS, resolution=128, generator=torch.Generator().manual_seed(6))
    assert x.shape == (10**6, 2) and bool(torch.isfinite(x).all())


def test_errors_say_what_is_wrong():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="positive integer"):
        toy.reference_sample(BANANA, 0, (-1.0, 1.0), generator=g)
    with pytest.raises(TypeError, match="positive integer"):
        toy.reference_sample(BANANA, 2.5, (-1.0, 1.0), generator=g)
    with pytest.raises(ValueError, match="bounds need finite lo < hi"):
        toy.reference_sample(BANANA, 10, (1.0, -1.0), generator=g)
    with pytest.raises(ValueError, match="bounds must be"):
        toy.reference_sample(BANANA, 10, "square", generator=g)
    gm3 = toy.GaussianMixture(torch.zeros(1, 3), stds=[1.0])
    with pytest.raises(ValueError, match=r"2-D energies.*\(3,\)"):
        toy.reference_sample(gm3, 10, (-1.0, 1.0), generator=g)
    score_only = ec.ScoreFunction(lambda x: -x, event_shape=(2,))
    with pytest.raises(ec.ScoreOnlyError, match="provides scores only"):
        toy.reference_sample(score_only, 10, (-1.0, 1.0), generator=g)
    dg = toy.GaussianMixture(torch.zeros(1, 2), stds=[1.0]).diffused(ec.VPSchedule.cosine())
    with pytest.raises(ValueError, match="depends on diffusion time"):
        toy.reference_sample(dg, 10, (-1.0, 1.0), generator=g)
    with pytest.raises(ValueError, match="resolution must be an integer"):
        toy.reference_sample(BANANA, 10, (-1.0, 1.0), resolution=1, generator=g)
    with pytest.raises(TypeError, match="ebmcompose.Energy"):
        toy.reference_sample(banana_energy, 10, (-1.0, 1.0), generator=g)
