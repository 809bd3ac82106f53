"""Reliability of toy's exact answers: 2-D-only reference sampling, targets that do not fit their bounds, float32 covariances."""

import numpy as np
import pytest
import torch

import ebmcompose as ec
import toy


@pytest.fixture(scope="module")
def leaves():
    out = {}
    for name in toy.tasks.names():
        out.update(toy.tasks.get(name).components)
    return out


def test_reference_sample_of_a_10d_energy_is_a_clear_error():
    mu = torch.zeros(10)
    e10 = ec.EnergyFunction(lambda x: ((x - mu) ** 2).sum(-1) / 2, name="gauss10")  # fails on 2-D points
    with pytest.raises(ec.InputError, match="exact only for 2-D energies"):
        toy.reference_sample(e10, 5, (-3, 3))
    declared = ec.EnergyFunction(lambda x: (x ** 2).sum(-1) / 2, event_shape=(10,))
    with pytest.raises(ec.InputError, match=r"exact only for 2-D.*\(10,\)"):
        toy.reference_sample(declared, 5, (-3, 3))
    gm10 = toy.GaussianMixture(torch.zeros(1, 10), stds=[1.0])
    with pytest.raises(ec.InputError, match="exact only for 2-D"):
        toy.reference_sample(gm10, 5, (-3, 3))


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 6e-8), (torch.float32, 5e-7), ("numpy32", 3e-7)])
def test_a_float32_covariance_symmetric_to_its_precision_is_accepted(dtype, rel):
    cov = torch.tensor([[[2.0, 0.6], [0.6, 1.0]]], dtype=torch.float64)
    cov[0, 0, 1] *= 1 + rel  # asymmetric by float32 rounding
    c = cov.numpy().astype(np.float32) if dtype == "numpy32" else cov.to(dtype)
    gm = toy.GaussianMixture(np.zeros((1, 2), np.float32) if dtype == "numpy32" else torch.zeros(1, 2), covs=c)
    sym = gm.covs.double()
    assert torch.allclose(sym, sym.mT) and abs(float(sym[0, 0, 1]) - 0.6) < 1e-6


@pytest.mark.parametrize("c", [torch.tensor([[[2.0, 0.6], [0.5, 1.0]]]), torch.tensor([[[2.0, 0.6], [0.6 + 1e-5, 1.0]]])])
def test_a_really_asymmetric_covariance_is_still_rejected(c):
    with pytest.raises(ValueError, match="not symmetric"):
        toy.GaussianMixture(torch.zeros(1, 2), covs=c)
    with pytest.raises(ValueError, match="not symmetric"):  # float64: 1e-8 relative
        toy.GaussianMixture(torch.zeros(1, 2, dtype=torch.float64), covs=torch.tensor([[[2.0, 0.6], [0.6 + 1e-7, 1.0]]], dtype=torch.float64))


def test_every_task_fits_its_bounds():
    for name in toy.tasks.names():
        task = toy.tasks.get(name)
        m = toy.check_fits_bounds(task.composed, task.bounds)
        assert m.fits and m.mass < 1e-4


@pytest.mark.parametrize("expr, kind", [
    ("NOT ring", "grows towards the edges"),
    ("ring AND NOT 3*bar", "grows towards the edges"),
    ("0*ring", "is flat"),
    ("0.01*ring", "wider than its bounds"),
])
def test_targets_that_do_not_fit_their_bounds_get_advice_that_fits(expr, kind, leaves):
    e = ec.parse(expr, leaves)
    with pytest.raises(toy.ImproperTargetError, match=kind) as info:
        toy.check_fits_bounds(e, toy.tasks.BOUNDS, what=expr)
    assert "smaller step size would not help" in str(info.value)
    assert isinstance(info.value, ec.InputError)


@pytest.mark.parametrize("expr", ["ring AND NOT 0.5*bar", "bar", "left | right", "box AND NOT 0.5*small"])
def test_proper_compositions_fit(expr, leaves):
    m = toy.edge_mass(ec.parse(expr, leaves), toy.tasks.BOUNDS)
    assert m.fits and not m.flat and not m.peak_at_edge
