"""Tests of the composition benchmark (benchmarks/composition_2d.py and its report and tasks) in tiny configurations.

The study itself takes minutes; here it runs on one task with a few samplers in seconds, and the
tests check the files it writes, the n/a bookkeeping, the NFE matching, the harder task's exact
answer, and one real property: on the exact product task, PC + MALA beats plain reverse
diffusion at matched NFE by more than the seed-to-seed spread.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import ebmcompose as ec
from benchmarks import composition_2d as c2d
from benchmarks import composition_tasks
from ebmcompose.cli import experiments


def _row(result, **kw):
    rows = [r for r in result["rows"] if all(r[k] == v for k, v in kw.items())]
    assert len(rows) == 1, (kw, rows)
    return rows[0]


@pytest.fixture(scope="module")
def product_study(tmp_path_factory):
    """Exact product task, DDPM vs PC + MALA at 100 NFE, 3 seeds of 600 chains (a few seconds)."""
    out = tmp_path_factory.mktemp("composition_2d")
    cfg = c2d.StudyConfig(
        n=600, seeds=3, budgets=(100,), tasks=("product",), models=("exact",),
        params=("energy", "epsilon"), samplers=("ddpm", "pc_mala"), plots=True,
    )
    result = c2d.run_study(cfg, out=out, log=lambda *a: None)
    return result, out


def test_study_writes_json_markdown_and_png(product_study):
    result, out = product_study
    files = sorted(p.name for p in out.iterdir())
    assert files == ["composition_2d.json", "composition_2d.md", "composition_2d_product.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    data = json.loads((out / "composition_2d.json").read_text())
    assert {"config", "environment", "tasks", "rows", "findings", "total_seconds", "schedule"} <= set(data)
    assert data["config"]["seeds"] == 3 and data["tasks"]["product"]["tv_floor"] > 0
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    for r in ok:
        for metric in ("tv", "mmd", "loglik", "mode_error", "nfe", "seconds"):
            s = r[metric]
            assert set(s) == {"mean", "se", "values"} and len(s["values"]) == 3, (r["sampler"], metric)
            assert all(math.isfinite(v) for v in s["values"])
    # exact sampling + (ddpm, pc_mala) x (energy, epsilon), the ε PC + MALA being n/a
    assert len(data["rows"]) == 5
    na = _row(data, param="epsilon", sampler="pc_mala")
    assert na["status"] == "n/a" and "energy" in na["reason"]
    assert (out / "composition_2d_product.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "composition_2d.md").read_text()
    for needle in ("## Summary", "## Notes", "TV floor", "n/a", "PC + MALA", "reverse diffusion (DDPM)",
                   "Does MCMC correction beat reverse diffusion at matched NFE?", "expression evaluations"):
        assert needle in md, needle


def test_pc_mala_beats_reverse_diffusion_on_the_exact_product(product_study):
    """Du et al.'s claim at matched NFE, with a margin from the seeds' spread."""
    result, _ = product_study
    ddpm = _row(result, model="exact", param="energy", sampler="ddpm")
    pc = _row(result, model="exact", param="energy", sampler="pc_mala")
    assert abs(pc["nfe"]["mean"] - ddpm["nfe"]["mean"]) <= 3  # matched budgets
    se = math.hypot(ddpm["tv"]["se"], pc["tv"]["se"])
    margin = max(4.0 * se, 0.05)
    assert pc["tv"]["mean"] < ddpm["tv"]["mean"] - margin, (pc["tv"], ddpm["tv"])
    # ... and it gets the two modes' weights right where DDPM does not
    assert pc["mode_error"]["mean"] < ddpm["mode_error"]["mean"]
    # Metropolis acceptance is reported for MALA (adapted towards 0.57), not for DDPM
    assert 0.3 < pc["acceptance"]["mean"] < 0.9 and ddpm["acceptance"] is None
    # the score-only copy of the exact model follows the same score: same numbers
    eps = _row(result, model="exact", param="epsilon", sampler="ddpm")
    assert eps["tv"]["values"] == pytest.approx(ddpm["tv"]["values"], abs=1e-9)
    verdicts = [f for f in result["findings"] if f["kind"] == "mcmc_vs_reverse" and f["param"] == "energy"]
    assert verdicts and verdicts[0]["verdict"] == "better"


def test_mixture_of_score_only_models_is_not_applicable():
    cfg = c2d.StudyConfig(n=100, seeds=1, budgets=(20,), tasks=("mixture",), models=("exact",),
                          params=("epsilon",), samplers=("ddpm", "pc_ula"), plots=False)
    result = c2d.run_study(cfg, log=lambda *a: None)
    for s in ("ddpm", "pc_ula"):
        r = _row(result, sampler=s, param="epsilon")
        assert r["status"] == "n/a" and "|" in r["reason"]
    assert "n/a" in c2d.format_markdown(result)


def test_main_cli_tiny_run(tmp_path):
    out = tmp_path / "res"
    rc = c2d.main(["--quick", "--tasks", "negation", "--models", "exact", "--samplers", "ddpm", "pc_ula",
                   "--seeds", "1", "--n", "200", "--out", str(out), "--no-plots"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["composition_2d.json", "composition_2d.md"]
    data = json.loads((out / "composition_2d.json").read_text())
    assert data["config"]["quick"] is True and data["config"]["tasks"] == ["negation"]
    assert "Quick smoke run" in (out / "composition_2d.md").read_text()


@pytest.mark.parametrize("budget", [40, 100])
def test_sampler_budgets_are_matched(budget):
    task = c2d.get_task("product")
    schedule = ec.VPSchedule.cosine()
    energy = task.composed_diffused(schedule)
    cost = c2d.expression_cost(energy, "cpu", torch.get_default_dtype())
    assert cost == 2  # one NFE per analytic leaf
    configs = c2d.sampler_configs(schedule, budget, final_correction=True, t_max=0.99)
    for name, sampler in configs.items():
        res = sampler.sample(energy, shape=(16, 2), generator=torch.Generator().manual_seed(0))
        nfe = experiments.summarize(res.info).nfe / cost
        assert abs(nfe - budget) <= 0.05 * budget, (name, nfe)


def test_every_sampler_starts_its_ladder_at_t_max():
    configs = c2d.sampler_configs(ec.VPSchedule.cosine(), 40, final_correction=True, t_max=0.99)
    for name, sampler in configs.items():
        expected = c2d.FKC_T_MAX if name == "smc_fkc" else 0.99  # FKC weights need small steps: a later start
        assert float(sampler.ladder()[0]) == pytest.approx(expected), name


def test_tilted_task_is_exact_with_unequal_modes():
    task = c2d.tilted_task(dtype=torch.float64)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    # the closed-form product equals the composed energy up to a constant
    diff = task.composed.energy(x) + task.exact.log_prob(x)
    assert float(diff.max() - diff.min()) < 1e-8
    means, weights = composition_tasks.ring_modes(task)
    top = weights.sort(descending=True).values
    assert top[:2].sum() > 0.99 and 0.7 < float(top[0]) < 0.85
    fn, _ = c2d.mode_error_fn(task)
    assert fn(task.sample_exact(4000, generator=torch.Generator().manual_seed(2))) < 0.03
