"""benchmarks/scaling.py: what it writes and how efficiency is computed (timings themselves are not tested)."""

import json

import pytest

from benchmarks import scaling


def test_efficiency_is_t1_over_tp_at_the_same_chains_per_process():
    rows = [dict(procs=1, per_rank=10, n=10, median_seconds=2.0), dict(procs=2, per_rank=10, n=20, median_seconds=2.5),
            dict(procs=1, per_rank=99, n=99, median_seconds=9.0), dict(procs=2, per_rank=99, n=198, median_seconds=9.0)]
    scaling.efficiency(rows)
    assert [r["efficiency"] for r in rows] == [1.0, 0.8, 1.0, 1.0]
    # the same number as time per sample at 1 over P times time per sample at P
    assert rows[1]["efficiency"] == pytest.approx(rows[0]["seconds_per_sample"] / (2 * rows[1]["seconds_per_sample"]))


@pytest.mark.slow  # two process launches (torch imports): ~40 s on a loaded 2-core machine
def test_quick_run_writes_rows_for_1_and_2_processes_with_the_same_block_0(tmp_path):
    assert scaling.main(["--quick", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "scaling.json").read_text())
    rows = record["rows"]
    assert [(r["procs"], r["n"]) for r in rows] == [(1, 64), (2, 128)]
    assert rows[0]["efficiency"] == 1.0
    assert rows[1]["efficiency"] == pytest.approx(rows[0]["median_seconds"] / rows[1]["median_seconds"])
    assert all(len(r["seconds"]) == 2 and r["median_seconds"] > 0 for r in rows)
    assert record["meta"]["block0_identical"] and rows[0]["block0_sha256"] == rows[1]["block0_sha256"]
    assert "efficiency" in (tmp_path / "scaling.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scaling.json", "scaling.md"]
