"""benchmarks/peers.py and peer_targets.py: the targets are the same in torch and JAX and equal to
independent closed forms, the --quick harness writes the fields it promises with a correct
Gaussian mean, and a peer that is missing or crashes is reported as skipped, not an error."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from torch.distributions import HalfCauchy as _HalfCauchy, Normal as _Normal

from benchmarks import peers
from benchmarks import peer_targets as pt
from toy import ring


def _points(name: str, n: int = 64) -> torch.Tensor:
    """Random float64 points around where each target's mass is (eight schools: moderate log tau)."""
    x = torch.from_numpy(pt.start_points(name, n, seed=3)) * 1.5
    if name == "eight_schools":
        x[:, 1] = x[:, 1].clamp(-4.0, 4.0)
    return x


def _closed_forms():
    """``-log p`` from ``torch.distributions`` / :mod:`toy`, written apart from the benchmark's formulas
    (float64 parameters throughout: a Python-float parameter would make a float32 tensor)."""
    def Normal(loc, scale):  # noqa: N802
        return _Normal(torch.as_tensor(loc, dtype=torch.float64), torch.as_tensor(scale, dtype=torch.float64))

    def HalfCauchy(scale):  # noqa: N802
        return _HalfCauchy(torch.tensor(scale, dtype=torch.float64))

    def gaussian(x):
        return -Normal(0.0, torch.from_numpy(pt.GAUSS_SCALES)).log_prob(x).sum(-1)

    def funnel(x):
        v, z = x[:, 0], x[:, 1:]
        return -(Normal(0.0, 3.0).log_prob(v) + Normal(0.0, (v / 2).exp()[:, None]).log_prob(z).sum(-1))

    def banana(x):
        return -(Normal(0.0, 10.0).log_prob(x[:, 0]) + Normal(0.03 * (x[:, 0] ** 2 - 100.0), 1.0).log_prob(x[:, 1]))

    def eight_schools(x):
        mu, lt, tt = x[:, 0], x[:, 1], x[:, 2:]
        y, sigma = torch.from_numpy(pt.SCHOOLS_Y), torch.from_numpy(pt.SCHOOLS_SIGMA)
        lp = Normal(0.0, 5.0).log_prob(mu) + HalfCauchy(5.0).log_prob(lt.exp()) + lt + Normal(0.0, 1.0).log_prob(tt).sum(-1)
        return -(lp + Normal(mu[:, None] + lt.exp()[:, None] * tt, sigma).log_prob(y).sum(-1))

    def ring_(x):
        return -ring(8, 4.0, 0.3, dtype=torch.float64).log_prob(x)

    return dict(gaussian=gaussian, funnel=funnel, banana=banana, eight_schools=eight_schools, ring=ring_)


@pytest.mark.parametrize("name", pt.TARGETS)
def test_torch_energy_is_the_closed_form(name):
    x = _points(name)
    e = pt.TORCH[name](x)
    assert e.shape == (x.shape[0],) and e.dtype == torch.float64
    torch.testing.assert_close(e, _closed_forms()[name](x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", pt.TARGETS)
def test_torch_and_jax_targets_agree(name):
    pt.load_jax(1)  # pins XLA to one thread if this is the first import, turns float64 on
    jax = pytest.importorskip("jax")
    logp = pt.jax_log_densities()[name]
    x = _points(name)
    xr = x.clone().requires_grad_(True)
    e = pt.TORCH[name](xr)
    (g,) = torch.autograd.grad(e.sum(), xr)
    xj = jax.numpy.asarray(x.numpy())
    e_jax = -np.asarray(jax.vmap(logp)(xj))
    g_jax = -np.asarray(jax.vmap(jax.grad(logp))(xj))
    assert e_jax.dtype == np.float64
    np.testing.assert_allclose(e.detach().numpy(), e_jax, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(g.numpy(), g_jax, rtol=1e-10, atol=1e-10)


def test_start_points_are_one_numpy_draw_per_seed():
    a, b = pt.start_points("funnel", 16, 0), pt.start_points("funnel", 16, 0)
    assert a.shape == (16, pt.FUNNEL_DIM) and a.dtype == np.float64 and np.array_equal(a, b)
    assert not np.array_equal(a, pt.start_points("funnel", 16, 1))


ROW_FIELDS = {
    "target", "algorithm", "peer", "wall_s", "first_call_s", "compile_s", "cpu_s", "n_grad", "ess_min",
    "ess_median", "ess_min_per_grad", "ess_min_per_s", "acceptance", "step_size", "n_leapfrog",
}


def test_quick_run_writes_the_promised_fields_and_a_correct_gaussian_mean(tmp_path):
    out = tmp_path / "res"
    argv = ["--quick", "--peers", "ebmcompose", "--targets", "gaussian", "banana", "--out", str(out)]
    assert peers.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["peers.json", "peers.md"]
    data = json.loads((out / "peers.json").read_text())
    cfg = peers.QUICK
    rows = data["rows"]
    assert {(r["target"], r["algorithm"]) for r in rows} == {(t, a) for t in ("gaussian", "banana") for a in ("hmc", "mala")}
    for r in rows:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        assert r["peer"] == "ebmcompose" and r["wall_s"] > 0 and 0 < r["ess_min"] <= r["ess_median"]
        per_step = r["n_leapfrog"] if r["algorithm"] == "hmc" else 1
        assert r["n_grad"] == 1 + (cfg.warmup + cfg.steps) * per_step
        assert 0.6 <= r["acceptance"] <= 0.95, r
        assert math.isclose(r["ess_min_per_grad"], r["ess_min"] / (r["n_grad"] * cfg.chains))
        # the exact mean (0) within 5 Monte-Carlo standard errors in every coordinate: a wrong kernel fails this
        assert r["mean_err_z"] < 5.0, r
    assert data["meta"]["config"]["quick"] and data["meta"]["torch_threads"] == 1
    md = (out / "peers.md").read_text()
    assert "python -m benchmarks.peers --quick" in md and "| gaussian | HMC | ebmcompose |" in md


def test_missing_and_crashing_peers_are_skipped_not_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "blackjax", None)  # `import blackjax` now raises ImportError
    monkeypatch.setitem(sys.modules, "torchebm", None)

    real = peers.ebmcompose_runner

    def runner(name, algo, cfg, x0, compiled):  # the compiled peer crashes on its first call
        if not compiled:
            return real(name, algo, cfg, x0, compiled)

        def go():
            raise RuntimeError("boom")

        return go, None

    def loop_runner(name, algo, cfg, x0):  # and so does the hand-written loop (no compilation in this test)
        def go():
            raise RuntimeError("bang")

        return go, None

    monkeypatch.setattr(peers, "ebmcompose_runner", runner)
    monkeypatch.setattr(peers, "torch_loop_runner", loop_runner)
    out = tmp_path / "res"
    argv = ["--quick", "--targets", "banana", "--algorithms", "mala", "--steps", "20", "--warmup", "0", "--out", str(out)]
    assert peers.main(argv) == 0
    data = json.loads((out / "peers.json").read_text())
    assert [r["peer"] for r in data["rows"]] == ["ebmcompose"]
    reasons = {s["peer"]: s["reason"] for s in data["skipped"]}
    assert set(reasons) == {"ebmcompose-compiled", "blackjax", "torchebm", "torch-loop"}
    assert "not installed" in reasons["blackjax"] and "not installed" in reasons["torchebm"]
    assert reasons["ebmcompose-compiled"].startswith("failed: RuntimeError: boom")
    assert reasons["torch-loop"].startswith("failed: RuntimeError: bang")
    assert data["gradient_floor"] == []  # the compiler floor sits beside a torch-loop row, none here
    assert "## Skipped" in (out / "peers.md").read_text()



def test_quick_run_never_replaces_the_committed_results(capsys):
    assert peers.main(["--quick", "--out", str(peers.RESULTS)]) == 2
    assert "never replaces" in capsys.readouterr().err


def _gaussian(x):  # N(0, diag(1, 4))
    return 0.5 * (x[:, 0].square() + x[:, 1].square() / 4.0)


@pytest.mark.parametrize("algo, h, L", [("hmc", 0.5, 5), ("mala", 0.4, 1)])
def test_hand_written_loop_samples_its_target(algo, h, L):
    """The torch-loop peer's transitions, run eagerly (the same ``while_loop`` body): the exact mean
    and variances within Monte-Carlo error, so a wrong step or acceptance ratio fails."""
    from benchmarks import peer_torch_loop as tl
    from samplers import diagnostics

    g = torch.Generator().manual_seed(0)
    step, consts = (tl.hmc_step, (h, L)) if algo == "hmc" else (tl.mala_step, (h,))
    warmup, steps, B = 100, 600, 64
    x0 = torch.randn(B, 2, generator=g, dtype=torch.float64)
    noise = torch.randn(warmup + steps, B, 2, generator=g, dtype=torch.float64)
    u = torch.rand(warmup + steps, B, generator=g, dtype=torch.float64)
    trace, accepted = tl.run_transitions(_gaussian, step, x0, noise, u, x0.new_zeros(steps, B, 2), warmup, consts)
    acc = float(accepted.mean()) / steps
    assert 0.5 < acc < 1.0, acc
    mean_z = trace.mean((0, 1)) / diagnostics.mcse_mean(trace)
    assert mean_z.abs().max() < 4.0, mean_z
    var = trace.var((0, 1))
    ess = diagnostics.ess(trace)
    var_se = torch.tensor([1.0, 4.0], dtype=torch.float64) * math.sqrt(2.0) / ess.sqrt()
    assert ((var - torch.tensor([1.0, 4.0], dtype=torch.float64)).abs() / var_se).max() < 4.0, (var, var_se)


def test_hand_written_loop_rejects_a_non_finite_proposal():
    from benchmarks import peer_torch_loop as tl

    def wall(x):  # +inf energy beyond x0 = 1: every proposal there is rejected
        return torch.where(x[:, 0] > 1.0, torch.full_like(x[:, 0], math.inf), 0.5 * x.square().sum(-1))

    x = torch.tensor([[0.9, 0.0], [0.0, 0.0]], dtype=torch.float64)
    e, g = tl.value_and_grad(wall, x)
    xi = torch.tensor([[5.0, 0.0], [0.1, 0.0]], dtype=torch.float64)
    new, _, _, ok = tl.mala_step(wall, x, e, g, xi, torch.full((2,), 0.5, dtype=torch.float64), 0.1)
    assert ok.tolist() == [False, True]
    assert torch.equal(new[0], x[0]) and not torch.equal(new[1], x[1])


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["hmc", "mala"])
def test_hand_written_loop_compiled_equals_eager(algo):
    from benchmarks import peer_torch_loop as tl

    x0 = torch.from_numpy(pt.start_points("banana", 8))
    run = tl.compiled_run(pt.TORCH["banana"], algo, 0.5, 3)
    trace, acc, n_grad = run(x0, 5, 10, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    noise = torch.randn((15,) + tuple(x0.shape), generator=g, dtype=x0.dtype)
    u = torch.rand((15, 8), generator=g, dtype=x0.dtype)
    step, consts = (tl.hmc_step, (0.5, 3)) if algo == "hmc" else (tl.mala_step, (0.5,))
    eager, accepted = tl.run_transitions(pt.TORCH["banana"], step, x0, noise, u, x0.new_zeros(10, 8, 2), 5, consts)
    torch.testing.assert_close(trace, eager, rtol=1e-10, atol=1e-10)
    assert acc == pytest.approx(float(accepted.mean()) / 10)
    assert n_grad == 1 + 15 * (3 if algo == "hmc" else 1)


@pytest.mark.slow
def test_gradient_floor_loops_compute_the_gradient_steps_they_time():
    """Both sides of the compiler floor run ``x ← x − ε∇E(x)`` (a missing or wrong gradient would
    leave ``x`` off by about ε|∇E|, far above the tolerance)."""
    pytest.importorskip("jax")
    from benchmarks import peer_floor as pf

    x0 = pt.start_points("banana", 4)
    eager = torch.from_numpy(x0)
    for _ in range(3):
        eager = eager - pf.EPS * torch.func.grad(lambda z: pt.TORCH["banana"](z).sum())(eager)
    assert not torch.equal(eager, torch.from_numpy(x0))
    torch.testing.assert_close(pf.torch_gradient_loop("banana", x0, n=3)(), eager, rtol=0, atol=1e-14)
    np.testing.assert_allclose(np.asarray(pf.jax_gradient_loop("banana", x0, n=3)()), eager.numpy(), rtol=0, atol=1e-14)
    row = pf.gradient_floor("banana", x0, n=3, repeats=2)
    assert row["torch_us"] > 0 and row["jax_us"] > 0 and row["ratio"] > 0 and row["chains"] == 4
