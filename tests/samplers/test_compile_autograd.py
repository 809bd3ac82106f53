"""Autograd energies (a user's function or ``nn.Module``) compile into one graph per transition:
the gradient is taken by ``torch.func`` inside ``torch.compile`` (``ebmcompose.autodiff``), with
the same random stream and the same chains as the eager kernel (float64)."""

import warnings

import pytest
import torch
from torch import nn

import ebmcompose as ec
from ebmcompose.autodiff import energy_and_grad
from samplers import HMC, MALA, ULA

Y = torch.tensor([28.0, 8, -3, 7, -1, 1, 18, 12], dtype=torch.float64)
SIGMA = torch.tensor([15.0, 10, 16, 11, 9, 11, 10, 18], dtype=torch.float64)


def eight_schools(x):
    """Non-centred Eight Schools: ``x = (mu, log tau, theta_tilde[8])``, priors N(0, 5²) on mu and log tau."""
    mu, log_tau, z = x[:, 0], x[:, 1], x[:, 2:]
    theta = mu[:, None] + log_tau.exp()[:, None] * z
    return (0.5 * ((theta - Y) / SIGMA) ** 2).sum(1) + 0.5 * z.square().sum(1) + 0.5 * (mu / 5) ** 2 + 0.5 * (log_tau / 5) ** 2


class Quartic(nn.Module):
    """An ``nn.Module`` energy with a parameter: ``Σ a x⁴/4 + x²/2``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def forward(self, x):
        return (self.a * x.pow(4) / 4 + x.square() / 2).sum(1)


def _no_fallback(kernel, energy, x0, seed=0, trace_every=1):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager warns
        return kernel.sample(energy, x0, generator=torch.Generator().manual_seed(seed), trace_every=trace_every)


@pytest.mark.parametrize(
    "kernel, energy",
    [
        (MALA(step_size=0.05, n_steps=12), ec.EnergyFunction(eight_schools)),
        (HMC(step_size=0.2, n_leapfrog=3, n_steps=8, refresh=0.7), ec.EnergyFunction(eight_schools)),
        (ULA(step_size=0.05, n_steps=10), ec.EnergyFunction(Quartic())),
        (MALA(step_size=0.3, n_steps=10), ec.EnergyFunction(Quartic())),
    ],
    ids=["mala-function", "hmc-function", "ula-module", "mala-module"],
)
def test_autograd_energy_compiles_to_the_eager_chains(kernel, energy):
    x0 = torch.randn(16, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    compiled = _no_fallback(kernel.compiled(), energy, x0)
    eager = kernel.sample(energy, x0, generator=torch.Generator().manual_seed(0), trace_every=1)
    torch.testing.assert_close(compiled.info.trace, eager.info.trace, rtol=1e-10, atol=1e-10)
    if kernel.needs_energy:
        assert 0 < float(eager.info.acceptance.mean()) < 1  # both accept and reject happen: the test can tell
        torch.testing.assert_close(compiled.info.acceptance, eager.info.acceptance, rtol=1e-10, atol=1e-10)


def test_traced_gradient_equals_autograd():
    """Under torch.compile the gradient comes from torch.func: the same numbers as autograd."""
    x = torch.randn(7, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    e0, g0 = energy_and_grad(eight_schools, x)
    e1, g1 = torch.compile(lambda z: energy_and_grad(eight_schools, z), fullgraph=True)(x)
    torch.testing.assert_close(e1, e0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g0, rtol=1e-12, atol=1e-12)
    h = 1e-6  # and both are the gradient: central differences on one coordinate
    d = torch.zeros_like(x)
    d[:, 1] = h
    fd = (eight_schools(x + d) - eight_schools(x - d)) / (2 * h)
    torch.testing.assert_close(g0[:, 1], fd, rtol=1e-6, atol=1e-6)


def test_no_path_from_x_is_none_eagerly():
    """A constant energy has no autograd path: ``None`` (callers decide: zero gradient or an error)."""
    x = torch.randn(4, 2, dtype=torch.float64)
    e, g = energy_and_grad(lambda z: torch.ones(z.shape[0], dtype=z.dtype), x)
    assert g is None and e.shape == (4,)


@pytest.mark.parametrize("kernel", [MALA(step_size=0.05, n_steps=23), HMC(step_size=0.2, n_leapfrog=3, n_steps=23, refresh=0.7),
                                    HMC(step_size=0.2, n_leapfrog=3, n_steps=23), ULA(step_size=0.05, n_steps=23)],
                         ids=["mala", "hmc-partial", "hmc", "ula"])
@pytest.mark.parametrize("trace_every", [0, 5])
def test_chunked_compiled_runs_are_the_eager_chains(kernel, trace_every):
    """Compiled kept steps run several transitions per graph call (``samplers.compile.scan``,
    chunks cut at trace steps): same chains, trace and summaries as eager, one step at a time."""
    energy = ec.EnergyFunction(eight_schools)
    x0 = torch.randn(16, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    chunked = _no_fallback(kernel.compiled(), energy, x0, trace_every=trace_every)
    eager = kernel.sample(energy, x0, generator=torch.Generator().manual_seed(0), trace_every=trace_every)
    close = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chunked.samples, eager.samples, **close)
    for key in ("acceptance", "acceptance_per_chain", "energy_error", "trace", "energy_trace"):
        assert (chunked.info.get(key) is None) == (eager.info.get(key) is None), key
        if eager.info.get(key) is not None:
            torch.testing.assert_close(chunked.info[key], eager.info[key], **close)
    assert chunked.info.nfe == eager.info.nfe and chunked.info.divergences == eager.info.divergences
    assert (chunked.info.trace is None) == (trace_every == 0)
    if kernel.needs_energy:
        assert 0 < float(eager.info.acceptance.mean()) < 1


def test_numpy_constant_rebuilt_each_call_falls_back_with_one_warning():
    """An energy that makes a tensor from a numpy array on every call trips an internal assertion of
    torch's compiler: the run falls back to eager (one warning) instead of crashing."""
    np = pytest.importorskip("numpy")
    scales = np.logspace(-1, 0, 5)
    energy = ec.EnergyFunction(lambda x: 0.5 * (x / torch.as_tensor(scales)).square().sum(-1))
    x0 = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        a = MALA(step_size=0.01, n_steps=3).compiled().sample(energy, x0, generator=torch.Generator().manual_seed(1))
    mine = [str(w.message) for w in seen if "torch.compile could not compile" in str(w.message)]
    b = MALA(step_size=0.01, n_steps=3).sample(energy, x0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.samples, b.samples)
    assert len(mine) <= 1  # compiles on some torch versions; never more than one warning


def test_the_recompile_limit_is_raised_only_during_a_compiled_call():
    import torch._dynamo.config as dynamo_config

    from samplers import compile as sc

    seen = []

    def transition(energy, x):
        return x + 1.0

    def spy(energy, x):
        seen.append(dynamo_config.recompile_limit)
        return x

    before = dynamo_config.recompile_limit
    energy = ec.EnergyFunction(lambda x: (x ** 2).sum(1))
    assert torch.equal(sc.call(transition, True, energy, torch.zeros(3)), torch.ones(3))
    assert dynamo_config.recompile_limit == before  # restored after the call
    sc._compiled({}, "spy", spy, "spy", energy, energy, torch.zeros(2))  # traced: reads the limit at trace time
    assert seen and seen[0] >= sc.RECOMPILE_LIMIT and dynamo_config.recompile_limit == before


def test_cpu_graphs_compile_with_the_cpp_wrapper_and_scalar_loop_tails(monkeypatch):
    """On the CPU every sampler graph is built with ``samplers.compile.inductor_options`` (C++ wrapper,
    no vectorised loop tails: a 10-D event runs as scalar loops, not masked vector loads; no tiling
    heuristic; division by a constant as a product), and the chains
    still equal the eager ones; other devices keep torch's defaults."""
    from samplers import compile as sc

    assert sc.inductor_options(torch.zeros(4, 10)) == {"cpp_wrapper": True, "cpp.enable_loop_tail_vec": False,
                                                   "cpp.enable_tiling_heuristics": False,
                                                   "post_grad_custom_post_pass": sc._DIVISION_PASS}
    assert sc.inductor_options(torch.zeros(4, 10, device="meta")) == {}
    seen = []
    real = torch.compile

    def spy(fn, **kw):
        seen.append(kw.get("options"))
        return real(fn, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    monkeypatch.setattr(sc, "_SCANS", {})  # a fresh graph, built through the spy
    energy = ec.EnergyFunction(eight_schools)
    x0 = torch.randn(16, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    kernel = MALA(step_size=0.05, n_steps=12, n_warmup=0)
    eager = kernel.sample(energy, x0, generator=torch.Generator().manual_seed(4), trace_every=1)
    compiled = _no_fallback(kernel.compiled(), energy, x0, seed=4)
    assert seen and all(o == sc.inductor_options(x0) for o in seen)
    torch.testing.assert_close(compiled.samples, eager.samples, rtol=1e-10, atol=1e-10)


def test_a_traced_compiled_run_in_long_chunks_equals_eager():
    """Every step traced: up to 2^22 numbers of chains run ``trace_chunk`` = 50 steps per compiled
    call (huge states: 10), and 120 steps in chunks of 50, 50 and 20 (the last one padded) give the
    eager chains and trace."""
    from samplers.run import CHUNK, TRACE_CHUNK, trace_chunk

    def chunk(*shape):
        return trace_chunk(torch.empty(*shape, device="meta"))

    assert chunk(4, 10) == chunk(128, 100) == CHUNK and chunk(1_000_000, 10) == TRACE_CHUNK
    assert TRACE_CHUNK < chunk(10_000, 10) < CHUNK
    energy = ec.EnergyFunction(eight_schools)
    x0 = torch.randn(4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    kernel = HMC(step_size=0.2, n_leapfrog=3, n_steps=120, n_warmup=0, jitter=0.0)
    eager = kernel.sample(energy, x0, generator=torch.Generator().manual_seed(6), trace_every=1)
    compiled = _no_fallback(kernel.compiled(), energy, x0, seed=6)
    assert compiled.info.trace.shape == eager.info.trace.shape == (120, 4, 10)
    torch.testing.assert_close(compiled.info.trace, eager.info.trace, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(compiled.info.mean_acceptance, eager.info.mean_acceptance, rtol=1e-9, atol=1e-9)


def test_traced_chunks_without_torch_scan_run_as_a_while_loop_with_the_same_chains(monkeypatch):
    """Traced chunks run as torch's ``scan``; a torch without it runs them as the untraced chunks'
    ``while_loop`` (slower, not eager: no warning), and both give the eager chains and trace."""
    import samplers.compile as sc

    energy = ec.EnergyFunction(eight_schools)
    x0 = torch.randn(4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    kernel = MALA(step_size=0.05, n_steps=30, n_warmup=0)
    eager = kernel.sample(energy, x0, generator=torch.Generator().manual_seed(6), trace_every=1)
    monkeypatch.setattr(sc, "_torch_scan", None)
    loops = []
    monkeypatch.setattr(sc, "_compiled", lambda cache, key, fn, *a, **k: loops.append(fn) or fn(*a[2:]))
    compiled = kernel.compiled().sample(energy, x0, generator=torch.Generator().manual_seed(6), trace_every=1)
    assert set(loops) == {sc._while_loop}
    torch.testing.assert_close(compiled.info.trace, eager.info.trace, rtol=1e-12, atol=1e-12)


def _cliff(x):
    """Finite for ``x_0 < 1``; past it ``log`` of a negative number: NaN energy and gradient."""
    return -torch.log1p(-x[:, 0]) + 0.5 * x.square().sum(1)


def _wall(x):
    """``x²/2`` for ``x_0 < 1``, ``+inf`` beyond."""
    return torch.where(x[:, 0] < 1.0, 0.5 * x.square().sum(1), torch.full_like(x[:, 0], float("inf")))


@pytest.mark.parametrize("kernel", [MALA(step_size=0.5, n_steps=6), HMC(step_size=0.3, n_leapfrog=4, n_steps=6)],
                         ids=["mala", "hmc"])
@pytest.mark.parametrize("fn", [_cliff, _wall], ids=["nan", "inf"])
def test_compiled_graphs_catch_non_finite_proposals_chain_by_chain(kernel, fn):
    """The compiled C++ keeps NaN and infinity: chains near a cliff or a wall diverge, are rejected
    and counted, step by step and chain by chain, exactly as eagerly."""
    energy = ec.EnergyFunction(fn)
    x0 = torch.cat([torch.full((24, 2), 0.9), torch.full((24, 2), -2.0)]).double()
    run = dict(trace_every=1, on_divergence="ignore")
    eager = kernel.sample(energy, x0, generator=torch.Generator().manual_seed(5), **run)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        compiled = kernel.compiled().sample(energy, x0, generator=torch.Generator().manual_seed(5), **run)
    assert not [w for w in seen if "could not compile" in str(w.message)]  # it ran compiled
    assert 0 < eager.info.divergences < 6 * 48  # the test can tell: some proposals diverge, not all
    assert compiled.info.divergences == eager.info.divergences
    assert torch.isfinite(compiled.samples).all() and bool((compiled.samples[:, 0] < 1.0).all())
    torch.testing.assert_close(compiled.info.trace, eager.info.trace, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel", [MALA(step_size=0.1), HMC(step_size=0.1, n_leapfrog=2), HMC(step_size=0.1, n_leapfrog=2, jitter=0.0),
                                    ULA(step_size=0.1)], ids=["mala", "hmc-jitter", "hmc", "ula"])
@pytest.mark.parametrize("shape, dtype", [((16, 2), torch.float64), ((3000, 2), torch.float64), ((16, 2), torch.float32)],
                         ids=["one-call", "per-step", "float32"])
def test_a_chunks_draws_are_the_draws_of_its_steps_in_order(kernel, shape, dtype):
    """A chunk's draws (one generator call for small float64 chains, step by step otherwise) are the
    numbers ``n`` calls of ``_draws`` make, row by row; padding rows are zero; the generator ends
    in the same state."""
    from samplers.base import ONE_CALL_DRAWS

    x = torch.zeros(shape, dtype=dtype)
    assert (x.numel() + shape[0] * 2 <= ONE_CALL_DRAWS) == (shape[0] == 16)  # the ids say which path runs
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    chunk = kernel._chunk_draws(x, g1, 5, 7)
    steps = [kernel._draws(x, g2) for _ in range(5)]
    assert len(chunk) == len(steps[0])
    for j, d in enumerate(chunk):
        assert d.shape == (7,) + steps[0][j].shape and d.is_contiguous()
        assert torch.equal(d[:5], torch.stack([s[j] for s in steps])) and not d[5:].any()
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_a_compiled_graph_leaves_subnormal_floats_alone():
    """Loading a compiled CPU graph must not set the process's flush-to-zero mode (a library built
    with ``-funsafe-math-optimizations`` links ``crtfastmath.o``, which does): after a compiled run,
    ``1e-300 * 1e-10`` is still the subnormal ``1e-310``, not 0."""
    import numpy as np

    kernel = MALA(step_size=0.05, n_steps=3, n_warmup=0)
    _no_fallback(kernel.compiled(), ec.EnergyFunction(eight_schools), torch.randn(4, 10, dtype=torch.float64))
    tiny = np.float64(1e-300) * np.float64(1e-10)
    assert tiny != 0.0 and float(torch.tensor(1e-300, dtype=torch.float64) * 1e-10) != 0.0


def test_division_by_a_constant_becomes_a_product_only_where_both_are_normal_numbers():
    """``samplers.compile.ConstantDivisionAsProduct`` turns ``a / c`` (``c`` a Python number, ``a``
    floating) into ``a * (1 / c)`` and leaves alone: integer ``a``, a tensor divisor, a rounding
    mode, and constants whose value or reciprocal is subnormal or overflows in ``a``'s dtype."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from samplers.compile import ConstantDivisionAsProduct

    aten = torch.ops.aten

    def f(x, y, n):
        return (x / 0.7, x / 4, x / y, n / 3, torch.div(x, 3.0, rounding_mode="floor"), x / 1e-320,
                x.float() / 1e300, x.float() / 1e-39, x.float() / 0.7)

    x = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    args = (x, x + 5.0, torch.arange(7))
    gm = make_fx(f)(*args)
    before = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    ConstantDivisionAsProduct()(gm.graph)
    gm.recompile()
    after = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    changed = [(b, a) for b, a in zip(before, after) if a != b]
    assert changed == [(aten.div.Tensor, aten.mul.Tensor)] * 3  # x / 0.7, x / 4 and float32 x / 0.7
    got, want = gm(*args), f(*args)
    assert torch.equal(got[0], x * (1 / 0.7)) and not torch.equal(got[0], want[0])  # 1-ulp changes exist
    torch.testing.assert_close(got[0], want[0], rtol=2.3e-16, atol=0.0)
    assert torch.equal(got[1], want[1])  # a power of two: exact
    assert all(torch.equal(g, w) for g, w in zip(got[2:8], want[2:8]))  # left alone: the same ops
    torch.testing.assert_close(got[8], want[8], rtol=1.2e-7, atol=0.0)  # float32: one ulp
