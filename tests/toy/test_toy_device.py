"""Device following: toy energies, samplers and reference sampling on CUDA match the CPU."""

import copy

import pytest
import torch

import ebmcompose as ec
import toy

pytestmark = pytest.mark.gpu
F64 = torch.float64


def test_energies_follow_the_device():
    schedule = ec.VPSchedule.cosine()
    for name in toy.tasks.names():
        task = toy.tasks.get(name, dtype=F64)
        x = 3.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
        t = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=F64)
        cpu = task.composed_diffused(schedule).energy_and_grad(x, t)
        cuda = copy.deepcopy(task.composed_diffused(schedule)).to("cuda").energy_and_grad(x.cuda(), t.cuda())
        for a, b in zip(cpu, cuda):
            assert b.device.type == "cuda"
            torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-10)


def test_sampling_on_cuda_with_a_cpu_generator_matches_cpu():
    gm = toy.ring(dtype=F64)
    gm_cuda = copy.deepcopy(gm).to("cuda")
    a = gm.sample(100, generator=torch.Generator().manual_seed(0))
    b = gm_cuda.sample(100, generator=torch.Generator().manual_seed(0))
    assert b.device.type == "cuda"
    torch.testing.assert_close(b.cpu(), a)
    c = gm_cuda.sample(100, generator=torch.Generator("cuda").manual_seed(0))
    assert c.device.type == "cuda"
    x = toy.reference_sample(gm_cuda, 100, (-6.0, 6.0), resolution=64, generator=torch.Generator().manual_seed(1))
    y = toy.reference_sample(gm, 100, (-6.0, 6.0), resolution=64, generator=torch.Generator().manual_seed(1))
    assert x.device.type == "cuda"
    torch.testing.assert_close(x.cpu(), y)
