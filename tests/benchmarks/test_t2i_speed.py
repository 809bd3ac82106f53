"""The text-to-image speed benchmark measures what it says: batched = one forward per step,
per-prompt = P + 1 forwards of K images each, the same latents; its files say what was run.
(The timings themselves are not tested: speed claims live in benchmarks/results/.)"""

import json

import pytest

pytest.importorskip("transformers", reason="text-to-image needs transformers (pip install -e .[t2i])")

from benchmarks import t2i_speed  # noqa: E402


def test_expression():
    assert t2i_speed.expression(1) == "a red cube"
    assert t2i_speed.expression(3) == "a red cube AND a blue sphere AND NOT a green cone"


def test_quick_run_counts_forwards_and_writes_files(tmp_path):
    code = t2i_speed.main(["--quick", "--prompts", "1,3", "--images", "2", "--in-process", "--out", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "t2i_speed.json").read_text())
    rows = {(r["prompts"], r["mode"]): r for r in result["rows"]}
    assert set(rows) == {(1, "batched"), (1, "per-prompt"), (3, "batched"), (3, "per-prompt")}
    for p in (1, 3):
        b, s = rows[(p, "batched")], rows[(p, "per-prompt")]
        assert b["forwards_per_step"] == 1 and b["largest_forward_batch"] == 2 * (p + 1)
        assert s["forwards_per_step"] == p + 1 and s["largest_forward_batch"] == 2
        assert b["nfe"] == 3 and s["nfe"] == 3 * (p + 1)
        assert b["same_latents_as_per_prompt"] and b["seconds_per_image"] > 0
    md = (tmp_path / "t2i_speed.md").read_text()
    assert "| 3 | 1 | 4 |" in md and "benchmarks.t2i_speed" in md
