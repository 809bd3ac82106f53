"""Tests of the VP noise schedules: closed forms, invariants, and the diffusers bridge."""

import math

import pytest
import torch

import ebmcompose as ec
from ebmcompose.schedule import ALPHA_BAR_MIN

DT = torch.float64
diffusers = pytest.importorskip("diffusers")


def ddpm(beta_schedule, n):
    return diffusers.DDPMScheduler(num_train_timesteps=n, beta_schedule=beta_schedule)


DISCRETE = [("linear", 1000), ("linear", 50), ("squaredcos_cap_v2", 1000), ("squaredcos_cap_v2", 50)]


def all_schedules():
    return [
        ec.VPSchedule.cosine(),
        ec.VPSchedule.cosine(s=0.0),
        ec.VPSchedule.linear(),
        ec.VPSchedule.linear(0.5, 5.0),
    ] + [ec.VPSchedule.from_diffusers(ddpm(b, n)) for b, n in DISCRETE]


SCHEDULES = all_schedules()
IDS = [repr(s) for s in SCHEDULES]


# ------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("s", [0.008, 0.0, 0.1])
def test_cosine_closed_form(s):
    sch = ec.VPSchedule.cosine(s=s)
    t = torch.linspace(0, 0.99, 200, dtype=DT)
    f = lambda u: torch.cos(0.5 * math.pi * (u + s) / (1 + s)) ** 2
    want = f(t) / f(torch.zeros((), dtype=DT))
    torch.testing.assert_close(sch.alpha_bar(t), want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sch.sigma(t), torch.sqrt(1 - want), rtol=1e-9, atol=1e-12)
    # beta(t) = -d log alpha_bar / dt = pi/(1+s) * tan(pi/2 (t+s)/(1+s))
    want_beta = math.pi / (1 + s) * torch.tan(0.5 * math.pi * (t + s) / (1 + s))
    torch.testing.assert_close(sch.beta(t), want_beta, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bmin,bmax", [(0.1, 20.0), (0.5, 5.0), (1.0, 1.0)])
def test_linear_closed_form(bmin, bmax):
    sch = ec.VPSchedule.linear(bmin, bmax)
    t = torch.linspace(0, 1, 101, dtype=DT)
    torch.testing.assert_close(
        sch.alpha_bar(t), torch.exp(-bmin * t - 0.5 * (bmax - bmin) * t**2), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(sch.beta(t), bmin + t * (bmax - bmin), rtol=1e-12, atol=1e-12)


def test_linear_default_approximates_ddpm_linear():
    """The docstring's claim: linear(0.1, 20) is the continuous limit of DDPM's 1000 steps."""
    sch = ec.VPSchedule.linear()
    ac = ddpm("linear", 1000).alphas_cumprod.double()
    t = torch.arange(1, 1001, dtype=DT) / 1000
    assert float((sch.log_alpha_bar(t) - torch.log(ac)).abs().max()) < 0.1


# ------------------------------------------------------------------------------ invariants
@pytest.mark.parametrize("sch", SCHEDULES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, DT])
def test_invariants_and_endpoints(sch, dtype):
    t = torch.cat([torch.linspace(0, 1, 1001, dtype=dtype), torch.tensor([1e-7, 1 - 1e-7], dtype=dtype)])
    t, _ = torch.sort(t)
    ab = sch.alpha_bar(t)
    assert ab.dtype == dtype and ab.shape == t.shape
    assert bool((ab >= sch.alpha_bar_min * (1 - 1e-6)).all()) and bool((ab <= 1).all())
    assert bool((ab[1:] <= ab[:-1]).all()), "alpha_bar must be non-increasing"
    assert float(ab[0]) == 1.0 and float(ab[-1]) < 0.7
    for name in ("alpha_bar", "alpha", "sigma", "beta", "log_snr", "log_alpha_bar"):
        v = getattr(sch, name)(t)
        assert bool(torch.isfinite(v).all()), f"{name} has NaN/inf on [0, 1]"
    sig = sch.sigma(t)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(sig**2 + ab, torch.ones_like(t), rtol=0, atol=tol)
    torch.testing.assert_close(sch.alpha(t), torch.sqrt(ab), rtol=tol, atol=tol)
    assert bool((sch.beta(t) >= 0).all())
    assert bool((sig[1:] >= sig[:-1]).all())
    # sigma(0) is exactly +0 (so 1/sigma(0) is +inf, never -inf)
    s0 = sch.sigma(torch.zeros((), dtype=dtype))
    assert float(s0) == 0.0 and not bool(torch.signbit(s0))
    assert float(sch.sigma(0.0, floor=1e-3)) == pytest.approx(1e-3)
    assert float(sch.alpha(0.0)) == 1.0


@pytest.mark.parametrize("sch", SCHEDULES, ids=IDS)
def test_beta_is_finite_difference_of_minus_log_alpha_bar(sch):
    h = 1e-6
    # interior points between grid nodes of discrete schedules (piecewise linear there)
    t = torch.tensor([0.0513, 0.2371, 0.5027, 0.7491, 0.9313], dtype=DT)
    fd = -(sch.log_alpha_bar(t + h) - sch.log_alpha_bar(t - h)) / (2 * h)
    torch.testing.assert_close(sch.beta(t), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("sch", SCHEDULES, ids=IDS)
def test_log_snr(sch):
    t = torch.linspace(0.01, 0.99, 50, dtype=DT)
    ab = sch.alpha_bar(t)
    torch.testing.assert_close(sch.log_snr(t), torch.log(ab / (1 - ab)), rtol=1e-10, atol=1e-10)
    assert bool((sch.log_snr(t)[1:] < sch.log_snr(t)[:-1]).all())


def test_quantities_follow_t_shape_and_dtype():
    sch = ec.VPSchedule.cosine()
    assert sch.alpha_bar(0.5).shape == () and sch.alpha_bar(0.5).dtype == torch.get_default_dtype()
    t = torch.rand(3, 4, dtype=DT)
    for name in ("alpha_bar", "alpha", "sigma", "beta", "log_snr"):
        v = getattr(sch, name)(t)
        assert v.shape == (3, 4) and v.dtype == DT
    assert sch.alpha_bar(torch.tensor([0, 1])).is_floating_point()  # integer t promoted


# ------------------------------------------------------------------------------ timesteps
@pytest.mark.parametrize("sch", SCHEDULES, ids=IDS)
@pytest.mark.parametrize("n", [1, 7, 50])
def test_timesteps(sch, n):
    ts = sch.timesteps(n)
    assert ts.shape == (n + 1,) and ts.dtype == torch.get_default_dtype()
    assert float(ts[0]) == 1.0 and float(ts[-1]) == 0.0
    assert bool((ts[1:] < ts[:-1]).all()), "timesteps must be strictly decreasing"
    if sch.is_discrete and n > round(0.7 * sch.num_train_timesteps):
        # not enough training steps between 0.1 and 0.8 for n distinct times
        with pytest.raises(ValueError, match=r"at most \d+ steps between t_min=0.1 and t_max=0.8"):
            sch.timesteps(n, t_max=0.8, t_min=0.1)
        return
    ts64 = sch.timesteps(n, t_max=0.8, t_min=0.1, dtype=DT)
    assert ts64.dtype == DT and ts64.shape == (n + 1,)
    assert bool((ts64[1:] < ts64[:-1]).all())
    assert abs(float(ts64[0]) - 0.8) <= 1 / 50 and abs(float(ts64[-1]) - 0.1) <= 1 / 50


def test_continuous_timesteps_are_even():
    ts = ec.VPSchedule.cosine().timesteps(4, dtype=DT)
    torch.testing.assert_close(ts, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=DT))
    assert ec.VPSchedule.cosine().to_discrete(ts).tolist() == [999, 749, 499, 249, 0]


def test_continuous_linear_sends_a_ddpm_unet_the_step_diffusers_would():
    """``VPSchedule.linear()`` stands for DDPM's 1000-step linear schedule: step k at t = (k+1)/1000,
    the convention of ``from_diffusers`` (``round(999 t)`` was one step late for k < 499)."""
    ddpm = ec.VPSchedule.from_diffusers(diffusers.DDPMScheduler(beta_schedule="linear"))
    lin = ec.VPSchedule.linear()
    k = torch.arange(1000)
    t = (k.double() + 1) / 1000
    assert torch.equal(lin.to_discrete(t), k) and torch.equal(lin.to_discrete(t), ddpm.to_discrete(t))
    assert torch.equal(lin.to_timestep(t.float()), k.float())
    fine = torch.linspace(0, 1, 4001, dtype=torch.float64)
    assert torch.equal(lin.to_discrete(fine), ddpm.to_discrete(fine))
    # and there the continuous alpha_bar is DDPM's: log alpha_bar within 10% of it at every step
    rel = (lin.alpha_bar(t).log() / ddpm.alpha_bar(t).log() - 1).abs()
    assert float(rel.max()) < 0.1, float(rel.max())


# ------------------------------------------------------------------------------ diffusers bridge
@pytest.mark.parametrize("beta_schedule,n_train", DISCRETE)
@pytest.mark.parametrize("cls_name", ["DDPMScheduler", "DDIMScheduler"])
def test_from_diffusers_reproduces_alphas_cumprod(beta_schedule, n_train, cls_name):
    scheduler = getattr(diffusers, cls_name)(num_train_timesteps=n_train, beta_schedule=beta_schedule)
    ac = scheduler.alphas_cumprod
    sch = ec.VPSchedule.from_diffusers(scheduler)
    assert sch.is_discrete and sch.num_train_timesteps == n_train
    k = torch.arange(n_train)
    t64 = (k + 1).to(DT) / n_train
    torch.testing.assert_close(sch.alpha_bar(t64), ac.to(DT), rtol=1e-10, atol=0)
    t32 = (k + 1).float() / n_train
    torch.testing.assert_close(sch.alpha_bar(t32), ac, rtol=1e-5, atol=0)
    assert float(sch.alpha_bar(0.0)) == 1.0
    assert sch.to_discrete(t32).tolist() == k.tolist()
    assert sch.to_discrete(t64).tolist() == k.tolist()
    # between grid points log alpha_bar is linear
    mid = (k[:-1] + 1.5).to(DT) / n_train
    la = torch.log(ac.to(DT))
    torch.testing.assert_close(sch.log_alpha_bar(mid), 0.5 * (la[:-1] + la[1:]), rtol=1e-10, atol=1e-12)
    # the raw tensor works as well
    raw = ec.VPSchedule.from_diffusers(ac)
    torch.testing.assert_close(raw.alpha_bar(t64), sch.alpha_bar(t64))


@pytest.mark.parametrize("beta_schedule,n_train", DISCRETE)
@pytest.mark.parametrize("dtype", [torch.float32, DT])
def test_from_diffusers_timesteps_snap_to_the_grid(beta_schedule, n_train, dtype):
    sch = ec.VPSchedule.from_diffusers(ddpm(beta_schedule, n_train))
    for n in sorted({1, 3, 7, 10, 49, n_train // 2, n_train}):
        ts = sch.timesteps(n, dtype=dtype)
        assert ts.shape == (n + 1,) and float(ts[0]) == 1.0 and float(ts[-1]) == 0.0
        assert bool((ts[1:] < ts[:-1]).all())
        scaled = ts.double() * n_train
        torch.testing.assert_close(scaled, scaled.round(), rtol=0, atol=1e-4)  # on the grid
        ks = sch.to_discrete(ts[:-1])  # where a sampler evaluates the model
        assert ks.dtype == torch.long
        assert int(ks[0]) == n_train - 1 and int(ks.min()) >= 0
        assert bool((ks[1:] < ks[:-1]).all()), "distinct, decreasing integer timesteps"
        # alpha_bar at those times is exactly the scheduler's
        ac = sch.alphas_cumprod.to(dtype)
        torch.testing.assert_close(sch.alpha_bar(ts[:-1]), ac[ks], rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match=f"at most {n_train} steps"):
        sch.timesteps(n_train + 1)


# ------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("n", [0, -3, 2.0, True, "10", None])
def test_timesteps_bad_n(n):
    with pytest.raises(ValueError, match="positive integer"):
        ec.VPSchedule.cosine().timesteps(n)


@pytest.mark.parametrize("t_max,t_min", [(0.5, 0.5), (0.2, 0.5), (1.5, 0.0), (1.0, -0.1), (float("nan"), 0.0)])
def test_timesteps_bad_range(t_max, t_min):
    with pytest.raises(ValueError, match="t_min < t_max"):
        ec.VPSchedule.linear().timesteps(10, t_max=t_max, t_min=t_min)


@pytest.mark.parametrize(
    "ac,match",
    [
        (torch.tensor([0.9, 0.95, 0.5]), "non-increasing"),
        (torch.tensor([0.9, 0.0]), r"\(0, 1\]"),
        (torch.tensor([1.2, 0.5]), r"\(0, 1\]"),
        (torch.tensor([0.9, -0.1]), r"\(0, 1\]"),
        (torch.tensor([0.9, float("nan"), 0.5]), "NaN"),
        (torch.tensor([0.9, float("inf")]), "NaN or inf"),
        (torch.tensor([0.9]), "at least 2"),
        (torch.rand(4, 5), "1-D"),
    ],
)
def test_from_diffusers_bad_alphas_cumprod(ac, match):
    with pytest.raises(ValueError, match=match):
        ec.VPSchedule.from_diffusers(ac)


def test_from_diffusers_not_a_scheduler():
    with pytest.raises(TypeError, match="alphas_cumprod"):
        ec.VPSchedule.from_diffusers(object())


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="s must be >= 0"):
        ec.VPSchedule.cosine(s=-0.1)
    with pytest.raises(ValueError, match="beta_min <= beta_max"):
        ec.VPSchedule.linear(2.0, 1.0)
    with pytest.raises(ValueError, match="beta_min <= beta_max"):
        ec.VPSchedule.linear(-1.0, 1.0)
    for bad in (0.0, 1.0, -1e-3):
        with pytest.raises(ValueError, match=r"alpha_bar_min must be in \(0, 1\)"):
            ec.VPSchedule.cosine(alpha_bar_min=bad)


def test_alpha_bar_min_clamp():
    sch = ec.VPSchedule.linear(10.0, 50.0, alpha_bar_min=1e-6)  # log ab(1) = -30 without clamp
    assert float(sch.alpha_bar(1.0)) == pytest.approx(1e-6)
    assert ec.VPSchedule.cosine().alpha_bar_min == ALPHA_BAR_MIN
    # an explicit clamp on a discrete schedule is honoured
    s = ec.VPSchedule.from_diffusers(ddpm("squaredcos_cap_v2", 1000), alpha_bar_min=1e-4)
    assert float(s.alpha_bar(torch.tensor(1.0, dtype=DT))) == pytest.approx(1e-4)


def test_repr():
    assert "cosine" in repr(ec.VPSchedule.cosine())
    assert "linear(beta_min=0.1, beta_max=20)" in repr(ec.VPSchedule.linear())
    assert "N=50" in repr(ec.VPSchedule.from_diffusers(ddpm("linear", 50)))


def test_discrete_timesteps_strictly_decreasing_for_every_feasible_n():
    sch = ec.VPSchedule.from_diffusers(ddpm("linear", 50))
    for t_max, t_min in [(1.0, 0.0), (0.8, 0.1), (0.55, 0.3)]:
        avail = round(t_max * 50) - round(t_min * 50)
        for n in range(1, avail + 1):
            ts = sch.timesteps(n, t_max=t_max, t_min=t_min, dtype=DT)
            assert ts.shape == (n + 1,)
            assert bool((ts[1:] < ts[:-1]).all()), (t_max, t_min, n)
            torch.testing.assert_close(ts * 50, (ts * 50).round(), rtol=0, atol=1e-9)
        with pytest.raises(ValueError, match=f"at most {avail} steps"):
            sch.timesteps(avail + 1, t_max=t_max, t_min=t_min)
