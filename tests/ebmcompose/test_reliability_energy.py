"""Reliability of the energy layer: gradients that cannot be right, edge inputs, an optional ``t``."""

import numpy as np
import pytest
import torch
from torch import nn

import ebmcompose as ec
from ebmcompose.errors import DetachedEnergyError

X = torch.tensor([[0.5, -1.0], [2.0, 0.25], [-1.5, 1.0]])


def _numpy_energy(x):
    return torch.as_tensor((x.detach().numpy() ** 2).sum(-1) / 2)


def _no_grad_energy(x):
    with torch.no_grad():
        return (x ** 2).sum(-1) / 2


def _detach_energy(x):
    return (x.detach() ** 2).sum(-1) / 2


class _DetachingModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return ((x.detach() * self.w) ** 2).sum(-1)


@pytest.mark.parametrize("fn", [_numpy_energy, _no_grad_energy, _detach_energy, _DetachingModule()],
                         ids=["numpy", "no_grad", "detach", "module-detaches-x"])
@pytest.mark.parametrize("call", ["grad", "score", "energy_and_grad"])
def test_a_detached_energy_raises_instead_of_a_zero_gradient(fn, call):
    e = ec.EnergyFunction(fn, name="mine")
    with pytest.raises(DetachedEnergyError, match=r"mine .*no gradient.*torch operations on x") as info:
        getattr(e, call)(X)
    assert isinstance(info.value, ec.InputError)


def test_a_detached_leaf_inside_an_expression_is_named():
    good = ec.EnergyFunction(lambda x: (x ** 2).sum(-1), name="good")
    bad = ec.EnergyFunction(_detach_energy, name="bad")
    with pytest.raises(DetachedEnergyError, match="^bad "):
        (good + 0.5 * bad).grad(X)


def test_the_issue_reproduction_no_longer_samples_a_wrong_gaussian():
    import samplers

    e = ec.EnergyFunction(lambda x: torch.as_tensor((x.detach().numpy() ** 2).sum(-1) / 2))
    with pytest.raises(DetachedEnergyError):
        samplers.ULA(step_size=0.1, n_steps=5).sample(e, torch.randn(8, 2), generator=torch.Generator().manual_seed(0))


def test_energy_values_alone_of_a_detached_energy_are_still_available():
    # only a gradient would be wrong; the values are what the user computed
    e = ec.EnergyFunction(_numpy_energy)
    assert torch.allclose(e.energy(X).float(), (X ** 2).sum(-1) / 2)


def test_constant_energies_and_frozen_models_keep_working():
    flat = ec.EnergyFunction(lambda x: torch.zeros(x.shape[0]), name="flat")
    assert torch.equal(flat.grad(X), torch.zeros_like(X))
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    net.requires_grad_(False)  # frozen parameters: the gradient in x still flows
    e = ec.EnergyFunction(lambda x: net(x).squeeze(-1), name="frozen")
    g = e.grad(X)
    xg = X.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(net(xg).sum(), xg)
    assert torch.allclose(g, ref) and bool(g.abs().sum() > 0)
    # a constant leaf in a sum contributes a zero gradient
    ring = ec.EnergyFunction(lambda x: (x.norm(dim=-1) - 2.0) ** 2, name="ring")
    assert torch.allclose((ring + flat).grad(X), ring.grad(X))


@pytest.mark.parametrize("value, match", [
    (lambda x: 1.0, r"returned a float, not a torch.Tensor"),
    (lambda x: np.ones(x.shape[0]), r"returned a ndarray, not a torch.Tensor"),
    (lambda x: torch.ones(x.shape[0], dtype=torch.long), r"dtype torch.int64.*floating point"),
])
@pytest.mark.parametrize("call", ["energy", "grad"])
def test_energies_that_are_not_floating_tensors_are_clear_errors(value, match, call):
    with pytest.raises(ec.InputTypeError, match=match):
        getattr(ec.EnergyFunction(value), call)(X)


@pytest.mark.parametrize("score", [lambda x: 1.0, lambda x: -x.numpy(), lambda x: torch.zeros(x.shape, dtype=torch.int32)])
def test_scores_that_are_not_floating_tensors_are_clear_errors(score):
    with pytest.raises(ec.InputTypeError, match="gradient/score"):
        ec.ScoreFunction(score).score(X)


def test_wrong_energy_shape_is_an_input_error():
    with pytest.raises(ec.InputError, match=r"shape \(3, 2\); expected \(3,\)"):
        ec.EnergyFunction(lambda x: x ** 2).grad(X)


def test_empty_batch_is_a_clear_error():
    e = ec.EnergyFunction(lambda x: (x ** 2).sum(-1))
    for call in (e.energy, e.grad, e.score):
        with pytest.raises(ec.InputError, match=r"empty batch.*B >= 1"):
            call(torch.zeros(0, 2))


def test_an_optional_t_means_t_optional():
    s = ec.ScoreFunction(lambda x, t=None: -x if t is None else -x * (1 + t[:, None]))
    assert torch.equal(s.score(X), -X)  # the issue's reproduction
    assert torch.allclose(s.score(X, 0.5), -1.5 * X)
    assert not s.time_dependent and s.reads_t and not s.is_static

    class M(nn.Module):
        def forward(self, x, t=None):
            return (x ** 2).sum(-1) * (1.0 if t is None else 2.0)

    e = ec.EnergyFunction(M())
    assert torch.allclose(e.energy(X), (X ** 2).sum(-1))
    assert torch.allclose(e.energy(X, 0.3), 2 * (X ** 2).sum(-1))
    # a required t is still required; a function of x alone is static
    with pytest.raises(ec.InputError, match="pass t in"):
        ec.EnergyFunction(lambda x, t: (x ** 2).sum(-1)).energy(X)
    assert ec.EnergyFunction(lambda x: (x ** 2).sum(-1)).is_static
    # an explicit time_dependent wins
    assert ec.EnergyFunction(M(), time_dependent=False).is_static
