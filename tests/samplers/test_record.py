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
