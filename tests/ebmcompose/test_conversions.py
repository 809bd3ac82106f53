"""Expressions convert by copy (.to / .double / ...); leaves convert in place like nn.Module."""

import pytest
import torch
from torch import nn

import ebmcompose as ec

SCHED = ec.VPSchedule.cosine()


class Quadratic(nn.Module):
    """E(x) = 0.5 * s * |x - mu|^2 with a parameter s and a buffer mu (float32)."""

    def __init__(self, s, mu):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s)))
        self.register_buffer("mu", torch.tensor(mu, dtype=torch.float32))

    def forward(self, x):
        return 0.5 * self.s * ((x - self.mu) ** 2).sum(-1)


class Denoiser(nn.Module):
    """A conditional denoiser f(x, t, c) with one parameter; counts its forwards."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.a = nn.Parameter(torch.tensor(0.7))

    def forward(self, x, t, cond):
        self.calls += 1
        shift = cond.to(x.dtype)[:, None]
        return self.a * (x - shift) * t.to(x.dtype)[:, None] + shift


def _snapshot(module):
    return {k: (v, v.dtype, v.device, v.detach().clone()) for k, v in module.state_dict(keep_vars=True).items()}


def _assert_untouched(module, snap):
    now = module.state_dict(keep_vars=True)
    assert now.keys() == snap.keys()
    for k, (obj, dtype, device, value) in snap.items():
        assert now[k] is obj and now[k].dtype == dtype and now[k].device == device
        assert torch.equal(now[k].detach(), value)


def _expression():
    a = ec.EnergyFunction(Quadratic(1.5, [0.5, -1.0]), name="a")
    b = ec.EnergyFunction(Quadratic(0.5, [-2.0, 1.0]), name="b")
    c = ec.EnergyFunction(Quadratic(2.0, [0.0, 0.25]), name="c")
    return a, b, c, ec.conjunction(a, [b, c], 1.5) | (0.5 * b)


def _manual_energy(a, b, c, x):
    """The energy of _expression() written out, in float64."""
    ea, eb, ec_ = (0.5 * m.fn.s.double() * ((x - m.fn.mu.double()) ** 2).sum(-1) for m in (a, b, c))
    conj = ea + 1.5 * (eb - ea) + 1.5 * (ec_ - ea)
    return -torch.logsumexp(torch.stack([-conj, -0.5 * eb]), dim=0)


def test_double_returns_a_float64_copy_and_leaves_the_original_untouched():
    a, b, c, expr = _expression()
    other = a + c  # shares the leaves a and c with expr
    snaps = [_snapshot(m) for m in (a, b, c)]
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    want = expr.energy(x.float())
    for convert in (lambda e: e.to(torch.float64), lambda e: e.double(), lambda e: e.to("cpu", torch.float64)):
        copy = convert(expr)
        assert copy is not expr and type(copy) is type(expr) and repr(copy) == repr(expr)
        for m, snap in zip((a, b, c), snaps):
            _assert_untouched(m, snap)
        assert all(p.dtype == torch.float32 for p in expr.parameters())
        assert all(p.dtype == torch.float64 for p in copy.parameters())
        assert all(v.dtype == torch.float64 for v in copy.buffers())
        # no tensor of the copy is a tensor of the original
        originals = {id(v) for v in list(expr.parameters()) + list(expr.buffers())}
        assert not originals & {id(v) for v in list(copy.parameters()) + list(copy.buffers())}
        e64, g64 = copy.energy_and_grad(x)
        assert e64.dtype == torch.float64 and g64.dtype == torch.float64
        torch.testing.assert_close(e64, want.double(), rtol=1e-6, atol=1e-6)
        # float64 to float64 precision: the closed form with the original's values in float64
        torch.testing.assert_close(e64, _manual_energy(a, b, c, x))
    # the other expression sharing a and c is untouched too
    assert all(p.dtype == torch.float32 for p in other.parameters())
    torch.testing.assert_close(other.energy(x.float()), a.energy(x.float()) + c.energy(x.float()))


def test_copy_holds_one_copy_per_distinct_leaf():
    a, b, c, expr = _expression()
    copy = expr.double()
    leaves = list(copy.leaves())
    assert len(leaves) == 3 and [l.name for l in leaves] == ["a", "b", "c"]
    assert not {id(l) for l in leaves} & {id(a), id(b), id(c)}
    # b appears twice in the expression (in the AND and in the weighted term): one object in the copy
    b_copies = [l for l in copy._iter_leaves() if l.name == "b"]
    assert len(b_copies) == 2 and b_copies[0] is b_copies[1]


def test_parameters_of_the_copy_are_independent():
    a, b, c, expr = _expression()
    copy = expr.float()  # already float32: the copy shares storage, not the Parameter objects
    assert {id(p) for p in copy.parameters()}.isdisjoint({id(p) for p in expr.parameters()})
    with torch.no_grad():
        for p in copy.parameters():
            p.data = p.data + 1.0  # rebinding the copy's data leaves the original as it was
    assert a.fn.s.item() == 1.5 and b.fn.s.item() == 0.5 and c.fn.s.item() == 2.0


def test_network_leaves_keep_one_batched_forward_after_the_copy():
    net = Denoiser()
    model = ec.DiffusionEnergy(net, SCHED, null_condition=0)
    expr = ec.conjunction(model.unconditional(), [model.condition(1), model.condition(2)], 2.0)
    copy = expr.to(torch.float64)
    assert net.a.dtype == torch.float32
    models = {id(leaf.model) for leaf in copy.leaves()}
    assert len(models) == 1 and id(model) not in models  # one copied model shared by its leaves
    copied_net = next(iter(copy.leaves())).model.net
    assert copied_net is not net and copied_net.a.dtype == torch.float64
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    calls = copied_net.calls
    ev = copy.evaluate(x, 0.3)
    assert copied_net.calls == calls + 1 and ev.nfe == 1 and ev.energy.dtype == torch.float64
    ref = expr.evaluate(x.float(), 0.3)
    torch.testing.assert_close(ev.energy, ref.energy.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ev.grad, ref.grad.double(), rtol=1e-5, atol=1e-5)


def test_leaf_conversion_is_in_place_like_nn_module():
    """A leaf's .to converts the leaf and the module it wraps in place (nn.Module semantics)."""
    mod = Quadratic(1.0, [0.0, 0.0])
    leaf = ec.EnergyFunction(mod, name="q")
    expr = leaf + leaf
    assert leaf.to(torch.float64) is leaf
    assert mod.s.dtype == torch.float64 and mod.mu.dtype == torch.float64
    # an expression built on the leaf sees the change (it holds the same leaf)
    assert all(p.dtype == torch.float64 for p in expr.parameters())


def test_module_holding_an_expression_converts_in_place():
    """PyTorch's own recursion converts submodules in place, expressions included."""
    a, b, c, expr = _expression()

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.energy = expr

    h = Holder().double()
    assert h.energy is expr and all(p.dtype == torch.float64 for p in a.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device available")
def test_to_cuda_copies():
    a, b, c, expr = _expression()
    copy = expr.cuda()
    assert all(p.is_cuda for p in copy.parameters()) and all(not p.is_cuda for p in expr.parameters())
    x = torch.randn(4, 2)
    torch.testing.assert_close(copy.energy(x.cuda()).cpu(), expr.energy(x))


def test_uncopyable_leaf_gives_a_clear_error_and_changes_nothing():
    import threading

    class Locked:
        def __init__(self):
            self.lock = threading.Lock()  # deepcopy cannot copy a lock

        def __call__(self, x):
            return (x**2).sum(-1)

    a = ec.EnergyFunction(Quadratic(1.0, [0.0, 0.0]), name="a")
    expr = a + ec.EnergyFunction(Locked(), name="locked")
    with pytest.raises(ec.InputError, match=r"cannot copy the expression a \+ locked.*convert the leaves in place"):
        expr.double()
    assert all(p.dtype == torch.float32 for p in expr.parameters())
