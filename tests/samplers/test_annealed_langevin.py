"""AnnealedLangevin: recovers the exact diffused target at the last (small-noise) level,
exact AIS log-weights, the sigma² step rule, NFE accounting and the contract."""

import math

import pytest
import torch

import ebmcompose as ec
import toy
from samplers import HMC, MALA, AnnealedLangevin, NonFiniteStateError

SCHEDULE = ec.VPSchedule.cosine()
T_MIN = 0.05


def exact_moments(gm, t):
    """Mean (D,) and covariance (D, D) of the diffused mixture at time t."""
    g = gm.diffused(SCHEDULE).at(t)
    return g.mean().double(), g.covariance().double()


def assert_moments(x, mean, cov, n_se=4.5):
    n = x.shape[0]
    x = x.double()
    assert ((x.mean(0) - mean).abs() <= n_se * (cov.diagonal() / n).sqrt()).all(), (x.mean(0), mean)
    d = cov.diagonal()
    se = ((d[:, None] * d[None, :] + cov**2) / n).sqrt()
    assert ((torch.cov(x.T) - cov).abs() <= n_se * se).all(), (torch.cov(x.T), cov)


@pytest.mark.parametrize(
    "kernel, step_size, n_steps",
    [(None, 1e-2, 30), (MALA(n_steps=1), 4e-3, 15)],
    ids=["ula", "mala"],
)
def test_recovers_gaussian_at_small_noise(kernel, step_size, n_steps):
    # ULA is biased by its step size (variance x 1/(1 - h/2s²), ~3% here at the last level) and
    # lags the moving target at small steps: enough steps per level keep both within MC error
    gm = toy.GaussianMixture(torch.tensor([[1.0, -2.0]]), covs=torch.tensor([[[0.5, 0.3], [0.3, 0.4]]]))
    al = AnnealedLangevin(SCHEDULE, 20, n_steps, step_size, kernel=kernel, t_min=T_MIN)
    res = al.sample(gm.diffused(SCHEDULE), shape=(2000, 2), generator=torch.Generator().manual_seed(0))
    mean, cov = exact_moments(gm, T_MIN)
    assert_moments(res.samples, mean, cov)


def test_recovers_mixture_mode_weights_with_mala():
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    weights = torch.tensor([0.7, 0.3])
    gm = toy.GaussianMixture(means, stds=torch.tensor([0.5, 0.5]), weights=weights)
    al = AnnealedLangevin(SCHEDULE, 20, 15, 4e-3, kernel=MALA(n_steps=1), t_min=T_MIN)
    n = 2000
    x = al.sample(gm.diffused(SCHEDULE), shape=(n, 2), generator=torch.Generator().manual_seed(1)).samples
    frac = (x[:, 0] < 0).double().mean()
    se = math.sqrt(0.7 * 0.3 / n)
    assert abs(frac - 0.7) <= 4.5 * se, frac
    mean, cov = exact_moments(gm, T_MIN)
    assert_moments(x, mean, cov, n_se=5.0)


def test_ais_log_weights_estimate_the_normalising_constant_ratio():
    """E_t = −log p_t(x) + c t has Z_t = exp(−c t): AIS must estimate log Z_L − log Z_1 = c (t_1 − t_L)."""
    gm = toy.GaussianMixture(torch.tensor([[-1.5, 0.0], [1.5, 0.0]]), stds=torch.tensor([0.5, 0.5]))
    c = 3.0
    offset = ec.EnergyFunction(lambda x, t: c * t + 0.0 * x.sum(1), name="offset")
    energy = gm.diffused(SCHEDULE) + offset
    al = AnnealedLangevin(SCHEDULE, 20, 5, 4e-3, kernel=MALA(n_steps=1), t_min=T_MIN)
    res = al.sample(energy, shape=(1000, 2), generator=torch.Generator().manual_seed(2))
    w = res.info["log_weights"].double()
    log_z = torch.logsumexp(w, 0) - math.log(w.numel())
    ts = res.info["ts"]
    expected = c * (ts[0] - ts[-1])
    ess = 1.0 / torch.softmax(w, 0).square().sum()
    # delta-method SE of log of a mean of weights: sqrt(var(w)/n)/mean(w) ~ sqrt(1/ess - 1/n)
    se = math.sqrt(max(1.0 / float(ess) - 1.0 / w.numel(), 1e-6))
    assert abs(float(log_z) - float(expected)) <= max(5 * se, 0.05), (log_z, expected, ess)


def test_step_sizes_follow_sigma2_rule_and_hmc_scales_with_sigma():
    al = AnnealedLangevin(SCHEDULE, 6, 2, 0.01, t_min=0.1)
    var = SCHEDULE.sigma(al.ladder()) ** 2
    torch.testing.assert_close(al.step_sizes(), 0.01 * var / var[-1])
    hmc = AnnealedLangevin(SCHEDULE, 6, 2, 0.01, kernel=HMC(n_leapfrog=2, n_steps=1), t_min=0.1)
    torch.testing.assert_close(hmc.step_sizes(), 0.01 * (var / var[-1]).sqrt())
    energy = toy.GaussianMixture(torch.zeros(1, 2), stds=torch.ones(1)).diffused(SCHEDULE)
    res = al.sample(energy, shape=(10, 2), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.info["step_size"], al.step_sizes())


def test_per_level_adaptation_reaches_target_and_carries_step_size():
    gm = toy.GaussianMixture(torch.tensor([[0.5, -0.5]]), stds=torch.tensor([0.4]))
    al = AnnealedLangevin(SCHEDULE, 8, 30, 1e-3, kernel=MALA(n_steps=1), t_min=T_MIN, adapt=True)
    res = al.sample(gm.diffused(SCHEDULE), shape=(500, 2), generator=torch.Generator().manual_seed(3))
    acc = res.info["acceptance"]
    assert acc.shape == (8,)
    assert ((acc - 0.57).abs() < 0.15).all(), acc
    h = res.info["step_size"]
    assert h[0] == pytest.approx(al.step_sizes()[0].item())  # the first level starts at the rule
    assert not torch.allclose(h, al.step_sizes())  # later levels carry the adapted value


def _counting_energy(calls):
    def fn(x, t):
        calls.append(float(t[0]))
        return 0.5 * x.square().flatten(1).sum(1)

    return ec.EnergyFunction(fn, name="counting")


@pytest.mark.parametrize(
    "kernel, per_step", [(None, 1), (MALA(n_steps=1), 1), (HMC(n_leapfrog=3, n_steps=1), 3)], ids=["ula", "mala", "hmc"]
)
def test_nfe_exact(kernel, per_step):
    calls = []
    al = AnnealedLangevin(SCHEDULE, 5, 4, 0.01, kernel=kernel, t_min=0.1)
    res = al.sample(_counting_energy(calls), shape=(3, 2), generator=torch.Generator().manual_seed(0))
    assert res.info["nfe"] == len(calls) == 5 + 5 * 4 * per_step
    assert res.info["n_steps"] == 20
    assert ("log_weights" in res.info) == (kernel is not None)


def test_score_only_energy_needs_ula():
    score_only = ec.ScoreFunction(lambda x, t: -x, name="eps_net")
    with pytest.raises(ec.ScoreOnlyError, match="ULA"):
        AnnealedLangevin(SCHEDULE, 3, 2, 0.01, kernel=MALA(n_steps=1)).sample(
            score_only, shape=(4, 2), generator=torch.Generator()
        )
    res = AnnealedLangevin(SCHEDULE, 3, 2, 0.01).sample(score_only, shape=(4, 2), generator=torch.Generator())
    assert "log_weights" not in res.info and res.info["nfe"] == 9


def test_same_seed_identical_images_and_dtype():
    energy = ec.EnergyFunction(lambda x, t: 0.5 * x.square().flatten(1).sum(1), name="std_normal")
    al = AnnealedLangevin(SCHEDULE, 4, 3, 0.01, kernel=MALA(n_steps=1), t_min=0.2)
    kw = dict(shape=(5, 1, 4, 4), dtype=torch.float64, trace_every=2)
    a = al.sample(energy, generator=torch.Generator().manual_seed(9), **kw)
    b = al.sample(energy, generator=torch.Generator().manual_seed(9), **kw)
    assert a.samples.shape == (5, 1, 4, 4) and a.samples.dtype == torch.float64
    assert torch.equal(a.samples, b.samples)
    assert a.info["trace"].shape == (2, 5, 1, 4, 4)
    assert a.info["acceptance_per_chain"].shape == (5,)


def test_nonfinite_level_is_named():
    def score(x, t):
        return torch.where(t[:, None] < 0.5, torch.full_like(x, float("nan")), -x)

    with pytest.raises(NonFiniteStateError, match="level 2 of the ladder"):
        AnnealedLangevin(SCHEDULE, 4, 2, 0.01, t_min=0.1).sample(
            ec.ScoreFunction(score), shape=(4, 2), generator=torch.Generator()
        )


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0, 5, 0.1), {}, "n_levels"),
        ((5, 0, 0.1), {}, "n_steps_per_level"),
        ((5, 5, -0.1), {}, "step_size"),
        ((5, 5, 0.1), dict(t_min=0.0), "t_min"),
        ((5, 5, 0.1), dict(t_min=0.5, t_max=0.2), "t_min"),
        ((3, 5, 0.1), dict(levels=(0.5, 0.6, 0.1)), "decreasing"),
    ],
)
def test_bad_configs(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        AnnealedLangevin(SCHEDULE, *args, **kwargs)


def test_bad_kernel():
    with pytest.raises(TypeError, match="kernel"):
        AnnealedLangevin(SCHEDULE, 3, 3, 0.1, kernel="mala")
