"""End-to-end tests of the ``ebmcompose`` command line (:mod:`ebmcompose.cli`).

Most runs call ``ebmcompose.cli.main([...])`` in-process (fast); a few run ``python -m
ebmcompose`` in a subprocess to check exit codes and that stderr carries no traceback. Output
safety, error classes and the package layout are tested in ``test_cli_outputs.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ebmcompose import cli

REPO = Path(__file__).resolve().parents[2]
SAMPLE_FILES = ("samples.pt", "samples.npy", "samples.png", "metrics.json", "metrics.md")


def run(argv, capsys):
    """``(exit status, stdout, stderr)`` of an in-process CLI run."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def leftovers(folder: Path):
    """Temporary siblings an atomic write might have left behind."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------ --help
@pytest.mark.parametrize(
    "argv, mentions",
    [
        ([], ["sample", "train", "bench", "demo"]),
        (["demo"], ["Writes", "metrics.json", "demo.png", "example"]),
        (["sample"], ["Writes", "samples.pt", "samples.npy", "samples.png", "metrics.json", "example"]),
        (["train"], ["Writes", "safetensors", "toy/checkpoints", "example"]),
        (["bench"], ["writes", "speed", "composition", "example"]),
        (["bench", "speed"], ["Writes", "sampler_speed.json", "example"]),
        (["bench", "composition"], ["Writes", "composition_2d", "example"]),
    ],
)
def test_help_says_what_it_does_and_writes(argv, mentions, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in mentions:
        assert word in out, f"`ebmcompose {' '.join(argv)} --help` does not mention {word!r}"


def test_no_command_prints_help_and_fails(capsys):
    rc, out, _ = run([], capsys)
    assert rc == 2 and "sample" in out


# ------------------------------------------------------------------------------------ sample
SAMPLE_RUNS = {
    "product-pc-mala-exact": ["--task", "product", "--sampler", "pc-mala", "--levels", "10", "--corrector-steps", "1"],
    "expr-mala-exact": ["--expr", "ring AND NOT 0.5*bar", "--sampler", "mala", "--steps", "30"],
    "negation-pc-ula-epsilon": ["--task", "negation", "--model", "epsilon", "--sampler", "pc-ula", "--levels", "8"],
    "mixture-ddpm-energy": ["--task", "mixture", "--model", "energy", "--sampler", "ddpm", "--levels", "8"],
    "product-hmc-exact": ["--task", "product", "--sampler", "hmc", "--steps", "10", "--leapfrog", "3", "--step-size", "0.1"],
    "expr-annealed-exact": ["--expr", "left OR right", "--sampler", "annealed", "--levels", "5", "--corrector-steps", "2"],
    "product-ula-epsilon": ["--task", "product", "--model", "epsilon", "--sampler", "ula", "--steps", "10", "--step-size", "0.001"],
    "product-ddim-exact": ["--task", "product", "--sampler", "ddim", "--levels", "10"],
}


@pytest.mark.parametrize("name", list(SAMPLE_RUNS))
def test_sample_writes_samples_plot_and_sane_metrics(name, tmp_path, capsys):
    out = tmp_path / "out"
    n = 64
    rc, stdout, err = run(["sample", *SAMPLE_RUNS[name], "--n", n, "--seed", 1, "--out", out], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(SAMPLE_FILES)
    assert leftovers(tmp_path) == []
    x = torch.load(out / "samples.pt", weights_only=True)
    assert x.shape == (n, 2) and torch.isfinite(x).all()
    np.testing.assert_array_equal(np.load(out / "samples.npy"), x.numpy())
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / "metrics.json").read_text())
    m = record["metrics"]
    assert 0.0 <= m["tv"] <= 1.0 and 0.0 < m["tv_floor"] <= 1.0
    assert math.isfinite(m["mmd"]) and math.isfinite(m["energy_distance"])
    assert m["nfe"] > 0 and m["seconds"] >= 0 and m["divergences"] >= 0
    if record["config"]["sampler"] in ("mala", "hmc", "pc-mala"):
        assert 0.0 < m["acceptance"] <= 1.0
    assert record["config"]["n"] == n
    md = (out / "metrics.md").read_text()
    assert "TV (floor)" in md and f"{m['tv']:.3f}" in md
    assert "wrote" in stdout


def test_sample_is_reproducible_and_replaces_its_own_output(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["sample", "--task", "product", "--sampler", "ddpm", "--levels", "5", "--n", "32", "--out", out]
    assert run(argv, capsys)[0] == 0
    first = torch.load(out / "samples.pt", weights_only=True)
    assert run(argv, capsys)[0] == 0  # an earlier output folder is replaced whole
    assert torch.equal(first, torch.load(out / "samples.pt", weights_only=True))
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------ bad input
BAD_SAMPLE = {
    "unknown task": (["--task", "cube"], ["unknown task", "product, mixture, negation"]),
    "unknown sampler": (["--task", "product", "--sampler", "gibbs"], ["invalid choice", "pc-mala", "ddpm"]),
    "unknown model": (["--task", "product", "--model", "vae"], ["invalid choice", "epsilon"]),
    "negative step size": (["--task", "product", "--sampler", "ula", "--step-size", "-0.1"], ["--step-size", "positive"]),
    "zero step size": (["--task", "product", "--sampler", "mala", "--step-size", "0"], ["--step-size", "positive"]),
    "nan step size": (["--task", "product", "--sampler", "mala", "--step-size", "nan"], ["--step-size", "finite"]),
    "zero n": (["--task", "product", "--n", "0"], ["--n", "positive integer"]),
    "negative n": (["--task", "product", "--n", "-5"], ["--n", "positive integer"]),
    "no target": ([], ["exactly one of --task", "--expr"]),
    "task and expr": (["--task", "product", "--expr", "ring"], ["exactly one of"]),
    "expr syntax": (["--expr", "ring AND (bar"], ["cannot parse --expr", "expected ')'", "^"]),
    "expr unknown name": (["--expr", "ring AND NOT 0.5*moons"], ["unknown name 'moons'", "^", "ring, bar, left"]),
    "expr bad operator": (["--expr", "ring ** bar"], ["cannot parse --expr", "^"]),
    "mala on epsilon": (
        ["--task", "product", "--model", "epsilon", "--sampler", "mala"],
        ["needs energy values", "pc-ula", "ddpm", "--model energy"],
    ),
    "pc-hmc on epsilon": (["--task", "negation", "--model", "epsilon", "--sampler", "pc-hmc"], ["scores only", "--model energy"]),
    "or on epsilon": (["--expr", "left | right", "--model", "epsilon", "--sampler", "ddpm"], ["OR / |", "--model energy"]),
    "mixture task on epsilon": (["--task", "mixture", "--model", "epsilon", "--sampler", "ddpm"], ["needs energies"]),
    "option the sampler ignores": (["--task", "product", "--sampler", "ddpm", "--steps", "10"], ["--steps does not apply", "--levels"]),
    "leapfrog on mala": (["--task", "product", "--sampler", "mala", "--leapfrog", "3"], ["--leapfrog does not apply"]),
    "fixed step rule without step": (["--task", "product", "--sampler", "pc-ula", "--step-rule", "fixed"], ["--step-rule fixed", "--step-size"]),
    "annealed without transitions": (["--task", "product", "--sampler", "annealed", "--corrector-steps", "0"], ["--corrector-steps >= 1"]),
    "t with exact": (["--task", "product", "--sampler", "ula", "--t", "0.1"], ["--t applies only"]),
    "t out of range": (["--task", "product", "--model", "energy", "--sampler", "ula", "--t", "2"], ["--t", "(0, 1]"]),
    "checkpoint dir with exact": (["--task", "product", "--checkpoint-dir", "x"], ["--checkpoint-dir applies"]),
    "unknown device": (["--task", "product", "--device", "tpu"], ["unknown device", "cpu or cuda"]),
    "huge ULA step diverges": (
        ["--task", "product", "--sampler", "ula", "--step-size", "100", "--steps", "20", "--n", "50"],
        ["diverged", "smaller --step-size", "Nothing was written"],
    ),
    "huge MALA step rejects everything": (
        ["--task", "product", "--sampler", "mala", "--step-size", "1e4", "--steps", "20", "--n", "50"],
        ["acceptance", "smaller --step-size"],
    ),
    "huge annealed step goes non-finite": (
        ["--task", "product", "--sampler", "annealed", "--step-size", "100", "--levels", "10", "--n", "50"],
        ["diverged", "non-finite", "smaller --step-size"],
    ),
    "huge fixed pc-ula step": (
        ["--task", "product", "--sampler", "pc-ula", "--step-rule", "fixed", "--step-size", "100", "--levels", "10", "--n", "50"],
        ["diverged", "smaller --step-size"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_SAMPLE))
def test_bad_sample_input_is_a_one_paragraph_user_error(case, tmp_path, capsys):
    argv, expected = BAD_SAMPLE[case]
    out = tmp_path / "out"
    rc, stdout, err = run(["sample", *argv, "--out", out], capsys)
    assert rc == 2
    assert "Traceback" not in err
    assert err.startswith("ebmcompose sample: error:"), err
    for text in expected:
        assert text in err, f"{case}: {text!r} not in {err!r}"
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_missing_checkpoint_says_how_to_make_one(tmp_path, capsys):
    empty = tmp_path / "ckpt"
    empty.mkdir()
    out = tmp_path / "out"
    rc, _, err = run(["sample", "--task", "product", "--model", "energy", "--checkpoint-dir", empty, "--out", out], capsys)
    assert rc == 2 and "Traceback" not in err
    assert "product_energy" in err and "ebmcompose train --tasks product --parameterisations energy" in err
    assert not out.exists()
    rc, _, err = run(["sample", "--task", "product", "--model", "energy", "--checkpoint-dir", tmp_path / "nope", "--out", out], capsys)
    assert rc == 2 and "is not a folder" in err and not out.exists()


def test_corrupt_checkpoint_is_a_user_error(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "product_eps.json").write_text("{ not json")
    (ckpt / "product_eps.safetensors").write_bytes(b"garbage")
    rc, _, err = run(["sample", "--task", "product", "--model", "epsilon", "--checkpoint-dir", ckpt,
                      "--sampler", "ddpm", "--out", tmp_path / "out"], capsys)
    assert rc == 2 and "Traceback" not in err and "checkpoint" in err
    assert not (tmp_path / "out").exists()


def test_failure_leaves_an_existing_output_unchanged(tmp_path, capsys):
    out = tmp_path / "out"
    ok = ["sample", "--task", "product", "--sampler", "ddpm", "--levels", "5", "--n", "32", "--out", out]
    assert run(ok, capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = ["sample", "--task", "product", "--sampler", "ula", "--step-size", "100", "--steps", "10", "--n", "32", "--out", out]
    rc, _, err = run(bad, capsys)
    assert rc == 2 and "diverged" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


def test_writes_into_a_folder_of_other_files_and_keeps_them(tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    rc, _, err = run(["sample", "--task", "product", "--sampler", "ddpm", "--levels", "5", "--n", "16", "--out", precious], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in precious.iterdir()) == sorted(SAMPLE_FILES + ("thesis.tex",))
    assert (precious / "thesis.tex").read_text() == "do not delete"
    assert leftovers(precious) == [] and leftovers(tmp_path) == []


def test_ctrl_c_writes_nothing(tmp_path, capsys, monkeypatch):
    from ebmcompose import plot

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plot, "save", interrupted)  # interrupt inside the atomic folder
    out = tmp_path / "out"
    rc, _, err = run(["sample", "--task", "product", "--sampler", "ddpm", "--levels", "5", "--n", "16", "--out", out], capsys)
    assert rc == 130 and "nothing was written" in err
    assert not out.exists() and leftovers(tmp_path) == []


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(cli.UsageError, match="unknown task"):
        cli.main(["--debug", "sample", "--task", "cube", "--out", str(tmp_path / "o")])
    with pytest.raises(cli.UsageError, match="diverged"):  # --debug after the subcommand works too
        cli.main(["sample", "--task", "product", "--sampler", "ula", "--step-size", "100", "--steps", "10",
                  "--n", "16", "--out", str(tmp_path / "o"), "--debug"])
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--task", "product", "--device", "cuda"],
        ["demo", "--quick", "--device", "cuda"],
        ["bench", "speed", "--device", "cuda"],
        ["bench", "composition", "--device", "cuda"],
    ],
)
def test_device_cuda_without_gpu_is_a_clear_error(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[0] in ("sample", "demo"):
        argv = argv + ["--out", str(tmp_path / "out")]
    if argv[:2] == ["bench", "composition"]:  # whether or not the module exists yet
        fake = types.ModuleType("benchmarks.composition_2d")
        fake.main = lambda argv=None: pytest.fail("must not run without a GPU")
        monkeypatch.setitem(sys.modules, "benchmarks.composition_2d", fake)
    rc, _, err = run(argv, capsys)
    assert rc == 2 and "no CUDA GPU" in err and "--device cpu" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_sample_on_cuda(tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = run(["sample", "--task", "product", "--sampler", "pc-mala", "--levels", "10", "--n", "64",
                      "--device", "cuda", "--out", out], capsys)
    assert rc == 0, err
    assert torch.load(out / "samples.pt", weights_only=True).shape == (64, 2)
    rc, _, err = run(["sample", "--task", "negation", "--model", "energy", "--sampler", "pc-mala", "--levels", "5",
                      "--n", "64", "--device", "cuda", "--out", tmp_path / "learned"], capsys)
    assert rc == 0, err


# ------------------------------------------------------------------------------------ demo
def test_demo_quick_writes_its_files(tmp_path, capsys):
    out = tmp_path / "demo"
    rc, _, err = run(["demo", "--quick", "--n", "100", "--tasks", "product", "--out", out], capsys)
    assert rc == 0, err
    assert {"demo.png", "product.png", "metrics.json", "metrics.md"} <= {p.name for p in out.iterdir()}
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert {r["sampler"] for r in rows} == {"exact", "MALA", "reverse diffusion", "PC + MALA", "PC + MALA (learned)"}
    assert all(0 <= r["tv"] <= 1 for r in rows)


def test_demo_shows_the_bias_of_reverse_diffusion_and_its_correction():
    """At the demo's own settings on the product task, PC + MALA (exact and learned) comes close
    to the exact-sampling TV floor while plain reverse diffusion stays far above it."""
    import toy
    from ebmcompose.cli import demo

    cfg = demo.DemoConfig(tasks=("product",))
    task = toy.tasks.get("product")
    rows = {r["sampler"]: r for r in demo.metrics_rows(task, demo.run_samplers(task, cfg), cfg)}
    floor = rows["exact"]["tv_floor"]
    assert rows["reverse diffusion"]["tv"] > floor + 0.15
    assert rows["PC + MALA"]["tv"] < floor + 0.05
    assert rows["PC + MALA (learned)"]["tv"] < floor + 0.07
    assert rows["PC + MALA"]["tv"] < rows["reverse diffusion"]["tv"] - 0.1


def test_demo_unknown_task(tmp_path, capsys):
    rc, _, err = run(["demo", "--tasks", "cube", "--out", tmp_path / "d"], capsys)
    assert rc == 2 and "unknown task" in err and "product" in err and not (tmp_path / "d").exists()


# ------------------------------------------------------------------------------------ train
def test_train_quick_writes_a_loadable_checkpoint_that_sample_uses(tmp_path, capsys):
    from toy.train import load_trained

    ckpt = tmp_path / "ckpt"
    rc, out, err = run(["train", "--tasks", "product", "--parameterisations", "epsilon", "--iters", "3",
                        "--no-progress", "--out", ckpt], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in ckpt.iterdir()) == ["product_eps.safetensors"]
    model, net, config = load_trained(ckpt / "product_eps")
    assert config["concepts"] == ["ring", "bar"] and config["train"]["n_iters"] == 3
    assert "score_relative_error" in config["metrics"]
    assert model.score(torch.zeros(4, 2), 0.5).shape == (4, 2)
    # the new checkpoint drives `sample`
    rc, _, err = run(["sample", "--task", "product", "--model", "epsilon", "--checkpoint-dir", ckpt,
                      "--sampler", "ddpm", "--levels", "4", "--n", "16", "--out", tmp_path / "s"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["metrics"]["nfe"] == 4


def test_train_default_out_is_a_new_folder_and_keeps_other_files(tmp_path, capsys, monkeypatch):
    from toy import pretrained

    shipped = {p.name: p.stat().st_mtime_ns for p in pretrained.CHECKPOINT_DIR.iterdir()}
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(["train", "--tasks", "negation", "--parameterisations", "energy", "--iters", "2", "--no-progress"], capsys)
    assert rc == 0, err
    (made,) = [p for p in tmp_path.iterdir() if p.name.startswith("checkpoints-")]
    assert sorted(p.name for p in made.iterdir()) == ["negation_energy.safetensors"]
    assert {p.name: p.stat().st_mtime_ns for p in pretrained.CHECKPOINT_DIR.iterdir()} == shipped
    # training into an existing folder swaps in its files and leaves the others alone
    (made / "notes.txt").write_text("keep")
    rc, _, err = run(["train", "--tasks", "negation", "--parameterisations", "energy", "--iters", "2",
                      "--no-progress", "--out", made], capsys)
    assert rc == 0, err
    assert (made / "notes.txt").read_text() == "keep"
    assert leftovers(made) == [] and leftovers(tmp_path) == []


def test_train_bad_input(tmp_path, capsys):
    rc, _, err = run(["train", "--tasks", "cube", "--out", tmp_path / "c"], capsys)
    assert rc == 2 and "unknown task" in err and "negation" in err
    rc, _, err = run(["train", "--parameterisations", "score", "--out", tmp_path / "c"], capsys)
    assert rc == 2 and "invalid choice" in err
    rc, _, err = run(["train", "--iters", "0", "--out", tmp_path / "c"], capsys)
    assert rc == 2 and "positive integer" in err
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------ bench
def test_bench_speed_passes_its_arguments(capsys, monkeypatch):
    from benchmarks import sampler_speed

    seen = []
    monkeypatch.setattr(sampler_speed, "main", lambda argv=None: seen.append(argv))
    rc, _, _ = run(["bench", "speed", "--quick", "--no-write", "--no-compile", "--repeats", "2"], capsys)
    assert rc == 0
    assert seen == [["--device", "cpu", "--threads", "1,0", "--repeats", "2", "--quick", "--no-compile", "--no-write"]]
    seen.clear()
    rc, _, _ = run(["bench", "speed", "--thread-counts", "2", "--no-write"], capsys)  # the script's own repeats
    assert rc == 0 and seen == [["--device", "cpu", "--threads", "2", "--no-write"]]
    seen.clear()
    rc, _, _ = run(["bench", "speed", "--processes", "2", "--no-write"], capsys)
    assert rc == 0 and seen == [["--device", "cpu", "--threads", "1,0", "--processes", "2", "--no-write"]]
    rc, _, err = run(["bench", "speed", "--processes", "0"], capsys)
    assert rc == 2 and "positive integer" in err and not seen[1:]
    rc, _, err = run(["bench", "speed", "--thread-counts", "two"], capsys)
    assert rc == 2 and "thread counts" in err and not seen[1:]


def test_bench_composition_runs_the_module_when_it_exists(tmp_path, capsys, monkeypatch):
    seen = []

    def fake_main(argv=None):
        seen.append(argv)
        Path(argv[argv.index("--out") + 1], "composition_2d.md").write_text("# study")
        return 0

    fake = types.ModuleType("benchmarks.composition_2d")
    fake.main = fake_main
    monkeypatch.setitem(sys.modules, "benchmarks.composition_2d", fake)
    out = tmp_path / "c2d"
    assert run(["bench", "composition", "--quick", "--out", out, "--", "--tasks", "product"], capsys)[0] == 0
    assert seen[0][:3] == ["--quick", "--tasks", "product"] and seen[0][3] == "--out"
    assert [p.name for p in out.iterdir()] == ["composition_2d.md"] and leftovers(tmp_path) == []

    def fails(argv=None):
        Path(argv[argv.index("--out") + 1], "composition_2d.md").write_text("half")
        raise SystemExit(3)

    fake.main = fails
    assert run(["bench", "composition", "--out", out], capsys)[0] == 3
    assert (out / "composition_2d.md").read_text() == "# study"  # a failed run moves nothing in
    assert leftovers(out) == [] and leftovers(tmp_path) == []


def test_bench_composition_missing_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "benchmarks.composition_2d", None)  # import fails as if absent
    rc, _, err = run(["bench", "composition", "--quick"], capsys)
    assert rc == 2 and "composition_2d" in err and "not in this checkout" in err and "Traceback" not in err


def test_bench_needs_a_benchmark_name(capsys):
    rc, _, err = run(["bench"], capsys)
    assert rc == 2 and "speed" in err and "composition" in err
    rc, _, err = run(["bench", "memory"], capsys)
    assert rc == 2 and "invalid choice" in err


# ------------------------------------------------------------------------------------ console script
def _console() -> list:
    """This checkout's command line (an installed ``ebmcompose`` script may belong to another one)."""
    return [sys.executable, "-m", "ebmcompose"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_console_command_exit_codes_and_no_traceback(tmp_path):
    out = tmp_path / "out"
    bad = subprocess.run(
        [*_console(), "sample", "--expr", "ring AND NOT 0.5*", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr
    assert "cannot parse --expr" in bad.stderr and "^" in bad.stderr
    assert not out.exists()

    good = subprocess.run(
        [*_console(), "sample", "--task", "mixture", "--sampler", "ddim", "--levels", "5", "--n", "32", "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120,
    )
    assert good.returncode == 0, good.stderr
    assert "Traceback" not in good.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(SAMPLE_FILES)
