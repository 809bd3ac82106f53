"""``ebmcompose sample --sampler smc``: outputs, the log-normaliser in the metrics, reproducibility,
and the options that belong to it (or not)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ebmcompose import cli


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("extra", [[], ["--rejuvenate", "hmc", "--leapfrog", "2"], ["--rejuvenate", "none", "--ess-threshold", "1"]],
                         ids=["mala", "hmc", "none"])
def test_smc_writes_samples_and_log_z(extra, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = run(["sample", "--task", "product", "--sampler", "smc", "--particles", 96, "--levels", 12,
                           *extra, "--out", out], capsys)
    assert rc == 0, err
    x = torch.load(out / "samples.pt", weights_only=True)
    assert x.shape == (96, 2) and torch.isfinite(x).all()
    record = json.loads((out / "metrics.json").read_text())
    m = record["metrics"]
    assert record["config"]["n"] == 96 and record["config"]["sampler"] == "smc"
    assert math.isfinite(m["log_z"]) and 0 <= m["n_resampled"] <= 13
    if extra[:2] == ["--rejuvenate", "none"]:
        assert m["nfe"] == 2 * 13 and m["acceptance"] is None and m["n_resampled"] >= 1
    else:
        assert 0.0 < m["acceptance"] <= 1.0 and m["nfe"] > 2 * 13
    assert "SMC(" in record["sampler"]


def test_smc_is_reproducible(tmp_path, capsys):
    argv = ["sample", "--task", "product", "--sampler", "smc", "--n", 64, "--levels", 8, "--seed", 3]
    assert run([*argv, "--out", tmp_path / "a"], capsys)[0] == 0
    assert run([*argv, "--out", tmp_path / "b"], capsys)[0] == 0
    a = torch.load(tmp_path / "a" / "samples.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "samples.pt", weights_only=True)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "argv, mentions",
    [
        (["--sampler", "smc", "--ess-threshold", "1.5"], ["--ess-threshold", "fraction in [0, 1]"]),
        (["--sampler", "pc-mala", "--particles", "10"], ["--particles does not apply", "smc"]),
        (["--sampler", "ddpm", "--rejuvenate", "mala"], ["--rejuvenate does not apply"]),
        (["--sampler", "smc", "--rejuvenate", "none", "--step-size", "0.1"], ["--rejuvenate none"]),
        (["--sampler", "smc", "--leapfrog", "3"], ["--leapfrog", "--rejuvenate hmc"]),
        (["--sampler", "smc", "--step-rule", "beta"], ["beta is not available"]),
        (["--sampler", "smc", "--particles", "10", "--n", "20"], ["disagree"]),
        (["--sampler", "smc", "--model", "epsilon", "--weights", "energy"], ["importance weights", "--weights fkc", "--model energy"]),
        (["--sampler", "smc", "--weights", "fkc", "--rejuvenate", "mala"], ["--rejuvenate mala needs energy values", "ula"]),
        (["--sampler", "smc", "--model", "energy", "--rejuvenate", "hmc"], ["--rejuvenate hmc needs energy values"]),
        (["--sampler", "smc", "--model", "energy", "--step-size", "0.1"], ["the default with --weights fkc", "--rejuvenate ula"]),
        (["--sampler", "ddpm", "--weights", "fkc"], ["--weights does not apply", "smc"]),
        (["--sampler", "smc", "--task", "mixture", "--model", "epsilon"], ["OR / | (a mixture) needs energies"]),
        (["--sampler", "smc", "--rejuvenate", "gibbs"], ["invalid choice", "mala"]),
    ],
)
def test_smc_bad_options_name_the_fix(argv, mentions, tmp_path, capsys):
    rc, _, err = run(["sample", "--task", "product", *argv, "--out", tmp_path / "o"], capsys)
    assert rc == 2
    for word in mentions:
        assert word in err, f"{argv}: {err!r} lacks {word!r}"
    assert not (tmp_path / "o").exists()


def test_smc_population_beyond_the_default_block_size_is_one_population_in_blocks(tmp_path, capsys):
    """600 particles: blocks of 512 + 88 (the default --block, the same for any number of processes)
    resampled as one population: one log_z, resampling events counted once."""
    from ebmcompose import distributed

    n = distributed.DEFAULT_BLOCK + 88
    out = tmp_path / "out"
    rc, _, err = run(["sample", "--task", "product", "--sampler", "smc", "--particles", n, "--levels", 3,
                      "--rejuvenate", "none", "--ess-threshold", "1", "--out", out], capsys)
    assert rc == 0, err
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["block"] == distributed.DEFAULT_BLOCK and math.isfinite(record["metrics"]["log_z"])
    assert record["metrics"]["n_resampled"] == 4  # every level (threshold 1) of the whole population
    assert torch.load(out / "samples.pt", weights_only=True).shape == (n, 2)


@pytest.mark.parametrize("extra", [[], ["--rejuvenate", "ula"]], ids=["none", "ula"])
def test_smc_on_epsilon_models_uses_fkc_weights(extra, tmp_path, capsys):
    """A score-only ε model gets Feynman-Kac corrector weights by default (no rejuvenation unless asked:
    MALA/HMC need energies), on the ladder from t = 0.9."""
    out = tmp_path / "out"
    rc, _, err = run(["sample", "--task", "negation", "--model", "epsilon", "--sampler", "smc", "--particles", 64,
                      "--levels", 10, *extra, "--out", out], capsys)
    assert rc == 0, err
    record = json.loads((out / "metrics.json").read_text())
    assert "weights='fkc'" in record["sampler"] and "t_max=0.9" in record["sampler"]
    assert ("rejuvenate=ULA(" in record["sampler"]) == bool(extra)
    m = record["metrics"]
    assert math.isfinite(m["log_z"]) and m["acceptance"] is None
    # one batched forward per level (ULA: + its move and a re-evaluation per level, + the first level's step-size search)
    assert m["nfe"] == 11 if not extra else m["nfe"] >= 11 + 2 * 10
    assert torch.load(out / "samples.pt", weights_only=True).shape == (64, 2)


@pytest.mark.parametrize("task, weights", [("product", "fkc"), ("mixture", "energy")])
def test_learned_energy_models_default_to_fkc_weights_where_they_apply(task, weights, tmp_path, capsys):
    """Learned energies' values are unreliable between modes: FKC weights by default, energy weights for
    a mixture (FKC needs a linear composition)."""
    out = tmp_path / "out"
    rc, _, err = run(["sample", "--task", task, "--model", "energy", "--sampler", "smc", "--particles", 32,
                      "--levels", 5, "--rejuvenate", "none", "--out", out], capsys)
    assert rc == 0, err
    assert f"weights='{weights}'" in json.loads((out / "metrics.json").read_text())["sampler"]
