"""PredictorCorrector: the Du et al. (2023) point on an exact product of diffused mixtures, exact
NFE accounting with cached gradients, step rules, window, and the contract."""

import math

import pytest
import torch

import ebmcompose as ec
import toy
from samplers import HMC, MALA, ULA, NonFiniteStateError, PredictorCorrector, ReverseDiffusion

SCHEDULE = ec.VPSchedule.cosine()


# ------------------------------------------------------------------------------ the Du et al. point
def product_task():
    """Two 2-D mixtures whose exact product is a 4-mode mixture (``toy.gmm_product``)."""
    a = toy.GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), stds=torch.tensor([1.0, 1.0]))
    b = toy.GaussianMixture(torch.tensor([[0.0, -2.0], [0.0, 2.0]]), stds=torch.tensor([1.0, 1.0]))
    composed = a.diffused(SCHEDULE) + b.diffused(SCHEDULE)  # NOT the diffused product for t > 0
    return composed, toy.gmm_product(a, b)


def spread(x, center):
    """Mean squared distance per dimension from ``center`` and its Monte-Carlo SE."""
    v = (x.double() - center.double()).square().mean(1)
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))


def _bias_comparison(n, rd_steps, pc_steps, seeds):
    composed, product = product_task()
    center = product.mean().double()
    target = float(product.covariance().diagonal().mean())  # exact E|x - mean|²/D
    rd = ReverseDiffusion(SCHEDULE, rd_steps)
    pc = PredictorCorrector(SCHEDULE, pc_steps, corrector=MALA(step_size=1.0, n_steps=1))
    out = []
    for seed in seeds:
        r = rd.sample(composed, shape=(n, 2), generator=torch.Generator().manual_seed(seed))
        p = pc.sample(composed, shape=(n, 2), generator=torch.Generator().manual_seed(seed))
        assert abs(p.info["nfe"] - r.info["nfe"]) <= 0.05 * r.info["nfe"]  # similar budgets
        (m_r, se_r), (m_p, se_p) = spread(r.samples, center), spread(p.samples, center)
        err_r, err_p = abs(m_r - target), abs(m_p - target)
        se = math.sqrt(se_r**2 + se_p**2)
        out.append((err_r, err_p, se_r, se))
        assert err_r > 6 * se_r, f"plain reverse diffusion should be biased: {m_r} vs {target} ± {se_r}"
        assert err_p < err_r - 4 * se, f"PC+MALA ({m_p}) not closer than RD ({m_r}) to {target} beyond MC error {se}"
    return out


def test_pc_mala_fixes_the_composition_bias_of_reverse_diffusion():
    _bias_comparison(n=1500, rd_steps=60, pc_steps=30, seeds=[0])


@pytest.mark.slow
def test_pc_mala_fixes_the_composition_bias_of_reverse_diffusion_slow():
    _bias_comparison(n=8000, rd_steps=200, pc_steps=100, seeds=[0, 1, 2])


# ------------------------------------------------------------------------------ NFE and caching
class Recording:
    """Records every (t, x) an energy is evaluated at."""

    def __init__(self):
        self.calls = []
        self.energy = ec.EnergyFunction(self.fn, name="recording")

    def fn(self, x, t):
        self.calls.append((float(t[0]), x.detach().clone()))
        return 0.5 * x.square().flatten(1).sum(1)


@pytest.mark.parametrize(
    "corrector, per_step",
    [(ULA(step_size=0.1, n_steps=3), 1), (MALA(step_size=0.1, n_steps=3), 1), (HMC(step_size=0.1, n_leapfrog=2, n_steps=3), 2)],
    ids=["ula", "mala", "hmc"],
)
def test_nfe_exact_and_gradients_cached(corrector, per_step):
    rec = Recording()
    n = 12
    pc = PredictorCorrector(SCHEDULE, n, corrector=corrector)
    res = pc.sample(rec.energy, shape=(4, 2), generator=torch.Generator().manual_seed(0))
    # levels ts[1..n-1] corrected (ts[0] never, t = 0 not for a time-dependent energy)
    assert res.info["corrected"].tolist() == [False] + [True] * (n - 1) + [False]
    expected = n + 3 * per_step * (n - 1)
    assert res.info["nfe"] == len(rec.calls) == expected
    # no evaluation is repeated at the same (x, t): the corrector's cached grad feeds the predictor
    for i in range(len(rec.calls)):
        for j in range(i + 1, len(rec.calls)):
            ti, xi = rec.calls[i]
            tj, xj = rec.calls[j]
            assert not (ti == tj and torch.equal(xi, xj)), f"re-evaluated at t={ti}"
    assert all(t > 0 for t, _ in rec.calls)


def test_window_and_final_correction():
    rec = Recording()
    pc = PredictorCorrector(SCHEDULE, 10, corrector=MALA(step_size=0.1, n_steps=2), window=(0.25, 0.65))
    res = pc.sample(rec.energy, shape=(4, 2), generator=torch.Generator().manual_seed(0))
    ts = res.info["ts"]
    corrected = res.info["corrected"]
    assert corrected.tolist() == [bool(0.25 <= t <= 0.65) for t in ts.tolist()[:-1]] + [False]
    assert res.info["nfe"] == 10 + 2 * int(corrected.sum())
    # one acceptance and step size per corrected level, no NaN placeholders for the others
    assert res.info["acceptance"].shape == res.info["step_size"].shape == (int(corrected.sum()),)
    assert not torch.isnan(res.info["acceptance"]).any() and not torch.isnan(res.info["step_size"]).any()
    # final correction at t = 0: automatic for a static energy, +1 evaluation +K transitions
    static = ec.EnergyFunction(lambda x: 0.5 * x.square().sum(1), name="static")
    res = PredictorCorrector(SCHEDULE, 10, corrector=MALA(step_size=0.1, n_steps=2), static_ok=True).sample(
        static, shape=(4, 2), generator=torch.Generator()
    )
    assert res.info["corrected"][-1] and res.info["nfe"] == 10 + 2 * 10 + 1
    assert res.state is not None and float(res.state.t[0]) == 0.0


def test_no_correction_equals_reverse_diffusion():
    composed, _ = product_task()
    xT = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    for predictor, eta in [("ddpm", 1.0), ("ddim", 0.0), (0.4, 0.4)]:
        pc = PredictorCorrector(SCHEDULE, 15, corrector=MALA(step_size=0.1, n_steps=2), predictor=predictor, corrector_steps=0)
        a = pc.sample(composed, xT, generator=torch.Generator().manual_seed(1))
        b = ReverseDiffusion(SCHEDULE, 15, eta=eta).sample(composed, xT, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a.samples, b.samples)
        assert a.info["nfe"] == b.info["nfe"]


# ------------------------------------------------------------------------------ step rules
@pytest.mark.parametrize("rule", ["sigma2", "beta", "fixed"])
def test_step_rules(rule):
    energy = toy.GaussianMixture(torch.zeros(1, 2), stds=torch.ones(1)).diffused(SCHEDULE)
    pc = PredictorCorrector(SCHEDULE, 8, corrector=ULA(step_size=0.05, n_steps=1), step_rule=rule)
    res = pc.sample(energy, shape=(4, 2), generator=torch.Generator())
    ts = res.info["ts"][1:-1]
    expected = {"sigma2": 0.05 * SCHEDULE.sigma(ts) ** 2, "beta": 0.05 * SCHEDULE.beta(ts), "fixed": 0.05 + 0 * ts}[rule]
    assert res.info["corrected"][1:-1].all() and not res.info["corrected"][[0, -1]].any()
    torch.testing.assert_close(res.info["step_size"], expected.double())


def test_adapt_rule_reaches_target_acceptance():
    composed, _ = product_task()
    pc = PredictorCorrector(SCHEDULE, 10, corrector=MALA(step_size=0.01, n_steps=25), step_rule="adapt")
    res = pc.sample(composed, shape=(400, 2), generator=torch.Generator().manual_seed(0))
    acc = res.info["acceptance"]
    assert acc.shape == (int(res.info["corrected"].sum()),)
    assert ((acc - 0.57).abs() < 0.15).all(), acc
    # step size search when the corrector has none
    pc = PredictorCorrector(SCHEDULE, 4, corrector=MALA(n_steps=5), step_rule="adapt")
    res = pc.sample(composed, shape=(50, 2), generator=torch.Generator().manual_seed(0))
    assert res.info["nfe"] > 4 + 5 * 3


# ------------------------------------------------------------------------------ contract
def test_score_only_energy_needs_ula_corrector():
    score_only = ec.ScoreFunction(lambda x, t: -x, name="eps_net")
    with pytest.raises(ec.ScoreOnlyError, match="ULA"):
        PredictorCorrector(SCHEDULE, 5, corrector=MALA(step_size=0.1, n_steps=1)).sample(
            score_only, shape=(4, 2), generator=torch.Generator()
        )
    res = PredictorCorrector(SCHEDULE, 5, corrector=ULA(step_size=0.1, n_steps=1)).sample(
        score_only, shape=(4, 2), generator=torch.Generator()
    )
    assert res.samples.shape == (4, 2)


def test_same_seed_identical_images():
    energy = ec.EnergyFunction(lambda x, t: 0.5 * x.square().flatten(1).sum(1), name="std_normal")
    pc = PredictorCorrector(SCHEDULE, 6, corrector=HMC(step_size=0.1, n_leapfrog=2, n_steps=1))
    a = pc.sample(energy, shape=(5, 1, 4, 4), generator=torch.Generator().manual_seed(3), trace_every=3)
    b = pc.sample(energy, shape=(5, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    assert a.samples.shape == (5, 1, 4, 4) and torch.equal(a.samples, b.samples)
    assert a.info["trace"].shape == (2, 5, 1, 4, 4)
    assert "log_weights" not in a.info  # PC has no importance weights (removed; see the SMC sampler)
    assert a.info["nfe"] == 6 + 2 * 5  # predictor + corrector


def test_nonfinite_level_is_named():
    def score(x, t):
        return torch.where(t[:, None] < 0.5, torch.full_like(x, float("inf")), -x)

    with pytest.raises(NonFiniteStateError, match="level"):
        PredictorCorrector(SCHEDULE, 10, corrector=ULA(step_size=0.1, n_steps=1)).sample(
            ec.ScoreFunction(score), shape=(4, 2), generator=torch.Generator()
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_steps=0), "n_steps"),
        (dict(predictor="euler"), "ddim"),
        (dict(predictor=-0.5), "eta"),
        (dict(window=(0.6, 0.2)), "window"),
        (dict(window=(-0.1, 1.0)), "window"),
        (dict(window=(0.0, 1.5)), "window"),
        (dict(step_rule="snr"), "sigma2, beta, fixed, adapt"),
        (dict(corrector_steps=-1), "corrector_steps"),
        (dict(n_corrector_steps=-1), "n_corrector_steps"),
        (dict(n_corrector_steps=2, corrector_steps=3), "disagree"),
        (dict(corrector=MALA(n_steps=2), step_rule="sigma2"), "step_size"),
    ],
)
def test_bad_configs(kwargs, match):
    kw = dict(n_steps=10, corrector=MALA(step_size=0.1, n_steps=2))
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PredictorCorrector(SCHEDULE, **kw)


def test_missing_corrector():
    with pytest.raises(TypeError, match="corrector"):
        PredictorCorrector(SCHEDULE, 10)


def test_t_max_starts_the_ladder_lower_and_tames_the_cosine_endpoint():
    """A composition with the wrong prior variance at t=1 (box − 0.5·small has variance 2)
    explodes from cosine's alpha_bar(1) ≈ 1e-8; starting at t_max=0.98 does not."""
    import toy

    sched = ec.VPSchedule.cosine()
    task = toy.tasks.get("negation")
    energy = task.composed_diffused(sched)
    corr = MALA(step_size=0.05, n_steps=1)
    g = torch.Generator().manual_seed(0)
    xT = torch.randn(500, 2, generator=g)
    pc = PredictorCorrector(sched, n_steps=30, corrector=corr, t_max=0.98)
    assert float(pc.ladder()[0]) == pytest.approx(0.98)
    tame = pc.sample(energy, xT, generator=torch.Generator().manual_seed(1)).samples
    wild = PredictorCorrector(sched, n_steps=30, corrector=corr).sample(
        energy, xT, generator=torch.Generator().manual_seed(1)
    ).samples
    assert tame.abs().max() < 10 < wild.abs().max()
    with pytest.raises(ValueError, match="t_max must be in"):
        PredictorCorrector(sched, n_steps=3, corrector=corr, t_max=0.0)
