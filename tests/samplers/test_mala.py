"""MALA: exact moments, closed-form acceptance, per-chain MH, divergences, contract."""

import math
import warnings

import pytest
import torch

import ebmcompose as ec
from samplers import MALA, MALAInfo, NonFiniteStateError
from samplers.mala import langevin_proposal, mala_log_ratio

from _kernel_targets import assert_moments, gaussian, isotropic, single_thread, wall_energy, z_scores  # noqa: F401

COV = [[1.0, 1.2], [1.2, 4.0]]  # correlation 0.6, scales 1 and 2


def _trace(kernel, energy, x0, g, every=1):
    res = kernel.sample(energy, x0, generator=g, trace_every=every)
    return res, res.info["trace"]


def test_standard_gaussian_moments(generator):
    energy, draw = gaussian([0.0, 0.0, 0.0], torch.eye(3))
    x0 = draw(400, generator)
    res, trace = _trace(MALA(step_size=0.5, n_steps=200), energy, x0, generator)
    assert_moments(trace, [0.0, 0.0, 0.0], torch.eye(3))
    assert res.info["nfe"] == 201  # 1 NFE per step + the initial evaluation


def test_correlated_gaussian_moments_adapted(generator):
    energy, draw = gaussian([1.0, -2.0], COV)
    x0 = draw(400, generator)
    res, trace = _trace(MALA(n_steps=300), energy, x0, generator)  # step size by dual averaging
    assert_moments(trace, [1.0, -2.0], COV)
    assert abs(float(res.info["acceptance"].mean()) - 0.57) < 0.1
    assert abs(float(res.info["warmup_acceptance"]) - 0.57) < 0.1
    assert res.info["n_warmup"] == 150  # max(100, n_steps // 2) when adapting


def test_acceptance_matches_closed_form(generator):
    """Mean acceptance at stationarity on N(0, s² I_d) vs a large float64 MC of the exact MH formula."""
    d, s, h = 5, 1.5, 1.8
    n = 1_000_000
    g64 = torch.Generator().manual_seed(123)
    x = s * torch.randn(n, d, generator=g64, dtype=torch.float64)
    score = lambda v: -v / s**2
    fwd = torch.distributions.Normal(x + h * score(x), math.sqrt(2 * h))
    xp = x + h * score(x) + math.sqrt(2 * h) * torch.randn(n, d, generator=g64, dtype=torch.float64)
    target = torch.distributions.Normal(0.0, s)
    bwd = torch.distributions.Normal(xp + h * score(xp), math.sqrt(2 * h))
    log_r = (target.log_prob(xp) + bwd.log_prob(x) - target.log_prob(x) - fwd.log_prob(xp)).sum(1)
    expected = float(log_r.clamp(max=0).exp().mean())

    b = 20000
    x0 = s * torch.randn(b, d, generator=generator)
    res = MALA(step_size=h, n_steps=5).sample(isotropic(s), x0, generator=generator)
    per_chain = res.info["acceptance_per_chain"].double()
    se = float(per_chain.std() / math.sqrt(b))
    got = float(per_chain.mean())
    assert abs(got - expected) < 5 * se + 1e-3, (got, expected, se)
    assert 0.3 < expected < 0.9  # a regime where a wrong proposal density would show


def test_per_chain_accept_reject_replayed(generator):
    """Replay the step's random draws: each chain's decision follows its own MH ratio."""
    energy, draw = gaussian([0.0, 0.0], COV)
    kernel = MALA(step_size=1.5)
    x = draw(256, generator)
    state = kernel.init(energy, x)
    g_state = generator.get_state()
    new, info = kernel.step(state, energy, generator)
    replay = torch.Generator().set_state(g_state)
    noise = torch.randn(x.shape, generator=replay)
    u = torch.rand(x.shape[:1], generator=replay)
    xp = langevin_proposal(x, state.grad, 1.5, noise)
    e_p, g_p = energy.energy_and_grad(xp)
    log_r = mala_log_ratio(x, state.energy, xp, e_p, g_p, noise, 1.5)
    expect = u < log_r.clamp(max=0).exp()
    assert expect.any() and (~expect).any()  # a genuinely mixed batch
    assert torch.equal(info.accepted, expect)
    torch.testing.assert_close(new.x, torch.where(expect[:, None], xp, x))
    torch.testing.assert_close(new.energy, torch.where(expect, e_p, state.energy))
    torch.testing.assert_close(new.grad, torch.where(expect[:, None], g_p, state.grad))
    assert info.nfe == 1 and isinstance(info, MALAInfo)
    torch.testing.assert_close(info.energy_error, log_r)
    torch.testing.assert_close(info.acceptance, log_r.clamp(max=0).exp())
    assert not info.divergent.any()
    # the state we passed in is untouched
    assert torch.equal(state.x, x)


def test_nonfinite_proposals_rejected_and_counted(generator):
    energy = wall_energy()
    x0 = torch.cat([torch.full((200, 2), -50.0), torch.full((200, 2), 0.999)])
    res = MALA(step_size=0.5, n_steps=1).sample(energy, x0, generator=generator)
    assert torch.isfinite(res.samples).all()
    assert (res.samples[:, 0] < 1.0).all()
    # far chains (flat region) always accept; chains at the wall cross it about half the time
    acc = res.info["acceptance_per_chain"]
    assert (acc[:200] > 1 - 1e-5).all()
    div = res.info["divergences"]
    assert 60 < div < 140, div
    assert float(acc[200:].mean()) == pytest.approx(1 - div / 200, abs=1e-6)


def test_images_shape(generator):
    x0 = torch.randn(300, 1, 4, 4, generator=generator)
    res = MALA(step_size=0.4, n_steps=60).sample(isotropic(1.0), x0, generator=generator, trace_every=2)
    assert res.samples.shape == (300, 1, 4, 4)
    trace = res.info["trace"]
    z, est, _ = z_scores(trace.square(), torch.ones(1, 4, 4))
    assert (z < 5.0).all(), est


def test_same_seed_identical_and_device_dtype():
    energy, draw = gaussian([0.0, 0.0], COV, dtype=torch.float64)
    x0 = draw(64, torch.Generator().manual_seed(1), torch.float64)
    a = MALA(n_steps=20).sample(energy, x0, generator=torch.Generator().manual_seed(7))
    b = MALA(n_steps=20).sample(energy, x0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.samples, b.samples)
    assert a.samples.dtype == torch.float64 and a.info["step_size"].dtype == torch.float64


def test_step_size_tensor_same_as_float(generator):
    energy, draw = gaussian([0.0, 0.0], COV)
    x = draw(32, generator)
    k = MALA()
    state = k.init(energy, x)
    a, _ = k.with_step_size(0.3).step(state, energy, torch.Generator().manual_seed(3))
    b, _ = k.with_step_size(torch.tensor(0.3)).step(state, energy, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.x, b.x)


def test_score_only_raises_naming_the_fix(generator):
    score = ec.ScoreFunction(lambda x: -x, name="s")
    with pytest.raises(ec.ScoreOnlyError, match="ULA"):
        MALA(step_size=0.1).sample(score, torch.zeros(4, 2), generator=generator)


def test_nonfinite_initial_state_raises(generator):
    with pytest.raises(NonFiniteStateError, match="initial state"):
        MALA(step_size=0.1).sample(wall_energy(), torch.full((4, 2), 2.0), generator=generator)


def test_config_validation():
    with pytest.raises(ValueError):
        MALA(step_size=-1.0)
    with pytest.raises(ValueError):
        MALA(n_steps=-3)
    with pytest.raises(ValueError):
        MALA(target_accept=1.5)


def test_callback_and_progress(generator):
    seen = []
    energy, draw = gaussian([0.0, 0.0], COV)
    MALA(step_size=0.3, n_steps=5, n_warmup=2).sample(
        energy, draw(8, generator), generator=generator, callback=lambda i, s, info: seen.append(i)
    )
    assert seen == list(range(7))


def test_ring_radial_spread_and_mode_weights(generator):
    """8-Gaussian ring (radius 4, std 0.3), chains started from the exact mixture.

    Modes are ~10 std apart, so no kernel moves between them in any practical run; starting
    from the exact distribution turns this into an invariance test: the mode weights must stay
    multinomial(1/8) and the within-mode spread must stay 2 std² — a wrong proposal density or a
    batch-wide accept/reject distorts the spread.
    """
    toy = pytest.importorskip("toy")
    gm = toy.ring(n=8, radius=4.0, std=0.3)
    x0 = gm.sample(2000, generator=generator)
    res = MALA(step_size=0.05, n_steps=100).sample(gm, x0, generator=generator, trace_every=5)
    trace = res.info["trace"]
    means = gm.means.to(trace.dtype)
    d2 = ((trace[..., None, :] - means) ** 2).sum(-1)  # (T, B, 8)
    nearest = d2.min(-1).values
    z, est, _ = z_scores(nearest, 2 * 0.3**2)
    assert float(z) < 4.5, est
    counts = torch.bincount(d2[-1].argmin(-1), minlength=8).double()
    chi2 = float(((counts - 250.0) ** 2 / 250.0).sum())
    assert chi2 < 29.9  # chi² with 7 dof at p = 1e-4


def test_compile_failure_falls_back_to_eager_with_one_warning_naming_the_reason(generator, monkeypatch):
    """A compiler error (here a backend failure raised on every call) runs the transition eagerly:
    one warning for the whole run, naming the error, and the eager chains."""
    import torch._dynamo.exc as dynamo_exc

    import samplers.compile as sc

    calls = []

    def broken(fn, **kw):
        def run(*args):
            calls.append(fn.__name__)
            raise dynamo_exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler here"), None)

        return run

    monkeypatch.setattr(sc, "_GRAPHS", {})
    monkeypatch.setattr(sc, "_SCANS", {})
    monkeypatch.setattr(torch, "compile", broken)
    energy, draw = gaussian([0.0, 0.0], COV)
    x0 = draw(16, generator)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        a = MALA(step_size=0.3, n_steps=5).compiled().sample(energy, x0, generator=torch.Generator().manual_seed(1))
    mine = [w for w in seen if "torch.compile" in str(w.message)]
    assert len(mine) == 1 and calls == ["_while_loop"]  # the kept steps run in chunks (samplers.compile.scan)
    assert "mala_body" in str(mine[0].message)
    assert "BackendCompilerFailed" in str(mine[0].message) and "no C++ compiler here" in str(mine[0].message)
    assert "eagerly" in str(mine[0].message)
    b = MALA(step_size=0.3, n_steps=5).sample(energy, x0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.samples, b.samples)


def test_unrelated_errors_are_not_swallowed_by_the_compile_wrapper(generator, monkeypatch):
    """Only compiler errors fall back: an error of the energy itself reaches the caller."""
    import samplers.compile as sc

    def boom(x):
        raise ZeroDivisionError("the energy's own bug")

    monkeypatch.setattr(sc, "_GRAPHS", {})
    monkeypatch.setattr(sc, "_SCANS", {})
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: (lambda *a: boom(a)))
    energy, draw = gaussian([0.0, 0.0], COV)
    with pytest.raises(ZeroDivisionError, match="own bug"):
        MALA(step_size=0.3, n_steps=2).compiled().sample(energy, draw(4, generator), generator=generator)


@pytest.mark.slow
def test_compiled_same_distribution(generator):
    """torch.compile path (~20 s of compilation on CPU): same draws give the same chain up to rounding, right
    moments. A closed-form energy (toy.GaussianMixture), so the graph runs: a fallback would warn (an error here)."""
    import toy

    _, draw = gaussian([1.0, -2.0], COV)
    energy = toy.GaussianMixture(torch.tensor([[1.0, -2.0]]), covs=torch.tensor([COV]))
    x0 = draw(2000, generator)
    kernel = MALA(step_size=0.8, n_steps=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        a = kernel.compiled().sample(energy, x0, generator=torch.Generator().manual_seed(2), trace_every=1)
    b = kernel.sample(energy, x0, generator=torch.Generator().manual_seed(2))
    assert_moments(a.info["trace"], [1.0, -2.0], COV)
    close = (a.samples - b.samples).abs().amax(1) < 1e-4
    assert float(close.double().mean()) > 0.95  # rare accept/reject flips from rounding may diverge a chain


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_long_correlated_gaussian_and_ring(seed):
    g = torch.Generator().manual_seed(seed)
    energy, draw = gaussian([1.0, -2.0], COV)
    res = MALA(n_steps=2000).sample(energy, draw(2000, g), generator=g, trace_every=5)
    assert_moments(res.info["trace"], [1.0, -2.0], COV, z_max=4.0)
    toy = pytest.importorskip("toy")
    gm = toy.ring()
    res = MALA(n_steps=1000).sample(gm, gm.sample(20000, generator=g), generator=g, trace_every=10)
    d2 = ((res.info["trace"][..., None, :] - gm.means) ** 2).sum(-1)
    z, est, _ = z_scores(d2.min(-1).values, 2 * 0.3**2)
    assert float(z) < 4.0, est


@pytest.mark.parametrize("shape", [(64, 2), (16, 3, 4, 4)])
def test_log_ratio_fused_float_path_equals_the_textbook_formula(shape):
    """A float and a 0-d tensor step size both give the written-out ratio (one formula)."""
    g = torch.Generator().manual_seed(3)
    x, grad, noise, grad_new = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(4))
    e, e_new = torch.randn(shape[0], generator=g, dtype=torch.float64), torch.randn(shape[0], generator=g, dtype=torch.float64)
    h = 0.07
    x_new = x - h * grad + (2 * h) ** 0.5 * noise
    flat = lambda v: v.reshape(v.shape[0], -1).sum(1)
    log_q_fwd = -flat((x_new - x + h * grad) ** 2) / (4 * h)
    log_q_bwd = -flat((x - x_new + h * grad_new) ** 2) / (4 * h)
    expect = e - e_new + log_q_bwd - log_q_fwd
    inputs = [v.clone() for v in (x, e, x_new, e_new, grad_new, noise)]
    for step in (h, torch.tensor(h, dtype=torch.float64)):
        got = mala_log_ratio(x, e, x_new, e_new, grad_new, noise, step)
        torch.testing.assert_close(got, expect)
    for before, after in zip(inputs, (x, e, x_new, e_new, grad_new, noise)):
        assert torch.equal(before, after)  # the in-place ops touch temporaries only
