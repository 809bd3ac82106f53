"""toy.nets.ResMLP: shapes, deterministic init, conditioning and the null label."""

import pytest
import torch

import ebmcompose as ec
from toy.nets import ResMLP, fourier_features


def _inputs(b=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 2, generator=g), torch.rand(b, generator=g)


def test_shapes_and_size():
    x, t = _inputs()
    net = ResMLP()
    assert net(x, t).shape == x.shape
    assert net(x, 0.3).shape == x.shape  # scalar t broadcasts
    assert ResMLP(dim=3)(torch.zeros(4, 3), torch.zeros(4)).shape == (4, 3)
    n_bytes = 4 * sum(p.numel() for p in net.parameters())
    assert n_bytes < 800_000, n_bytes  # "a few hundred KB" of float32
    assert fourier_features(t, net.frequencies).shape == (7, 2 * net.time_features)


def test_deterministic_init_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a, b, c = ResMLP(seed=3), ResMLP(seed=3), ResMLP(seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), k
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    x, t = _inputs()
    assert torch.equal(a(x, t), b(x, t))


def test_time_dependence():
    net = ResMLP(seed=1)
    with torch.no_grad():
        net.out.weight.normal_(generator=torch.Generator().manual_seed(0))
    x, _ = _inputs()
    assert not torch.allclose(net(x, 0.1), net(x, 0.9))


def test_conditioning_and_null_label():
    net = ResMLP(n_classes=2, seed=0)
    with torch.no_grad():
        net.out.weight.normal_(generator=torch.Generator().manual_seed(0))
    x, t = _inputs()
    assert net.null_label == 2
    out0 = net(x, t, torch.zeros(7, dtype=torch.long))
    out1 = net(x, t, torch.ones(7, dtype=torch.long))
    assert not torch.allclose(out0, out1)
    # None is the null label; a scalar label is shared by the batch
    assert torch.equal(net(x, t), net(x, t, torch.full((7,), 2)))
    assert torch.equal(net(x, t, torch.tensor(1)), out1)
    # per-sample labels: each row depends only on its own label
    mixed = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    out = net(x, t, mixed)
    assert torch.allclose(out[mixed == 0], out0[mixed == 0])
    assert torch.allclose(out[mixed == 1], out1[mixed == 1])


def test_conditioning_errors():
    x, t = _inputs()
    with pytest.raises(ValueError, match="unconditional"):
        ResMLP()(x, t, torch.zeros(7, dtype=torch.long))
    net = ResMLP(n_classes=2)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        net(x, t, torch.full((7,), 3))
    with pytest.raises(TypeError, match="integer labels"):
        net(x, t, torch.zeros(7))
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        net(torch.zeros(7, 3), t)
    with pytest.raises(ValueError, match="n_classes"):
        ResMLP(n_classes=0)
    with pytest.raises(ValueError, match="hidden"):
        ResMLP(hidden=0)


def test_config_rebuilds_same_net():
    net = ResMLP(hidden=32, n_blocks=2, n_classes=3, seed=5)
    twin = ResMLP(**net.config)
    x, t = _inputs()
    c = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    assert torch.equal(net(x, t, c), twin(x, t, c))
    assert "frequencies" not in net.state_dict()  # derived from the config, not stored


@pytest.mark.parametrize("wrapper", ["epsilon", "energy"])
def test_works_inside_energy_wrappers(wrapper):
    net = ResMLP(hidden=32, n_blocks=1, n_classes=2)
    sched = ec.VPSchedule.cosine()
    if wrapper == "epsilon":
        m = ec.EpsilonModel(net, sched, null_condition=net.null_label)
    else:
        m = ec.DiffusionEnergy(net, sched, null_condition=net.null_label)
    x, _ = _inputs()
    u, c0, c1 = m.unconditional(), m.condition(0), m.condition(1)
    ev = (u + c0 - c1).evaluate(x, 0.5, energy=False)
    assert ev.grad.shape == x.shape and ev.nfe == 1  # three leaves, one batched forward
    expect = u.grad(x, 0.5) + c0.grad(x, 0.5) - c1.grad(x, 0.5)
    assert torch.allclose(ev.grad, expect, atol=1e-5)
