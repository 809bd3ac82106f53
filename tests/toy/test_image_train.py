"""The scene trainer: it learns, resumes bit-identically, and its checkpoints load back."""

import sys
from pathlib import Path

import pytest
import torch

import ebmcompose as ec
from toy import image_train as it
from toy.scene_nets import SceneUNet

sys.path.insert(0, str(Path(__file__).parent))
from _scene_standin import SquareScenes  # noqa: E402


class FixedBatch:
    """The same 8 images and conditions at every draw (the generator still draws t, ε, dropout)."""

    def __init__(self):
        self.images, self.cond, _ = SquareScenes(32).sample(8, torch.Generator().manual_seed(5))

    def sample(self, n, generator):
        return self.images[:n], self.cond[:n]


def _fixed_loss(net, batch, param):
    g = torch.Generator().manual_seed(9)
    x0 = 2 * batch.images - 1
    t = torch.linspace(0.1, 0.9, 8)
    eps = torch.randn(x0.shape, generator=g)
    sched = ec.VPSchedule.cosine()
    xt = sched.alpha(t).reshape(-1, 1, 1, 1) * x0 + sched.sigma(t).reshape(-1, 1, 1, 1) * eps
    with torch.no_grad():
        return float((net(xt, t, batch.cond) - eps).pow(2).mean())


def test_training_lowers_the_loss_on_a_fixed_batch():
    batch = FixedBatch()
    cfg = it.config_for("position", "epsilon", "quick", steps=25, batch_size=8, lr=3e-3, ema_decay=0.5)
    before = _fixed_loss(SceneUNet(**cfg.net_config()), batch, "epsilon")
    result = it.train(cfg, batch)
    after = _fixed_loss(result.net, batch, "epsilon")
    assert after < 0.8 * before, (before, after)
    assert result.step == 25 and result.losses.shape == (25,)


@pytest.mark.parametrize("param", ["epsilon", "energy"])
def test_resume_is_bit_identical(tmp_path, param):
    cfg = it.config_for("position", param, "quick", steps=4, batch_size=4, checkpoint_every=1)
    whole = it.train(cfg)
    first = it.train(cfg, run_dir=tmp_path, until=2)
    assert first.step == 2 and (tmp_path / "resume.safetensors").is_file() and (tmp_path / "model.safetensors").is_file()
    rest = it.train(cfg, run_dir=tmp_path, resume=True)
    assert rest.step == 4
    assert torch.equal(whole.losses, rest.losses)
    for (k, a), b in zip(whole.net.state_dict().items(), rest.net.state_dict().values()):
        assert torch.equal(a, b), k
    # the exported EMA model loads back and gives the same scores (up to the channels-last
    # convolutions of loaded models: another summation order)
    model, net, config = it.load_model(tmp_path / "model")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.score(x, 0.5), rest.model.score(x, 0.5), rtol=1e-5, atol=1e-5)
    assert config["parameterisation"] == param and config["step"] == 4


def test_resume_with_other_settings_is_refused(tmp_path):
    cfg = it.config_for("position", "epsilon", "quick", steps=2, batch_size=2)
    it.train(cfg, run_dir=tmp_path, until=1)
    other = it.config_for("position", "epsilon", "quick", steps=2, batch_size=2, lr=0.5)
    with pytest.raises(ec.InputError, match="lr=0.002"):
        it.train(other, run_dir=tmp_path, resume=True)


def test_half_storage_loads_back_as_float32(tmp_path):
    cfg = it.config_for("attribute", "energy", "quick")
    net = SceneUNet(**cfg.net_config())
    it.save_model(tmp_path / "m", net, cfg, half=True)
    model, loaded, config = it.load_model(tmp_path / "m", parameterisation="energy")
    assert config["storage"] == "float16" and config["family"] == "attribute"
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype and torch.equal(b, a.half().float() if a.is_floating_point() else a), k
    with pytest.raises(ec.checkpoint.CheckpointError, match="kind"):
        it.load_model(tmp_path / "m", parameterisation="epsilon")


def test_bad_configs_are_input_errors():
    with pytest.raises(ec.InputError, match="family"):
        it.config_for("colours")
    with pytest.raises(ec.InputError, match="size"):
        it.config_for(size="huge")
    with pytest.raises(ec.InputError, match="attribute_labels"):
        it.config_for("attribute", attribute_labels="some")
    multi = it.config_for("attribute", attribute_labels="multi")
    assert it.make_source(multi).labels == "multi" and it.make_source(it.config_for("attribute")).labels == "one"
    with pytest.raises(ec.InputError, match="scale_shift"):
        it.config_for("attribute", scale_shift="yes")
    assert it.config_for("attribute", scale_shift=True).net_config()["scale_shift"] is True
    assert it.config_for("attribute").net_config()["scale_shift"] is True  # the family's default (FAMILY_DEFAULTS)
    assert it.config_for("attribute").steps == it.FAMILY_DEFAULTS["attribute"]["steps"]
    assert it.config_for("attribute", scale_shift=False).net_config()["scale_shift"] is False
    assert it.config_for("position").net_config()["scale_shift"] is False
    assert it.config_for("attribute", size="quick").steps == it.SIZES["quick"]["steps"]
    with pytest.raises(ec.InputError, match="resume"):
        it.train(it.config_for(size="quick"), resume=True)


@pytest.mark.slow
def test_a_short_run_places_the_object_where_asked_more_often_than_unconditional():
    """Quick run on a trivially learnable task (one red square, condition = its centre): at the
    requested position the conditional model finds an object more often than the unconditional
    one, by more than 3 binomial standard errors."""
    from samplers import ReverseDiffusion
    from toy import scenes
    from toy.scene_model import SceneModel, to_unit

    # the position, not only the shape, must be learned: a longer run than the other quick tests
    cfg = it.config_for("position", "epsilon", "quick", channels=(16, 32), steps=1500, batch_size=16, lr=3e-3,
                        ema_decay=0.99, warmup=50)
    result = it.train(cfg, SquareScenes(32))
    sm = SceneModel(result.model, "position", 32)
    n, target = 48, (0.3, 0.7)
    sampler = ReverseDiffusion(sm.schedule, 20, eta=0.0, clip_x0=1.0)
    hits = {}
    for name, energy in (("cond", sm.at(*target)), ("uncond", sm.unconditional())):
        res = sampler.sample(energy, shape=sm.shape(n), generator=torch.Generator().manual_seed(1))
        hits[name] = scenes.count_near(to_unit(res.samples), target, radius=0.15).float()
    p1, p0 = hits["cond"].mean(), hits["uncond"].mean()
    se = ((p1 * (1 - p1) + p0 * (1 - p0)) / n).sqrt().clamp_min(1 / n)
    assert p1 - p0 > 3 * se, (float(p1), float(p0))
