"""benchmarks/hmc_mixing: the JSON/markdown it writes, and that its measurement can tell jitter from none."""

import json

from benchmarks import hmc_mixing


def test_quick_run_writes_results_and_jitter_breaks_the_resonance(tmp_path):
    assert hmc_mixing.main(["--quick", "--seeds", "1", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "hmc_mixing.json").read_text())
    assert r["quick"] and set(r["targets"]) == {"log-spaced", "gamma"}
    med = r["targets"]["log-spaced"]["median"]
    assert set(med) == set(hmc_mixing.CONFIGS)
    for m in med.values():
        assert 0.3 < m["acceptance"] < 1 and m["max_var_rel_error"] < 1.0  # a broken sampler shows here
    # the log-spaced target has a resonant direction at the fixed step: jitter and mass adaptation mix it
    assert med["fixed step, jitter 0.2"]["min_ess_gain"] > 2 and med["adapt_mass"]["min_ess_gain"] > 2
    assert "| adapt_mass |" in (tmp_path / "hmc_mixing.md").read_text()
