"""``ebmcompose sample`` on targets that are not normalisable on their bounds and on runs that diverge:
exit status 2 with advice that fits, and nothing written (issue 14's reproductions)."""

from __future__ import annotations

import pytest

from ebmcompose import cli


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("expr, advice", [
    ("NOT ring", "grows towards the edges"),
    ("ring AND NOT 3*bar", "grows towards the edges"),
    ("0*ring", "is flat"),
])
def test_improper_targets_exit_2_before_the_run_with_advice_that_fits(expr, advice, tmp_path, capsys):
    out = tmp_path / "o"
    rc, stdout, err = run(["sample", "--expr", expr, "--sampler", "mala", "--n", "50", "--out", out], capsys)
    assert rc == 2 and stdout == ""
    assert advice in err and "smaller step size would not help" in err and "Nothing was run or written" in err
    assert "diverged" not in err  # not the advice for a too-large step
    assert not out.exists()


@pytest.mark.parametrize("argv, what", [
    (["--sampler", "ula", "--step-size", "10", "--steps", "50"], "proposals diverged"),
    (["--sampler", "mala", "--step-size", "1000", "--steps", "20"], "mean acceptance was 0"),
    (["--sampler", "hmc", "--step-size", "50", "--steps", "5", "--leapfrog", "2"], "chains never moved"),
])
def test_diverging_runs_exit_2_with_step_size_advice(argv, what, tmp_path, capsys):
    out = tmp_path / "o"
    rc, _, err = run(["sample", "--task", "product", *argv, "--n", "64", "--out", out], capsys)
    assert rc == 2 and "diverged" in err and what in err and "smaller --step-size" in err
    assert not out.exists()


def test_a_suspect_but_valid_run_warns_and_writes(tmp_path, capsys):
    out = tmp_path / "o"
    rc, _, err = run(["sample", "--task", "product", "--sampler", "mala", "--step-size", "1e-6", "--steps", "5",
                      "--n", "32", "--out", out], capsys)
    assert rc == 0 and "warning: the mean acceptance was" in err and "larger --step-size" in err
    assert (out / "samples.pt").exists()
