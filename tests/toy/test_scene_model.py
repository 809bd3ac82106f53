"""Composition on images: one batched forward per step, the paper's AND/NOT formulas, errors."""

import pytest
import torch

import ebmcompose as ec
from samplers import ReverseDiffusion
from toy import pretrained
from toy.scene_model import SceneModel, image_grid
from toy.scene_nets import SceneUNet

TINY = dict(resolution=32, channels=(8, 16), norm_groups=4)


def _model(family="position", param="epsilon", max_batch=None):
    net = SceneUNet(family, **TINY).eval().requires_grad_(False)
    return SceneModel.from_net(net, param, max_batch=max_batch), net


def _count_forwards(net):
    calls = []
    net.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    return calls


@pytest.mark.parametrize("max_batch", [None, 2])
def test_k_concept_and_is_one_batched_forward_per_step(max_batch):
    sm, net = _model(max_batch=max_batch)
    calls = _count_forwards(net)
    k, b, steps = 3, 2, 4
    energy = sm.compose(at=[(0.2, 0.2), (0.5, 0.8), (0.8, 0.3)])
    res = ReverseDiffusion(sm.schedule, steps, eta=0.0).sample(energy, shape=sm.shape(b), generator=torch.Generator().manual_seed(0))
    per_step = 1 if max_batch is None else k + 1  # K concepts + the unconditional leaf
    assert len(calls) == steps * per_step
    assert res.info["nfe"] == steps * per_step
    assert sum(calls) == steps * (k + 1) * b  # every leaf evaluated once per step


def test_compose_equals_the_papers_formulas_and_parse():
    sm, _ = _model()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = 0.5
    u, a, b = sm.unconditional(), sm.at(0.25, 0.25), sm.at(0.75, 0.5)
    su, sa, sb = u.score(x, t), a.score(x, t), b.score(x, t)
    both = sm.compose(at=[(0.25, 0.25), (0.75, 0.5)], weight=2.0).score(x, t)
    assert torch.allclose(both, su + 2.0 * ((sa - su) + (sb - su)), atol=1e-5)
    neg = sm.compose(at=[(0.25, 0.25)], not_at=[(0.75, 0.5)], weight=2.0, neg_weight=0.5).score(x, t)
    assert torch.allclose(neg, su + 2.0 * ((sa - su) - 0.5 * (sb - su)), atol=1e-5)
    parsed = sm.parse("uncond + 2*(a - uncond) + 2*(b - uncond)", {"a": a, "b": b}).score(x, t)
    assert torch.allclose(parsed, both, atol=1e-5)


def test_attribute_and_joint_leaves_and_errors():
    sm, _ = _model("attribute")
    x = torch.randn(1, 3, 32, 32)
    red = sm.attribute("red").score(x, 0.5)
    assert not torch.allclose(red, sm.attribute("blue").score(x, 0.5))
    sm.compose_attributes(["red", "square"], ["small"]).score(x, 0.5)
    with pytest.raises(ec.InputError, match="red"):  # the message lists the valid names
        sm.attribute("purple")
    with pytest.raises(ec.InputError, match="position model"):
        sm.at(0.5, 0.5)
    pos, _ = _model()
    with pytest.raises(ec.InputError):
        pos.at(1.5, 0.5)
    with pytest.raises(ec.InputError, match="nothing to compose"):
        pos.compose()
    joint, _ = _model("joint")
    assert joint.joint_condition([(0.2, 0.2), (0.7, 0.7)]).score(x, 0.5).shape == x.shape


def test_joint_attribute_leaf_is_the_multi_hot_condition_and_needs_a_multi_hot_model():
    net = SceneUNet("attribute", **TINY).eval().requires_grad_(False)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    one = SceneModel.from_net(net)
    assert one.attribute_labels == "one" and _model()[0].attribute_labels is None
    torch.testing.assert_close(one.attributes(["red"]).score(x, 0.5), one.attribute("red").score(x, 0.5))
    with pytest.raises(ec.InputError, match="multi-hot labels"):
        one.attributes(["red", "square"])
    multi = SceneModel(one.model, "attribute", 32, {"train": {"attribute_labels": "multi"}})
    from toy import scenes
    hot = torch.zeros(11)
    hot[[scenes.ATTRIBUTES.index("red"), scenes.ATTRIBUTES.index("square")]] = 1.0
    want = one.model.condition(hot).score(x, 0.5)
    torch.testing.assert_close(multi.attributes(["red", "square"]).score(x, 0.5), want)


def test_missing_shipped_model_names_the_training_command(tmp_path):
    with pytest.raises(ec.checkpoint.CheckpointNotFoundError, match="benchmarks.train_scenes"):
        pretrained.scene_model("position", "energy", checkpoint_dir=tmp_path)
    with pytest.raises(ec.InputError, match="family"):
        pretrained.scene_model("colour")


def test_image_grid_layout():
    imgs = torch.zeros(5, 3, 4, 4)
    imgs[4] = 1.0
    grid = image_grid(imgs, ncol=3)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3) and grid.dtype.name == "uint8"
    assert (grid[6:10, 6:10] == 255).all() and (grid[1:5, 1:5] == 0).all()


def test_shipped_position_model_puts_objects_where_asked_far_above_chance():
    """The shipped ε model, AND of two positions: both objects present in most images, while
    unconditional samples have an object at one fixed spot far less often (rendered-truth evaluator)."""
    from ebmcompose.cli.scene_sampling import build_sampler
    from toy import scenes
    from toy.scene_model import to_unit

    torch.manual_seed(0)
    sm = pretrained.scene_model("position", "epsilon")
    sampler = build_sampler("ddim", sm.schedule, 20)
    at = [(0.25, 0.3), (0.7, 0.7)]
    n = 12
    composed = to_unit(sampler.sample(sm.compose(at=at), shape=sm.shape(n), generator=torch.Generator().manual_seed(1)).samples)
    free = to_unit(sampler.sample(sm.unconditional(), shape=sm.shape(n), generator=torch.Generator().manual_seed(2)).samples)
    acc = scenes.position_accuracy(composed, at=at).float().mean()
    chance = scenes.count_near(free, at[0]).float().mean()
    assert acc >= 0.75 and chance <= 0.5, (float(acc), float(chance))


def test_shipped_attribute_model_draws_the_requested_shape_far_above_chance():
    """The shipped attribute ε model: "square AND red" (and "triangle AND NOT small") give that shape in
    most images, where a shape drawn at random is right 1 time in 3 (rendered-truth evaluator)."""
    from ebmcompose.cli.scene_sampling import build_sampler
    from toy import scenes
    from toy.scene_model import to_unit

    sm = pretrained.scene_model("attribute", "epsilon")
    sampler = build_sampler("ddim", sm.schedule, 15)
    n = 8
    for require, forbid in ((["red", "square"], []), (["triangle"], ["small"])):
        x = sampler.sample(sm.compose_attributes(require, forbid), shape=sm.shape(n), generator=torch.Generator().manual_seed(3)).samples
        acc = scenes.attribute_accuracy(to_unit(x), require=require, forbid=forbid).float().mean()
        assert acc >= 0.75, (require, forbid, float(acc))
