"""ComposablePipeline on a tiny random Stable Diffusion folder: faithful to diffusers, one UNet
forward per step, the article's AND/NOT formula, and clear errors."""

import math
import shutil

import numpy as np
import pytest
import torch

import ebmcompose as ec
from ebmcompose.pipelines import ComposablePipeline, make_scheduler

STEPS = 6


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def diffusers_pipe(cp, scheduler=None):
    """A diffusers StableDiffusionPipeline sharing cp's components (optionally another scheduler)."""
    import diffusers

    comps = dict(cp.pipe.components)
    if scheduler is not None:
        comps["scheduler"] = make_scheduler(scheduler, cp.pipe.scheduler.config)
    pipe = diffusers.StableDiffusionPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_one_prompt_equals_the_diffusers_pipeline(tiny_cp):
    pipe = diffusers_pipe(tiny_cp)
    ref = pipe("a red cube", guidance_scale=7.5, num_inference_steps=STEPS, generator=gen(), output_type="np").images
    ref_lat = pipe("a red cube", guidance_scale=7.5, num_inference_steps=STEPS, generator=gen(), output_type="latent").images
    out = tiny_cp("a red cube", guidance=7.5, num_inference_steps=STEPS, generator=gen(), output_type="np", progress=False)
    assert out.images.shape == ref.shape == (1, 16, 16, 3)
    assert np.abs(out.images - ref).max() <= 2e-3
    torch.testing.assert_close(out.latents, ref_lat, atol=1e-4, rtol=1e-4)
    # the comparison can fail: another prompt gives other latents and images
    other = tiny_cp("a blue sphere", guidance=7.5, num_inference_steps=STEPS, generator=gen(), output_type="np", progress=False)
    assert (other.latents - ref_lat).abs().max() > 1e-2 and np.abs(other.images - ref).max() > 1e-2


def test_negative_prompt_is_diffusers_negative_prompt(tiny_cp):
    pipe = diffusers_pipe(tiny_cp)
    kw = dict(num_inference_steps=STEPS, output_type="latent")
    ref = pipe("a cube", guidance_scale=4.0, negative_prompt="blurry", generator=gen(3), **kw).images
    out = tiny_cp("a cube", guidance=4.0, negative_prompt="blurry", generator=gen(3), progress=False, **kw)
    torch.testing.assert_close(out.latents, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["euler", "euler-ancestral", "lms", "dpm++", "pndm"])
def test_other_schedulers_equal_diffusers(tiny_cp, name):
    pipe = diffusers_pipe(tiny_cp, scheduler=name)
    ref = pipe("a red cube", guidance_scale=3.0, num_inference_steps=STEPS, generator=gen(1), output_type="latent").images
    out = tiny_cp("a red cube", guidance=3.0, num_inference_steps=STEPS, generator=gen(1), output_type="latent",
                  scheduler=name, progress=False)
    torch.testing.assert_close(out.latents, ref, atol=1e-4, rtol=1e-4)


def _hand_written_loop(cp, texts, signs, w, k, steps, generator):
    """Composable diffusion written out: one batched UNet call, ε = ε_u + w Σ s_i (ε_i − ε_u)."""
    pipe = cp.pipe
    sched = make_scheduler("ddim", pipe.scheduler.config)
    sched.set_timesteps(steps)
    with torch.no_grad():
        emb = [pipe.encode_prompt(t, "cpu", 1, False)[0] for t in [""] + texts]
        cond = torch.cat([e.expand(k, -1, -1) for e in emb])
        x = torch.randn((k, 4, 8, 8), generator=generator) * sched.init_noise_sigma
        for t in sched.timesteps:
            eps = pipe.unet(torch.cat([x] * len(emb)), t, encoder_hidden_states=cond).sample.chunk(len(emb))
            guided = eps[0] + w * sum(s * (e - eps[0]) for s, e in zip(signs, eps[1:]))
            x = sched.step(guided, t, x).prev_sample
    return x


def test_and_not_equals_a_hand_written_composable_loop(tiny_cp):
    k, w = 2, 3.0
    ref = _hand_written_loop(tiny_cp, ["a red cube", "a blue sphere", "a table"], [1.0, 1.0, -0.7], w, k, STEPS, gen(5))
    out = tiny_cp("a red cube AND a blue sphere AND NOT a table", guidance=w, neg_weight=0.7, num_images=k,
                  num_inference_steps=STEPS, generator=gen(5), output_type="latent", scheduler="ddim", progress=False)
    torch.testing.assert_close(out.latents, ref, atol=1e-4, rtol=1e-4)
    # inline weights and a weights list mean the same
    a = tiny_cp("2*(a red cube) AND NOT 0.5*(a table)", guidance=w, num_inference_steps=3, generator=gen(), output_type="latent", progress=False)
    b = tiny_cp("a red cube AND NOT a table", weights=[2, 0.5], guidance=w, num_inference_steps=3, generator=gen(), output_type="latent", progress=False)
    torch.testing.assert_close(a.latents, b.latents)
    ref = _hand_written_loop(tiny_cp, ["a red cube", "a table"], [2.0, -0.5], w, 1, 3, gen())
    torch.testing.assert_close(a.latents, ref, atol=1e-4, rtol=1e-4)


def _count_forwards(unet):
    batches = []
    handle = unet.register_forward_hook(lambda mod, inp, out: batches.append(inp[0].shape[0]))
    return batches, handle


@pytest.mark.parametrize("k", [1, 3])
def test_one_unet_forward_per_step_for_all_prompts_and_images(tiny_cp, k):
    batches, handle = _count_forwards(tiny_cp.pipe.unet)
    try:
        out = tiny_cp("a AND b AND NOT c AND d", num_images=k, num_inference_steps=STEPS, generator=gen(),
                      output_type="latent", progress=False)
    finally:
        handle.remove()
    assert batches == [5 * k] * STEPS and out.nfe == STEPS
    # chunked by max_batch: more forwards, none larger than max_batch, the same latents
    batches, handle = _count_forwards(tiny_cp.pipe.unet)
    try:
        chunked = tiny_cp("a AND b AND NOT c AND d", num_images=k, num_inference_steps=STEPS, generator=gen(),
                          output_type="latent", progress=False, max_batch=4)
    finally:
        handle.remove()
    per_step = math.ceil(5 * k / 4)
    assert len(batches) == STEPS * per_step and max(batches) <= 4 and chunked.nfe == STEPS * per_step
    torch.testing.assert_close(chunked.latents, out.latents, atol=1e-4, rtol=1e-4)


def test_a_toolkit_sampler_can_drive_the_latents(tiny_cp):
    from samplers import ReverseDiffusion

    kw = dict(guidance=5.0, num_images=2, output_type="latent", progress=False)
    own = tiny_cp("a cube AND NOT a ball", num_inference_steps=STEPS, generator=gen(2), **kw)
    sampler = ReverseDiffusion.from_diffusers(tiny_cp.pipe.scheduler, STEPS)
    rd = tiny_cp("a cube AND NOT a ball", sampler=sampler, generator=gen(2), **kw)
    torch.testing.assert_close(rd.latents, own.latents, atol=1e-4, rtol=1e-4)
    assert rd.nfe == STEPS


def test_output_types_and_seeds(tiny_cp):
    kw = dict(num_inference_steps=3, num_images=2, progress=False)
    pil = tiny_cp("a cube", generator=gen(), **kw).images
    assert len(pil) == 2 and pil[0].size == (16, 16) and pil[0].mode == "RGB"
    arr = tiny_cp("a cube", generator=gen(), output_type="np", **kw).images
    pt = tiny_cp("a cube", generator=gen(), output_type="pt", **kw).images
    assert arr.shape == (2, 16, 16, 3) and pt.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(np.asarray(pil[1], dtype=np.float32) / 255, arr[1], atol=1 / 255 + 1e-6)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, atol=1e-6)
    assert 0 <= arr.min() and arr.max() <= 1
    again = tiny_cp("a cube", generator=gen(), output_type="np", **kw).images
    other = tiny_cp("a cube", generator=gen(1), output_type="np", **kw).images
    assert np.array_equal(arr, again) and not np.array_equal(arr, other)
    big = tiny_cp("a cube", generator=gen(), output_type="latent", height=32, width=24, **kw)
    assert big.latents.shape == (2, 4, 16, 12)


def test_bfloat16_same_timesteps_as_float32_and_finite(tiny_sd_folder):
    cp32 = ComposablePipeline.from_pretrained(tiny_sd_folder)
    cp16 = ComposablePipeline.from_pretrained(tiny_sd_folder, torch_dtype=torch.bfloat16)
    seen = {}
    for name, cp in (("f32", cp32), ("bf16", cp16)):
        steps = []
        h = cp.pipe.unet.register_forward_pre_hook(lambda mod, args, kwargs: steps.append(args[1].float().clone()), with_kwargs=True)
        try:
            out = cp("a red cube AND NOT a table", num_inference_steps=STEPS, generator=gen(), output_type="latent",
                     scheduler="euler", progress=False)
        finally:
            h.remove()
        seen[name] = (torch.stack([s.reshape(-1)[0] for s in steps]), out.latents)
    torch.testing.assert_close(seen["bf16"][0], seen["f32"][0], rtol=0, atol=0)
    want = make_scheduler("euler", cp32.pipe.scheduler.config)
    want.set_timesteps(STEPS)
    torch.testing.assert_close(seen["f32"][0], want.timesteps.float(), rtol=0, atol=0)
    lat16 = seen["bf16"][1]
    assert lat16.dtype == torch.bfloat16 and torch.isfinite(lat16.float()).all()
    # bf16 agrees with float32 to bf16 accuracy (~3 significant digits over a few steps)
    assert (lat16.float() - seen["f32"][1]).abs().max() <= 0.05 * seen["f32"][1].abs().max()


def test_loading_errors_are_clear(tmp_path, tiny_sd_folder):
    with pytest.raises(ec.InputError, match="does not exist"):
        ComposablePipeline.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ec.InputError, match="model_index.json"):
        ComposablePipeline.from_pretrained(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd_folder, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ec.InputError, match="cannot load the pipeline"):
        ComposablePipeline.from_pretrained(broken)
    with pytest.raises(TypeError, match="Stable Diffusion-style"):
        ComposablePipeline(object())


def test_bad_arguments_are_clear(tiny_cp):
    with pytest.raises(ec.ParseError, match="empty prompt"):
        tiny_cp("a cube AND AND", progress=False)
    with pytest.raises(ec.InputError, match="output_type"):
        tiny_cp("a cube", output_type="jpeg", progress=False)
    with pytest.raises(ec.InputError, match="multiple of 8"):
        tiny_cp("a cube", height=20, progress=False)
    with pytest.raises(ec.InputError, match="unknown scheduler"):
        tiny_cp("a cube", scheduler="warp", progress=False)
    with pytest.raises(ec.InputError, match="guidance"):
        tiny_cp("a cube", guidance=float("nan"), progress=False)
