"""The samplers are statistically correct *on the device*, not only runnable there.

Why this file exists
--------------------
``test_devices_dtypes.py`` shows that every sampler runs on CUDA and follows ``x``'s device
and dtype; the statistical tests (``test_mala.py``, ``test_hmc.py``, ``test_ula.py``,
``test_reverse_diffusion.py``, ``test_predictor_corrector.py``) run on the CPU only. Code paths
differ on a GPU: the random streams are CUDA's, the
compiled kernels are Triton code instead of C++, and diffusers networks run on cuDNN. Every
test below therefore runs on ``cpu`` and on ``cuda`` (the ``gpu`` marker: skipped where CUDA is
absent) and compares against exact answers: moments of Gaussians with tolerances from
ESS-based Monte-Carlo standard errors (``_kernel_targets``), the closed-form stationary
variance of ULA, exact diffused mixtures and their exact product (``toy``), and the eager
algorithm for the compiled kernels.

Statistics are computed on the CPU in float64 (``trace.cpu()``); the sampling itself runs on
the device.
"""

import copy
import math
import warnings

import pytest
import torch

import ebmcompose as ec
import toy
from benchmarks import sampler_speed as sp
from ebmcompose.metrics import mode_weight_error
from samplers import HMC, MALA, ULA, PredictorCorrector, ReverseDiffusion

from _kernel_targets import assert_moments, isotropic, single_thread, wall_energy, z_scores  # noqa: F401
from test_predictor_corrector import product_task, spread
from test_ula import ula_variance

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
SCHEDULE = ec.VPSchedule.cosine()
MEAN, COV = [1.0, -2.0], [[1.0, 1.2], [1.2, 4.0]]  # correlation 0.6, scales 1 and 2


def _gen(device, seed):
    """A seeded generator on ``device`` (the samplers refuse one on another device)."""
    return torch.Generator(device=device).manual_seed(seed)


def _correlated_gaussian(device, dtype=torch.float32):
    """``N(MEAN, COV)`` as a one-component ``toy.GaussianMixture`` on ``device`` (closed form, exact sampler)."""
    return toy.GaussianMixture(
        torch.tensor([MEAN], device=device, dtype=dtype), covs=torch.tensor([COV], device=device, dtype=dtype)
    )


def _crossing_probability(gap, scale):
    """``P(scale * ξ > gap)`` for ``ξ ~ N(0, 1)``: the chance a flat-region proposal crosses the wall."""
    return 0.5 * math.erfc(gap / (scale * math.sqrt(2.0)))


def _assert_binomial(count, n, p, z_max=4.5):
    """``count`` of ``n`` Bernoulli(``p``) events within ``z_max`` binomial standard errors."""
    se = math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) < z_max * se, f"{count} of {n}, expected {n * p:.1f} ± {se:.1f}"


# ------------------------------------------------------------------------ 1. exact moments
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "kernel, n_chains, target_accept",
    [(MALA(n_steps=300), 400, 0.57), (HMC(n_leapfrog=5, n_steps=100), 300, 0.65)],
    ids=["MALA", "HMC"],
)
def test_metropolis_kernels_correlated_gaussian_moments(device, kernel, n_chains, target_accept):
    """Adapted MALA / HMC on a correlated 2-D Gaussian: mean and covariance within ESS-based MCSE.

    Also: per-chain acceptance is ``(B,)`` on the device, not one batch-wide value, and is
    consistent with the per-step means.
    """
    gm = _correlated_gaussian(device)
    x0 = gm.sample(n_chains, generator=_gen(device, 0))
    res = kernel.sample(gm, x0, generator=_gen(device, 1), trace_every=1)
    trace = res.info["trace"]
    assert trace.device.type == device and res.samples.device.type == device
    assert_moments(trace.cpu(), MEAN, COV)
    assert abs(float(res.info["warmup_acceptance"]) - target_accept) < 0.1
    per_chain = res.info["acceptance_per_chain"]
    assert per_chain.shape == (n_chains,) and per_chain.device.type == device
    assert float(per_chain.max()) > float(per_chain.min())  # a batch-wide decision would make them equal
    torch.testing.assert_close(per_chain.mean(), res.info["acceptance"].mean())


@pytest.mark.parametrize("device", DEVICES)
def test_ula_stationary_variance_is_the_closed_form_bias(device):
    """ULA on ``N(0, diag(1, 4))``: the variance is ULA's biased closed form, clearly not the target's."""
    h = 0.3
    s2 = torch.tensor([1.0, 4.0])
    var = torch.tensor([ula_variance(h, float(v)) for v in s2])
    gm = toy.GaussianMixture(torch.zeros(1, 2, device=device), covs=torch.diag(s2)[None].to(device))
    x0 = torch.randn(4000, 2, generator=_gen(device, 0), device=device) * var.sqrt().to(device)  # ULA's own law
    res = ULA(step_size=h, n_steps=60).sample(gm, x0, generator=_gen(device, 1), trace_every=1)
    assert res.samples.device.type == device
    sq = res.info["trace"].cpu().square()
    z, est, _ = z_scores(sq, var)
    assert (z < 4.5).all(), (est, var)
    z_exact, _, _ = z_scores(sq, s2)
    assert float(z_exact[0]) > 8, z_exact  # the narrow coordinate's bias is resolved
    assert res.info["acceptance_per_chain"].shape == (4000,) and res.info["divergences"] == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["MALA", "HMC"])
def test_same_seed_identical_samples(device, name):
    """Same seed, bitwise the same chains on the device; another seed, other chains."""
    kernel = {"MALA": MALA(step_size=0.5, n_steps=20), "HMC": HMC(step_size=0.3, n_leapfrog=3, n_steps=10, refresh=0.7)}[name]
    gm = _correlated_gaussian(device)
    x0 = gm.sample(64, generator=_gen(device, 0))
    a = kernel.sample(gm, x0, generator=_gen(device, 5)).samples
    b = kernel.sample(gm, x0, generator=_gen(device, 5)).samples
    c = kernel.sample(gm, x0, generator=_gen(device, 6)).samples
    assert a.device.type == device
    assert torch.equal(a, b) and not torch.equal(a, c)


# ----------------------------------------------------------- 2. non-finite proposals per chain
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["MALA", "HMC"])
def test_nonfinite_proposals_rejected_per_chain_and_counted(device, name):
    """A wall of ``+inf`` energy: far chains always accept, chains at the wall cross it (and are
    rejected, exactly those, and counted) with the exact crossing probability of a flat region."""
    n = 200
    if name == "MALA":
        h, near = 0.5, 0.999
        kernel, scale = MALA(step_size=h, n_steps=1), math.sqrt(2 * h)  # x' = x + sqrt(2h) ξ (gradient 0)
    else:
        h, near, leap = 0.2, 0.99, 3
        kernel, scale = HMC(step_size=h, n_leapfrog=leap, n_steps=1), leap * h  # x' = x + L h p
    x0 = torch.cat([torch.full((n, 2), -50.0, device=device), torch.full((n, 2), near, device=device)])
    steps = []
    res = kernel.sample(wall_energy(), x0, generator=_gen(device, 0), callback=lambda i, s, info: steps.append(info))
    assert torch.isfinite(res.samples).all() and (res.samples[:, 0] < 1.0).all()
    divergent = steps[0].divergent
    assert divergent.shape == (2 * n,) and divergent.device.type == device
    assert not divergent[:n].any()  # no chain in the flat region is touched by the others' divergences
    count = int(divergent.sum())
    assert res.info["divergences"] == count
    _assert_binomial(count, n, _crossing_probability(1.0 - near, scale))
    acc = res.info["acceptance_per_chain"]
    assert (acc[:n] > 1 - 1e-5).all()
    assert (acc[n:][divergent[n:]] == 0).all() and (acc[n:][~divergent[n:]] > 1 - 1e-5).all()
    assert torch.equal(res.samples[divergent], x0[divergent])  # rejected: kept in place
    assert (res.samples[~divergent] != x0[~divergent]).any(dim=1).all()  # accepted: moved


@pytest.mark.parametrize("device", DEVICES)
def test_ula_nonfinite_scores_masked_per_row(device):
    """ULA with a score that is NaN past ``x_0 = 1``: the per-row mask keeps exactly the divergent
    chains in place."""
    score = ec.ScoreFunction(lambda x: torch.where(x[:, :1] < 1.0, -x, torch.full_like(x, math.nan)), name="s")
    n, h, near = 100, 0.01, 0.99
    x0 = torch.cat([torch.zeros(n, 2, device=device), torch.full((n, 2), near, device=device)])
    steps = []
    res = ULA(step_size=h, n_steps=1).sample(score, x0, generator=_gen(device, 0), callback=lambda i, s, info: steps.append(info))
    assert torch.isfinite(res.samples).all()
    divergent = steps[0].divergent
    assert divergent.device.type == device and not divergent[:n].any()
    # x' = (1 - h) x + sqrt(2h) ξ crosses 1 when sqrt(2h) ξ > 1 - (1 - h) x
    _assert_binomial(int(divergent.sum()), n, _crossing_probability(1.0 - (1 - h) * near, math.sqrt(2 * h)))
    assert res.info["divergences"] == int(divergent.sum())
    assert torch.equal(res.samples[divergent], x0[divergent])
    assert (res.samples[~divergent] != x0[~divergent]).any(dim=1).all()


# ------------------------------------------------------------------ 3. compiled == eager
def _compile_cases():
    """(device, kernel) cases; on the CPU only two compile (~10-20 s each), HMC is slow."""
    for device, marks in (("cpu", ()), ("cuda", (pytest.mark.gpu,))):
        for name in ("ULA", "MALA", "HMC"):
            m = marks if device == "cuda" or name != "HMC" else (pytest.mark.slow,)
            yield pytest.param(device, name, marks=m, id=f"{device}-{name}")


@pytest.mark.parametrize("device, name", list(_compile_cases()))
def test_compiled_kernels_equal_eager(device, name):
    """Compiled ULA/MALA/HMC (the whole transition as one graph) = the eager hand-written loop and
    the eager library kernel, same seed, float64, on the device; the compiled graph is what ran
    (a fallback to eager would warn, and warnings are errors here).

    ``rtol = atol = 1e-7``: only the last bits may differ (GPU transcendental functions).
    """
    energy = sp.Ring(device, torch.float64)
    means, var = sp.ring_params(device, torch.float64)
    x0 = torch.randn(64, 2, generator=_gen(device, 0), device=device, dtype=torch.float64) * 3
    n = 3
    hand = sp.HAND[name](x0, n, sp.STEP[name], _gen(device, 1), means, var)
    eager = sp.kernel(name, n, compiled=False).sample(energy, x0, generator=_gen(device, 1)).samples
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = sp.kernel(name, n, compiled=True).sample(energy, x0, generator=_gen(device, 1))
    got = res.samples
    assert got.device.type == device and got.dtype == torch.float64
    torch.testing.assert_close(got, hand, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(got, eager, rtol=1e-7, atol=1e-7)
    assert (hand != x0).any(dim=1).float().mean() > 0.5  # not vacuous: most chains moved
    assert res.info["nfe"] == 1 + n * (sp.N_LEAPFROG if name == "HMC" else 1)


# ------------------------------------------------- 4. reverse diffusion on an exact mixture
@pytest.mark.parametrize("device", DEVICES)
def test_reverse_diffusion_reproduces_the_exact_mixture(device):
    """DDPM (eta = 1) driven by the exact diffused 8-mode mixture: mode weights, mean and
    within-mode spread of the exact mixture, within Monte-Carlo standard errors.

    400 steps: at 200 the within-mode spread is ~5 % low (discretisation near t = 0), about
    2.6 SE at N = 2000; at 400 the bias is ~1 SE.
    """
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 3.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    weights = torch.tensor([4.0, 1.0, 1.0, 2.0, 1.0, 3.0, 1.0, 3.0], dtype=torch.float64)
    weights = weights / weights.sum()
    std, n = 0.3, 2000
    gm = toy.GaussianMixture(means.float().to(device), stds=torch.full((8,), std, device=device), weights=weights.to(device))
    res = ReverseDiffusion(SCHEDULE, 400, eta=1.0).sample(gm.diffused(SCHEDULE), shape=(n, 2), generator=_gen(device, 5))
    x = res.samples
    assert x.device.type == device and x.dtype == torch.float32 and torch.isfinite(x).all()
    x = x.cpu().double()
    modes = mode_weight_error(x, means, weights)  # nearest-mean assignment (modes ~7.7 std apart)
    se = (weights * (1 - weights) / n).sqrt()
    assert ((modes.frequencies.double() - weights).abs() <= 4.5 * se).all(), (modes.frequencies, weights)
    cov = gm.covariance().cpu().double()
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - gm.mean().cpu().double()).abs() <= 4.5 * se_mean).all(), x.mean(0)
    d2 = (x - means[modes.assignments.cpu()]).square().sum(1)  # E|x - μ_k|² = 2 std² within a mode
    assert abs(float(d2.mean()) - 2 * std**2) <= 4.5 * float(d2.std()) / math.sqrt(n), d2.mean()


# --------------------------------------- 5. predictor-corrector on an exact composed product
@pytest.mark.parametrize("device", DEVICES)
def test_pc_mala_beats_reverse_diffusion_on_an_exact_product(device):
    """The Du et al. (2023) point on the device: on ``a_t + b_t`` (not the diffused product),
    plain DDPM is biased against the exact product ``toy.gmm_product(a, b)``, and PC with a MALA
    corrector is closer, beyond Monte-Carlo error, at a similar NFE budget.

    Statistic: mean squared distance per dimension from the product's mean vs its exact value
    (the ``test_predictor_corrector`` comparison; N = 3000 gives margins of ~20 SE and ~9 SE).
    """
    composed, product = product_task()
    composed = copy.deepcopy(composed).to(device)
    center = product.mean().double()
    target = float(product.covariance().diagonal().mean())
    n = 3000
    r = ReverseDiffusion(SCHEDULE, 60).sample(composed, shape=(n, 2), generator=_gen(device, 0))
    p = PredictorCorrector(SCHEDULE, 30, corrector=MALA(step_size=1.0, n_steps=1)).sample(
        composed, shape=(n, 2), generator=_gen(device, 0)
    )
    assert r.samples.device.type == device and p.samples.device.type == device
    assert abs(p.info["nfe"] - r.info["nfe"]) <= 0.05 * r.info["nfe"]  # similar budgets
    (m_r, se_r), (m_p, se_p) = spread(r.samples.cpu(), center), spread(p.samples.cpu(), center)
    err_r, err_p = abs(m_r - target), abs(m_p - target)
    se = math.sqrt(se_r**2 + se_p**2)
    assert err_r > 6 * se_r, f"plain reverse diffusion should be biased: {m_r} vs {target} ± {se_r}"
    assert err_p < err_r - 4 * se, f"PC+MALA ({m_p}) not closer than RD ({m_r}) to {target} beyond MC error {se}"


# ------------------------------------------------------------- 6. image-shaped states, UNet
def _tiny_unet_model():
    """A seeded tiny diffusers ``UNet2DModel`` (8x8, 1 channel) as a score-only ``EpsilonModel`` (CPU)."""
    diffusers = pytest.importorskip("diffusers")
    with torch.random.fork_rng(devices=[]):  # leave the global RNG as it was
        torch.manual_seed(0)
        unet = diffusers.UNet2DModel(
            sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
            block_out_channels=(8, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
        ).eval()
    schedule = ec.VPSchedule.from_diffusers(diffusers.DDPMScheduler(num_train_timesteps=100))
    return ec.EpsilonModel(unet, schedule), schedule


@pytest.fixture
def full_float32(monkeypatch):
    """Plain float32 on CUDA (no TF32 convolutions or matmuls), restored afterwards."""
    if torch.cuda.is_available():
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.parametrize("device", DEVICES)
def test_unet_reverse_diffusion_on_images(device):
    """DDPM on ``(B, C, H, W)`` noise with a UNet moved to the device: output there, float32,
    finite, image-shaped; same seed bitwise the same images, another seed other images."""
    model, schedule = _tiny_unet_model()
    model = model.to(device)
    rd = ReverseDiffusion(schedule, 10, eta=1.0)
    a = rd.sample(model, shape=(4, 1, 8, 8), generator=_gen(device, 0))
    b = rd.sample(model, shape=(4, 1, 8, 8), generator=_gen(device, 0))
    c = rd.sample(model, shape=(4, 1, 8, 8), generator=_gen(device, 1))
    x = a.samples
    assert x.shape == (4, 1, 8, 8) and x.device.type == device and x.dtype == torch.float32
    assert torch.isfinite(x).all() and a.info["nfe"] == 10
    assert torch.equal(x, b.samples) and not torch.equal(x, c.samples)


@pytest.mark.parametrize("device", DEVICES)
def test_unet_score_on_device_equals_the_cpu_score(device, full_float32):
    """The float32 UNet score on the device = a float64 CPU evaluation of the same weights,
    to float32 accuracy (the score is ε/σ_t, of order 1-10 at these t)."""
    model, _ = _tiny_unet_model()
    reference = copy.deepcopy(model).double()
    on_device = model.to(device)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.2, 0.9, 6)
    want = reference.grad(x.double(), t.double())
    got = on_device.grad(x.to(device), t.to(device))
    assert got.device.type == device and got.dtype == torch.float32 and got.shape == x.shape
    assert float(want.abs().mean()) > 0.1  # a non-trivial field (the comparison is not 0 == 0)
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-4)
