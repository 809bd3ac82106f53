"""Diagonal mass adaptation in HMC's warm-up (``samplers.mass_adaptation``, ``HMC(adapt_mass=True)``)."""

import math

import pytest
import torch

import ebmcompose as ec
from samplers import HMC, MALA
from samplers.mass_adaptation import VarianceEstimate, regularised_variance

STD = torch.logspace(-2, 0, 12, dtype=torch.float64)  # condition number 1e4 in variance


def _gaussian():
    return ec.EnergyFunction(lambda x: 0.5 * (x / STD).square().sum(1), name="ill_conditioned")


def test_pooled_variance_is_the_variance_of_all_positions():
    g = torch.Generator().manual_seed(0)
    steps = [torch.randn(7, 3, 2, dtype=torch.float64, generator=g) * (k + 1) for k in range(5)]
    est = VarianceEstimate()
    for x in steps:
        est.update(x)
    torch.testing.assert_close(est.variance, torch.cat(steps).var(dim=0), rtol=1e-12, atol=1e-12)
    assert est.n == 35
    shrunk = regularised_variance(est, steps[0])  # Stan's n/(n+5) var + 1e-3 · 5/(n+5)
    torch.testing.assert_close(shrunk, est.variance * 35 / 40 + 1e-3 * 5 / 40)


def test_adapted_mass_matches_the_target_and_samples_it():
    """The inverse mass ends near the target's variances (it starts at 1, up to 1e4 away), the step
    grows from the smallest scale's to the mixing one, and the kept draws have the target's variances
    within Monte-Carlo error."""
    energy = _gaussian()
    n = 400
    x0 = torch.randn(n, STD.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = HMC(n_leapfrog=8, n_steps=60, n_warmup=200, adapt_mass=True).sample(energy, x0, generator=torch.Generator().manual_seed(2))
    inv_mass = 1.0 / res.info.kernel.mass
    ratio = inv_mass / STD.square()
    assert float(ratio.min()) > 0.6 and float(ratio.max()) < 1.6, ratio
    assert res.info.kernel.adapt_mass is False and float(res.info.step_size) > 0.3  # fixed mass: step ~0.02
    var = res.samples.var(dim=0) / STD.square()
    z = (var - 1.0) / math.sqrt(2.0 / (n - 1))  # independent chains: chi-square spread of a variance
    assert float(z.abs().max()) < 4.0, z


def test_adapt_mass_needs_step_adaptation_and_enough_warmup():
    energy = _gaussian()
    x0 = torch.zeros(4, STD.numel(), dtype=torch.float64)
    with pytest.raises(ec.InputError, match="leave step_size=None"):
        HMC(step_size=0.01, adapt_mass=True, n_steps=2).sample(energy, x0)
    with pytest.raises(ec.InputError, match="n_warmup >= 20"):
        HMC(adapt_mass=True, n_warmup=10)
    with pytest.raises(ec.InputError, match="no mass matrix"):
        MALA(step_size=0.1).with_mass(torch.ones(3))


@pytest.mark.parametrize("n", [20, 99, 150, 400, 1000])
def test_windows_cover_the_warmup_and_double(n):
    from samplers.mass_adaptation import windows

    first, slow, last = windows(n)
    assert first + sum(slow) + last == n and slow and min(slow) > 0
    assert all(b >= 2 * a for a, b in zip(slow[:-2], slow[1:-1]))  # doubling (the last one stretched)
    if n >= 150:
        assert (first, slow[0], last) == (75, 25, 50)
