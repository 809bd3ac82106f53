"""The conditional scene UNet: condition encoders, config round trip, energy = ½‖g‖² and DSM through ∇E."""

import pytest
import torch

import ebmcompose as ec
from toy.scene_nets import ConditionEncoder, SceneUNet, build_model

TINY = dict(resolution=32, channels=(8, 16), norm_groups=4)


def _net(family="position", **kw):
    return SceneUNet(family, **{**TINY, **kw})


def test_null_condition_is_the_learned_null_embedding_for_every_family():
    for family, width in (("position", 3), ("attribute", 11), ("joint", 15)):
        enc = ConditionEncoder(family, width, 16)
        with torch.no_grad():
            enc.null.copy_(torch.arange(16.0))
        out = enc(torch.zeros(2, width))
        expected = enc.null * (5 if family == "joint" else 1)
        assert torch.allclose(out, expected.expand(2, 16)), family
    enc = ConditionEncoder("position", 3, 16)
    a, b = enc(torch.tensor([[0.2, 0.3, 1.0], [0.8, 0.3, 1.0]]))
    assert not torch.allclose(a, b)  # different positions, different embeddings
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        enc(torch.zeros(2, 4))


def test_net_is_rebuilt_from_its_config_and_none_means_null():
    net = _net(seed=3)
    twin = SceneUNet(**net.config)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.7])
    c = torch.tensor([[0.2, 0.3, 1.0], [0.6, 0.6, 1.0]])
    with torch.no_grad():
        assert torch.equal(net(x, t, c), twin(x, t, c))
        assert torch.equal(net(x, t, None), net(x, t, torch.zeros(2, 3)))
        assert not torch.allclose(net(x, t, c), net(x, t, None))
    assert 0 < net.n_parameters() < 2_000_000


def test_energy_model_score_is_minus_grad_of_its_energy_float64():
    net = _net().double()
    model = build_model("energy", net, ec.VPSchedule.cosine())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    leaf = model.condition(torch.tensor([[0.3, 0.4, 1.0], [0.7, 0.2, 1.0]], dtype=torch.float64), per_sample=True)
    t = 0.4
    score = leaf.score(x, t)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    h = 1e-5
    fd = (leaf.energy(x + h * v, t) - leaf.energy(x - h * v, t)) / (2 * h)  # d/dh E(x + h v) = <∇E, v>
    directional = -(score * v).flatten(1).sum(1)
    assert torch.allclose(fd, directional, rtol=1e-6, atol=1e-8)
    # E = ½‖g‖² exactly (the residual denoiser f = x − σ g)
    with torch.no_grad():
        gx = net(x, torch.full((2,), t, dtype=torch.float64), leaf.cond)
    assert torch.allclose(leaf.energy(x, t), 0.5 * gx.pow(2).flatten(1).sum(1), rtol=1e-10)


def test_dsm_loss_of_the_energy_model_trains_through_the_gradient():
    net = _net()
    model = build_model("energy", net, ec.VPSchedule.cosine())
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    t = torch.tensor([0.2, 0.8])
    sigma = model.schedule.sigma(t).reshape(-1, 1, 1, 1)
    leaf = model.condition(torch.tensor([[0.3, 0.4, 1.0], [0.0, 0.0, 0.0]]), per_sample=True)
    loss = (sigma * leaf.grad(x, t, create_graph=True) - eps).pow(2).mean()
    loss.backward()  # double backward through conv / GroupNorm / SiLU / upsampling
    grads = [p.grad for p in net.parameters()]
    assert all(gr is not None for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0
    # without create_graph the gradient is a constant: the loss has nothing to train
    detached = (sigma * leaf.grad(x, t) - eps).pow(2).mean()
    assert detached.grad_fn is None


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="family"):
        SceneUNet("colour", **TINY)
    with pytest.raises(ValueError, match="divisible"):
        SceneUNet("position", resolution=30, channels=(8, 16, 16), norm_groups=4)
    with pytest.raises(ec.InputError, match="parameterisation"):
        build_model("score", _net(), ec.VPSchedule.cosine())


def test_position_map_peaks_at_the_requested_pixel_and_is_zero_for_the_null_condition():
    from toy.scene_nets import position_map

    coords = SceneUNet._coordinates(torch.zeros(3, 3, 32, 32))
    cond = torch.tensor([[0.25, 0.75, 1.0], [0.9, 0.1, 1.0], [0.0, 0.0, 0.0]])
    m = position_map(cond, coords)
    assert m.shape == (3, 1, 32, 32)
    for i, (x, y) in enumerate([(0.25, 0.75), (0.9, 0.1)]):
        row, col = divmod(int(m[i, 0].argmax()), 32)
        assert abs((col + 0.5) / 32 - x) <= 0.5 / 32 + 1e-6 and abs((row + 0.5) / 32 - y) <= 0.5 / 32 + 1e-6
        assert 0.85 < float(m[i].max()) <= 1.0  # a pixel centre lies within half a pixel of the peak
    assert torch.equal(m[2], torch.zeros(1, 32, 32))
    # joint conditions: one bump per present slot, absent slots draw nothing
    joint = torch.zeros(1, 15)
    joint[0, :6] = torch.tensor([0.2, 0.2, 1.0, 0.8, 0.8, 1.0])
    mj = position_map(joint, coords[:1])
    assert float(mj[0, 0, 6, 6]) > 0.8 and float(mj[0, 0, 25, 25]) > 0.8 and float(mj[0, 0, 6, 25]) < 1e-3


def test_condition_map_changes_the_input_and_old_configs_load_without_it():
    net = _net(condition_map=True, seed=1)
    assert net.unet.config.in_channels == 6 and net.config["condition_map"] is True
    old = dict(net.config)
    del old["condition_map"]  # a checkpoint written before the option existed
    assert SceneUNet(**old).unet.config.in_channels == 5
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([0.5])
    with torch.no_grad():
        a = net(x, t, torch.tensor([[0.2, 0.2, 1.0]]))
        b = net(x, t, torch.tensor([[0.8, 0.8, 1.0]]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="attribute"):
        _net("attribute", condition_map=True)


def test_velocity_net_gives_the_epsilon_of_the_same_x0_estimate():
    """ε̂ = α v̂ + σ x, so a velocity net that outputs the true v = α ε − σ x0 yields the true ε."""
    from toy.scene_nets import VelocityToEpsilon

    sched = ec.VPSchedule.cosine()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0.05, 0.4, 0.8, 0.99])
    a, s = sched.alpha(t).float().reshape(-1, 1, 1, 1), sched.sigma(t).float().reshape(-1, 1, 1, 1)
    xt = a * x0 + s * eps
    oracle = lambda x, tt, c: a * eps - s * x0  # noqa: E731  (the exact velocity)
    assert torch.allclose(VelocityToEpsilon(oracle, sched)(xt, t), eps, atol=1e-5)
    net = _net(prediction="v")
    model = build_model("epsilon", net, sched)
    assert any(isinstance(m, VelocityToEpsilon) for m in model.modules())
    # the energy of a velocity net: E = ½‖σ x + α g‖², so σ∇E = σ(σ I + α J)ᵀ(σ x + α g)
    energy = build_model("energy", net.double(), sched)
    x = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    tt = torch.tensor([0.3, 0.8], dtype=torch.float64)
    with torch.no_grad():
        gx = net(x, tt, None)
    a2, s2 = sched.alpha(tt).reshape(-1, 1, 1, 1), sched.sigma(tt).reshape(-1, 1, 1, 1)
    expected = 0.5 * (s2 * x + a2 * gx).pow(2).flatten(1).sum(1)
    assert torch.allclose(energy.energy(x, tt), expected, rtol=1e-9)
    with pytest.raises(ValueError, match="prediction"):
        _net(prediction="x0")


def test_scale_shift_conditions_by_film_round_trips_and_old_configs_load_without_it():
    """``scale_shift=True``: the condition scales and shifts the ResNet features (FiLM): the UNet's
    time projections are twice as wide; the option survives the config round trip; a config written
    before it existed builds the added-bias net."""
    film, plain = _net("attribute", scale_shift=True, seed=2), _net("attribute", seed=2)
    assert film.unet.config.resnet_time_scale_shift == "scale_shift" and film.config["scale_shift"] is True
    proj = lambda n: n.unet.down_blocks[0].resnets[0].time_emb_proj.out_features
    assert proj(film) == 2 * proj(plain)
    twin = SceneUNet(**film.config)
    old = dict(film.config)
    del old["scale_shift"]
    assert SceneUNet(**old).unet.config.resnet_time_scale_shift == "default"
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.7])
    c = torch.zeros(2, 11)
    c[0, 6], c[1, 7] = 1.0, 1.0  # circle, square
    with torch.no_grad():
        assert torch.equal(film(x, t, c), twin(x, t, c))
        assert not torch.allclose(film(x, t, c), film(x, t, None))
