"""Tests of the Energy API, the algebra's exact identities, and input validation."""

import math

import pytest
import torch
from torch import nn

import ebmcompose as ec
from ebmcompose.energy import LeafGroup

DT = torch.float64


# ----------------------------------------------------------------------------------- helpers
def quad(name, mu=0.0, prec=1.0, event_shape=None):
    """0.5 * prec * |x - mu|^2 summed over all event dimensions (any rank)."""

    def fn(x):
        return 0.5 * prec * ((x - mu) ** 2).reshape(x.shape[0], -1).sum(-1)

    return ec.EnergyFunction(fn, name=name, event_shape=event_shape)


def quad_grad(x, mu=0.0, prec=1.0):
    return prec * (x - mu)


def quartic(name, mu=0.0, c=0.3):
    def fn(x):
        d = (x - mu).reshape(x.shape[0], -1)
        return c * (d**4).sum(-1) + 0.5 * (d**2).sum(-1)

    return ec.EnergyFunction(fn, name=name)


class Counting:
    """A function leaf that counts its calls."""

    def __init__(self, mu=0.0):
        self.calls = 0
        self.mu = mu

    def __call__(self, x):
        self.calls += 1
        return 0.5 * ((x - self.mu) ** 2).reshape(x.shape[0], -1).sum(-1)


def points(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT)


def autograd_grad(f, x):
    xg = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xg).sum(), xg)
    return g


# ----------------------------------------------------------------------------------- API basics
@pytest.mark.parametrize("shape", [(5, 2), (3, 2, 4, 4), (4,)])
def test_shapes_and_score_is_minus_grad(shape):
    e = quad("a", mu=0.3, prec=2.0)
    x = points(*shape)
    en, g, s = e.energy(x), e.grad(x), e.score(x)
    assert en.shape == (shape[0],)
    assert g.shape == x.shape and s.shape == x.shape
    torch.testing.assert_close(g, quad_grad(x, 0.3, 2.0))
    torch.testing.assert_close(s, -g)
    torch.testing.assert_close(en, 0.5 * 2.0 * ((x - 0.3) ** 2).reshape(shape[0], -1).sum(-1))
    assert en.dtype == x.dtype and g.dtype == x.dtype


def test_energy_and_grad_matches_separate_calls_and_evaluate():
    e = quartic("a", mu=0.5) + 0.5 * quad("b", mu=-1.0) - 0.25 * quad("c")
    x = points(7, 2)
    en, g = e.energy_and_grad(x)
    torch.testing.assert_close(en, e.energy(x))
    torch.testing.assert_close(g, e.grad(x))
    ev = e.evaluate(x, energy=True, grad=False)
    assert ev.grad is None
    torch.testing.assert_close(ev.energy, en)
    ev = e.evaluate(x, energy=False, grad=True)
    assert ev.energy is None
    torch.testing.assert_close(ev.grad, g)
    ev = e.evaluate(x, validate=False)
    torch.testing.assert_close(ev.energy, en)
    torch.testing.assert_close(ev.grad, g)
    assert e(x).shape == (7,)  # forward == energy
    torch.testing.assert_close(e(x), en)


def test_evaluate_needs_something():
    with pytest.raises(ValueError, match="energy=True or grad=True"):
        quad("a").evaluate(points(2, 2), energy=False, grad=False)


def test_grads_are_detached_by_default():
    lin = nn.Linear(2, 1).double()
    e = ec.EnergyFunction(lambda x: lin(x).squeeze(-1) + (x**2).sum(-1), name="lin")
    x = points(3, 2)
    assert not e.grad(x).requires_grad
    en, g = e.energy_and_grad(x)
    assert not en.requires_grad and not g.requires_grad


def test_constant_energy_has_zero_grad():
    # A flat (uniform) energy does not depend on x; its gradient is zero, not an autograd error.
    flat = ec.EnergyFunction(lambda x: x.new_zeros(x.shape[0]), name="flat")
    x = points(4, 2)
    torch.testing.assert_close(flat.grad(x), torch.zeros_like(x))
    a = quad("a")
    torch.testing.assert_close((a + flat).grad(x), a.grad(x))
    torch.testing.assert_close((a | flat).energy(x), -torch.logaddexp(-a.energy(x), torch.zeros(4, dtype=DT)))


# ----------------------------------------------------------------------------------- NFE / leaves
def test_conjunction_evaluates_shared_base_once():
    cu, c1, c2, c3 = Counting(), Counting(1.0), Counting(-1.0), Counting(2.0)
    u = ec.EnergyFunction(cu, name="u")
    cs = [ec.EnergyFunction(c, name=f"c{i}") for i, c in enumerate([c1, c2, c3], 1)]
    e = ec.conjunction(u, cs, 2.0)
    x = points(5, 2)
    ev = e.evaluate(x)
    assert cu.calls == 1
    assert [c.calls for c in (c1, c2, c3)] == [1, 1, 1]
    assert ev.nfe == 4 == len(list(e.leaves()))
    e.energy(x)
    assert cu.calls == 2
    e.grad(x)
    assert cu.calls == 3
    e.energy_and_grad(x)
    assert cu.calls == 4
    assert e.evaluate(x, energy=False).nfe == 4
    assert [c.calls for c in (c1, c2, c3)] == [5, 5, 5]


def test_negation_and_mixture_evaluate_each_leaf_once():
    cu, cc, cn = Counting(), Counting(1.0), Counting(-1.0)
    u, c, n = (ec.EnergyFunction(f, name=s) for f, s in [(cu, "u"), (cc, "c"), (cn, "n")])
    e = ec.negation(u, [c], [n], 1.5, 0.5)
    assert e.evaluate(points(3, 2)).nfe == 3
    assert (cu.calls, cc.calls, cn.calls) == (1, 1, 1)
    # the same leaf inside a mixture (needs energy) and in a sum (needs grad only)
    m = (u | c) + 2.0 * u - n
    ev = m.evaluate(points(3, 2), energy=False, grad=True)
    assert ev.nfe == 3
    assert (cu.calls, cc.calls, cn.calls) == (2, 2, 2)


def test_leaves_are_distinct():
    a, b = quad("a"), quad("b")
    e = a + 2 * a - b + (a | b)
    leaves = list(e.leaves())
    assert len(leaves) == 2 and leaves[0] is a and leaves[1] is b
    assert list(a.leaves()) == [a]


def test_leaf_group_is_evaluated_in_one_call():
    calls = []

    class Group(LeafGroup):
        def evaluate_leaves(self, leaves, needs, x, t, create_graph):
            calls.append(len(leaves))
            outs = [l._energy_and_grad(x, t, create_graph) for l in leaves]
            return outs, 1

    group = Group()

    class Grouped(ec.EnergyFunction):
        def leaf_group(self):
            return group

    a = Grouped(lambda x: 0.5 * (x**2).sum(-1), name="a")
    b = Grouped(lambda x: 0.5 * ((x - 1) ** 2).sum(-1), name="b")
    c = quad("c")
    x = points(4, 2)
    ev = (a + b - c).evaluate(x)
    assert calls == [2]
    assert ev.nfe == 2  # one batched forward + one plain leaf
    torch.testing.assert_close(ev.grad, x + (x - 1) - x)


def test_has_energy():
    a = quad("a")
    s = ec.ScoreFunction(lambda x: -x, name="s")
    assert a.has_energy and not s.has_energy
    assert (a + a).has_energy and (a | a).has_energy
    assert not (a + s).has_energy and not (2 * s).has_energy and not (-s).has_energy


# ----------------------------------------------------------------------------------- printing
def test_formula_printing_is_readable():
    a, b, c = quad("a"), quad("b"), quad("c")
    assert repr(a) == "a"
    assert repr(a + b) == "a + b"
    assert repr(a & b) == "a + b"
    assert repr(a + 0.5 * b - c) == "a + 0.5*b - c"
    assert repr(-a) == "-a"
    assert repr(-(-a)) == "a"
    assert repr(a - (b - c)) == "a - (b - c)"
    assert repr(2 * (a | b) + c) == "2*(a | b) + c"
    assert repr(ec.conjunction(a, [b, c], 2.0)) == "a + 2*(b - a) + 2*(c - a)"
    assert repr(ec.mixture([a, b], weights=[0.25, 0.75])) == "0.25:a | 0.75:b"
    assert repr(a / 4) == "0.25*a"


@pytest.mark.parametrize(
    "build",
    [
        lambda a, b, c: a + 0.5 * b - c,
        lambda a, b, c: -(a + b),
        lambda a, b, c: a - (b - c),
        lambda a, b, c: a - 0.5 * b,
        lambda a, b, c: -a + b,
        lambda a, b, c: 2 * (a | b) + c,
        lambda a, b, c: (a + b) | c,
        lambda a, b, c: a | -b,
        lambda a, b, c: -(a | b) + 3 * c,
        lambda a, b, c: (a | b) | (0.5 * c),
        lambda a, b, c: (1 / 3) * a - 0.123456789 * b,
        lambda a, b, c: ec.conjunction(a, [b, c], 2.5),
        lambda a, b, c: ec.negation(a, [b], c, 1.5, 0.7),
        lambda a, b, c: ec.negation(a, None, [b, c], 2.0, [0.5, 1 / 7]),
        lambda a, b, c: 2 * (a - 3 * (b + c)),
    ],
)
def test_formula_is_faithful(build):
    """The printed formula, evaluated as Python with the same leaf names, is the same energy."""
    ns = {"a": quartic("a", mu=0.5), "b": quad("b", mu=-1.0, prec=2.0), "c": quartic("c", mu=1.5, c=0.1)}
    e = build(ns["a"], ns["b"], ns["c"])
    again = eval(repr(e), {}, dict(ns))
    x = points(6, 2)
    torch.testing.assert_close(again.energy(x), e.energy(x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(again.grad(x), e.grad(x), rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------------- immutability
def test_operators_return_new_nodes_and_leave_operands_unchanged():
    a, b, c = quad("a"), quad("b", mu=1.0), quad("c", mu=-1.0)
    x = points(4, 2)
    s = a + b
    assert s is not a and s is not b
    before = (repr(s), s.weights, list(s.terms))
    e_before = s.energy(x)
    for derived in (s + c, s - c, 2 * s, -s, s / 2, s | c, s & c, ec.conjunction(s, [c]), s + s):
        assert derived is not s
        assert (repr(s), s.weights, list(s.terms)) == before
        torch.testing.assert_close(s.energy(x), e_before)
    assert repr(a) == "a" and list(a.leaves()) == [a]
    m = a | b
    mc = m | c
    assert len(m.components) == 2 and len(mc.components) == 3
    assert m.log_weights == (0.0, 0.0)
    with pytest.raises(Exception):
        s.weights[0] = 5.0  # a tuple


# ----------------------------------------------------------------------------------- nn.Module
class MLPEnergy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1) + 0.5 * (x**2).sum(-1)


def test_module_energy_parameters_dtype_and_param_grads():
    mod = MLPEnergy()
    e = ec.EnergyFunction(mod)
    assert e.name == "MLPEnergy" and not e.time_dependent
    ids = {id(p) for p in mod.parameters()}
    assert {id(p) for p in e.parameters()} == ids
    assert {id(p) for p in (e + quad("q")).parameters()} == ids  # visible through the algebra
    e = e.to(DT)
    assert all(p.dtype == DT for p in mod.parameters())
    x = points(5, 2)
    en = e.energy(x)
    assert en.dtype == DT and en.requires_grad
    en.sum().backward()
    got = [p.grad.clone() for p in mod.parameters()]
    want = torch.autograd.grad(mod(x).sum(), list(mod.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_create_graph_gives_second_order_derivatives():
    mod = MLPEnergy().to(DT)
    e = ec.EnergyFunction(mod)
    x = points(6, 2)
    w = mod.net[0].weight

    def loss(create_graph):
        return (e.grad(x, create_graph=create_graph) ** 2).sum()

    l = loss(True)
    assert l.requires_grad
    (dw,) = torch.autograd.grad(l, w)
    # central finite differences of the score-matching-like loss in two weight entries
    h = 1e-6
    for idx in [(0, 0), (3, 1)]:
        with torch.no_grad():
            w[idx] += h
            lp = loss(False)
            w[idx] -= 2 * h
            lm = loss(False)
            w[idx] += h
        fd = (lp - lm) / (2 * h)
        assert abs(float(fd) - float(dw[idx])) < 1e-6 * max(1.0, abs(float(fd)))
    # energy_and_grad / score also keep the graph
    en, g = e.energy_and_grad(x, create_graph=True)
    assert en.requires_grad and g.requires_grad
    assert e.score(x, create_graph=True).requires_grad


# ----------------------------------------------------------------------------------- signatures
def test_signature_detection():
    x = points(3, 2)
    seen = {}

    def static(x):
        return (x**2).sum(-1)

    def timed(x, t):
        seen["t"] = t
        return (x**2).sum(-1) * (1 + t)

    def opt_t(x, t=None):
        return (x**2).sum(-1) * (1 if t is None else 1 + t)

    def with_option(x, radius=2.0):
        return (x.norm(dim=-1) - radius) ** 2

    s = ec.EnergyFunction(static)
    assert not s.time_dependent and s.name == "static"
    torch.testing.assert_close(s.energy(x, t=0.3), s.energy(x))  # t ignored

    td = ec.EnergyFunction(timed)
    assert td.time_dependent
    torch.testing.assert_close(td.energy(x, 0.5), 1.5 * (x**2).sum(-1))
    assert seen["t"].shape == (3,) and seen["t"].dtype == x.dtype
    tt = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    torch.testing.assert_close(td.energy(x, tt), (1 + tt) * (x**2).sum(-1))
    torch.testing.assert_close(td.grad(x, tt), 2 * (1 + tt)[:, None] * x)

    o = ec.EnergyFunction(opt_t)  # an optional t: read when given, not required (issue 14)
    assert not o.time_dependent and o.reads_t and not o.is_static
    torch.testing.assert_close(o.energy(x), (x**2).sum(-1))
    torch.testing.assert_close(o.energy(x, 0.5), 1.5 * (x**2).sum(-1))
    r = ec.EnergyFunction(with_option)  # a defaulted option is not t
    assert not r.time_dependent
    torch.testing.assert_close(r.energy(x), (x.norm(dim=-1) - 2.0) ** 2)
    assert not ec.EnergyFunction(lambda x: (x**2).sum(-1)).time_dependent
    assert ec.EnergyFunction(lambda x, t: (x**2).sum(-1)).time_dependent
    assert not ec.EnergyFunction(timed, time_dependent=False).time_dependent

    class Call:
        def __call__(self, x):
            return (x**2).sum(-1)

    assert not ec.EnergyFunction(Call()).time_dependent

    class TMod(nn.Module):
        def forward(self, x, t):
            return (x**2).sum(-1) * t

    assert ec.EnergyFunction(TMod()).time_dependent
    assert not ec.EnergyFunction(MLPEnergy()).time_dependent

    sf = ec.ScoreFunction(lambda x: -x)
    st = ec.ScoreFunction(lambda x, t: -x * (1 + t[:, None]))
    assert not sf.time_dependent and st.time_dependent
    torch.testing.assert_close(st.grad(x, 1.0), 2 * x)
    torch.testing.assert_close(sf.score(x), -x)


def test_as_energy():
    a = quad("a")
    assert ec.as_energy(a) is a
    w = ec.as_energy(lambda x: (x**2).sum(-1), name="w")
    assert isinstance(w, ec.EnergyFunction) and repr(w) == "w"
    with pytest.raises(TypeError, match="callable"):
        ec.as_energy(3.0)
    with pytest.raises(TypeError, match="callable"):
        ec.EnergyFunction(3.0)
    with pytest.raises(TypeError, match="callable"):
        ec.ScoreFunction("not a function")


# ----------------------------------------------------------------------------------- exact identities
def test_gradient_of_composition_is_composition_of_gradients():
    a, b, c = quartic("a", mu=0.5), quad("b", mu=-1.0, prec=3.0), quartic("c", mu=-0.2, c=0.05)
    x = points(8, 2)
    e = 2.0 * a - 0.5 * b + c - (-(0.25 * a))
    manual = lambda z: 2.25 * a.energy(z) - 0.5 * b.energy(z) + c.energy(z)
    torch.testing.assert_close(e.energy(x), manual(x))
    torch.testing.assert_close(e.grad(x), autograd_grad(manual, x))
    torch.testing.assert_close(e.grad(x), 2.25 * a.grad(x) - 0.5 * b.grad(x) + c.grad(x))


def test_mixture_energy_and_posterior_weighted_grad():
    a, b, c = quad("a", mu=1.0), quartic("b", mu=-1.0), quad("c", mu=0.0, prec=4.0)
    x = points(10, 2)
    m = a | b | c
    E = torch.stack([a.energy(x), b.energy(x), c.energy(x)])
    G = torch.stack([a.grad(x), b.grad(x), c.grad(x)])
    torch.testing.assert_close(m.energy(x), -torch.logsumexp(-E, 0))
    post = torch.softmax(-E, 0)
    torch.testing.assert_close(m.grad(x), (post[..., None] * G).sum(0))
    manual = lambda z: -torch.logsumexp(torch.stack([-a.energy(z), -b.energy(z), -c.energy(z)]), 0)
    torch.testing.assert_close(m.grad(x), autograd_grad(manual, x))


def test_weighted_mixture_matches_manual():
    a, b = quad("a", mu=1.0), quartic("b", mu=-1.0)
    w = [0.2, 1.3]
    m = ec.mixture([a, b], weights=w)
    x = points(9, 2)
    manual = lambda z: -torch.log(w[0] * torch.exp(-a.energy(z)) + w[1] * torch.exp(-b.energy(z)))
    torch.testing.assert_close(m.energy(x), manual(x))
    torch.testing.assert_close(m.grad(x), autograd_grad(manual, x))
    # equal weights of any size are a constant shift: same gradient as a | b
    m3 = ec.mixture([a, b], weights=[3.0, 3.0])
    torch.testing.assert_close(m3.energy(x), (a | b).energy(x) - math.log(3.0))
    torch.testing.assert_close(m3.grad(x), (a | b).grad(x))
    torch.testing.assert_close(ec.mixture([a, b]).energy(x), (a | b).energy(x))


def _time_leaf(name, mu, scale):
    """A time-dependent quartic leaf; energies change with t so that t-passing is checked."""

    def fn(x, t):
        d = x - mu * (1 - t)[:, None]
        return scale * (1 + t) * (0.1 * (d**4).sum(-1) + 0.5 * (d**2).sum(-1))

    return ec.EnergyFunction(fn, name=name)


def test_conjunction_matches_paper_formula_on_eps():
    sigma = 0.7
    u = _time_leaf("u", torch.tensor([0.0, 0.0], dtype=DT), 1.0)
    cs = [_time_leaf(f"c{i}", torch.tensor(m, dtype=DT), s) for i, (m, s) in enumerate([([1.0, 0.0], 1.2), ([0.0, -2.0], 0.8)])]
    x, t = points(6, 2), torch.linspace(0.1, 0.9, 6, dtype=DT)
    eps_u = sigma * u.grad(x, t)
    eps_c = [sigma * c.grad(x, t) for c in cs]
    for alpha in [1.0, 2.5, [3.0, 0.5]]:
        al = alpha if isinstance(alpha, list) else [alpha] * 2
        want = eps_u + sum(a_i * (e_i - eps_u) for a_i, e_i in zip(al, eps_c))
        got = sigma * ec.conjunction(u, cs, alpha).grad(x, t)
        torch.testing.assert_close(got, want)
    # single concept given bare, and the energy obeys the same linear formula
    e = ec.conjunction(u, cs[0], 2.0)
    torch.testing.assert_close(e.energy(x, t), u.energy(x, t) + 2.0 * (cs[0].energy(x, t) - u.energy(x, t)))


def test_negation_matches_paper_formula_on_eps():
    sigma = 0.4
    u = _time_leaf("u", torch.tensor([0.0, 0.0], dtype=DT), 1.0)
    c = _time_leaf("c", torch.tensor([1.0, 1.0], dtype=DT), 1.1)
    n1 = _time_leaf("n1", torch.tensor([-1.0, 0.5], dtype=DT), 0.9)
    n2 = _time_leaf("n2", torch.tensor([2.0, -0.5], dtype=DT), 1.3)
    x, t = points(5, 2), torch.full((5,), 0.35, dtype=DT)
    eu, ec_, e1, e2 = (sigma * m.grad(x, t) for m in (u, c, n1, n2))
    alpha, beta = 1.7, 0.6
    want = eu + alpha * ((ec_ - eu) - beta * (e1 - eu))
    torch.testing.assert_close(sigma * ec.negation(u, [c], n1, alpha, beta).grad(x, t), want)
    want = eu + alpha * ((ec_ - eu) - 0.3 * (e1 - eu) - 0.9 * (e2 - eu))
    torch.testing.assert_close(sigma * ec.negation(u, c, [n1, n2], alpha, [0.3, 0.9]).grad(x, t), want)
    want = eu + alpha * (-beta * (e1 - eu))  # pure negation
    torch.testing.assert_close(sigma * ec.negation(u, None, n1, alpha, beta).grad(x, t), want)
    torch.testing.assert_close(sigma * ec.negation(u, [], n1, alpha, beta).grad(x, t), want)


def test_conjunction_of_score_only_models():
    """The diffusion use case: ε-style score-only leaves compose for gradients."""
    u = ec.ScoreFunction(lambda x, t: -x, name="u")
    c = ec.ScoreFunction(lambda x, t: -(x - 1.0), name="c")
    e = ec.conjunction(u, [c], 3.0)
    x = points(4, 2)
    torch.testing.assert_close(e.grad(x, 0.5), x + 3.0 * ((x - 1.0) - x))
    assert not e.has_energy
    with pytest.raises(ec.ScoreOnlyError, match="u, c provides scores only"):
        e.energy(x, 0.5)


@pytest.mark.parametrize(
    "build",
    [
        lambda a, b, c: a + b,
        lambda a, b, c: 2.0 * a - 0.5 * b,
        lambda a, b, c: -a,
        lambda a, b, c: a | b | c,
        lambda a, b, c: ec.mixture([a, b], [0.3, 0.7]),
        lambda a, b, c: ec.conjunction(a, [b, c], 2.0),
        lambda a, b, c: ec.negation(a, [b], [c], 1.5, 0.5),
        lambda a, b, c: (a + b) | (2 * c),
    ],
)
def test_all_operators_on_image_shaped_x(build):
    a, b, c = quad("a", mu=0.1), quartic("b", mu=-0.2), quad("c", mu=0.5, prec=2.0)
    e = build(a, b, c)
    x = points(3, 2, 4, 5)
    en, g = e.energy_and_grad(x)
    assert en.shape == (3,) and g.shape == x.shape

    # the same composition of the leaves flattened to vectors must agree exactly
    def flat(leaf):
        return ec.EnergyFunction(lambda z: leaf.fn(z.reshape(-1, 2, 4, 5)), name=leaf.name)

    ef = build(flat(a), flat(b), flat(c))
    xf = x.reshape(3, -1)
    torch.testing.assert_close(en, ef.energy(xf))
    torch.testing.assert_close(g, ef.grad(xf).reshape(x.shape))
    torch.testing.assert_close(g, autograd_grad(lambda z: ef.energy(z.reshape(3, -1)), x))


# ----------------------------------------------------------------------------------- bad inputs
def test_wrong_event_shape():
    a = quad("pts", event_shape=(2,))
    with pytest.raises(ValueError, match=r"pts expects points of shape \(B, 2\), got x of shape \(4, 3\)"):
        a.energy(points(4, 3))
    with pytest.raises(ValueError, match=r"expects points of shape \(B, 2\)"):
        (quad("b") + 2 * a).grad(points(4, 3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_x(bad):
    x = points(5, 2)
    x[3, 1] = bad
    e = quad("a") + quad("b")
    with pytest.raises(ValueError, match=r"NaN or inf in 1 of 5 samples \(first at index 3\)"):
        e.energy(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        e.grad(x)


def test_x_type_dtype_rank():
    a = quad("a")
    with pytest.raises(TypeError, match=r"torch\.Tensor.*torch\.as_tensor"):
        a.energy([[0.0, 1.0]])
    with pytest.raises(TypeError, match=r"floating-point.*torch\.int64.*x\.float\(\)"):
        a.grad(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="batch dimension"):
        a.energy(torch.tensor(1.0))


def test_device_mismatch_is_a_clear_value_error():
    class OnMeta(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mu", torch.zeros(2, device="meta"))

        def forward(self, x):
            return ((x - self.mu) ** 2).sum(-1)

    e = ec.EnergyFunction(OnMeta(), name="metanet")
    x = torch.zeros(3, 2)
    for call in (e.energy, e.grad, e.score, lambda z: (quad("q") + e).evaluate(z)):
        with pytest.raises(ValueError, match=r"x is on cpu but metanet lives on meta.*\.to\("):
            call(x)


def test_t_on_other_device():
    e = ec.EnergyFunction(lambda x, t: (x**2).sum(-1) * t, name="td")
    with pytest.raises(ValueError, match=r"t is on meta but x is on cpu"):
        e.energy(torch.zeros(3, 2), torch.zeros(3, device="meta"))


def test_score_only_energy_raises_naming_the_fix():
    s = ec.ScoreFunction(lambda x: -x, name="scorenet")
    x = points(3, 2)
    for call in (s.energy, lambda z: s.evaluate(z), s.energy_and_grad, lambda z: (quad("a") + s).energy(z)):
        with pytest.raises(ec.ScoreOnlyError, match=r"scorenet provides scores only.*ULA.*energy-parameterised"):
            call(x)
    assert issubclass(ec.ScoreOnlyError, TypeError)
    torch.testing.assert_close(s.grad(x), x)  # gradients remain available


def test_mixture_with_score_only_side():
    a, s = quad("a"), ec.ScoreFunction(lambda x: -x, name="s")
    for build in (lambda: a | s, lambda: s | a, lambda: ec.mixture([a, s]), lambda: a | (a + s)):
        with pytest.raises(ec.ScoreOnlyError, match=r"mixture.*provides scores only.*energy-parameterised"):
            build()


def test_time_dependent_energy_without_t():
    e = quad("a") + ec.EnergyFunction(lambda x, t: (x**2).sum(-1) * t, name="noisy")
    with pytest.raises(ValueError, match=r"depends on diffusion time \(noisy\); pass t in \[0, 1\]"):
        e.energy(points(2, 2))
    with pytest.raises(ValueError, match="depends on diffusion time"):
        e.grad(points(2, 2))


@pytest.mark.parametrize("t", [-0.1, 1.5, float("nan"), float("inf"), torch.tensor([0.5, 1.01, 0.2])])
def test_t_out_of_range(t):
    e = ec.EnergyFunction(lambda x, t: (x**2).sum(-1) * t, name="td")
    with pytest.raises(ValueError, match=r"t must be finite and in \[0, 1\]"):
        e.energy(points(3, 2), t)


def test_t_wrong_batch_size():
    e = ec.EnergyFunction(lambda x, t: (x**2).sum(-1) * t, name="td")
    with pytest.raises(ValueError, match=r"t has 2 entries but x has batch size 3"):
        e.grad(points(3, 2), torch.tensor([0.1, 0.2]))
    # scalar tensors and (1,) broadcast
    x = points(3, 2)
    torch.testing.assert_close(e.energy(x, torch.tensor(0.5)), e.energy(x, torch.tensor([0.5])))


def test_weights_must_be_numbers():
    a, b = quad("a"), quad("b")
    for bad in (lambda: a * "x", lambda: "x" * a, lambda: a * [1.0], lambda: a * None, lambda: a / "2"):
        with pytest.raises(TypeError, match="scaled by a number only"):
            bad()
    with pytest.raises(TypeError, match=r"scalar only.*shape \(2,\)"):
        a * torch.tensor([1.0, 2.0])
    with pytest.raises(TypeError, match=r"scalar only"):
        torch.tensor([1.0, 2.0]) * a
    with pytest.raises(ValueError, match="finite"):
        float("nan") * a
    with pytest.raises(ZeroDivisionError, match="zero"):
        a / 0
    with pytest.raises(TypeError, match="number only"):
        ec.conjunction(a, [b], weight="strong")
    with pytest.raises(ValueError, match="one per concept"):
        ec.conjunction(a, [b, b], weight=[1.0])
    with pytest.raises(TypeError, match="number only"):
        ec.negation(a, [b], b, 1.0, neg_weight="x")
    with pytest.raises(TypeError, match="mixture weights.*number only"):
        ec.mixture([a, b], weights=["x", 1.0])
    with pytest.raises(TypeError, match="mixture weights must be a sequence"):
        ec.mixture([a, b], weights=0.5)
    with pytest.raises(ValueError, match="positive"):
        ec.mixture([a, b], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="2 weights for 1"):
        ec.mixture([a], weights=[1.0, 1.0])
    # numbers of other kinds are fine
    x = points(2, 2)
    torch.testing.assert_close((torch.tensor(0.5) * a).energy(x), 0.5 * a.energy(x))
    torch.testing.assert_close((a * 2).energy(x), 2 * a.energy(x))


def test_operands_must_be_energies():
    a = quad("a")
    with pytest.raises(TypeError):
        a + 1.0
    with pytest.raises(TypeError):
        a | "b"
    with pytest.raises(TypeError, match="concepts must be Energy"):
        ec.conjunction(a, [a, "b"])
    with pytest.raises(ValueError, match="at least one concept"):
        ec.conjunction(a, [])
    with pytest.raises(TypeError, match="must be Energy"):
        ec.negation(a, ["b"], a)
    assert sum([a, a]).energy(points(2, 2)).shape == (2,)  # sum() starts at 0


def test_energy_times_energy_explains_product():
    a, b = quad("a"), quad("b")
    with pytest.raises(TypeError, match=r"a \+ b"):
        a * b
    with pytest.raises(TypeError, match=r"a - b"):
        a / b


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: (x**2).sum(-1, keepdim=True),  # (B, 1)
        lambda x: (x**2).sum(),  # scalar
        lambda x: x**2,  # (B, D)
    ],
)
def test_fn_returning_wrong_shape(fn):
    e = ec.EnergyFunction(fn, name="bad")
    x = points(4, 2)
    for call in (e.energy, e.grad, e.energy_and_grad, lambda z: (quad("a") + e).energy(z)):
        with pytest.raises(ValueError, match=r"bad returned energies of shape .*expected \(4,\)"):
            call(x)


def test_score_fn_returning_wrong_shape():
    s = ec.ScoreFunction(lambda x: x.sum(-1), name="sbad")
    with pytest.raises(ValueError, match=r"sbad returned a gradient/score of shape \(4,\); expected the shape of x, \(4, 2\)"):
        s.grad(points(4, 2))


# ----------------------------------------------------------------------------------- one path
def test_every_public_call_goes_through_evaluate(monkeypatch):
    calls = []
    real = ec.Energy.evaluate

    def recording(self, x, t=None, **kw):
        calls.append(kw)
        return real(self, x, t, **kw)

    monkeypatch.setattr(ec.Energy, "evaluate", recording)
    e = quad("a") + quad("b", mu=1.0)
    x = points(4, 2)
    e.energy(x), e.grad(x), e.score(x), e.energy_and_grad(x), e(x)
    assert [(c["energy"], c["grad"]) for c in calls] == [
        (True, False), (False, True), (False, True), (True, True), (True, False)
    ]


def test_energy_keeps_the_graph_only_under_grad_mode():
    mod = MLPEnergy().to(DT)
    e = ec.EnergyFunction(mod) + quad("q")
    x = points(3, 2)
    assert e.energy(x).requires_grad
    with torch.no_grad():
        assert not e.energy(x).requires_grad
    assert not e.evaluate(x, grad=False).energy.requires_grad  # detached unless create_graph
    assert e.evaluate(x, grad=False, create_graph=True).energy.requires_grad
