"""DiffusionEnergy (energy-parameterised diffusion) and the conservativeness checks."""

import pytest
import torch
from torch import nn

import ebmcompose as ec
from ebmcompose.consistency import curl_2d, jacobian_asymmetry
from ebmcompose.errors import DetachedEnergyError

SCHED = ec.VPSchedule.cosine()
S2 = 0.25  # data N(0, S2 I)


def _v(t, like):
    ab = SCHED.alpha_bar(t).to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))
    return ab * S2 + 1 - ab


def exact_denoiser(x, t, cond=None):
    """f with ‖x − f‖²/(2σ²) = ‖x‖²/(2 v): the exact diffused Gaussian energy (plus cond shift)."""
    v = _v(t, x)
    sigma = (1 - SCHED.alpha_bar(t)).sqrt().to(x.dtype).reshape(v.shape)
    shift = 0 if cond is None else cond.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return (x - shift) * (1 - sigma / v.sqrt()) + shift


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.a = nn.Parameter(torch.tensor(1.0))

    def forward(self, x, t, cond=None):
        self.calls += 1
        return self.a * exact_denoiser(x, t, cond)


@pytest.mark.parametrize("form", ["denoiser", "scalar"])
def test_exact_gaussian_energy_and_score(form):
    if form == "denoiser":
        m = ec.DiffusionEnergy(exact_denoiser, SCHED)
    else:
        m = ec.DiffusionEnergy(lambda x, t: (x**2).sum(-1, keepdim=True) / (2 * _v(t, x)), SCHED, form="scalar")
    x = torch.randn(32, 2, dtype=torch.float64)
    for t in (0.1, 0.5, 0.9):
        tt = torch.full((32,), t, dtype=torch.float64)
        v = _v(tt, x)
        e, g = m.energy_and_grad(x, t)
        torch.testing.assert_close(e, (x**2).sum(-1) / (2 * v[:, 0]))
        torch.testing.assert_close(g, x / v)


def test_conditional_leaves_share_one_forward_with_energies():
    net = Net()
    m = ec.DiffusionEnergy(net, SCHED, null_condition=0)
    u, c1, c2 = m.unconditional(), m.condition(1), m.condition(2)
    expr = ec.conjunction(u, [c1, c2], 2.0)
    x = torch.randn(6, 2, dtype=torch.float64)
    ev = expr.evaluate(x, 0.4)
    assert net.calls == 1 and ev.nfe == 1
    parts = {k: m.condition(k).energy_and_grad(x, 0.4) for k in (0, 1, 2)}
    want_e = parts[0][0] + 2.0 * ((parts[1][0] - parts[0][0]) + (parts[2][0] - parts[0][0]))
    want_g = parts[0][1] + 2.0 * ((parts[1][1] - parts[0][1]) + (parts[2][1] - parts[0][1]))
    torch.testing.assert_close(ev.energy, want_e)
    torch.testing.assert_close(ev.grad, want_g)


def test_mixture_of_learned_leaves_works_because_energies_exist():
    m = ec.DiffusionEnergy(Net(), SCHED)
    a, b = m.condition(-2.0 * torch.ones(())), m.condition(2.0 * torch.ones(()))
    mix = a | b
    x = torch.randn(5, 2, dtype=torch.float64)
    e, g = mix.energy_and_grad(x, 0.3)
    ea, ga = a.energy_and_grad(x, 0.3)
    eb, gb = b.energy_and_grad(x, 0.3)
    torch.testing.assert_close(e, -torch.logaddexp(-ea, -eb))
    w = torch.softmax(torch.stack([-ea, -eb]), 0)
    torch.testing.assert_close(g, w[0, :, None] * ga + w[1, :, None] * gb)


def test_dsm_loss_trains_through_the_gradient_and_energy_keeps_graph():
    net = Net()
    m = ec.DiffusionEnergy(net, SCHED)
    x = torch.randn(16, 2)
    loss = m.grad(x, 0.5, create_graph=True).pow(2).mean()
    loss.backward()
    assert net.a.grad is not None and net.a.grad.abs() > 0
    net.a.grad = None
    m.energy(x, 0.5).mean().backward()  # plain energy keeps the graph to the parameters
    assert net.a.grad is not None


def test_detached_gradient_by_default():
    m = ec.DiffusionEnergy(Net(), SCHED)
    g = m.grad(torch.randn(4, 2), 0.5)
    assert not g.requires_grad


def test_bad_outputs_and_forms():
    with pytest.raises(ValueError, match="form must be one of"):
        ec.DiffusionEnergy(exact_denoiser, SCHED, form="dot")
    m = ec.DiffusionEnergy(lambda x, t: x[:, :1], SCHED, name="f")
    with pytest.raises(ValueError, match="shaped like x"):
        m.energy(torch.randn(3, 2), 0.5)
    s = ec.DiffusionEnergy(lambda x, t: x, SCHED, form="scalar", name="s")
    with pytest.raises(ValueError, match="one energy per sample"):
        s.energy(torch.randn(3, 2), 0.5)


def test_curl_zero_for_energies_and_nonzero_for_rotation():
    x = torch.randn(64, 2, dtype=torch.float64)
    m = ec.DiffusionEnergy(exact_denoiser, SCHED)
    assert curl_2d(m, x, 0.5).abs().max() < 1e-6
    rot = ec.ScoreFunction(lambda x: torch.stack([-x[:, 1], x[:, 0]], -1), name="rotation")
    torch.testing.assert_close(curl_2d(rot, x), torch.full((64,), 2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        curl_2d(rot, torch.randn(3, 3))


def test_jacobian_asymmetry_separates_conservative_and_rotational_fields():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 3, 3, dtype=torch.float64)
    conservative = ec.EnergyFunction(lambda x: (x**4).flatten(1).sum(1) + (x.flatten(1).sum(1)) ** 2)
    assert jacobian_asymmetry(conservative, x, generator=g).max() < 1e-6
    rot = ec.ScoreFunction(lambda x: torch.stack([-x[:, 1], x[:, 0]], -1))
    r = jacobian_asymmetry(rot, torch.randn(8, 2, dtype=torch.float64), generator=g)
    torch.testing.assert_close(r, torch.full((8,), 2.0, dtype=torch.float64))


@pytest.mark.parametrize("how", ["no_grad", "detach_input", "constant"])
def test_a_network_without_an_autograd_path_from_x_names_the_cause(how):
    def scalar_net(x, t, cond=None):
        if how == "no_grad":
            with torch.no_grad():
                return (x ** 2).flatten(1).sum(1)
        if how == "detach_input":
            return (x.detach() ** 2).flatten(1).sum(1) * torch.ones((), requires_grad=True)
        return torch.ones(x.shape[0], requires_grad=True)  # does not read x at all

    e = ec.DiffusionEnergy(scalar_net, SCHED, form="scalar")
    x = torch.randn(3, 2)
    with pytest.raises(DetachedEnergyError, match="no autograd path from x"):
        e.score(x, 0.5)
    assert e.energy(x, 0.5).shape == (3,)  # energies alone need no gradient
