"""Custom energies, three ways, composed with toy densities and learned models and sampled.

The three ways a user brings their own model (README, "Your own energy is one line"):

* a Python function ``E(x)`` or ``E(x, t)``, wrapped by :class:`ebmcompose.EnergyFunction`;
* an ``nn.Module`` with parameters, wrapped the same way (its parameters get gradients);
* a score-only function ``s(x, t)``, wrapped by :class:`ebmcompose.ScoreFunction`.

Every custom energy here is a Gaussian ``N(MU, S² I)`` (or its exact VP-diffused version), so
compositions with toy Gaussian mixtures have exact answers: the product with a mixture is the
mixture :func:`toy.gmm_product`, and the (OR) mixture of normalised energies is the two-part
mixture, which diffusion preserves exactly. Samples are compared with exact moments using
Monte-Carlo standard errors (one independent chain per sample). Unadjusted kernels (ULA) get a
small extra allowance for their known O(step size) bias.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import ebmcompose as ec
import toy
from samplers import HMC, MALA, ULA, AnnealedLangevin, PredictorCorrector, ReverseDiffusion

SCHEDULE = ec.VPSchedule.linear()
MU = torch.tensor([1.0, 0.5])
S = 0.8
N = 2000  # chains (= independent samples) per statistical check
Z = 5.0  # tolerance in Monte-Carlo standard errors

# A connected toy density (a short vertical bar), so every MCMC kernel mixes from a broad start.
BAR = toy.bar(center=(0.0, 0.0), length=4.0, width=0.5, n=5, name="bar")
CUSTOM_GM = toy.GaussianMixture(MU[None], stds=torch.tensor([S]), name="custom")


# ------------------------------------------------------------------------ the three custom energies
def _diffused_mean_var(t):
    """Mean ``(B, 2)`` and variance ``(B, 1)`` of ``N(MU, S²)`` noised to time ``t`` ``(B,)``."""
    ab = SCHEDULE.alpha_bar(t)[:, None]
    return ab.sqrt() * MU, ab * S**2 + (1.0 - ab)


def gauss_energy(x):
    """Static normalised energy of N(MU, S² I): a plain Python function of x."""
    return ((x - MU) ** 2).sum(-1) / (2 * S**2) + math.log(2 * math.pi * S**2)


def gauss_energy_t(x, t):
    """The same Gaussian noised by the VP process: a function of (x, t), exact at every t."""
    m, v = _diffused_mean_var(t)
    return ((x - m) ** 2).sum(-1) / (2 * v[:, 0]) + torch.log(2 * math.pi * v[:, 0])


def gauss_score(x, t=None):
    """Score-only model: ∇x log N(MU, S²) (static) or of its diffused version (given t)."""
    if t is None:
        return -(x - MU) / S**2
    m, v = _diffused_mean_var(t)
    return -(x - m) / v


class GaussianModule(nn.Module):
    """An nn.Module energy with parameters (mean, log std); static or diffused by ``schedule``."""

    def __init__(self, mean, std, schedule=None):
        super().__init__()
        self.mean = nn.Parameter(torch.as_tensor(mean, dtype=torch.float32).clone())
        self.log_std = nn.Parameter(torch.tensor(math.log(std)))
        self.schedule = schedule

    def forward(self, x, t=None):
        m, var = self.mean, torch.exp(2 * self.log_std)
        if t is not None:
            ab = self.schedule.alpha_bar(t)[:, None]
            m, var = ab.sqrt() * m, ab * var + (1.0 - ab)
            return ((x - m) ** 2).sum(-1) / (2 * var[:, 0]) + torch.log(2 * math.pi * var[:, 0])
        return ((x - m) ** 2).sum(-1) / (2 * var) + torch.log(2 * math.pi * var)


def custom(kind: str, time_dependent: bool) -> ec.Energy:
    """The custom Gaussian energy, wrapped one of the three ways."""
    if kind == "function":
        return ec.EnergyFunction(gauss_energy_t if time_dependent else gauss_energy, name="custom")
    if kind == "module":
        module = GaussianModule(MU, S, schedule=SCHEDULE)
        # forward(x, t=None) takes t, so the wrapper is time-dependent by default; say so explicitly
        return ec.EnergyFunction(module, name="custom", time_dependent=time_dependent)
    if kind == "score":
        if time_dependent:
            return ec.ScoreFunction(gauss_score, name="custom")
        return ec.ScoreFunction(lambda x: gauss_score(x), name="custom")
    raise ValueError(kind)


# ------------------------------------------------------------------------ statistics helpers
def assert_moments(x: torch.Tensor, exact: toy.GaussianMixture, allowance: float = 0.0, what: str = ""):
    """Mean and covariance of ``x`` ``(N, 2)`` match ``exact`` within ``Z`` MC standard errors.

    ``allowance`` is an extra relative tolerance on the covariance (and, times the std, on the
    mean) for samplers with a known discretisation bias.
    """
    x = x.detach().double()
    n = x.shape[0]
    assert bool(torch.isfinite(x).all()), f"{what}: non-finite samples"
    mean, cov = exact.mean().double(), exact.covariance().double()
    sd = cov.diagonal().sqrt()
    m = x.mean(0)
    se_m = x.std(0) / math.sqrt(n)
    tol_m = Z * se_m + allowance * sd
    assert bool(((m - mean).abs() <= tol_m).all()), f"{what}: mean {m.tolist()} vs exact {mean.tolist()} (tol {tol_m.tolist()})"
    xc = x - mean
    prods = xc[:, :, None] * xc[:, None, :]  # (N, 2, 2): unbiased around the exact mean
    c = prods.mean(0)
    se_c = prods.std(0) / math.sqrt(n)
    tol_c = Z * se_c + allowance * (sd[:, None] * sd[None, :])
    assert bool(((c - cov).abs() <= tol_c).all()), f"{what}: covariance {c.tolist()} vs exact {cov.tolist()} (tol {tol_c.tolist()})"


def diffused_product_at(t: float) -> toy.GaussianMixture:
    """Exact density of ``bar.diffused + custom_t`` at the fixed time ``t``: a product of mixtures."""
    return toy.gmm_product(BAR.diffused(SCHEDULE).at(t), CUSTOM_GM.diffused(SCHEDULE).at(t))


STATIC_PRODUCT = toy.gmm_product(BAR, CUSTOM_GM)
MIXTURE = toy.GaussianMixture(
    torch.cat([BAR.means, CUSTOM_GM.means]),
    covs=torch.cat([BAR.covs, CUSTOM_GM.covs]),
    weights=torch.cat([0.5 * BAR.weights, 0.5 * CUSTOM_GM.weights]),
)

# Bias allowances (relative): ULA's O(h) bias; diffusion samplers' finite ladders.
ULA_ALLOWANCE = 0.08
LADDER_ALLOWANCE = 0.05


def _x0(g):
    return 2.0 * torch.randn(N, 2, generator=g)


# ------------------------------------------------------------------------ static samplers
STATIC_CASES = [
    ("function", ULA(n_steps=200), ULA_ALLOWANCE),
    ("function", MALA(n_steps=150), 0.0),
    ("function", HMC(n_leapfrog=5, n_steps=60), 0.0),
    ("module", ULA(n_steps=200), ULA_ALLOWANCE),
    ("module", MALA(n_steps=150), 0.0),
    ("module", HMC(n_leapfrog=5, n_steps=60), 0.0),
    ("score", ULA(n_steps=200), ULA_ALLOWANCE),
]


@pytest.mark.parametrize("kind,sampler,allowance", STATIC_CASES, ids=lambda v: type(v).__name__ if not isinstance(v, (str, float)) else str(v))
def test_static_custom_times_toy_matches_exact_product(kind, sampler, allowance):
    """``bar + custom`` (product) sampled by every compatible static kernel has the exact moments."""
    e = custom(kind, time_dependent=False)
    target = BAR + e if kind != "module" else e & BAR  # both spellings of AND
    g = torch.Generator().manual_seed(1)
    res = sampler.sample(target, _x0(g), generator=g)
    assert_moments(res.samples, STATIC_PRODUCT, allowance, what=f"{kind}/{type(sampler).__name__}")


def test_custom_minus_toy_box_matches_grid_density():
    """``custom - 0.5*box`` (NOT) has no closed form: compare with the exact grid density (TV vs its floor)."""
    box = toy.SmoothBox([-1.0, -1.0], [1.0, 1.0], smoothing=1.0, name="box")
    target = custom("function", False) - 0.5 * box
    assert repr(target) == "custom - 0.5*box"
    g = torch.Generator().manual_seed(2)
    res = MALA(n_steps=150).sample(target, _x0(g), generator=g)
    bounds = (-4.0, 6.0)
    tv = ec.metrics.histogram_tv(res.samples.double(), target, bounds, resolution=20).tv
    floor = ec.metrics.histogram_tv_baseline(target, bounds, N, resolution=20, generator=torch.Generator().manual_seed(3))
    assert float(tv) <= float(floor.mean) + 5 * float(floor.std) + 0.01, (float(tv), float(floor.mean))


# ------------------------------------------------------------------------ annealed / diffusion samplers
def test_reverse_diffusion_on_custom_or_toy_is_exact():
    """``custom_t | bar.diffused`` is exactly the diffused mixture, so DDPM samples the mixture."""
    target = custom("function", True) | BAR.diffused(SCHEDULE)
    g = torch.Generator().manual_seed(4)
    res = ReverseDiffusion(SCHEDULE, n_steps=100, eta=1.0).sample(target, shape=(N, 2), generator=g)
    assert_moments(res.samples, MIXTURE, LADDER_ALLOWANCE, what="DDPM on function | bar")


def test_ddim_on_module_or_toy_is_exact():
    target = custom("module", True) | BAR.diffused(SCHEDULE)
    g = torch.Generator().manual_seed(5)
    res = ReverseDiffusion(SCHEDULE, n_steps=100, eta=0.0).sample(target, shape=(N, 2), generator=g)
    assert_moments(res.samples, MIXTURE, LADDER_ALLOWANCE, what="DDIM on module | bar")


def test_reverse_diffusion_on_score_only_custom():
    """A score-only model alone: its exact diffused score gives exact samples of N(MU, S²)."""
    g = torch.Generator().manual_seed(6)
    res = ReverseDiffusion(SCHEDULE, n_steps=100).sample(custom("score", True), shape=(N, 2), generator=g)
    assert_moments(res.samples, CUSTOM_GM, LADDER_ALLOWANCE, what="DDPM on score-only")


# (kernel, step-size adaptation, bias allowance). ULA runs with the fixed sigma^2 rule: dual
# averaging over only a few steps per level is too noisy for an unadjusted kernel.
ANNEALED_CASES = [
    ("function", MALA(), True, 0.0),
    ("module", HMC(n_leapfrog=3), True, 0.0),
    ("score", ULA(), False, ULA_ALLOWANCE),
]


@pytest.mark.parametrize("kind,kernel,adapt,allowance", ANNEALED_CASES, ids=["function-MALA", "module-HMC", "score-ULA"])
def test_annealed_langevin_targets_the_product_at_the_last_level(kind, kernel, adapt, allowance):
    """At its last level t_min, annealed Langevin targets ``bar_t + custom_t``: an exact product there."""
    target = BAR.diffused(SCHEDULE) + custom(kind, True)
    t_min = 0.05
    al = AnnealedLangevin(
        SCHEDULE, n_levels=20, n_steps_per_level=20 if kind == "score" else 10, step_size=5e-3,
        kernel=kernel, t_min=t_min, adapt=adapt,
    )
    g = torch.Generator().manual_seed(7)
    res = al.sample(target, shape=(N, 2), generator=g)
    assert_moments(res.samples, diffused_product_at(t_min), allowance, what=f"AnnealedLangevin/{type(kernel).__name__}")


PC_CASES = [
    ("function", MALA(n_steps=5), 0.0),
    ("module", HMC(n_leapfrog=3, n_steps=3), 0.0),
    ("score", ULA(step_size=0.5, n_steps=5), ULA_ALLOWANCE),
]


@pytest.mark.parametrize("kind,corrector,allowance", PC_CASES, ids=["function-MALA", "module-HMC", "score-ULA"])
def test_predictor_corrector_with_final_correction_samples_the_product(kind, corrector, allowance):
    """Every component is exact at t = 0, so PC with a final correction targets the static product."""
    target = BAR.diffused(SCHEDULE) + custom(kind, True)
    rule = "sigma2" if kind == "score" else "adapt"
    pc = PredictorCorrector(SCHEDULE, n_steps=30, corrector=corrector, step_rule=rule, final_correction=True)
    g = torch.Generator().manual_seed(8)
    res = pc.sample(target, shape=(N, 2), generator=g)
    assert_moments(res.samples, STATIC_PRODUCT, allowance, what=f"PC/{type(corrector).__name__}")


# ------------------------------------------------------------------------ score-only: clear errors
@pytest.mark.parametrize(
    "make",
    [
        lambda e: MALA(n_steps=5).sample(e, torch.zeros(4, 2)),
        lambda e: HMC(n_steps=5).sample(e, torch.zeros(4, 2)),
    ],
    ids=["MALA", "HMC"],
)
def test_metropolis_on_score_only_raises_naming_the_fix(make):
    e = BAR + custom("score", False)
    with pytest.raises(ec.ScoreOnlyError, match="ULA") as info:
        make(e)
    assert "custom" in str(info.value)  # names the offending leaf


def test_annealed_and_pc_metropolis_on_score_only_raise():
    e = BAR.diffused(SCHEDULE) + custom("score", True)
    with pytest.raises(ec.ScoreOnlyError, match="ULA"):
        AnnealedLangevin(SCHEDULE, 3, 2, step_size=1e-3, kernel=MALA()).sample(e, shape=(4, 2))
    with pytest.raises(ec.ScoreOnlyError, match="ULA"):
        PredictorCorrector(SCHEDULE, 3, corrector=HMC(step_size=0.1, n_steps=1)).sample(e, shape=(4, 2))
    with pytest.raises(ec.ScoreOnlyError, match="energ"):
        _ = custom("score", True) | BAR.diffused(SCHEDULE)  # mixtures need energies
    with pytest.raises(ec.ScoreOnlyError):
        e.energy(torch.zeros(4, 2), t=0.5)
    # the score itself works
    assert e.score(torch.zeros(4, 2), t=0.5).shape == (4, 2)


# ------------------------------------------------------------------------ nn.Module parameters
def test_module_energy_parameters_receive_gradients():
    module = GaussianModule([0.3, -0.2], 1.3)
    e = ec.EnergyFunction(module, name="gauss", time_dependent=False)
    assert set(dict(e.named_parameters())) == {"fn.mean", "fn.log_std"}
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(9))
    loss = e.energy(x).mean()
    loss.backward()
    # closed form: d/dmean mean_i E = -(mean(x) - mean) / var
    var = 1.3**2
    expected = -(x.mean(0) - torch.tensor([0.3, -0.2])) / var
    torch.testing.assert_close(module.mean.grad, expected, rtol=1e-4, atol=1e-5)
    assert module.log_std.grad is not None and torch.isfinite(module.log_std.grad)

    # through the score as well (create_graph=True, e.g. for score matching)
    module.zero_grad()
    e.score(x, create_graph=True).square().sum().backward()
    assert module.mean.grad is not None and bool(module.mean.grad.abs().sum() > 0)

    # and through a composition with a toy density (the toy part has no parameters)
    module.zero_grad()
    (e + BAR).energy(x).sum().backward()
    assert bool(module.mean.grad.abs().sum() > 0)


def test_module_energy_can_be_fitted_by_maximum_likelihood():
    """The parameters are ordinary parameters: a few Adam steps move them to the data's moments."""
    module = GaussianModule([0.0, 0.0], 1.0)
    e = ec.EnergyFunction(module, time_dependent=False)
    data = CUSTOM_GM.sample(2000, generator=torch.Generator().manual_seed(10))
    opt = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        e.energy(data).mean().backward()  # the energy is normalised: its mean is the NLL
        opt.step()
    torch.testing.assert_close(module.mean.detach(), data.mean(0), atol=0.02, rtol=0)
    assert abs(float(module.log_std.detach().exp()) - S) < 0.03


# ------------------------------------------------------------------------ with learned models
# The custom Gaussian sits on the ring's mode at (4, 0): the exact product is essentially that mode.
RING_MU = torch.tensor([4.0, 0.0])


def _learned_target(kind: str, parameterisation: str):
    comps = toy.pretrained.components("product", parameterisation)
    schedule = toy.pretrained.load("product", parameterisation)[1]["schedule"]

    def e_t(x, t):
        ab = schedule.alpha_bar(t)[:, None]
        m, v = ab.sqrt() * RING_MU, ab * S**2 + (1.0 - ab)
        return ((x - m) ** 2).sum(-1) / (2 * v[:, 0])

    def s_t(x, t):
        ab = schedule.alpha_bar(t)[:, None]
        return -(x - ab.sqrt() * RING_MU) / (ab * S**2 + (1.0 - ab))

    module = GaussianModule(RING_MU, S, schedule=schedule)
    leaf = {
        "function": ec.EnergyFunction(e_t, name="custom"),
        "module": ec.EnergyFunction(module, name="custom"),
        "score": ec.ScoreFunction(s_t, name="custom"),
    }[kind]
    return comps["ring"] + leaf, schedule


LEARNED_CASES = [
    ("function", "epsilon", "ddpm"),
    ("score", "epsilon", "pc-ula"),
    ("score", "epsilon", "annealed-ula"),
    ("module", "energy", "pc-mala"),
    ("function", "energy", "annealed-hmc"),
]


@pytest.mark.parametrize("kind,param,method", LEARNED_CASES, ids=["-".join(c) for c in LEARNED_CASES])
def test_custom_composes_with_learned_model(kind, param, method):
    """Custom + learned ring (toy.pretrained): samples land on the ring mode the custom energy selects."""
    target, schedule = _learned_target(kind, param)
    assert repr(target) == "ring + custom"
    assert target.has_energy == (kind != "score" and param == "energy")
    n = 256
    # The learned models use the cosine schedule: clip the x0-prediction (see ReverseDiffusion notes).
    sampler = {
        "ddpm": ReverseDiffusion(schedule, n_steps=30, clip_x0=6.0),
        "pc-ula": PredictorCorrector(schedule, 20, corrector=ULA(step_size=0.1, n_steps=1), clip_x0=6.0),
        "pc-mala": PredictorCorrector(schedule, 20, corrector=MALA(n_steps=1), step_rule="adapt", clip_x0=6.0),
        "annealed-ula": AnnealedLangevin(schedule, 15, 3, step_size=2e-3, t_min=0.02),
        "annealed-hmc": AnnealedLangevin(schedule, 15, 2, step_size=1e-3, kernel=HMC(n_leapfrog=2), adapt=True),
    }[method]
    res = sampler.sample(target, shape=(n, 2), generator=torch.Generator().manual_seed(11))
    x = res.samples
    assert x.shape == (n, 2) and bool(torch.isfinite(x).all())
    exact = toy.gmm_product(toy.tasks.get("product").components["ring"], toy.GaussianMixture(RING_MU[None], stds=torch.tensor([S])))
    # Learned scores are approximate and plain reverse diffusion is biased for products, so this
    # is a loose check that the composition selected the right mode (about 0.86-0.95 in practice).
    near = ((x - exact.mean().float()).norm(dim=1) < 1.5).float().mean()
    assert float(near) > 0.75, f"{method}: only {float(near):.2f} of samples near the selected ring mode"


def test_metropolis_on_learned_epsilon_plus_custom_raises():
    target, schedule = _learned_target("function", "epsilon")  # ε-models are score-only
    with pytest.raises(ec.ScoreOnlyError, match="ULA"):
        PredictorCorrector(schedule, 3, corrector=MALA(step_size=0.1, n_steps=1)).sample(target, shape=(4, 2))


# ------------------------------------------------------------------------ README examples
def test_readme_ten_lines_example_runs():
    # copied from README.md ("Ten lines"); only the final print is turned into an assertion
    import torch, ebmcompose as ec, toy  # noqa: E401, F811
    from samplers import MALA, PredictorCorrector  # noqa: F811

    ring, bar = toy.ring(8, radius=4.0, std=0.3), toy.bar(length=10.0, width=0.5, n=11)
    target = ring & bar                                          # product of densities: energies add
    schedule = ec.VPSchedule.linear()
    noised = ring.diffused(schedule) + bar.diffused(schedule)    # what composed diffusion models follow
    g = torch.Generator().manual_seed(0)
    pc = PredictorCorrector(schedule, n_steps=50, corrector=MALA(n_steps=2), step_rule="adapt")
    x = pc.sample(noised, shape=(2000, 2), generator=g).samples
    mmd = ec.metrics.mmd(x, toy.gmm_product(ring, bar).sample(2000, generator=g))
    assert repr(target) == "ring + bar"
    assert float(mmd) < 5e-3, float(mmd)  # README: "≈ 0"


def test_readme_custom_energy_example_runs():
    ring = toy.ring(8, radius=4.0, std=0.3)
    g = torch.Generator().manual_seed(0)
    # copied from README.md; n_steps reduced from 500 to keep the test fast
    banana = ec.EnergyFunction(lambda x: x[:, 0] ** 2 / 2 + (x[:, 1] - x[:, 0] ** 2) ** 2 / 0.5, name="banana")
    expr = ec.parse("banana AND NOT 0.3*ring", {"banana": banana, "ring": ring})
    x = MALA(n_steps=100).sample(expr, torch.randn(4000, 2), generator=g).samples
    assert repr(expr) == "banana - 0.3*ring"
    assert x.shape == (4000, 2) and bool(torch.isfinite(x).all())
