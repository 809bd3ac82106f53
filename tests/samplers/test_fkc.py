"""SMC with Feynman–Kac corrector (FKC) weights on score-only compositions (Skreta et al. 2025):
exact mode weights and log-normaliser of a product of diffused mixtures that plain reverse diffusion
gets wrong, the increments against a hand computation, one batched forward per level, clear errors
for non-linear compositions and energy-needing rejuvenation, reproducibility."""

import math

import pytest
import torch
from torch import nn

import ebmcompose as ec
import toy
from samplers import MALA, SMC, ULA, ReverseDiffusion
from samplers.fkc import FKCScores, fkc_increment, fkc_start, leaf_scores, linear_leaves, step_integrals

# The linear-β schedule: β(t) is bounded, so every ladder step has a small ∫β (FKC weights are a
# continuous-time identity; cosine's β blows up near t = 1, see the module notes of samplers.smc).
SCHEDULE = ec.VPSchedule.linear()


def seed(s):
    return torch.Generator().manual_seed(s)


def score_only(energy, name):
    """The same density as a score-only leaf (``has_energy`` is False): only ``energy.score`` is used."""
    return ec.ScoreFunction(lambda x, t: energy.score(x, t), name=name, event_shape=(2,))


def product_task():
    """Two 2-D mixtures (narrow modes at ``(±2.5, 0)``; two broad components on the right) whose
    product has four modes with right-half weight about 0.77, which reverse diffusion puts near 0.67."""
    a = toy.GaussianMixture(torch.tensor([[-2.5, 0.0], [2.5, 0.0]]), stds=[0.4, 0.4])
    b = toy.GaussianMixture(torch.tensor([[1.0, -1.5], [1.0, 1.5]]), stds=[2.0, 2.0])
    exact = toy.gmm_product(a, b)
    energy = score_only(a.diffused(SCHEDULE), "a") + score_only(b.diffused(SCHEDULE), "b")
    p_right = float(exact.weights[exact.means[:, 0] > 0].sum())
    x = torch.zeros(1, 2)
    log_z = float(-a.energy(x) - b.energy(x) - exact.log_prob(x))  # log ∫ p_a p_b
    return energy, p_right, log_z


# ------------------------------------------------------------------------------ exact targets
def test_fkc_weights_get_the_exact_mode_weights_and_normaliser_reverse_diffusion_misses():
    energy, p_right, exact_lz = product_task()
    assert not energy.has_energy
    n, seeds = 2000, range(16)
    smc = SMC(SCHEDULE, 100, weights="auto")
    runs = [smc.sample(energy, shape=(n, 2), generator=seed(s)) for s in seeds]
    assert all(r.info.weights == "fkc" for r in runs)
    f = torch.tensor([float((r.samples[:, 0] > 0).double().mean()) for r in runs], dtype=torch.float64)
    # runs are independent: the SE of the mean comes from their spread (resampling correlates particles)
    se = max(float(f.std() / math.sqrt(len(f))), math.sqrt(p_right * (1 - p_right) / (n * len(f))))
    assert abs(float(f.mean()) - p_right) < 4.5 * se, f"right-mode weight {f.tolist()} vs exact {p_right:.4f} (SE {se:.4f})"
    # the weights matter: reverse diffusion with the same composed score is far outside that band
    m = 8000
    x = ReverseDiffusion(SCHEDULE, 100).sample(energy, shape=(m, 2), generator=seed(0)).samples
    f_rd = float((x[:, 0] > 0).double().mean())
    assert abs(f_rd - p_right) > 4.5 * se + 4 * math.sqrt(p_right * (1 - p_right) / m), (f_rd, p_right, se)
    # log Ẑ: the continuous-time Feynman–Kac identity (consistent as the steps shrink, not unbiased)
    lz = torch.tensor([r.info.log_z for r in runs], dtype=torch.float64)
    se_lz = float(lz.std() / math.sqrt(len(lz)))
    assert abs(float(lz.mean()) - exact_lz) < 4.5 * se_lz + 0.05, f"log Z {lz.tolist()} vs exact {exact_lz:.4f}"


@pytest.mark.slow
def test_fkc_with_ula_rejuvenation_and_the_small_variance_proposal():
    energy, p_right, _ = product_task()
    n, seeds = 2000, range(16)
    for smc in (SMC(SCHEDULE, 100, weights="fkc", rejuvenate=ULA(step_size=0.05, n_steps=1)),
                SMC(SCHEDULE, 100, weights="fkc", proposal_variance="small")):
        f = torch.tensor([float((smc.sample(energy, shape=(n, 2), generator=seed(s)).samples[:, 0] > 0).double().mean())
                          for s in seeds], dtype=torch.float64)
        se = max(float(f.std() / math.sqrt(len(f))), math.sqrt(p_right * (1 - p_right) / (n * len(f))))
        assert abs(float(f.mean()) - p_right) < 4.5 * se, (f.tolist(), p_right, se)


# ------------------------------------------------------------------------------ the formula by hand
def _hand_leaves():
    m = torch.tensor([1.0, -2.0])
    a = ec.ScoreFunction(lambda x, t: -x, name="A", event_shape=(2,))
    b = ec.ScoreFunction(lambda x, t: -(x - m) / (1.0 + t[:, None]), name="B", event_shape=(2,))
    return a, b, (lambda x, t: -x), (lambda x, t: -(x - m) / (1.0 + t))


def test_linear_leaves_merge_repeated_leaves_and_multiply_nested_weights():
    a, b, _, _ = _hand_leaves()
    pairs = linear_leaves(2.0 * a + 0.5 * (b - 3.0 * a) + a)  # A: 2 − 1.5 + 1, B: 0.5
    assert [(c, e.label) for c, e in pairs] == [(1.5, "A"), (0.5, "B")]
    assert linear_leaves(a + 0.0 * b) == [(1.0, a)]  # cancelled leaves are not evaluated


def test_fkc_increment_equals_the_hand_formula_inside_smc():
    """Two steps with ``ess_threshold=0`` (no resampling before the last level): the log weights SMC
    carries after level 1 are the start weight plus one trapezoid increment, computed here by hand."""
    a, b, sa, sb = _hand_leaves()
    energy = 2.0 * a + b - 0.5 * a  # β = (1.5, 1), Σβ = 2.5
    x0 = torch.randn(64, 2, generator=seed(0), dtype=torch.float64)
    seen = {}

    def callback(i, state, info):
        if i == 0:
            seen["x1"], seen["log_w"], seen["t"] = state.x.clone(), state.log_weights.clone(), state.t

    smc = SMC(SCHEDULE, 2, weights="fkc", ess_threshold=0.0)
    res = smc.sample(energy, x0, generator=seed(1), callback=callback)
    ts = smc.ladder().tolist()
    assert seen["t"] == ts[1]
    delta = float(SCHEDULE.log_alpha_bar(torch.tensor(ts[1], dtype=torch.float64))
                  - SCHEDULE.log_alpha_bar(torch.tensor(ts[0], dtype=torch.float64)))
    assert delta > 0 and step_integrals(SCHEDULE, smc.ladder())[0] == pytest.approx(delta)

    def rate(x, t):
        s1, s2 = sa(x, t), sb(x, t)
        s = 1.5 * s1 + s2
        return 0.5 * ((s * s).sum(1) - 1.5 * (s1 * s1).sum(1) - (s2 * s2).sum(1))

    x1 = seen["x1"]
    want = (-(2.5 - 1.0) * (0.5 * (x0 * x0).sum(1) + math.log(2 * math.pi))  # start: N(0, I)^{2.5} / N(0, I)
            + 0.5 * delta * (rate(x0, ts[0]) + rate(x1, ts[1])) - 0.5 * 2 * delta * (2.5 - 1.0))
    torch.testing.assert_close(seen["log_w"], want)
    # the pieces agree with the same hand formula
    t1 = torch.full((64,), ts[1], dtype=torch.float64)
    g, r, nfe = FKCScores(energy)(x1, t1, torch.float64)
    torch.testing.assert_close(r, rate(x1, ts[1]))
    torch.testing.assert_close(g, -(1.5 * sa(x1, ts[1]) + sb(x1, ts[1])))
    torch.testing.assert_close(g, energy.grad(x1, t1))
    assert nfe == 2
    torch.testing.assert_close(fkc_start(x0, 2.5, torch.float64), -1.5 * (0.5 * (x0 * x0).sum(1) + math.log(2 * math.pi)))
    torch.testing.assert_close(fkc_increment(r, r, 0.3, 2.5, 2), 0.3 * r - 0.3 * 1.5)
    assert res.info.weights == "fkc" and res.info.nfe == 2 * 3


def test_product_and_annealing_rates_are_the_papers():
    """Product ``(1, 1)``: ``r = ⟨s_1, s_2⟩``; annealing ``q^γ``: ``r = γ(γ − 1)|s|²/2``."""
    a, b, sa, sb = _hand_leaves()
    x, t = torch.randn(16, 2, generator=seed(2)), torch.full((16,), 0.3)
    _, r, _ = FKCScores(a + b)(x, t)
    torch.testing.assert_close(r, (sa(x, 0.3) * sb(x, 0.3)).sum(1))
    _, r, _ = FKCScores(3.0 * b)(x, t)
    torch.testing.assert_close(r, 3.0 * 2.0 / 2 * sb(x, 0.3).square().sum(1))


class CountingNet(nn.Module):
    """Label-conditional ε-net that counts its forwards."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t, cond=None):
        self.calls += 1
        out = 0.5 * x
        if cond is not None:
            out = out + 0.1 * cond.to(x.dtype).reshape(-1, 1)
        return out


def test_leaves_of_one_network_are_one_forward_per_level():
    net = CountingNet()
    m = ec.EpsilonModel(net, SCHEDULE, null_condition=0)
    u = m.unconditional()
    expr = ec.conjunction(u, [m.condition(1), m.condition(2)], weight=2.0)
    x, t = torch.randn(8, 2, generator=seed(0)), torch.full((8,), 0.4)
    scores, nfe = leaf_scores([e for _, e in linear_leaves(expr)], x, t)
    assert net.calls == 1 and nfe == expr.evaluate(x, t, energy=False).nfe == 1 and scores.shape == (3, 8, 2)
    g, _, _ = FKCScores(expr)(x, t)
    torch.testing.assert_close(g, expr.grad(x, t))
    net.calls = 0
    info = SMC(SCHEDULE, 10, weights="auto", t_min=0.05).sample(expr, shape=(32, 2), generator=seed(0)).info
    assert info.weights == "fkc" and info.nfe == 11 == net.calls


# ------------------------------------------------------------------------------ errors
def test_non_linear_compositions_and_energy_kernels_raise_naming_the_fix():
    a = toy.GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), stds=[1.0, 1.0]).diffused(SCHEDULE)
    b = toy.GaussianMixture(torch.tensor([[0.0, 1.0]]), stds=[1.0]).diffused(SCHEDULE)
    so = score_only(b, "b")
    with pytest.raises(ec.ScoreOnlyError, match=r"mixture \(a \| b\).*energy-parameterised model"):
        SMC(SCHEDULE, 5, weights="auto").sample((a | b) + so, shape=(4, 2), generator=seed(0))
    with pytest.raises(ec.InputError, match="mixture"):
        SMC(SCHEDULE, 5, weights="fkc").sample(a | b, shape=(4, 2), generator=seed(0))
    with pytest.raises(ec.ScoreOnlyError, match="weights='fkc'"):
        SMC(SCHEDULE, 5).sample(so + so, shape=(4, 2), generator=seed(0))  # default: energy weights
    with pytest.raises(ec.InputError, match="ULA"):
        SMC(SCHEDULE, 5, weights="fkc", rejuvenate=MALA(step_size=0.1, n_steps=1))
    with pytest.raises(ec.ScoreOnlyError, match="ULA"):
        SMC(SCHEDULE, 5, weights="auto", rejuvenate=MALA(step_size=0.1, n_steps=1)).sample(
            so + so, shape=(4, 2), generator=seed(0))
    with pytest.raises(ec.InputError, match="positive sum"):
        SMC(SCHEDULE, 5, weights="fkc").sample(so - so, shape=(4, 2), generator=seed(0))
    with pytest.raises(ec.InputError, match="weights must be one of"):
        SMC(SCHEDULE, 5, weights="exact")


# ------------------------------------------------------------------------------ seeds, NFE
def test_same_seed_same_samples_and_nfe():
    energy, _, _ = product_task()
    smc = SMC(SCHEDULE, 15, weights="fkc", rejuvenate=ULA(step_size=0.05, n_steps=1), resampling="stratified")
    r1 = smc.sample(energy, shape=(200, 2), generator=seed(3))
    r2 = smc.sample(energy, shape=(200, 2), generator=seed(3))
    r3 = smc.sample(energy, shape=(200, 2), generator=seed(4))
    assert torch.equal(r1.samples, r2.samples) and torch.equal(r1.info.ess, r2.info.ess)
    assert r1.info.log_z == r2.info.log_z and not torch.equal(r1.samples, r3.samples)
    # two leaves per evaluation: 16 levels, one ULA transition per level and the leaves' re-evaluation after it
    assert r1.info.nfe == 2 * (16 + 15 + 15) and r1.info.weights == "fkc"
    assert SMC(SCHEDULE, 15, weights="fkc").sample(energy, shape=(20, 2), generator=seed(0)).info.nfe == 2 * 16


def test_a_step_too_large_for_the_weights_warns_naming_the_fix():
    import warnings as _w

    from samplers.fkc import MAX_STEP_INTEGRAL, step_integrals
    from samplers import SamplingWarning

    cosine = ec.VPSchedule.cosine()
    with pytest.warns(SamplingWarning, match="t_max"):
        deltas = step_integrals(cosine, cosine.timesteps(100))
    assert max(deltas) > MAX_STEP_INTEGRAL
    with _w.catch_warnings():
        _w.simplefilter("error")
        assert max(step_integrals(cosine, cosine.timesteps(100, t_max=0.9))) < MAX_STEP_INTEGRAL
