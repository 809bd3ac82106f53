"""SMC: the log-normaliser of exact diffused products, mode weights that reverse diffusion gets
wrong, per-level ESS and resampling events, NFE, reproducibility, image-shaped states, bad input."""

import math

import pytest
import torch

import ebmcompose as ec
import toy
from samplers import HMC, MALA, ULA, SMC, ReverseDiffusion

SCHEDULE = ec.VPSchedule.cosine()


def product_task():
    """Two 2-D mixtures and their exact product (a 4-mode mixture)."""
    a = toy.GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), stds=[1.0, 1.0], weights=[0.3, 0.7])
    b = toy.GaussianMixture(torch.tensor([[0.0, -2.0], [0.0, 2.0]]), stds=[1.0, 1.0])
    return a, b, toy.gmm_product(a, b)


def exact_log_z(a, b, product):
    """``log ∫ p_a p_b``: ``p_a(x) p_b(x) = Z · p_product(x)`` at any ``x``."""
    x = torch.zeros(1, 2)
    return float(-a.energy(x) - b.energy(x) - product.log_prob(x))


def tilted_task():
    """Two modes at ``(±2.5, 0)`` times a broad tilt: exact mode weights about 77 : 23."""
    modes = toy.GaussianMixture(torch.tensor([[-2.5, 0.0], [2.5, 0.0]]), stds=[0.4, 0.4])
    tilt = toy.GaussianMixture(torch.tensor([[1.0, 0.0]]), stds=2.0)
    exact = toy.gmm_product(modes, tilt)
    return modes.diffused(SCHEDULE) + tilt.diffused(SCHEDULE), float(exact.weights[1])


def seed(s):
    return torch.Generator().manual_seed(s)


# ------------------------------------------------------------------------------ log Z
def _log_z_check(n, n_steps, seeds, rejuvenate=None):
    a, b, product = product_task()
    energy = a.diffused(SCHEDULE) + b.diffused(SCHEDULE)
    exact = exact_log_z(a, b, product)
    smc = SMC(SCHEDULE, n_steps, rejuvenate=rejuvenate, t_max=0.9)  # cosine's steps near t = 1 are huge jumps in SNR
    lz = torch.tensor([smc.sample(energy, shape=(n, 2), generator=seed(s)).info.log_z for s in seeds],
                      dtype=torch.float64)
    se = float(lz.std() / math.sqrt(len(seeds)))
    assert abs(float(lz.mean()) - exact) < 3 * se + 0.01, f"log Z {lz.tolist()} vs exact {exact:.4f} (SE {se:.4f})"
    # Ẑ itself is unbiased: its mean ratio to Z is 1 within Monte-Carlo error
    ratio = torch.exp(lz - exact)
    assert abs(float(ratio.mean()) - 1) < 3 * float(ratio.std() / math.sqrt(len(seeds))) + 0.01
    return lz, exact


def test_log_z_matches_the_exact_product_normaliser():
    _log_z_check(n=500, n_steps=40, seeds=range(8))


def test_log_z_with_mala_rejuvenation():
    _log_z_check(n=500, n_steps=25, seeds=range(8), rejuvenate=MALA(step_size=0.5, n_steps=1))


@pytest.mark.slow
def test_populations_are_independent_runs_in_one_batch():
    """``populations=G``: G independent SMC runs of M particles in one batch, each with its own log Ẑ
    (unbiased for the exact product's normaliser, as G separate runs are), ESS and resampling."""
    a, b, product = product_task()
    energy = a.diffused(SCHEDULE) + b.diffused(SCHEDULE)
    exact = exact_log_z(a, b, product)
    G, M, L = 8, 500, 40
    res = SMC(SCHEDULE, L, t_max=0.9).sample(energy, shape=(G * M, 2), generator=seed(0), populations=G)
    info = res.info
    lz = info.log_z_populations
    assert info.log_z is None and info.populations == G and lz.shape == (G,) and lz.dtype == torch.float64
    assert info.ess.shape == (L + 1, G) and info.resampled.shape == (L + 1, G) and info.resampled[-1].all()
    assert float(info.ess.max()) <= M + 1e-6 and info.n_resampled == int(info.resampled.sum())
    se = float(lz.std() / math.sqrt(G))
    assert abs(float(lz.mean()) - exact) < 3 * se + 0.01, f"log Z {lz.tolist()} vs exact {exact:.4f} (SE {se:.4f})"
    assert float(lz.std()) > 0  # independent estimates, not one copied G times


def test_population_ancestors_stay_within_their_population():
    from samplers.population import OneGenerator

    g, m = 3, 4
    lw = torch.full((g, m), -math.inf)
    lw[:, 0] = 0.0  # all weight on each population's first particle
    idx = OneGenerator(seed(1)).ancestors(lw, torch.tensor([True, False, True]), "systematic")
    assert idx.tolist() == [0] * m + [4, 5, 6, 7] + [8] * m


def test_populations_must_divide_the_particles():
    a, b, _ = product_task()
    energy = a.diffused(SCHEDULE) + b.diffused(SCHEDULE)
    with pytest.raises(ec.InputError, match="populations of equal size"):
        SMC(SCHEDULE, 3).sample(energy, shape=(10, 2), generator=seed(0), populations=3)
    with pytest.raises(ec.InputError, match="populations"):
        SMC(SCHEDULE, 3).sample(energy, shape=(10, 2), generator=seed(0), populations=0)


def test_log_z_error_shrinks_with_particles():
    """16x the particles: the RMSE of log Ẑ shrinks (by 1/4 for light-tailed weights; the weights'
    heavy tail keeps it nearer 0.45 here, so the bound is 0.6; a non-converging estimate gives ~1)."""
    lz_small, exact = _log_z_check(n=200, n_steps=100, seeds=range(12))
    lz_big, _ = _log_z_check(n=3200, n_steps=100, seeds=range(12))
    rmse = lambda v: float((v - exact).square().mean().sqrt())  # noqa: E731
    assert rmse(lz_big) < 0.6 * rmse(lz_small)


def test_log_z_of_image_shaped_gaussians_is_exact():
    """Geometric mean of normalised ``N(0, s_1² I)`` and ``N(0, s_2² I)`` on a ``(1, 2, 2)`` event:
    ``Z = (2 s_1 s_2 / (s_1² + s_2²))^(d/2)``."""
    def diffused_gaussian(s2):
        def fn(x, t):
            ab = SCHEDULE.alpha_bar(t).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
            v = ab * s2 + 1 - ab
            return (x.square() / (2 * v) + 0.5 * torch.log(2 * math.pi * v)).flatten(1).sum(1)
        return ec.EnergyFunction(fn)

    energy = 0.5 * diffused_gaussian(0.5) + 0.5 * diffused_gaussian(2.0)
    d = 4
    exact = 0.5 * d * math.log(2 * math.sqrt(0.5 * 2.0) / 2.5)
    smc = SMC(SCHEDULE, 40, rejuvenate=MALA(step_size=0.5, n_steps=1), t_max=0.9)
    res = [smc.sample(energy, shape=(400, 1, 2, 2), generator=seed(s)) for s in range(6)]
    assert res[0].samples.shape == (400, 1, 2, 2)
    lz = torch.tensor([r.info.log_z for r in res], dtype=torch.float64)
    se = float(lz.std() / math.sqrt(6))
    assert abs(float(lz.mean()) - exact) < 3 * se + 0.01, f"{lz.tolist()} vs {exact}"
    var = torch.cat([r.samples for r in res]).double().var(0).mean()  # exact: 2 s_1² s_2² / (s_1² + s_2²) = 0.8
    assert abs(float(var) - 0.8) < 0.1


# ------------------------------------------------------------------------------ mode weights
@pytest.mark.parametrize("kernel", [None, MALA(step_size=0.5, n_steps=1), HMC(step_size=0.5, n_leapfrog=2, n_steps=1)],
                         ids=["plain", "mala", "hmc"])
def test_mode_weights_of_a_tilted_product(kernel):
    energy, p_right = tilted_task()
    n, seeds = 1000, range(6)
    smc = SMC(SCHEDULE, 40, rejuvenate=kernel, t_max=0.9)
    f = torch.tensor([float((smc.sample(energy, shape=(n, 2), generator=seed(s)).samples[:, 0] > 0).double().mean())
                      for s in seeds], dtype=torch.float64)
    se = max(float(f.std() / math.sqrt(len(seeds))), math.sqrt(p_right * (1 - p_right) / (n * len(seeds))))
    assert abs(float(f.mean()) - p_right) < 3 * se, f"right-mode weight {f.tolist()} vs exact {p_right:.4f} (SE {se:.4f})"


def test_reverse_diffusion_gets_the_tilted_mode_weights_wrong():
    """The target SMC fixes is one that plain reverse diffusion misses (so the test above can fail)."""
    energy, p_right = tilted_task()
    n = 4000
    x = ReverseDiffusion(SCHEDULE, 40, t_max=0.99).sample(energy, shape=(n, 2), generator=seed(0)).samples
    f = float((x[:, 0] > 0).double().mean())
    assert abs(f - p_right) > 6 * math.sqrt(p_right * (1 - p_right) / n)


# ------------------------------------------------------------------------------ diagnostics, NFE, seeds
def test_ess_and_resampling_events_follow_the_threshold():
    a, b, _ = product_task()
    energy = a.diffused(SCHEDULE) + b.diffused(SCHEDULE)
    n = 300
    for thr in (0.0, 0.5, 1.0):
        info = SMC(SCHEDULE, 20, ess_threshold=thr, t_max=0.99).sample(energy, shape=(n, 2), generator=seed(1)).info
        assert info.ess.shape == (21,) and info.resampled.shape == (21,)
        assert bool(((info.ess > 0) & (info.ess <= n * (1 + 1e-6))).all())
        assert torch.equal(info.resampled[:-1], info.ess[:-1] < thr * n) and bool(info.resampled[-1])
        assert info.n_resampled == int(info.resampled.sum()) and info.particles == n and info.scheme == "systematic"
    assert info.n_resampled > 0  # threshold 1 resamples wherever the weights are not all equal


def test_nfe_accounting():
    a, b, _ = product_task()
    energy = a.diffused(SCHEDULE) + b.diffused(SCHEDULE)
    cost = 2  # two leaves per evaluation
    info = SMC(SCHEDULE, 10, t_max=0.99).sample(energy, shape=(50, 2), generator=seed(0)).info
    assert info.nfe == cost * 11
    info = SMC(SCHEDULE, 10, rejuvenate=MALA(step_size=0.3, n_steps=2), t_max=0.99).sample(
        energy, shape=(50, 2), generator=seed(0)).info
    assert info.nfe == cost * (11 + 10 * 2) and info.corrector_steps == 20
    assert info.acceptance.shape == (10,) and 0 < info.mean_acceptance <= 1
    info = SMC(SCHEDULE, 10, rejuvenate=HMC(step_size=0.3, n_leapfrog=3, n_steps=1), t_max=0.99).sample(
        energy, shape=(50, 2), generator=seed(0)).info
    assert info.nfe == cost * (11 + 10 * 3)


def test_same_seed_same_samples_and_x0_is_used():
    a, b, _ = product_task()
    energy = a.diffused(SCHEDULE) + b.diffused(SCHEDULE)
    smc = SMC(SCHEDULE, 15, rejuvenate=MALA(n_steps=1), resampling="stratified", t_max=0.99)  # adapted step size
    r1 = smc.sample(energy, shape=(200, 2), generator=seed(3))
    r2 = smc.sample(energy, shape=(200, 2), generator=seed(3))
    r3 = smc.sample(energy, shape=(200, 2), generator=seed(4))
    assert torch.equal(r1.samples, r2.samples) and r1.info.log_z == r2.info.log_z
    assert torch.equal(r1.info.ess, r2.info.ess)
    assert not torch.equal(r1.samples, r3.samples)
    x0 = torch.randn(200, 2, generator=seed(3))
    r4 = smc.sample(energy, x0, generator=seed(9))
    assert r4.samples.shape == (200, 2) and torch.isfinite(r4.samples).all()


def test_ula_rejuvenation_reevaluates_the_energy():
    a, b, _ = product_task()
    energy = a.diffused(SCHEDULE) + b.diffused(SCHEDULE)
    info = SMC(SCHEDULE, 10, rejuvenate=ULA(step_size=0.1, n_steps=1), t_max=0.99).sample(
        energy, shape=(50, 2), generator=seed(0)).info
    assert info.nfe == 2 * (11 + 10 + 10)
    assert math.isfinite(info.log_z)


def test_t_min_ends_with_a_denoising_step():
    a, b, product = product_task()
    energy = a.diffused(SCHEDULE) + b.diffused(SCHEDULE)
    res = SMC(SCHEDULE, 30, t_max=0.9, t_min=0.02).sample(energy, shape=(2000, 2), generator=seed(0))
    assert float(res.info.ts[-1]) == pytest.approx(0.02) and res.info.nfe == 2 * 31
    # the x0-prediction at small t lands near the product's spread (not inflated by the t_min noise)
    var = float(res.samples.double().var(0).mean())
    exact = float(product.covariance().diagonal().mean())
    assert abs(var - exact) < 0.15 * exact


# ------------------------------------------------------------------------------ bad input
def test_errors_name_the_fix():
    a, b, _ = product_task()
    energy = a.diffused(SCHEDULE) + b.diffused(SCHEDULE)
    score_only = ec.ScoreFunction(lambda x, t: -x)
    with pytest.raises(ec.ScoreOnlyError, match="energy-parameterised model"):
        SMC(SCHEDULE, 5).sample(score_only, shape=(4, 2), generator=seed(0))
    with pytest.raises(ec.InputError, match="eta must be > 0"):
        SMC(SCHEDULE, 5, eta=0.0)
    with pytest.raises(ec.InputError, match="ess_threshold"):
        SMC(SCHEDULE, 5, ess_threshold=1.5)
    with pytest.raises(ec.InputError, match="unknown resampling"):
        SMC(SCHEDULE, 5, resampling="residual")
    with pytest.raises(ec.InputError, match="t_min"):
        SMC(SCHEDULE, 5, t_min=0.5, t_max=0.4)
    with pytest.raises(TypeError, match="MCMC kernel"):
        SMC(SCHEDULE, 5, rejuvenate="mala")
    with pytest.raises(ec.InputError, match="static"):
        SMC(SCHEDULE, 5).sample(toy.gmm_product(a, b), shape=(4, 2), generator=seed(0))


# ------------------------------------------------------------------------------ devices
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_log_z_and_samples_on_the_device(device):
    """The whole run (proposals, weights, resampling decisions, rejuvenation) stays on the device."""
    a, b, product = product_task()
    exact = exact_log_z(a, b, product)
    energy = (a.diffused(SCHEDULE) + b.diffused(SCHEDULE)).to(device)
    smc = SMC(SCHEDULE, 25, rejuvenate=MALA(step_size=0.5, n_steps=1), t_max=0.9)
    res = [smc.sample(energy, shape=(500, 2), generator=torch.Generator(device=device).manual_seed(s)) for s in range(6)]
    assert all(r.samples.device.type == device for r in res)
    again = smc.sample(energy, shape=(500, 2), generator=torch.Generator(device=device).manual_seed(0))
    assert torch.equal(again.samples, res[0].samples)
    lz = torch.tensor([r.info.log_z for r in res], dtype=torch.float64)
    se = float(lz.std() / math.sqrt(len(lz)))
    assert abs(float(lz.mean()) - exact) < 3 * se + 0.01, f"{lz.tolist()} vs {exact}"
