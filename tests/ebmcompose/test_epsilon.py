"""EpsilonModel: ε-networks (plain and diffusers UNets) as composable score-only energies."""

import math

import pytest
import torch
from torch import nn

import ebmcompose as ec
from ebmcompose.epsilon import EpsilonModel

SCHED = ec.VPSchedule.cosine()
S2 = 0.25  # data variance of the exact Gaussian below


def exact_eps(x, t):
    """ε of data N(0, S2 I) under SCHED: ε = σ x / (ᾱ S2 + 1 − ᾱ) (exact Gaussian posterior)."""
    ab = SCHED.alpha_bar(t).reshape(-1, *([1] * (x.dim() - 1)))
    return (1 - ab).sqrt() * x / (ab * S2 + 1 - ab)


class CountingNet(nn.Module):
    """Label-conditional ε-net that counts forwards: ε = exact ε + 0.1 * label."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.batch_sizes = []
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x, t, cond=None):
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        out = self.scale * exact_eps(x, t)
        if cond is not None:
            out = out + 0.1 * cond.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return out


def test_score_is_minus_eps_over_sigma_and_matches_exact_gaussian_score():
    m = EpsilonModel(lambda x, t: exact_eps(x, t), SCHED)
    x = torch.randn(64, 2, dtype=torch.float64)
    for t in (0.05, 0.5, 0.95):
        ab = SCHED.alpha_bar(torch.tensor(t, dtype=torch.float64))
        exact_score = -x / (ab * S2 + 1 - ab)
        torch.testing.assert_close(m.score(x, t), exact_score)
        torch.testing.assert_close(m.grad(x, t) * SCHED.sigma(torch.tensor(t, dtype=torch.float64)), exact_eps(x, torch.full((64,), t, dtype=torch.float64)))


def test_no_division_by_zero_at_t0():
    m = EpsilonModel(lambda x, t: torch.ones_like(x), SCHED, sigma_floor=1e-3)
    g = m.grad(torch.zeros(3, 2), 0.0)
    assert torch.isfinite(g).all() and torch.allclose(g, torch.full_like(g, 1e3))


def test_and_of_three_concepts_plus_unconditional_is_one_forward():
    net = CountingNet()
    m = EpsilonModel(net, SCHED, null_condition=0)
    u = m.unconditional()
    cs = [m.condition(k) for k in (1, 2, 3)]
    expr = ec.conjunction(u, cs, weight=2.0)
    x = torch.randn(8, 2)
    ev = expr.evaluate(x, 0.4, energy=False)
    assert net.calls == 1 and net.batch_sizes == [4 * 8]
    assert ev.nfe == 1
    # Equal to evaluating each leaf alone and applying the paper's formula on ε = σ grad.
    net.calls = 0
    g = {k: m.condition(k).grad(x, 0.4) for k in (0, 1, 2, 3)}
    assert net.calls == 4
    want = g[0] + 2.0 * sum(g[k] - g[0] for k in (1, 2, 3))
    torch.testing.assert_close(ev.grad, want)


def test_unconditional_without_null_condition_takes_separate_forward():
    net = CountingNet()
    m = EpsilonModel(net, SCHED)
    expr = m + 3.0 * (m.condition(2) - m)
    ev = expr.evaluate(torch.randn(5, 2), 0.3, energy=False)
    assert ev.nfe == 2 and sorted(net.batch_sizes) == [5, 5]


def test_max_batch_chunks_memory_and_counts_each_forward():
    net = CountingNet()
    m = EpsilonModel(net, SCHED, null_condition=0, max_batch=10)
    expr = ec.conjunction(m.unconditional(), [m.condition(1), m.condition(2)], 1.5)
    x = torch.randn(8, 2)
    ev = expr.evaluate(x, 0.6, energy=False)
    assert ev.nfe == math.ceil(24 / 10) and max(net.batch_sizes) <= 10
    ref = EpsilonModel(CountingNet(), SCHED, null_condition=0)
    ref_expr = ec.conjunction(ref.unconditional(), [ref.condition(1), ref.condition(2)], 1.5)
    torch.testing.assert_close(ev.grad, ref_expr.grad(x, 0.6))


def test_per_sample_conditions():
    net = CountingNet()
    m = EpsilonModel(net, SCHED)
    x = torch.randn(4, 2)
    labels = torch.tensor([0, 1, 2, 3])
    g = m.condition(labels, per_sample=True).grad(x, 0.5)
    for i in range(4):
        torch.testing.assert_close(g[i : i + 1], m.condition(int(labels[i])).grad(x[i : i + 1], 0.5))
    with pytest.raises(ValueError, match="per-sample condition needs shape"):
        m.condition(torch.tensor([1, 2]), per_sample=True).grad(x, 0.5)


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_prediction_types_convert_to_eps(prediction):
    def net(x, t):
        eps = exact_eps(x, t)
        ab = SCHED.alpha_bar(t).reshape(-1, 1)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = (x - s * eps) / a
        return a * eps - s * x0 if prediction == "v_prediction" else x0

    m = EpsilonModel(net, SCHED, prediction=prediction)
    x = torch.randn(16, 2, dtype=torch.float64)
    ref = EpsilonModel(lambda x, t: exact_eps(x, t), SCHED)
    torch.testing.assert_close(m.grad(x, 0.3), ref.grad(x, 0.3))


def test_create_graph_lets_training_differentiate_through_score():
    net = CountingNet()
    m = EpsilonModel(net, SCHED)
    x = torch.randn(6, 2)
    loss = m.score(x, 0.5, create_graph=True).pow(2).sum()
    loss.backward()
    assert net.scale.grad is not None and net.scale.grad.abs() > 0


def test_errors_name_the_problem():
    m = EpsilonModel(lambda x, t: x, SCHED, name="eps")
    x = torch.randn(3, 2)
    with pytest.raises(ec.ScoreOnlyError, match="scores only"):
        m.energy(x, 0.5)
    with pytest.raises(ValueError, match="pass t"):
        m.grad(x)
    with pytest.raises(TypeError, match="VPSchedule"):
        EpsilonModel(lambda x, t: x, object())
    bad = EpsilonModel(lambda x, t: x[:, :1], SCHED, name="bad")
    with pytest.raises(ValueError, match="shaped like its input"):
        bad.grad(x, 0.5)
    with pytest.raises(ValueError, match="prediction"):
        EpsilonModel(lambda x, t: x, SCHED, prediction="eps")
    with pytest.raises(ec.ScoreOnlyError, match="energy of every component"):
        m | m.condition(1)


def test_repr_is_readable():
    m = EpsilonModel(CountingNet(), SCHED, null_condition=0, name="net")
    expr = ec.conjunction(m.unconditional(), [m.condition(1)], 2.0)
    assert repr(expr) == "net[∅] + 2*(net[1] - net[∅])"


# ----------------------------------------------------------------------------- diffusers
diffusers = pytest.importorskip("diffusers")


def _tiny_unet2d(**kw):
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **kw,
    ).eval()


def test_diffusers_unet2d_class_conditional_composes_in_one_forward():
    torch.manual_seed(0)
    unet = _tiny_unet2d(num_class_embeds=4)
    sched = diffusers.DDPMScheduler(num_train_timesteps=100)
    schedule = ec.VPSchedule.from_diffusers(sched)
    m = EpsilonModel(unet, schedule, null_condition=3)
    assert m.condition_kwarg == "class_labels" and m.timestep == "discrete"
    calls = []
    unet.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    x = torch.randn(2, 1, 8, 8)
    t = 0.5
    expr = ec.conjunction(m.unconditional(), [m.condition(0), m.condition(1)], 2.0)
    ev = expr.evaluate(x, t, energy=False)
    assert calls == [6] and ev.nfe == 1
    k = schedule.to_discrete(torch.tensor(t))
    sigma = schedule.sigma(torch.tensor(t))
    with torch.no_grad():
        eps = {c: unet(x, k.expand(2), class_labels=torch.full((2,), c)).sample for c in (3, 0, 1)}
    want = (eps[3] + 2.0 * ((eps[0] - eps[3]) + (eps[1] - eps[3]))) / sigma
    torch.testing.assert_close(ev.grad, want, rtol=1e-4, atol=1e-4)


def test_diffusers_unet2d_condition_model_with_prompt_embeddings():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 8), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=6,
        norm_num_groups=4, attention_head_dim=2,
    ).eval()
    schedule = ec.VPSchedule.from_diffusers(diffusers.DDIMScheduler(num_train_timesteps=50))
    null = torch.zeros(3, 6)
    m = EpsilonModel(unet, schedule, null_condition=null)
    assert m.condition_kwarg == "encoder_hidden_states"
    a, b = m.condition(torch.randn(3, 6), name="red"), m.condition(torch.randn(3, 6), name="cube")
    expr = ec.negation(m.unconditional(), a, b, weight=1.5, neg_weight=0.5)
    x = torch.randn(2, 1, 8, 8)
    ev = expr.evaluate(x, 0.7, energy=False)
    assert ev.nfe == 1 and ev.grad.shape == x.shape
    ga, gb, gu = a.grad(x, 0.7), b.grad(x, 0.7), m.unconditional().grad(x, 0.7)
    torch.testing.assert_close(ev.grad, gu + 1.5 * ((ga - gu) - 0.5 * (gb - gu)), rtol=1e-4, atol=1e-4)
    assert "red" in repr(expr) and "cube" in repr(expr)
