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
