"""Every sampler follows x's device and dtype (float64 here; CUDA where a GPU exists)."""

import copy

import pytest
import torch

import ebmcompose as ec
import samplers
import toy

SCHED = ec.VPSchedule.linear()


def _static_samplers():
    return {
        "ULA": samplers.ULA(step_size=0.05, n_steps=20),
        "MALA": samplers.MALA(step_size=0.1, n_steps=20),
        "HMC": samplers.HMC(step_size=0.1, n_leapfrog=3, n_steps=10),
        "MALA-adapted": samplers.MALA(n_steps=10, n_warmup=20),
    }


def _ladder_samplers():
    return {
        "DDPM": samplers.ReverseDiffusion(SCHED, n_steps=20),
        "DDIM": samplers.ReverseDiffusion(SCHED, n_steps=20, eta=0.0),
        "AnnealedLangevin": samplers.AnnealedLangevin(SCHED, n_levels=5, n_steps_per_level=3, step_size=0.01),
        "PC-MALA": samplers.PredictorCorrector(SCHED, n_steps=10, corrector=samplers.MALA(step_size=0.05, n_steps=1)),
        "PC-HMC": samplers.PredictorCorrector(
            SCHED, n_steps=10, corrector=samplers.HMC(step_size=0.05, n_leapfrog=2, n_steps=1)
        ),
    }


def _targets(device, dtype):
    gm = toy.GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.5]]), stds=torch.tensor([0.5, 0.7]))
    gm = copy.deepcopy(gm).to(device=device, dtype=dtype)
    bump = ec.EnergyFunction(lambda x: 0.1 * (x**2).sum(-1), name="bump")
    return gm + bump, gm.diffused(SCHED) + 0.5 * gm.diffused(SCHED)


def _check(res, device, dtype, b):
    x = res.samples
    assert x.device.type == torch.device(device).type and x.dtype == dtype and x.shape == (b, 2)
    assert torch.isfinite(x).all()
    assert res.info["nfe"] > 0


@pytest.mark.parametrize("name", list(_static_samplers()))
def test_static_samplers_follow_float64(name):
    static, _ = _targets("cpu", torch.float64)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2, dtype=torch.float64, generator=g)
    _check(_static_samplers()[name].sample(static, x0, generator=g), "cpu", torch.float64, 64)


@pytest.mark.parametrize("name", list(_ladder_samplers()))
def test_ladder_samplers_follow_float64(name):
    _, diffused = _targets("cpu", torch.float64)
    g = torch.Generator().manual_seed(0)
    xT = torch.randn(64, 2, dtype=torch.float64, generator=g)
    _check(_ladder_samplers()[name].sample(diffused, xT, generator=g), "cpu", torch.float64, 64)


def test_generator_on_another_device_is_a_clear_error():
    static, _ = _targets("cpu", torch.float32)
    x0 = torch.randn(8, 2)
    if not torch.cuda.is_available():
        # A meta generator is the device-mismatch case we can build without a GPU.
        try:
            g = torch.Generator(device="meta")
        except RuntimeError:
            pytest.skip("this torch cannot make a non-CPU generator without a GPU")
    else:
        g = torch.Generator(device="cuda")
    with pytest.raises(ValueError, match="generator is on"):
        samplers.MALA(step_size=0.1, n_steps=2).sample(static, x0, generator=g)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(_static_samplers()) + list(_ladder_samplers()))
def test_every_sampler_runs_on_cuda(name):
    static, diffused = _targets("cuda", torch.float32)
    g = torch.Generator(device="cuda").manual_seed(0)
    x0 = torch.randn(256, 2, device="cuda", generator=g)
    sampler = {**_static_samplers(), **_ladder_samplers()}[name]
    target = static if name in _static_samplers() else diffused
    res = sampler.sample(target, x0, generator=g)
    _check(res, "cuda", torch.float32, 256)
    # same seed, same samples on the GPU too
    g2 = torch.Generator(device="cuda").manual_seed(0)
    res2 = sampler.sample(target, torch.randn(256, 2, device="cuda", generator=g2), generator=g2)
    torch.testing.assert_close(res.samples, res2.samples, rtol=0, atol=0)


def test_randn_like_draws_the_stream_of_randn_for_any_layout():
    from samplers.base import randn_like

    for x in (torch.zeros(30, 2), torch.zeros(2, 30).t(), torch.zeros(4, 3, 5, 5).to(memory_format=torch.channels_last)):
        for dtype in (torch.float32, torch.float64):
            x = x.to(dtype)
            a = randn_like(x, torch.Generator().manual_seed(7))
            b = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=dtype)
            assert a.is_contiguous() and a.dtype == dtype and torch.equal(a, b)


def test_float64_cpu_noise_is_standard_normal_from_uniforms():
    """Float64 CPU chains draw uniforms and make N(0, 1) noise by Box–Muller (``samplers.tensors``):
    moments, tails and the independence of a pair's two normals within Monte-Carlo error; an odd
    count uses one spare uniform; other dtypes draw ``torch.randn`` itself."""
    from samplers.tensors import noise_draw, normal_noise

    n_chains, event = 40001, (3, 5)  # 600015 numbers: 600016 uniforms
    x = torch.zeros((n_chains,) + event, dtype=torch.float64)
    draw = noise_draw(x, torch.Generator().manual_seed(11))
    assert draw.shape == (600016,) and bool(((draw >= 0) & (draw < 1)).all())
    z = normal_noise(draw, x)
    assert z.shape == x.shape and z.dtype == torch.float64 and bool(torch.isfinite(z).all())
    flat, n = z.reshape(-1), z.numel()
    se = 1.0 / n ** 0.5
    assert abs(float(flat.mean())) < 4 * se
    assert abs(float(flat.var()) - 1.0) < 4 * 2 ** 0.5 * se  # var of s² ≈ 2/n
    assert abs(float(flat.pow(4).mean()) - 3.0) < 4 * 96 ** 0.5 * se  # E z⁴ = 3, var z⁴ = 96
    tail = float((flat.abs() > 2.0).double().mean())  # P(|z| > 2) = 0.0455
    assert abs(tail - 0.04550026) < 4 * (0.0455 * 0.9545 / n) ** 0.5
    a, b = flat[:300008], flat[300008:]  # the two normals of each pair (first half with second)
    m = b.numel()
    assert abs(float((a[:m] * b).mean())) < 4 / m ** 0.5  # independent: E[z z'] = 0
    assert abs(float((a[:m].square() * b.square()).mean()) - 1.0) < 4 * (8.0 / m) ** 0.5  # E[z² z'²] = 1, var 8
    y = torch.zeros(6, 3)
    got = normal_noise(noise_draw(y, torch.Generator().manual_seed(5)), y)
    assert torch.equal(got, torch.randn(6, 3, generator=torch.Generator().manual_seed(5)))
