"""The Recorder's running statistics equal the naive per-step reductions, on both of its paths.

On the CPU, below ``Recorder._DIRECT_CHAINS`` chains it buffers steps and reduces them in
stacked chunks; from there on it reduces every step at once. On a GPU it buffers at every size
(launches, not memory traffic, are what a step costs there). All must give the same numbers.
"""

from __future__ import annotations

import pytest
import torch

from samplers.base import Recorder, State, StepInfo


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _steps(n_chains, n_steps, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_steps):
        acc = torch.rand(n_chains, generator=g, dtype=dtype).to(device)
        div = (torch.rand(n_chains, generator=g) < 0.1).to(device)
        err = torch.randn(n_chains, generator=g, dtype=dtype).to(device)
        out.append(StepInfo(acceptance=acc, accepted=acc > 0.5, divergent=div, energy_error=err, nfe=2))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_chains", [3, 100, Recorder._DIRECT_CHAINS, 20_000])
def test_running_statistics_equal_the_naive_reductions(n_chains, device):
    steps = _steps(n_chains, 37, device=device)
    rec = Recorder(n_chains, trace_every=10)
    x = torch.zeros(n_chains, 2, device=device)
    for i, info in enumerate(steps):
        rec.record(State(x=x + i, t=None, energy=torch.zeros(n_chains, device=device), grad=None), info)
    assert rec.n_steps == 37 and rec.nfe == 74
    torch.testing.assert_close(torch.stack(rec.acceptance), torch.stack([s.acceptance.mean() for s in steps]))
    torch.testing.assert_close(rec.acc_sum, torch.stack([s.acceptance for s in steps]).sum(0), rtol=1e-5, atol=1e-5)
    naive_div = torch.stack([s.divergent for s in steps]).long().sum(0)
    assert rec.divergent.dtype == torch.long and torch.equal(rec.divergent, naive_div)
    torch.testing.assert_close(
        torch.stack(rec.energy_error), torch.stack([s.energy_error.abs().mean() for s in steps])
    )
    info = rec.info(init_nfe=1)
    assert info["nfe"] == 75 and info["divergences"] == int(naive_div.sum())
    assert info["trace"].shape == (3, n_chains, 2) and float(info["trace"][1, 0, 0]) == 19.0


def test_chunks_follow_the_device():
    """CPU: buffered chunks below ``_DIRECT_CHAINS`` chains, one step at a time from there; any
    other device: chunks at every size (bounded by ``_DEVICE_BUFFER_ELEMENTS``)."""
    for n in (100, Recorder._DIRECT_CHAINS, 100_000, 10_000_000):
        cpu = Recorder(n)._chunk_for(torch.empty(n))
        other = Recorder(n)._chunk_for(torch.empty(n, device="meta"))
        assert cpu == (1 if n >= Recorder._DIRECT_CHAINS else min(Recorder._MAX_CHUNK, Recorder._BUFFER_ELEMENTS // n))
        assert other == min(Recorder._MAX_CHUNK, max(1, Recorder._DEVICE_BUFFER_ELEMENTS // n))
    assert Recorder(100_000)._chunk_for(torch.empty(100_000, device="meta")) > 1
    rec = Recorder(20_000)
    for info in _steps(20_000, 3):
        rec.record(None, info)
    assert rec._chunk == 1 and not rec._pending_acc  # reduced step by step on the CPU


def test_reading_midway_then_recording_more_keeps_counting():
    steps = _steps(50, 12, seed=1)
    rec = Recorder(50)
    for info in steps[:5]:
        rec.record(None, info)
    first = rec.divergent.clone()  # flushes a partial chunk
    for info in steps[5:]:
        rec.record(None, info)
    assert torch.equal(first, torch.stack([s.divergent for s in steps[:5]]).long().sum(0))
    assert torch.equal(rec.divergent, torch.stack([s.divergent for s in steps]).long().sum(0))
    assert len(rec.acceptance) == 12 and len(rec.energy_error) == 12


def test_every_chain_accepted_info_makes_its_tensors_on_demand_and_is_immutable():
    x = torch.zeros(7, 3, dtype=torch.float64)
    info = StepInfo.every_chain_accepted(x, nfe=1)
    assert info.all_accepted and info.nfe == 1 and info.energy_error is None
    assert info.acceptance.dtype == torch.float64 and torch.equal(info.acceptance, torch.ones(7, dtype=torch.float64))
    assert info.accepted.dtype == torch.bool and bool(info.accepted.all()) and not bool(info.divergent.any())
    assert info.acceptance is info.acceptance  # made once
    assert "every chain accepted" in repr(info)
    for name in ("nfe", "acceptance", "accepted", "divergent", "energy_error"):
        with pytest.raises(AttributeError):
            setattr(info, name, None)
    plain = _steps(7, 1)[0]
    assert not plain.all_accepted


@pytest.mark.parametrize("n_chains", [5, Recorder._DIRECT_CHAINS])
def test_unanimous_steps_mixed_with_others_equal_the_naive_reductions(n_chains):
    """Steps counted without tensors (every chain accepted) interleave in order with ordinary ones."""
    ordinary = _steps(n_chains, 9, seed=2)
    x = torch.zeros(n_chains, 2)
    pattern = "UUoooUoUUUooooU"  # U: every chain accepted, o: an ordinary step
    it = iter(ordinary)
    steps = [StepInfo.every_chain_accepted(x, nfe=1) if c == "U" else next(it) for c in pattern]
    rec = Recorder(n_chains)
    for i, info in enumerate(steps):
        rec.record(None, info)
        if i == 6:
            assert len(rec.acceptance) == 7  # reading midway keeps the order and the count
    torch.testing.assert_close(torch.stack(rec.acceptance), torch.stack([s.acceptance.mean() for s in steps]))
    torch.testing.assert_close(rec.acc_sum, torch.stack([s.acceptance for s in steps]).sum(0), rtol=1e-5, atol=1e-5)
    assert torch.equal(rec.divergent, torch.stack([s.divergent for s in steps]).long().sum(0))
    assert len(rec.energy_error) == pattern.count("o")
    info = rec.info()
    assert info["acceptance"].shape == (15,) and info["nfe"] == pattern.count("U") + 2 * pattern.count("o")


def test_only_unanimous_steps():
    x = torch.zeros(4, 2)
    rec = Recorder(4)
    for _ in range(3):
        rec.record(None, StepInfo.every_chain_accepted(x, nfe=1))
    info = rec.info()
    assert torch.equal(info["acceptance"], torch.ones(3)) and torch.equal(info["acceptance_per_chain"], torch.ones(4))
    assert info["divergences"] == 0 and rec.energy_error == [] and "energy_error" not in info
