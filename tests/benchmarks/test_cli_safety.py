"""The command line never loses a user's files, tells user errors from bugs, and stays in its floor.

* every command keeps the files in ``--out`` that are not its outputs, replaces only its own;
* an unusable ``--out`` (under a file, in ``/proc``, a file itself) is exit status 2 before the
  run, and nothing is written;
* a run that fails midway leaves the previous outputs as they were;
* ``InputError`` / usage errors: one paragraph, exit status 2; any other exception is a bug:
  traceback, exit status 1;
* ``import ebmcompose`` (and ``ebmcompose.cli``) never imports ``samplers``/``toy``, which the CLI
  imports inside functions only; the console script is ``ebmcompose.cli:main``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import ebmcompose as ec
from ebmcompose import cli
from ebmcompose.cli import bench, experiments

REPO = Path(__file__).resolve().parents[2]
SAMPLE = ["sample", "--task", "product", "--sampler", "ddpm", "--levels", "4", "--n", "16"]
DEMO = ["demo", "--quick", "--n", "40", "--tasks", "product"]
TRAIN = ["train", "--tasks", "product", "--parameterisations", "epsilon", "--iters", "2", "--no-progress"]


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def hidden(folder: Path):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def fake_benchmarks(monkeypatch):
    """``benchmarks.sampler_speed`` / ``composition_2d`` stand-ins that write one file into ``--out``."""
    calls = []

    def module(name, filename):
        def main(argv=None):
            calls.append((name, list(argv)))
            if "--out" in argv:
                Path(argv[argv.index("--out") + 1], filename).write_text(f"{name} results\n")
            return 0

        m = types.ModuleType(f"benchmarks.{name}")
        m.main = main
        monkeypatch.setitem(sys.modules, f"benchmarks.{name}", m)

    module("sampler_speed", "sampler_speed.md")
    module("composition_2d", "composition_2d.md")
    return calls


COMMANDS = {
    "sample": (SAMPLE, {"samples.pt", "samples.npy", "samples.png", "metrics.json", "metrics.md"}),
    "demo": (DEMO, {"demo.png", "product.png", "metrics.json", "metrics.md"}),
    "train": (TRAIN, {"product_eps.safetensors"}),
    "bench speed": (["bench", "speed", "--quick"], {"sampler_speed.md"}),
    "bench composition": (["bench", "composition", "--quick"], {"composition_2d.md"}),
}


# ------------------------------------------------------------------------------------ user files
@pytest.mark.parametrize("command", list(COMMANDS))
def test_user_files_survive_and_only_own_outputs_are_replaced(command, tmp_path, capsys, fake_benchmarks):
    """The issue's reproduction: a folder with a `metrics.json` and the user's `important.csv`."""
    argv, outputs = COMMANDS[command]
    exp = tmp_path / "myexp"
    exp.mkdir()
    (exp / "metrics.json").write_text("{}")
    (exp / "important.csv").write_text("data\n")
    (exp / "notes").mkdir()
    (exp / "notes" / "a.txt").write_text("keep")
    rc, _, err = run([*argv, "--out", exp], capsys)
    assert rc == 0, err
    names = {p.name for p in exp.iterdir()}
    assert names == outputs | {"important.csv", "notes"} | {"metrics.json"}
    assert (exp / "important.csv").read_text() == "data\n"
    assert (exp / "notes" / "a.txt").read_text() == "keep"
    if "metrics.json" in outputs:  # its own output name: replaced by this run's record
        assert json.loads((exp / "metrics.json").read_text()) != {}
    else:
        assert (exp / "metrics.json").read_text() == "{}"
    assert hidden(exp) == [] and hidden(tmp_path) == []


def test_commands_share_a_folder_without_deleting_each_other(tmp_path, capsys):
    out = tmp_path / "shared"
    assert run([*SAMPLE, "--out", out], capsys)[0] == 0
    samples = {n: (out / n).read_bytes() for n in ("samples.pt", "samples.npy", "samples.png")}
    assert run([*DEMO, "--out", out], capsys)[0] == 0
    assert {n: (out / n).read_bytes() for n in samples} == samples  # the demo kept sample's files
    pngs = {p.name: p.read_bytes() for p in out.glob("*.png") if p.name != "samples.png"}
    assert set(pngs) == {"demo.png", "product.png"}
    assert run([*SAMPLE, "--seed", "3", "--out", out], capsys)[0] == 0
    assert {n: (out / n).read_bytes() for n in pngs} == pngs  # and sample kept the demo's
    assert (out / "samples.pt").read_bytes() != samples["samples.pt"]


def test_a_failure_while_writing_leaves_the_previous_outputs(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert run([*SAMPLE, "--out", out], capsys)[0] == 0
    before = snapshot(out)
    from ebmcompose import io

    def broken(path, text):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(io, "write_text", broken)  # after samples.pt/.npy/.png were staged
    rc, _, err = run([*SAMPLE, "--seed", "5", "--out", out], capsys)
    assert rc == 1 and "disk on fire" in err
    assert snapshot(out) == before
    assert hidden(out) == [] and hidden(tmp_path) == []


# ------------------------------------------------------------------------------------ unusable --out
def _unusable(tmp_path: Path):
    blocker = tmp_path / "somefile"
    blocker.write_text("a file, not a folder")
    return {"under a file": blocker / "sub", "a file": blocker, "in /proc": Path("/proc/ebmcompose-test/out")}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("where", ["under a file", "a file", "in /proc"])
def test_unusable_out_is_exit_2_before_the_run_and_writes_nothing(command, where, tmp_path, capsys, monkeypatch,
                                                                   fake_benchmarks):
    import toy.train

    def must_not_run(*a, **k):
        pytest.fail("the run started although --out is unusable")

    monkeypatch.setattr(experiments, "build_target", must_not_run)
    monkeypatch.setattr(experiments, "task_energy", must_not_run)
    monkeypatch.setattr(toy.train, "train", must_not_run)
    argv, _ = COMMANDS[command]
    out = _unusable(tmp_path)[where]
    rc, _, err = run([*argv, "--out", out], capsys)
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert f"--out {out}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somefile"]
    assert (tmp_path / "somefile").read_text() == "a file, not a folder"
    assert fake_benchmarks == []


def test_quick_benchmarks_never_write_the_committed_results(tmp_path, capsys, fake_benchmarks, monkeypatch):
    results = REPO / "benchmarks" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
    for b in ("speed", "composition"):
        rc, _, err = run(["bench", b, "--quick", "--out", results], capsys)
        assert rc == 2 and "--quick" in err and "committed" in err
    assert fake_benchmarks == []
    # the default --out is a new folder in the current directory, never benchmarks/results
    monkeypatch.chdir(tmp_path)
    assert run(["bench", "speed", "--quick"], capsys)[0] == 0
    (made,) = tmp_path.iterdir()
    assert made.name.startswith("speed-") and [p.name for p in made.iterdir()] == ["sampler_speed.md"]
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == before


def test_bench_speed_out_writes_only_there(tmp_path, capsys, fake_benchmarks, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "D"
    rc, out, err = run(["bench", "speed", "--quick", "--no-compile", "--out", d], capsys)
    assert rc == 0, err
    (call,) = fake_benchmarks
    assert call[0] == "sampler_speed" and "--quick" in call[1] and "--no-compile" in call[1]
    assert Path(call[1][call[1].index("--out") + 1]).parent == tmp_path  # staged beside D, then moved
    assert [p.name for p in tmp_path.iterdir()] == ["D"]
    assert [p.name for p in d.iterdir()] == ["sampler_speed.md"] and "wrote" in out


def test_bench_outside_a_checkout_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "SOURCE_ROOT", tmp_path)
    rc, _, err = run(["bench", "speed", "--no-write"], capsys)
    assert rc == 2 and "source checkout" in err and "python -m benchmarks.sampler_speed" in err


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("bug", [KeyError("a missing key"), TypeError("wrong call"), AttributeError("no attr")])
def test_a_bug_is_a_traceback_and_exit_1(bug, tmp_path, capsys, monkeypatch):
    def planted(**kwargs):
        raise bug

    monkeypatch.setattr(experiments, "build_target", planted)
    rc, _, err = run([*SAMPLE, "--out", tmp_path / "o"], capsys)
    assert rc == 1
    assert "Traceback" in err and type(bug).__name__ in err and "bug in ebmcompose" in err
    assert not (tmp_path / "o").exists() and hidden(tmp_path) == []
    with pytest.raises(type(bug)):  # --debug raises it unchanged
        cli.main(["--debug", *SAMPLE, "--out", str(tmp_path / "o")])


@pytest.mark.parametrize("error", [ec.InputError("the weights must be finite; give finite numbers"),
                                   ec.ScoreOnlyError("energy values are needed; use an energy model")])
def test_input_error_is_one_paragraph_and_exit_2(error, tmp_path, capsys, monkeypatch):
    def planted(**kwargs):
        raise error

    monkeypatch.setattr(experiments, "build_target", planted)
    rc, _, err = run([*SAMPLE, "--out", tmp_path / "o"], capsys)
    assert rc == 2
    assert err == f"ebmcompose sample: error: {error}\n"
    assert not (tmp_path / "o").exists() and hidden(tmp_path) == []


# ------------------------------------------------------------------------------------ layout
def test_import_ebmcompose_and_its_cli_never_import_samplers_or_toy():
    code = (
        "import sys, ebmcompose; assert 'samplers' not in sys.modules and 'toy' not in sys.modules; "
        "import ebmcompose.cli; ebmcompose.cli.build_parser(); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('samplers', 'toy', 'benchmarks')); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_cli_imports_samplers_and_toy_only_inside_functions():
    for path in sorted((REPO / "ebmcompose" / "cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only; imports inside functions are fine
            for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
                if isinstance(sub, ast.Import):
                    names = [a.name for a in sub.names]
                elif isinstance(sub, ast.ImportFrom):
                    names = [sub.module or ""]
                else:
                    continue
                top = {n.split(".")[0] for n in names}
                assert not top & {"samplers", "toy", "benchmarks"}, f"{path.name}:{sub.lineno} imports {top}"


def test_console_script_is_ebmcompose_cli_main_and_benchmarks_is_not_installed():
    import importlib
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    target = project["project"]["scripts"]["ebmcompose"]
    assert target == "ebmcompose.cli:main"
    module, attr = target.split(":")
    assert getattr(importlib.import_module(module), attr) is cli.main
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(include) == ["ebmcompose*", "samplers*", "toy*"]


def test_new_commands_register_through_add_parser(capsys, monkeypatch):
    from ebmcompose.cli import app

    def add_parser(subparsers):
        p = subparsers.add_parser("hello")
        p.set_defaults(func=lambda args: print("hi") or 0)

    monkeypatch.setattr(app, "COMMANDS", app.COMMANDS + (add_parser,))
    assert run(["hello"], capsys)[:2] == (0, "hi\n")


def test_train_toy_script_is_the_train_command(monkeypatch):
    from benchmarks import train_toy

    seen = []
    monkeypatch.setattr(train_toy, "cli_main", lambda argv: seen.append(argv) or 0)
    assert train_toy.main(["--tasks", "product", "--quick"]) == 0
    (argv,) = seen
    assert argv[:4] == ["--threads", "1", "train", "--out"] and argv[4] == "toy/checkpoints"
    assert argv[-3:] == ["--tasks", "product", "--quick"]
