"""``samplers.record.Recorder``: a run recorded in chunks gives what the same steps recorded one by one give."""

import pytest
import torch

from samplers.base import State
from samplers.health import DIVERGENCE_THRESHOLD, divergent_flags
from samplers.mala import MALAInfo
from samplers.record import Recorder

B, D = 6, 3


def _steps(n, seed=0):
    """``n`` synthetic steps: (state after the step, info) with some divergent and some large-error chains."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(B, D, generator=g, dtype=torch.float64)
        e = torch.randn(B, generator=g, dtype=torch.float64)
        acc = torch.rand(B, generator=g, dtype=torch.float64)
        err = torch.randn(B, generator=g, dtype=torch.float64) * DIVERGENCE_THRESHOLD  # some above the threshold
        div = torch.rand(B, generator=g) < 0.2
        info = MALAInfo(acceptance=acc, accepted=acc > 0.5, divergent=div, nfe=1, energy_error=err)
        out.append((State(x=x, energy=e, grad=torch.zeros_like(x), t=None), info))
    return out


def _chunk(steps):
    """What ``MCMCKernel.steps`` hands ``record_chunk`` for these steps: means, sums, kept."""
    vals = torch.stack([torch.stack([i.acceptance, divergent_flags(i.divergent, i.energy_error).double(),
                                     i.energy_error.abs(), torch.full((B,), float(i.nfe), dtype=torch.float64)])
                        for _, i in steps])  # (n, 4, B)
    kept = (torch.stack([s.x for s, _ in steps]), torch.stack([s.energy for s, _ in steps]))
    return vals.mean(dim=2), vals.sum(dim=0), kept


@pytest.mark.parametrize("every", [1, 3])
def test_chunks_record_what_single_steps_record(every):
    steps = _steps(12)
    one, chunked = Recorder(every), Recorder(every)
    for s, i in steps:
        one.record(s, i)
    start = 0
    for n in (4, 5, 3):  # chunk boundaries that do not fall on trace steps
        part = steps[start:start + n]
        means, sums, kept = _chunk(part)
        chunked.record_chunk(part[-1][0], means, sums, kept)
        start += n
    assert chunked.n_steps == one.n_steps == 12 and chunked.nfe == one.nfe == 12
    for name in ("acceptance", "divergences", "energy_error", "trace", "energy_trace"):
        a, b = Recorder.steps(getattr(chunked, name)), Recorder.steps(getattr(one, name))
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-12, atol=1e-12, msg=name)
    assert Recorder.steps(one.trace).shape == (12 // every, B, D)
    torch.testing.assert_close(chunked.acc_sum, one.acc_sum)
    assert chunked.total_divergences() == one.total_divergences() > 0
    torch.testing.assert_close(chunked.mean_acceptance(), one.mean_acceptance())


def test_chunk_without_kept_positions_traces_the_state_that_ends_on_a_trace_step():
    steps = _steps(6, seed=1)
    rec = Recorder(3)
    for lo in (0, 3):  # chunks cut on trace steps, as ``samplers.run`` cuts them
        means, sums, _ = _chunk(steps[lo:lo + 3])
        rec.record_chunk(steps[lo + 2][0], means, sums)
    torch.testing.assert_close(Recorder.steps(rec.trace), torch.stack([steps[2][0].x, steps[5][0].x]))
    assert Recorder.steps([]) is None and Recorder().mean_acceptance() is None and Recorder().total_divergences() == 0


def _expected(steps):
    """Per-step statistics computed directly from each info."""
    infos = [i for _, i in steps]
    return dict(
        acceptance=torch.stack([i.acceptance.mean() for i in infos]),
        divergences=torch.stack([divergent_flags(i.divergent, i.energy_error).sum() for i in infos]),
        energy_error=torch.stack([i.energy_error.abs().mean() for i in infos]),
        acc_sum=torch.stack([i.acceptance for i in infos]).sum(0),
    )


@pytest.mark.parametrize("numbers, most", [(2 ** 18, 4), (3 * B, 32), (B, 32)])
def test_single_steps_are_held_in_bounded_blocks_and_read_whole_at_any_time(monkeypatch, numbers, most):
    """Held steps never exceed PENDING_STEPS or PENDING_NUMBERS; reading midway reduces what is held."""
    import samplers.record as record

    monkeypatch.setattr(record, "PENDING_NUMBERS", numbers)
    monkeypatch.setattr(record, "PENDING_STEPS", most)
    steps = _steps(11, seed=2)
    rec = Recorder()
    for k, (s, i) in enumerate(steps):
        rec.record(s, i)
        assert len(rec._pending) <= min(most, numbers // B) - 1, k  # reduced as soon as a block is full
        if k == 6:  # a read midway sees every step so far
            assert Recorder.steps(rec.acceptance).shape == (7,)
    want = _expected(steps)
    for name in ("acceptance", "divergences", "energy_error"):
        torch.testing.assert_close(Recorder.steps(getattr(rec, name)), want[name].to(torch.float64), rtol=1e-12,
                                   atol=1e-12, msg=name, check_dtype=False)
    torch.testing.assert_close(rec.acc_sum, want["acc_sum"])
    assert rec.total_divergences() == int(want["divergences"].sum()) > 0 and rec.n_steps == rec.nfe == 11


def test_steps_with_and_without_an_energy_error_are_recorded_in_order():
    """A gradient-only step (no energy error) between Metropolis steps: every step's acceptance, the
    Metropolis steps' energy errors only."""
    from samplers.ula import ULAInfo

    steps = _steps(4, seed=3)
    ones = torch.ones(B, dtype=torch.float64)
    moved = (State(x=torch.zeros(B, D, dtype=torch.float64), energy=None, grad=torch.zeros(B, D, dtype=torch.float64)),
             ULAInfo(acceptance=ones, accepted=ones > 0, divergent=ones < 0, nfe=1))
    order = [steps[0], steps[1], moved, steps[2], moved, steps[3]]
    rec = Recorder()
    for s, i in order:
        rec.record(s, i)
    want = _expected([steps[0], steps[1], steps[2], steps[3]])
    got_acc = Recorder.steps(rec.acceptance)
    torch.testing.assert_close(got_acc[[0, 1, 3, 5]], want["acceptance"])
    assert (got_acc[[2, 4]] == 1).all()
    torch.testing.assert_close(Recorder.steps(rec.energy_error), want["energy_error"])
    torch.testing.assert_close(rec.acc_sum, want["acc_sum"] + 2)
