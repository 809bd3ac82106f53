"""ESS / R-hat / MCSE on processes with known answers; AIS on a Gaussian ladder with known log Z ratio."""

import math

import pytest
import torch

import ebmcompose as ec
from samplers import MALA
from samplers.diagnostics import ais, ais_log_weights, autocovariance, ess, log_mean_exp, mcse_mean, rhat

from _kernel_targets import single_thread  # noqa: F401


def ar1(t, b, phi, generator, event=(2,)):
    x = torch.empty((t, b) + event, dtype=torch.float64)
    cur = torch.randn((b,) + event, generator=generator, dtype=torch.float64)
    for i in range(t):
        cur = phi * cur + math.sqrt(1 - phi**2) * torch.randn(cur.shape, generator=generator, dtype=torch.float64)
        x[i] = cur
    return x


def test_ess_iid_and_ar1(generator):
    iid = torch.randn(400, 20, 3, generator=generator, dtype=torch.float64)
    r = ess(iid) / 8000
    assert ((r > 0.85) & (r < 1.15)).all(), r
    phi = 0.8
    x = ar1(2000, 20, phi, generator)
    r = ess(x) / (2000 * 20)
    assert ((r / ((1 - phi) / (1 + phi)) - 1).abs() < 0.15).all(), r


def test_autocovariance_matches_direct(generator):
    x = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    ac = autocovariance(x)
    xc = x - x.mean(0)
    for lag in [0, 1, 7]:
        direct = (xc[: 50 - lag] * xc[lag:]).sum(0) / 50
        torch.testing.assert_close(ac[lag], direct)


def test_rhat_detects_unmixed_chains(generator):
    x = torch.randn(500, 8, 2, generator=generator, dtype=torch.float64)
    assert (rhat(x) < 1.01).all()
    shifted = x + torch.arange(8, dtype=torch.float64)[None, :, None]
    assert (rhat(shifted) > 1.5).all()
    drift = x + torch.linspace(0, 3, 500, dtype=torch.float64)[:, None, None]  # non-stationary: split catches it
    assert (rhat(drift) > 1.1).all()


def test_mcse_mean_coverage(generator):
    """The z-score |mean| / MCSE is ~N(0,1) over repeated AR(1) runs."""
    zs = []
    for _ in range(40):
        x = ar1(300, 4, 0.7, generator, event=())
        zs.append(float(x.mean() / mcse_mean(x)))
    zs = torch.tensor(zs)
    assert 0.6 < float(zs.std()) < 1.4


def test_input_validation():
    with pytest.raises(ValueError):
        ess(torch.randn(10))
    with pytest.raises(ValueError):
        ais_log_weights(torch.randn(5))


def test_ais_gaussian_ladder_log_z(generator):
    """Geometric ladder N(0,1) -> N(0, s² I): log Z_L/Z_0 = d log s exactly."""
    d, s = 2, 3.0

    def level(beta):
        prec = (1 - beta) + beta / s**2
        return ec.EnergyFunction(lambda x, p=prec: 0.5 * p * x.square().sum(-1))

    betas = torch.linspace(0, 1, 30).tolist()
    energies = [level(b) for b in betas]
    x0 = torch.randn(2000, d, generator=generator, dtype=torch.float64)
    x, log_w = ais(energies, x0, MALA(), step_size=lambda l: 0.5 * min(1.0 / ((1 - betas[l]) + betas[l] / s**2), 4.0), n_steps=3, generator=generator)
    est = float(log_mean_exp(log_w))
    assert est == pytest.approx(d * math.log(s), abs=0.05)
    assert float(x.var(0).mean()) == pytest.approx(s**2, rel=0.15)
