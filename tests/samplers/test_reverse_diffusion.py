"""ReverseDiffusion: exact diffused targets are reproduced; DDIM/DDPM match diffusers step for step.

Statistical tolerances are Monte-Carlo standard errors (SE) of the compared statistic.
"""

import math

import pytest
import torch

import ebmcompose as ec
import toy
from samplers import NonFiniteStateError, ReverseDiffusion

SCHEDULE = ec.VPSchedule.cosine()


def gaussian(mean, cov):
    """A one-component toy mixture N(mean, cov) (its ``.diffused`` is exact at every t)."""
    mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1)
    cov = torch.as_tensor(cov, dtype=torch.float32).reshape(1, mean.shape[1], mean.shape[1])
    return toy.GaussianMixture(mean, covs=cov)


def assert_moments(x, mean, cov, n_se=4.5):
    """Sample mean/covariance vs exact, within ``n_se`` Gaussian standard errors."""
    n = x.shape[0]
    mean, cov = mean.double(), cov.double()
    x = x.double()
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mean).abs() <= n_se * se_mean).all(), (x.mean(0), mean)
    s = torch.cov(x.T).reshape(cov.shape)
    d = cov.diagonal()
    se_cov = ((d[:, None] * d[None, :] + cov**2) / n).sqrt()  # Var(S_ij) = (S_ii S_jj + S_ij²)/n
    assert ((s - cov).abs() <= n_se * se_cov).all(), (s, cov)


# ------------------------------------------------------------------------------ exact targets
@pytest.mark.parametrize("eta, n_steps", [(1.0, 100), (0.0, 40), (0.5, 60)])
def test_gaussian_2d_reproduced(eta, n_steps):
    mean, cov = torch.tensor([1.0, -2.0]), torch.tensor([[0.5, 0.3], [0.3, 0.4]])
    target = gaussian(mean, cov)
    res = ReverseDiffusion(SCHEDULE, n_steps, eta=eta).sample(
        target.diffused(SCHEDULE), shape=(3000, 2), generator=torch.Generator().manual_seed(3)
    )
    assert res.samples.shape == (3000, 2)
    assert_moments(res.samples, mean, cov)


def test_gaussian_1d_reproduced_linear_schedule():
    schedule = ec.VPSchedule.linear()
    target = gaussian([0.7], [[0.2]])
    res = ReverseDiffusion(schedule, 100, eta=0.0).sample(
        target.diffused(schedule), shape=(3000, 1), generator=torch.Generator().manual_seed(4)
    )
    assert_moments(res.samples, torch.tensor([0.7]), torch.tensor([[0.2]]))


def test_eight_mode_mixture_weights_and_spread():
    angles = torch.arange(8) * (2 * math.pi / 8)
    means = 3.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    weights = torch.tensor([4.0, 1.0, 1.0, 2.0, 1.0, 3.0, 1.0, 3.0])
    weights = weights / weights.sum()
    std = 0.3
    gm = toy.GaussianMixture(means, stds=torch.full((8,), std), weights=weights)
    n = 2000
    # narrow modes: DDPM needs fine steps near t = 0. At 200 steps the within-mode spread is
    # ~5.5 % low (0.170 vs 0.18 at N = 20000), -2.6 SE here, inside the tolerance only by margin;
    # at 400 the discretisation bias is ~1 SE, so the test checks the sampler, not its luck
    res = ReverseDiffusion(SCHEDULE, 400, eta=1.0).sample(
        gm.diffused(SCHEDULE), shape=(n, 2), generator=torch.Generator().manual_seed(5)
    )
    x = res.samples
    label = torch.cdist(x, means).argmin(dim=1)
    freq = torch.bincount(label, minlength=8).double() / n
    se = (weights.double() * (1 - weights.double()) / n).sqrt()
    assert ((freq - weights.double()).abs() <= 4.5 * se).all(), (freq, weights)
    # within-mode spread: E|x - mu_k|² = 2 std² (modes are 3 apart, overlap negligible)
    d2 = (x - means[label]).square().sum(1).double()
    se_d2 = d2.std() / math.sqrt(n)
    assert abs(d2.mean() - 2 * std**2) <= 4.5 * se_d2, d2.mean()


# ------------------------------------------------------------------------------ diffusers parity
def _diffusers_loop(scheduler, energy, schedule, x, n_steps, generator, **step_kwargs):
    big_n = scheduler.config.num_train_timesteps
    scheduler.set_timesteps(n_steps)
    for k in scheduler.timesteps:
        t = (int(k) + 1) / big_n
        eps = schedule.sigma(torch.tensor(t, dtype=torch.float64)).item() * energy.grad(x, t)
        x = scheduler.step(model_output=eps, timestep=k, sample=x, generator=generator, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers_ddim_step_for_step(eta):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    schedule = ec.VPSchedule.from_diffusers(sched)
    gm = toy.GaussianMixture(torch.tensor([[-1.0, 0.5], [1.5, 0.0]]), stds=torch.tensor([0.3, 0.5]))
    energy = gm.diffused(schedule)
    xT = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    ref = _diffusers_loop(sched, energy, schedule, xT, 25, torch.Generator().manual_seed(1), eta=eta)
    ours = ReverseDiffusion(schedule, 25, eta=eta).sample(energy, xT, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours.samples, ref, atol=1e-4, rtol=1e-4)
    assert ours.info["nfe"] == 25


def test_ddpm_matches_diffusers_ddpm_fixed_small_with_shared_noise():
    """Ancestral DDPM (eta=1) = DDPMScheduler(variance_type="fixed_small") step by step when both
    draw their noise from identically seeded generators (same order: one N(0, I) per step)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(variance_type="fixed_small", clip_sample=False, timestep_spacing="trailing")
    schedule = ec.VPSchedule.from_diffusers(sched)
    gm = toy.GaussianMixture(torch.tensor([[-1.0, 0.5], [1.5, 0.0]]), stds=torch.tensor([0.3, 0.5]))
    energy = gm.diffused(schedule)
    xT = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    ref = _diffusers_loop(sched, energy, schedule, xT, 40, torch.Generator().manual_seed(2))
    ours = ReverseDiffusion(schedule, 40, eta=1.0).sample(energy, xT, generator=torch.Generator().manual_seed(2))
    # diffusers adds sqrt(1e-20) * z at the last step (its variance clamp); ours adds nothing there
    torch.testing.assert_close(ours.samples, ref, atol=1e-4, rtol=1e-4)


def test_from_diffusers_uses_the_scheduler_and_leaves_it_untouched():
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(clip_sample=False)  # default "leading" spacing: k = 960, 920, ..., 0
    gm = toy.GaussianMixture(torch.tensor([[0.0, 1.0]]), stds=torch.tensor([0.5]))
    schedule = ec.VPSchedule.from_diffusers(sched)
    energy = gm.diffused(schedule)
    xT = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    sampler = ReverseDiffusion.from_diffusers(sched, 25)
    res = sampler.sample(energy, xT, generator=torch.Generator().manual_seed(1))
    assert sched.num_inference_steps is None  # deep-copied, never mutated
    ref = _diffusers_loop(DDIMScheduler(clip_sample=False), energy, schedule, xT, 25, torch.Generator().manual_seed(1))
    torch.testing.assert_close(res.samples, ref)
    assert res.info["nfe"] == 25
    assert res.info["timesteps"][0] == 960 and res.info["ts"][-1] == 0.0


# ------------------------------------------------------------------------------ contract
class Counting:
    """An exact diffused Gaussian energy that records every (t, x) it is evaluated at."""

    def __init__(self):
        self.calls = []
        self.leaf = ec.EnergyFunction(self.fn, name="counting")

    def fn(self, x, t):
        self.calls.append(t.detach().clone())
        return 0.5 * x.square().reshape(x.shape[0], -1).sum(1)  # N(0, I) is VP-invariant


def test_nfe_exact_and_never_evaluated_at_t0():
    c = Counting()
    res = ReverseDiffusion(SCHEDULE, 17, eta=0.3).sample(c.leaf, shape=(5, 3), generator=torch.Generator().manual_seed(0))
    assert res.info["nfe"] == 17 == len(c.calls)
    ts = torch.stack([t[0] for t in c.calls]).double()
    torch.testing.assert_close(ts, res.info["ts"][:-1])
    assert (ts > 0).all() and res.info["ts"][-1] == 0.0
    # a sum of two leaves costs two evaluations per step
    c2 = Counting()
    res = ReverseDiffusion(SCHEDULE, 9).sample(c.leaf + c2.leaf, shape=(5, 3), generator=torch.Generator())
    assert res.info["nfe"] == 18


def test_score_only_energy_gives_the_same_samples():
    gm = gaussian([0.5, -0.5], [[0.3, 0.0], [0.0, 0.6]]).diffused(SCHEDULE)
    score_only = ec.ScoreFunction(lambda x, t: gm.score(x, t))
    xT = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    a = ReverseDiffusion(SCHEDULE, 20, eta=1.0).sample(gm, xT, generator=torch.Generator().manual_seed(7))
    b = ReverseDiffusion(SCHEDULE, 20, eta=1.0).sample(score_only, xT, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a.samples, b.samples)


def test_same_seed_identical_and_prior_drawn_from_generator():
    energy = gaussian([1.0, 0.0], [[0.4, 0.0], [0.0, 0.4]]).diffused(SCHEDULE)
    rd = ReverseDiffusion(SCHEDULE, 15, eta=0.7)
    a = rd.sample(energy, shape=(8, 2), generator=torch.Generator().manual_seed(11)).samples
    b = rd.sample(energy, shape=(8, 2), generator=torch.Generator().manual_seed(11)).samples
    c = rd.sample(energy, shape=(8, 2), generator=torch.Generator().manual_seed(12)).samples
    assert torch.equal(a, b) and not torch.equal(a, c)
    # x_T ~ N(0, I) is the generator's first draw
    xT = torch.randn(8, 2, generator=torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    torch.randn(8, 2, generator=g)
    d = rd.sample(energy, xT, generator=g).samples
    assert torch.equal(a, d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_images_any_rank_and_dtype_follows_x(dtype):
    energy = ec.EnergyFunction(lambda x, t: 0.5 * x.square().flatten(1).sum(1), name="std_normal")
    xT = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=dtype)
    res = ReverseDiffusion(SCHEDULE, 10, clip_x0=1.0).sample(
        energy, xT, generator=torch.Generator().manual_seed(0), trace_every=5, callback=lambda i, state, info: None
    )
    assert res.samples.shape == (6, 1, 4, 4) and res.samples.dtype == dtype
    assert res.samples.abs().max() <= 1.0  # the last step returns the clipped x0-prediction
    assert res.info["trace"].shape == (2, 6, 1, 4, 4)
    torch.testing.assert_close(res.info["trace_t"], torch.tensor([res.info["ts"][5].item(), 0.0], dtype=torch.float64))


def test_nonfinite_state_names_the_level():
    def score(x, t):
        return torch.where(t[:, None] < 0.5, torch.full_like(x, float("inf")), -x)

    with pytest.raises(NonFiniteStateError, match=r"level 7 of the ladder \(t=0\.3\)"):
        ReverseDiffusion(SCHEDULE, 10).sample(ec.ScoreFunction(score), shape=(4, 2), generator=torch.Generator())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_steps=0), "n_steps"),
        (dict(n_steps=-3), "n_steps"),
        (dict(n_steps=10, eta=-0.1), "eta"),
        (dict(n_steps=10, clip_x0=-1.0), "clip_x0"),
        (dict(n_steps=10, t_max=0.0), "t_max"),
    ],
)
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReverseDiffusion(SCHEDULE, **kwargs)


def test_bad_schedule_and_missing_shape():
    with pytest.raises(TypeError, match="VPSchedule"):
        ReverseDiffusion("cosine", 10)
    with pytest.raises(ValueError, match="shape"):
        ReverseDiffusion(SCHEDULE, 10).sample(gaussian([0.0], [[1.0]]).diffused(SCHEDULE))
