"""benchmarks/smc_tilted.py in its --quick mode: files, structure, matched budgets, the exact log Z."""

from __future__ import annotations

import json
import math

import torch

from benchmarks import smc_tilted
from benchmarks.composition_tasks import get_task


def test_exact_log_z_is_the_product_normaliser():
    task = get_task("tilted")
    # Z = ∫ Π p_i: the same value at any point where the product mixture is evaluated
    lz = smc_tilted.exact_log_z(task)
    x = torch.tensor([[2.5, 2.0]], dtype=torch.float64)
    e = sum(float(c.double().energy(x)) for c in task.components.values())
    assert math.isclose(lz, -e - float(task.exact.double().log_prob(x)), abs_tol=1e-4)  # float32 parameters


def test_quick_run_writes_json_and_markdown(tmp_path):
    out = tmp_path / "res"
    assert smc_tilted.main(["--quick", "--seeds", "1", "--n", "200", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["smc_tilted.json", "smc_tilted.md"]
    data = json.loads((out / "smc_tilted.json").read_text())
    rows = data["rows"]
    assert [(r["sampler"], r["budget"]) for r in rows] == [("pc_mala", 40), ("smc", 40), ("smc", 80)]
    for r in rows:
        assert abs(r["nfe"]["mean"] - r["budget"]) <= 0.05 * r["budget"]  # matched budgets
        assert 0 <= r["tv"]["mean"] <= 1 and 0 <= r["mode_error"]["mean"] <= 1
    assert all(math.isfinite(r["log_z_error"]["mean"]) for r in rows if r["sampler"] == "smc")
    assert "Quick smoke run" in (out / "smc_tilted.md").read_text()


def test_quick_run_never_replaces_the_committed_results(capsys):
    assert smc_tilted.main(["--quick", "--out", str(smc_tilted.RESULTS)]) == 2
    assert "never replaces" in capsys.readouterr().err
