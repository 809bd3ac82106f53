"""Property tests of the energy algebra on random quadratic/quartic leaves and random points."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ebmcompose as ec

DT = torch.float64
SETTINGS = settings(max_examples=30, deadline=None)

coord = st.floats(-2.5, 2.5, allow_nan=False)
weight = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)
pos_weight = st.floats(0.05, 5.0, allow_nan=False)


@st.composite
def leaves(draw, name):
    """A random 2-D leaf: anisotropic quadratic, optionally plus a quartic term."""
    mu = torch.tensor([draw(coord), draw(coord)], dtype=DT)
    prec = torch.tensor([draw(st.floats(0.2, 3.0)), draw(st.floats(0.2, 3.0))], dtype=DT)
    c4 = draw(st.sampled_from([0.0, draw(st.floats(0.01, 0.5))]))

    def fn(x):
        d = x - mu
        return 0.5 * (prec * d**2).sum(-1) + c4 * (d**4).sum(-1)

    return ec.EnergyFunction(fn, name=name, event_shape=(2,))


@st.composite
def xs(draw):
    n = draw(st.integers(1, 5))
    vals = draw(st.lists(coord, min_size=2 * n, max_size=2 * n))
    return torch.tensor(vals, dtype=DT).reshape(n, 2)


def assert_same(e1, e2, x, rtol=1e-10, atol=1e-9):
    torch.testing.assert_close(e1.energy(x), e2.energy(x), rtol=rtol, atol=atol)
    torch.testing.assert_close(e1.grad(x), e2.grad(x), rtol=rtol, atol=atol)


@SETTINGS
@given(leaves("a"), leaves("b"), leaves("c"), xs())
def test_sum_associative_and_commutative(a, b, c, x):
    assert_same((a + b) + c, a + (b + c), x)
    assert_same(a + b, b + a, x)
    assert_same(a & b, a + b, x)
    assert_same(a + b + c, c + a + b, x)


@SETTINGS
@given(leaves("a"), leaves("b"), weight, weight, xs())
def test_linearity(a, b, w1, w2, x):
    assert_same(w1 * (a + b), w1 * a + w1 * b, x)
    assert_same((w1 + w2) * a, w1 * a + w2 * a, x)
    assert_same(w1 * (w2 * a), (w1 * w2) * a, x)
    assert_same(a - b, a + (-1.0) * b, x)
    # against the leaves directly
    torch.testing.assert_close((w1 * a + w2 * b).energy(x), w1 * a.energy(x) + w2 * b.energy(x))
    torch.testing.assert_close((w1 * a + w2 * b).grad(x), w1 * a.grad(x) + w2 * b.grad(x))


@SETTINGS
@given(leaves("a"), leaves("b"), leaves("c"), xs())
def test_mixture_symmetric_and_associative(a, b, c, x):
    assert_same(a | b, b | a, x)
    nested_left = ec.Mixture([ec.Mixture([a, b]), c])  # built without flattening
    nested_right = ec.Mixture([a, ec.Mixture([b, c])])
    for e in ((a | b) | c, a | (b | c), nested_right):
        assert_same(e, nested_left, x)
    E = torch.stack([a.energy(x), b.energy(x), c.energy(x)])
    torch.testing.assert_close(((a | b) | c).energy(x), -torch.logsumexp(-E, 0))


@SETTINGS
@given(leaves("a"), leaves("b"), pos_weight, pos_weight, xs())
def test_weighted_mixture(a, b, w1, w2, x):
    m = ec.mixture([a, b], weights=[w1, w2])
    xg = x.clone().requires_grad_(True)
    manual = -torch.logsumexp(torch.stack([-a.energy(xg) + torch.log(torch.tensor(w1, dtype=DT)),
                                           -b.energy(xg) + torch.log(torch.tensor(w2, dtype=DT))]), 0)
    (g,) = torch.autograd.grad(manual.sum(), xg)
    torch.testing.assert_close(m.energy(x), manual.detach())
    torch.testing.assert_close(m.grad(x), g)
    assert_same(m, ec.mixture([b, a], weights=[w2, w1]), x)


@SETTINGS
@given(leaves("a"), leaves("b"), xs())
def test_self_cancellation_and_double_negation(a, b, x):
    d = a - a
    torch.testing.assert_close(d.energy(x), torch.zeros(x.shape[0], dtype=DT), rtol=0, atol=0)
    torch.testing.assert_close(d.grad(x), torch.zeros_like(x), rtol=0, atol=0)
    assert_same(-(-a), a, x)
    assert_same(-(-(a + b)), a + b, x)
    assert_same(-(a - b), b - a, x)


@SETTINGS
@given(leaves("a"), leaves("b"), leaves("c"), weight, weight, weight, xs())
def test_printed_formula_round_trips(a, b, c, w1, w2, w3, x):
    e = w1 * a + w2 * (b | c) - w3 * (a - c)
    again = eval(repr(e), {}, {"a": a, "b": b, "c": c})
    assert_same(again, e, x, rtol=1e-12, atol=1e-12)
