"""Diffusers fidelity of the core: 16-bit time, conditions that follow .to(), x_T in the model's
dtype, the null_condition error, (1, seq, dim) embeddings, from_diffusers with σ-space schedulers."""

import copy

import pytest
import torch

import ebmcompose as ec
from ebmcompose.checks import as_batch_t
from ebmcompose.pipelines import make_scheduler


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def parts(tiny_cp):
    """(unet, schedule, empty-prompt embedding (1, seq, dim), prompt embedding (1, seq, dim))."""
    pipe = tiny_cp.pipe
    emb = tiny_cp.encode(["", "a red cube"])
    return pipe.unet, ec.VPSchedule.from_diffusers(pipe.scheduler), emb[:1], emb[1:]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_samples_keep_every_training_step_exact(dtype):
    import diffusers

    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    schedule = ec.VPSchedule.from_diffusers(sched)
    ks = torch.arange(1000)
    x = torch.zeros(1000, 1, dtype=dtype)
    t = as_batch_t((ks.double() + 1) / 1000, x)
    assert t.dtype == torch.float32
    assert torch.equal(schedule.to_timestep(t), ks.float()) and torch.equal(schedule.to_discrete(t), ks)
    sigma = schedule.sigma(t)
    assert torch.isfinite(sigma).all()
    torch.testing.assert_close(sigma.double(), (1 - sched.alphas_cumprod.double()).sqrt(), rtol=1e-5, atol=0)
    if dtype == torch.bfloat16:  # a bfloat16 t (the old behaviour) cannot: most steps map elsewhere
        bad = schedule.to_discrete(((ks.double() + 1) / 1000).to(dtype))
        assert (bad != ks).sum() > 100


def test_bfloat16_unet_gets_the_exact_timestep_at_t1(parts):
    unet, schedule, null, _ = parts
    u16 = copy.deepcopy(unet).to(torch.bfloat16)
    seen = []
    u16.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[1].clone()), with_kwargs=True)
    m = ec.EpsilonModel(u16, schedule, null_condition=null)
    g = m.unconditional().grad(torch.randn(2, 4, 8, 8, dtype=torch.bfloat16), 1.0)
    assert torch.equal(seen[0].float(), torch.full((2,), 999.0)) and torch.isfinite(g.float()).all()


def test_conditions_are_buffers_that_follow_to(parts):
    unet, schedule, null, prompt = parts
    m = ec.EpsilonModel(copy.deepcopy(unet), schedule, null_condition=null)
    u, c = m.unconditional(), m.condition(prompt)
    expr = u + 3.0 * (c - u)
    e64 = expr.to(torch.float64)
    dtypes = {b.dtype for b in e64.buffers()}
    assert dtypes == {torch.float64} and null.dtype == torch.float32  # the original is untouched
    x = torch.randn(2, 4, 8, 8, generator=gen())
    torch.testing.assert_close(e64.grad(x.double(), 0.6), expr.grad(x, 0.6).double(), atol=1e-4, rtol=1e-4)
    m.to(torch.bfloat16)
    assert m.null_condition.dtype == torch.bfloat16
    assert "null_condition" not in m.state_dict() and "cond" not in c.state_dict()  # checkpoints unchanged


def test_reverse_diffusion_draws_x_T_in_the_model_dtype(parts):
    from samplers import ReverseDiffusion

    unet, schedule, null, prompt = parts
    m = ec.EpsilonModel(copy.deepcopy(unet).to(torch.bfloat16), schedule, null_condition=null)
    energy = m.unconditional() + 2.0 * (m.condition(prompt) - m.unconditional())
    rd = ReverseDiffusion.from_diffusers(make_scheduler("ddim", {"num_train_timesteps": 1000}), 2)
    a = rd.sample(energy, shape=(2, 4, 8, 8), generator=gen(4)).samples
    x_t = torch.randn((2, 4, 8, 8), generator=gen(4), dtype=torch.bfloat16)
    b = rd.sample(energy, x_t, generator=gen(99)).samples
    assert a.dtype == torch.bfloat16 and torch.equal(a, b)


def test_unconditional_leaf_of_a_cross_attention_unet_needs_null_condition(parts):
    unet, schedule, null, prompt = parts
    m = ec.EpsilonModel(unet, schedule)
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ec.InputError, match="null_condition"):
        m.grad(x, 0.5)
    with pytest.raises(ec.InputError, match="null_condition"):
        (m + 2.0 * (m.condition(prompt) - m)).grad(x, 0.5)
    with pytest.raises(ec.InputError, match="null_condition"):
        m.epsilon(x, 0.5)
    m.condition(prompt).grad(x, 0.5)  # conditional leaves alone need none


def test_one_prompt_embedding_shaped_1_seq_dim_is_one_shared_condition(parts):
    unet, schedule, null, prompt = parts
    x = torch.randn(3, 4, 8, 8, generator=gen())
    a = ec.EpsilonModel(unet, schedule, null_condition=null)
    b = ec.EpsilonModel(unet, schedule, null_condition=null[0])
    torch.testing.assert_close(a.condition(prompt).grad(x, 0.4), b.condition(prompt[0]).grad(x, 0.4))
    torch.testing.assert_close(a.unconditional().grad(x, 0.4), b.unconditional().grad(x, 0.4))
    torch.testing.assert_close(a.epsilon(x, 0.4, prompt), a.epsilon(x, 0.4, prompt[0]))
    two = torch.cat([null, prompt])
    with pytest.raises(ec.InputError, match="per_sample=True"):
        a.condition(two)
    per = a.condition(torch.cat([two, prompt]), per_sample=True).grad(x, 0.4)
    torch.testing.assert_close(per[1:], a.condition(prompt).grad(x[1:], 0.4), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["euler", "euler-ancestral", "lms"])
def test_from_diffusers_with_sigma_space_schedulers_equals_diffusers(tiny_cp, name):
    import diffusers
    from samplers import ReverseDiffusion

    pipe = diffusers.StableDiffusionPipeline(**{**tiny_cp.pipe.components, "scheduler": make_scheduler(name, tiny_cp.pipe.scheduler.config)})
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a red cube", guidance_scale=3.0, num_inference_steps=5, generator=gen(7), output_type="latent").images
    energy = tiny_cp.compose("a red cube", guidance=3.0).energy
    rd = ReverseDiffusion.from_diffusers(make_scheduler(name, tiny_cp.pipe.scheduler.config), 5)
    res = rd.sample(energy, shape=tuple(ref.shape), generator=gen(7))
    torch.testing.assert_close(res.samples, ref, atol=1e-4, rtol=1e-4)
    sched = make_scheduler(name, tiny_cp.pipe.scheduler.config)
    sched.set_timesteps(5)
    assert torch.equal(res.info["timesteps"], sched.timesteps)  # fractional timesteps kept


@pytest.mark.parametrize(
    "spacing, offset, to_one, eta",
    [("leading", 1, False, 0.0), ("leading", 1, False, 1.0), ("trailing", 0, True, 0.0), ("trailing", 0, False, 0.5)],
)
def test_native_reverse_diffusion_matches_diffusers_ddim_spacing(spacing, offset, to_one, eta):
    """SD v1's DDIMScheduler (leading spacing, steps_offset=1, final alpha_bar = alphas_cumprod[0])
    and others, reproduced by the native sampler's ladder, step for step with shared noise."""
    import diffusers
    import toy
    from samplers import ReverseDiffusion

    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                    timestep_spacing=spacing, steps_offset=offset, set_alpha_to_one=to_one)
    schedule = ec.VPSchedule.from_diffusers(sched)
    energy = toy.GaussianMixture(torch.tensor([[-1.0, 0.5], [1.5, 0.0]]), stds=torch.tensor([0.3, 0.5])).diffused(schedule)
    x_t = torch.randn(64, 2, generator=gen(0), dtype=torch.float64)
    sched.set_timesteps(25)
    x, g = x_t.clone(), gen(1)
    for k in sched.timesteps:
        t = (int(k) + 1) / 1000
        eps = schedule.sigma(torch.tensor(t, dtype=torch.float64)).item() * energy.grad(x, t)
        x = sched.step(eps, k, x, eta=eta, generator=g).prev_sample
    rd = ReverseDiffusion(schedule, 25, eta=eta, spacing=spacing, steps_offset=offset, set_alpha_to_one=to_one)
    torch.testing.assert_close(rd.ladder(dtype=torch.float64)[:-1] * 1000 - 1, sched.timesteps.double())
    res = rd.sample(energy, x_t, generator=gen(1))
    torch.testing.assert_close(res.samples, x, atol=1e-4, rtol=1e-4)  # diffusers steps in float32 coefficients
    plain = ReverseDiffusion(schedule, 25, eta=eta).sample(energy, x_t, generator=gen(1)).samples
    assert (plain - x).abs().max() > 1e-2 or (spacing == "trailing" and to_one)  # the old ladder differs


def test_discrete_ladder_linspace_and_errors():
    import diffusers

    sched = diffusers.DDIMScheduler(timestep_spacing="linspace")
    sched.set_timesteps(30)
    ladder = ec.VPSchedule.from_diffusers(sched).discrete_ladder(30, "linspace")
    torch.testing.assert_close(ladder[:-1] * 1000 - 1, sched.timesteps.double().to(ladder.dtype))
    with pytest.raises(ec.InputError, match="spacing must be"):
        ec.VPSchedule.from_diffusers(sched).discrete_ladder(10, "even")
    with pytest.raises(ec.InputError, match="discrete schedule"):
        ec.VPSchedule.cosine().discrete_ladder(10)
    with pytest.raises(ec.InputError, match="distinct"):
        ec.VPSchedule.from_diffusers(sched).discrete_ladder(10, "leading", steps_offset=950)


@pytest.mark.parametrize("clip", [dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5),
                                  dict(clip_sample=True, clip_sample_range=1.2)])
def test_native_reverse_diffusion_matches_diffusers_ddim_clipping(clip):
    """diffusers' thresholding (Imagen's dynamic thresholding) and clip_sample, reproduced by the native
    sampler's threshold / clip_x0 on SD v1's ladder; an x0-prediction that overshoots makes them matter."""
    import diffusers
    import toy
    from samplers import ReverseDiffusion

    base = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="leading",
                steps_offset=1, set_alpha_to_one=False)
    sched = diffusers.DDIMScheduler(**base, **clip)
    schedule = ec.VPSchedule.from_diffusers(sched)
    # a 16-pixel "image" of a wide two-mode density: x0-predictions reach |x| ~ 2.5, beyond the clip
    gm = toy.GaussianMixture(torch.tensor([[-2.0] * 16, [2.0] * 16]), stds=torch.tensor([0.6, 0.6]))
    energy = gm.diffused(schedule)
    x_t = torch.randn(32, 16, generator=gen(0), dtype=torch.float64)
    sched.set_timesteps(20)
    x = x_t.clone()
    for k in sched.timesteps:
        t = (int(k) + 1) / 1000
        eps = schedule.sigma(torch.tensor(t, dtype=torch.float64)).item() * energy.grad(x, t)
        img = (32, 4, 2, 2)  # diffusers thresholds (B, C, ...) images
        x = sched.step(eps.reshape(img), k, x.reshape(img), eta=0.0).prev_sample.reshape(32, 16)
    native = dict(threshold=clip["dynamic_thresholding_ratio"], threshold_max=clip["sample_max_value"]) \
        if "thresholding" in clip else dict(clip_x0=clip["clip_sample_range"])
    ladder = dict(spacing="leading", steps_offset=1, set_alpha_to_one=False)
    rd = ReverseDiffusion(schedule, 20, eta=0.0, clipped_eps=False, **ladder, **native)  # DDIM keeps the model's ε
    res = rd.sample(energy, x_t, generator=gen(1))
    # diffusers' float32 alphas_cumprod: ~1e-5 per step, which dividing by the quantile s amplifies
    torch.testing.assert_close(res.samples, x, atol=5e-4, rtol=5e-4)
    glide = ReverseDiffusion(schedule, 20, eta=0.0, **ladder, **native).sample(energy, x_t, generator=gen(1)).samples
    assert (glide - x).abs().max() > 0.1  # re-deriving ε from the clipped x0 (the default) is another rule
    free = ReverseDiffusion(schedule, 20, eta=0.0, spacing="leading", steps_offset=1, set_alpha_to_one=False)
    assert (free.sample(energy, x_t, generator=gen(1)).samples - x).abs().max() > 0.1  # the clipping mattered


def test_dynamic_threshold_is_imagens_rule_and_bad_options_are_input_errors():
    from samplers import ReverseDiffusion
    from samplers.reverse_diffusion import dynamic_threshold

    x0 = torch.tensor([[0.5, -3.0, 2.0, 0.1], [0.2, 0.3, -0.4, 0.5]])
    out = dynamic_threshold(x0, 0.5, 10.0)
    s0 = torch.quantile(x0[0].abs(), 0.5)  # 1.25: clamp to [-1.25, 1.25], then / 1.25
    torch.testing.assert_close(out[0], x0[0].clamp(-s0, s0) / s0)
    torch.testing.assert_close(out[1], x0[1])  # quantile below 1: s = 1, nothing changes
    assert dynamic_threshold(x0.half(), 0.5, 10.0).dtype == torch.float16
    sch = ec.VPSchedule.cosine()
    with pytest.raises(ec.InputError, match="quantile in"):
        ReverseDiffusion(sch, 5, threshold=1.5)
    with pytest.raises(ec.InputError, match="not both"):
        ReverseDiffusion(sch, 5, threshold=0.99, clip_x0=1.0)
    with pytest.raises(ec.InputError, match="sample_max_value"):
        ReverseDiffusion(sch, 5, threshold=0.99, threshold_max=0.5)
    import diffusers
    with pytest.raises(ec.InputError, match="clip_sample / thresholding"):
        ReverseDiffusion.from_diffusers(diffusers.DDIMScheduler(), 5, clip_x0=1.0)
