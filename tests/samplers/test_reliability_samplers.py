"""The Python API reports what the CLI reports: divergences, escaped samples, acceptance near 0 or 1,
frozen chains (``info.warnings``, Python warnings, ``on_divergence``), static energies refused by
diffusion samplers, and edge inputs. Reproductions from issue 14 are kept as they were filed."""

import warnings

import pytest
import torch

import ebmcompose as ec
import toy
from samplers import HMC, MALA, ULA, AnnealedLangevin, PredictorCorrector, ReverseDiffusion, health
from samplers.mala import MALAInfo

RING = toy.ring()
SCHEDULE = ec.VPSchedule.linear()


def start(n=100, seed=0):
    return 3.0 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def run(kernel, energy=RING, x0=None, **kw):
    """``kernel.sample`` with every SamplingWarning recorded; ``(result, [warning messages])``."""
    x0 = start() if x0 is None else x0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = kernel.sample(energy, x0, generator=torch.Generator().manual_seed(1), **kw)
    msgs = [str(w.message) for w in caught if issubclass(w.category, health.SamplingWarning)]
    return res, msgs


def kinds(res):
    return {p.kind for p in res.info.warnings}


# ------------------------------------------------------------------------ the reproductions
def test_ula_with_a_huge_step_warns_about_divergences_and_escaped_samples():
    res, msgs = run(ULA(step_size=10, n_steps=50))
    assert float(res.samples.abs().max()) > 1e6  # what the user got silently before
    assert {"divergence", "escaped"} <= kinds(res)
    assert res.info.divergences > 0 and res.warnings == res.info.warnings
    assert any(m.startswith("ULA: ") and "diverged" in m for m in msgs)
    assert any("times the scale of the start points" in m for m in msgs)
    assert all("\n" not in m for m in msgs)  # one line each
    with pytest.raises(health.DivergenceError, match="ULA diverged") as info:
        run(ULA(step_size=10, n_steps=50), on_divergence="raise")
    assert {p.kind for p in info.value.problems} >= {"divergence", "escaped"}


def test_mala_with_a_huge_step_warns_about_zero_acceptance_and_frozen_chains():
    x0 = start()
    res, msgs = run(MALA(step_size=1e3, n_steps=50), x0=x0)
    assert res.info.mean_acceptance == 0.0
    assert torch.equal(res.samples, x0)  # the start points, returned unchanged
    assert {"low_acceptance", "frozen"} <= kinds(res)
    assert any("mean acceptance was 0" in m for m in msgs)
    assert any(f"{x0.shape[0]} of {x0.shape[0]} chains never moved" in m for m in msgs)
    # the log ratio is finite but far beyond 1000: counted as divergences, as BlackJAX does
    assert res.info.divergences == 50 * x0.shape[0]
    with pytest.raises(health.DivergenceError):
        run(MALA(step_size=1e3, n_steps=50), x0=x0, on_divergence="raise")


def test_hmc_with_a_huge_step_counts_its_divergences():
    res, msgs = run(HMC(step_size=50, n_leapfrog=3, n_steps=10), x0=start(50))
    assert res.info.divergences == 10 * 50
    assert "divergence" in kinds(res) and any("500 of 500 proposals diverged" in m for m in msgs)


def test_ignore_records_the_problems_without_warning():
    res, msgs = run(ULA(step_size=10, n_steps=50), on_divergence="ignore")
    assert msgs == [] and {"divergence", "escaped"} <= kinds(res)


def test_on_divergence_is_checked():
    with pytest.raises(ec.InputError, match="on_divergence must be one of"):
        MALA(step_size=0.1, n_steps=2).sample(RING, start(4), on_divergence="loud")


# ------------------------------------------------------------------------ the parts
def test_an_energy_error_above_the_threshold_is_a_divergence():
    err = torch.tensor([0.0, 999.0, 1001.0, -2000.0, 0.0])
    nonfinite = torch.tensor([False, False, False, False, True])
    info = MALAInfo(acceptance=torch.zeros(5), accepted=torch.zeros(5, dtype=torch.bool), divergent=nonfinite,
                    nfe=1, energy_error=err)
    assert health.divergent(info).tolist() == [False, False, True, True, True]


def test_a_healthy_run_has_no_warnings():
    gauss = toy.GaussianMixture(torch.zeros(1, 2), stds=[1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", health.SamplingWarning)
        res = MALA(n_steps=30, n_warmup=50).sample(gauss, torch.randn(200, 2, generator=torch.Generator().manual_seed(0)),
                                                   generator=torch.Generator().manual_seed(1))
        res_ula = ULA(step_size=0.1, n_steps=30).sample(gauss, torch.randn(200, 2), generator=torch.Generator().manual_seed(2))
    assert res.info.warnings == () and res_ula.info.warnings == ()
    assert res.info.divergences == 0 and 0.3 < res.info.mean_acceptance < 0.9


def test_a_tiny_fixed_step_warns_but_an_adapted_one_does_not():
    gauss = toy.GaussianMixture(torch.zeros(1, 2), stds=[1.0])
    res, msgs = run(MALA(step_size=1e-6, n_steps=10), energy=gauss, x0=torch.randn(50, 2))
    assert kinds(res) == {"high_acceptance"} and not res.info.warnings[0].fatal
    assert any("far too small" in m for m in msgs)
    adapted, _ = run(MALA(n_steps=10, n_warmup=30), energy=gauss, x0=torch.randn(50, 2))
    assert "high_acceptance" not in kinds(adapted)


def test_predictor_corrector_acceptance_has_no_nan():
    gm = toy.GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), stds=[0.5, 0.5])
    pc = PredictorCorrector(SCHEDULE, 8, corrector=MALA(step_size=0.1, n_steps=1), window=(0.3, 0.7))
    res = pc.sample(gm.diffused(SCHEDULE), shape=(32, 2), generator=torch.Generator().manual_seed(0))
    assert not bool(res.info.corrected.all())  # some levels were not corrected
    assert torch.isfinite(res.info.acceptance.mean()) and torch.isfinite(res.info.acceptance_per_chain).all()
    assert res.info.mean_acceptance == pytest.approx(float(res.info.acceptance.double().mean()))


# ------------------------------------------------------------------------ static energies
def _ladders():
    return {
        "ReverseDiffusion": lambda **kw: ReverseDiffusion(SCHEDULE, 4, **kw),
        "PredictorCorrector": lambda **kw: PredictorCorrector(SCHEDULE, 4, corrector=ULA(step_size=0.1, n_steps=1), **kw),
        "AnnealedLangevin": lambda **kw: AnnealedLangevin(SCHEDULE, 3, 1, step_size=0.01, **kw),
    }


@pytest.mark.parametrize("name", list(_ladders()))
def test_diffusion_samplers_refuse_a_static_energy_unless_told(name):
    make = _ladders()[name]
    gm = toy.GaussianMixture(torch.zeros(1, 2), stds=[1.0])
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ec.InputError, match=rf"{name} steps down a ladder.*static.*static_ok=True"):
        make().sample(gm, shape=(8, 2), generator=g)
    assert make(static_ok=True).sample(gm, shape=(8, 2), generator=g).samples.shape == (8, 2)
    # time-dependent energies, and functions with an optional t, are not static
    assert make().sample(gm.diffused(SCHEDULE), shape=(8, 2), generator=g).samples.shape == (8, 2)
    opt = ec.EnergyFunction(lambda x, t=None: 0.5 * (x ** 2).sum(-1))
    assert make().sample(opt, shape=(8, 2), generator=g).samples.shape == (8, 2)


# ------------------------------------------------------------------------ edge inputs
@pytest.mark.parametrize("kernel", [ULA(step_size=0.1, n_steps=2), MALA(step_size=0.1, n_steps=2),
                                    HMC(step_size=0.1, n_leapfrog=2, n_steps=2)])
def test_an_empty_batch_is_a_clear_error(kernel):
    with pytest.raises(ec.InputError, match="empty batch"):
        kernel.sample(RING, torch.zeros(0, 2))
    with pytest.raises(ec.InputError, match="empty batch"):
        ReverseDiffusion(SCHEDULE, 3).sample(RING.diffused(SCHEDULE), torch.zeros(0, 2))
    with pytest.raises(ec.InputError, match="positive sizes"):
        ReverseDiffusion(SCHEDULE, 3).sample(RING.diffused(SCHEDULE), shape=(0, 2))
