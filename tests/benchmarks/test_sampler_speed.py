"""Tests of the speed benchmark (benchmarks/sampler_speed.py): its target and its baselines.

The timings themselves are not tested (speed claims live in benchmarks/results/). What is tested
is what makes the ratios meaningful: both energy layouts compute the exact ring energy and
gradient, the hand-written loops are the same algorithms as the library kernels (same seed, same
chains), and the files the benchmark writes say what was measured.
"""

from __future__ import annotations

import json
import os
import argparse
import math

import pytest
import torch

from benchmarks import sampler_speed as sp
from benchmarks.speed_processes import median_se
from samplers import HMC, MALA, ULA
from toy import ring


@pytest.mark.parametrize("layout", sorted(sp.LAYOUTS))
def test_ring_energy_and_grad_match_the_toy_ring(layout):
    fn = sp.LAYOUTS[layout]
    means, var = sp.ring_params("cpu", torch.float64)
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    x = torch.cat([x, torch.tensor([[60.0, -80.0], [0.0, 0.0]], dtype=torch.float64)])  # far out, centre
    e, g = fn(x, means, var)
    ref = ring(8, 4.0, 0.3, dtype=torch.float64)
    x_ = x.clone().requires_grad_(True)
    e_ref = -ref.log_prob(x_)
    (g_ref,) = torch.autograd.grad(e_ref.sum(), x_)
    assert e.shape == (502,) and g.shape == (502, 2)
    torch.testing.assert_close(e, e_ref.detach(), rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-8)


def test_ring_energy_stays_finite_far_from_every_mode():
    """The max-shifted log-sum-exp: no underflow to log(0) a thousand stds away (float32)."""
    means, var = sp.ring_params("cpu", torch.float32)
    x = torch.tensor([[300.0, 300.0], [-1e3, 5.0]])
    for fn in sp.LAYOUTS.values():
        e, g = fn(x, means, var)
        assert torch.isfinite(e).all() and torch.isfinite(g).all()


@pytest.mark.parametrize("name", ["ULA", "MALA", "HMC"])
def test_hand_loops_are_the_library_kernels(name):
    """Same seed, same chains: the baseline runs the library's algorithm, so the ratio is overhead.

    The kernels draw their noise in the hand loops' order; only float rounding differs (the
    library fuses some arithmetic), so a rare Metropolis decision can flip: allow 1% of chains.
    """
    energy = sp.Ring("cpu", torch.float64)
    means, var = sp.ring_params("cpu", torch.float64)
    x0 = torch.randn(400, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    n = 30
    k = sp.kernel(name, n, compiled=False)
    lib = k.sample(energy, x0, generator=torch.Generator().manual_seed(1)).samples
    hand = sp.HAND[name](x0, n, sp.STEP[name], torch.Generator().manual_seed(1), means, var)
    same = torch.isclose(lib, hand, rtol=1e-9, atol=1e-9).all(dim=1)
    assert same.float().mean() >= 0.99, f"{name}: only {int(same.sum())}/400 chains agree"
    moved = (lib != x0).any(dim=1).float().mean()
    assert moved > 0.5  # the comparison is not vacuous


def test_kernel_configurations_match_the_hand_loops():
    assert isinstance(sp.kernel("ULA", 5, False), ULA)
    m = sp.kernel("MALA", 5, True)
    assert isinstance(m, MALA) and m.compile and m.step_size == sp.STEP["MALA"]
    h = sp.kernel("HMC", 5, False)
    assert isinstance(h, HMC) and h.n_leapfrog == sp.N_LEAPFROG and h.refresh == 1.0 and h.jitter == 0.0


def test_thread_counts_parse_and_reject_bad_input():
    assert sp._thread_counts("1") == [1]
    assert sp._thread_counts("1,0") == list(dict.fromkeys([1, os.cpu_count() or 1]))
    assert sp._thread_counts("2,2,1") == [2, 1]
    for bad in ["", "a", "-1", "1,x"]:
        with pytest.raises(argparse.ArgumentTypeError, match="--threads"):
            sp._thread_counts(bad)


def test_targets_are_judged_per_thread_count():
    def row(threads, compiled, n, lib, ratio=1.0, overhead=1.0, sampler="MALA", layout="per-coordinate"):
        return dict(
            sampler=sampler, n_chains=n, compiled=compiled, threads=threads, layout=layout,
            lib_chain_steps_per_s=lib, ratio_lib_over_hand_time=ratio, ratio_lib_over_hand_cpu=ratio,
            overhead_us_per_step=overhead, overhead_cpu_us_per_step=overhead,
        )

    rows = [
        row(1, False, 100, 1e6, overhead=5.0), row(1, False, 100_000, 3e6, ratio=1.05),
        row(1, True, 100_000, 8e6), row(2, True, 100_000, 1.2e7),
        row(2, True, 100_000, 1e5, layout="broadcast"),  # the layout row never decides a target
        row(2, False, 100_000, 6e6, ratio=1.2),
    ]
    t1, t2 = sp.targets_for(rows, 1), sp.targets_for(rows, 2)
    key = "compiled MALA >= 1e7 chain-steps/s at N=1e5 (wall)"
    assert t1[key] is False and t2[key] is True
    assert t1["eager within 10% of hand loop at N>=1e4 (wall)"] is True
    assert t2["eager within 10% of hand loop at N>=1e4 (wall)"] is False
    assert t1["overhead <= 30 us/step at N=100 (wall)"] is True
    assert t2["overhead <= 30 us/step at N=100 (wall)"] is None  # not measured
    assert sp.targets_for([row(1, False, 100, 1e6, overhead=30.5)], 1)["overhead <= 30 us/step at N=100 (wall)"] is False
    assert sp._verdict(None) == "not measured"


def test_tiny_run_writes_json_and_markdown(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "RESULTS", tmp_path)
    before = torch.get_num_threads()
    sp.main(["--quick", "--repeats", "1", "--sizes", "100", "--threads", "1", "--no-compile", "--malloc", "system"])
    assert torch.get_num_threads() == before  # restored
    data = json.loads((tmp_path / "sampler_speed.json").read_text())
    assert data["meta"]["threads"] == [1]
    assert {(r["sampler"], r["n_chains"], r["compiled"], r["threads"]) for r in data["rows"]} == {
        (s, 100, False, 1) for s in ("ULA", "MALA", "HMC")
    }
    for r in data["rows"]:
        assert r["lib_chain_steps_per_s"] > 0 and r["hand_chain_steps_per_s"] > 0
        assert r["ratio_lib_over_hand_time"] == pytest.approx(r["hand_chain_steps_per_s"] / r["lib_chain_steps_per_s"])
    assert set(data["targets"]) == {"1"}
    for when in ("calibration_before", "calibration_after"):
        assert data["calibration"][when]["torch_op_us"] > 0 and data["calibration"][when]["python_ns"] > 0
    md = (tmp_path / "sampler_speed.md").read_text()
    assert "Machine speed during the run" in md
    assert "## 1 thread" in md and "| ULA | 100 | eager | per-coordinate |" in md
    assert "compiled MALA >= 1e7 chain-steps/s at N=1e5 (wall): not measured" in md
    assert f"HMC with {sp.N_LEAPFROG} leapfrog steps" in md and "{" not in md  # every placeholder filled
    assert "Tensor ops per eager step" in md and all(r["lib_ops_per_step"] > 0 for r in data["rows"])


def test_compiled_baselines_and_kernels_run_the_eager_algorithm():
    """The compiled rows time the same computation as the eager ones.

    HMC compiles five energy evaluations into one graph; written with ``torch.cat`` of keepdim
    sums, the ring's gradient came out wrong there (torch 2.13 inductor), which this catches.
    """
    energy = sp.Ring("cpu", torch.float64)
    means, var = sp.ring_params("cpu", torch.float64)
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    n = 3
    eager = sp.HAND["HMC"](x0, n, sp.STEP["HMC"], torch.Generator().manual_seed(1), means, var)
    hand = sp.HAND_COMPILED["HMC"](x0, n, sp.STEP["HMC"], torch.Generator().manual_seed(1), means, var)
    lib = sp.kernel("HMC", n, compiled=True).sample(energy, x0, generator=torch.Generator().manual_seed(1)).samples
    torch.testing.assert_close(hand, eager, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lib, eager, rtol=1e-9, atol=1e-9)
    assert (eager != x0).any(dim=1).float().mean() > 0.5


def test_median_standard_error_shrinks_with_more_pairs():
    g = torch.Generator().manual_seed(0)
    few = torch.randn(16, generator=g).tolist()
    many = torch.randn(256, generator=g).tolist()
    se_few, se_many = median_se(few), median_se(many)
    assert 0.2 < se_few < 0.6 and 0.05 < se_many < 0.12  # ≈ 1.2533 / sqrt(n) for unit normals
    assert math.isnan(median_se([1.0, 2.0]))


def test_pooled_median_error_counts_the_bias_each_process_shares():
    """Pairs timed in one process share its bias: 16 processes of 16 equal values are 16 values, not
    256, so the grouped standard error is that of 16 values (≈ 1.25 / 4), far above the ungrouped one;
    groups of one agree with the interquartile formula."""
    g = torch.Generator().manual_seed(1)
    per_process = torch.randn(16, generator=g).tolist()
    values = [v for v in per_process for _ in range(16)]
    grouped, ungrouped = median_se(values, [16] * 16), median_se(values)
    assert 0.15 < grouped < 0.6 and grouped > 2.5 * ungrouped
    singles = torch.randn(256, generator=g).tolist()
    assert median_se(singles, [1] * 256) == pytest.approx(median_se(singles), rel=0.35)
    assert median_se(values, [16] * 16) == grouped  # fixed seed: the same error every call
    with pytest.raises(ValueError, match="do not cover the 256 values"):
        median_se(values, [16] * 15)


def test_output_files_per_device_and_out_folder(tmp_path):
    """CPU results go to sampler_speed.*, GPU results to sampler_speed_cuda.* (one never overwrites
    the other); ``--out`` picks the folder."""
    assert sp.output_stem("cpu") == "sampler_speed" and sp.output_stem("cuda:1") == "sampler_speed_cuda"
    sp.main(["--quick", "--repeats", "1", "--sizes", "100", "--threads", "1", "--no-compile", "--malloc", "system",
             "--out", str(tmp_path)])
    assert sorted(f.name for f in tmp_path.iterdir()) == ["sampler_speed.json", "sampler_speed.md"]
    data = json.loads((tmp_path / "sampler_speed.json").read_text())
    assert "gpu" not in data["meta"] and "device_op_us" not in data["calibration"]["calibration_before"]
    assert all("lib_kernels_per_step" not in r for r in data["rows"])  # GPU kernel counts: GPU only


def test_device_runs_time_enough_steps_to_dwarf_one_off_work():
    for n in (100, 1000, 10_000, 100_000, 1_000_000):
        assert sp.n_steps_for(n, "MALA", False, "cuda") >= sp.MIN_DEVICE_STEPS
        assert sp.n_steps_for(n, "HMC", False, "cuda") >= sp.MIN_DEVICE_STEPS // sp.N_LEAPFROG
    assert sp.n_steps_for(100_000, "MALA", False) == 60  # the CPU keeps its counts
    assert sp.n_steps_for(1_000_000, "MALA", False) == 20  # any N has a count


def test_steady_malloc_reruns_the_benchmark_under_glibc_tunables(monkeypatch):
    """``--malloc steady`` (the default) reruns in a child process whose glibc keeps freed memory in
    the heap, keeping other tunables; inside that child (or with ``--malloc system``) it runs as is."""
    import platform

    calls = []
    monkeypatch.setattr(sp.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 7)
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
    assert sp.main(["--quick", "--sizes", "100"]) == 7  # the child's exit code
    (cmd, env), = calls
    assert cmd[1:] == ["-m", "benchmarks.sampler_speed", "--quick", "--sizes", "100"]
    assert env["GLIBC_TUNABLES"] == "glibc.pthread.rseq=0:" + sp.STEADY_MALLOC
    monkeypatch.setenv("GLIBC_TUNABLES", env["GLIBC_TUNABLES"])
    assert sp._malloc_mode() == "steady"
    monkeypatch.setattr(sp, "bench", lambda args: calls.append("ran") or ([], {}, {}))
    assert sp.main(["--no-write"]) == 0 and calls[-1] == "ran"  # already steady: no second child
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert sp.main(["--no-write", "--malloc", "system"]) == 0 and calls[-1] == "ran" and len(calls) == 3


def test_rows_judged_by_the_eager_target_pool_pairs_from_fresh_processes(monkeypatch):
    """Eager CPU rows at N >= 1e4 spread their pairs over ``--processes`` children (a process's memory
    layout biases its ratio); other rows, and ``--processes 1``, time in this process."""
    from types import SimpleNamespace

    args = SimpleNamespace(device="cpu", quick=False, repeats=None, processes=3)
    assert sp.in_processes(args, 10_000, False) == 3 and sp.in_processes(args, 100_000, False) == 3
    assert sp.in_processes(args, 1000, False) == sp.in_processes(args, 10_000, True) == 1
    assert sp.in_processes(SimpleNamespace(**{**vars(args), "device": "cuda"}), 10_000, False) == 1
    assert sp.in_processes(SimpleNamespace(**{**vars(args), "processes": 1}), 10_000, False) == 1
    specs = []
    ab, cd = ((2.0, 2.0), (1.0, 1.0)), ((3.0, 3.0), (2.0, 2.0))  # ratios 2 and 1.5
    fake = [[ab] * 3, [ab, cd, cd], [cd] * 3]  # one list per process
    monkeypatch.setattr(sp, "pairs_in_processes", lambda spec, k: specs.append((spec, k)) or (40, fake))
    row = sp.measure("ULA", 10_000, False, "per-coordinate", args)
    (spec, k), = specs
    assert k == 3 and spec["repeats"] == 3 and spec["threads"] == torch.get_num_threads()  # 9 pairs over 3 processes
    assert (spec["name"], spec["n"], spec["compiled"], spec["layout"]) == ("ULA", 10_000, False, "per-coordinate")
    assert row["processes"] == 3 and row["repeats"] == 9 and row["n_steps"] == 40
    assert row["ratio_lib_over_hand_time"] == 1.5  # the median of the pooled pairs
    assert row["ratio_se"] == median_se([2.0] * 4 + [1.5] * 5, [3, 3, 3]) > 0  # resampling the processes
    with pytest.raises(SystemExit):
        sp.main(["--processes", "0", "--malloc", "system"])
    seen = []  # defaults: 6 processes for a full run, 2 for a --quick smoke run
    monkeypatch.setattr(sp, "bench", lambda a: seen.append(a.processes) or ([], {}, {}))
    for argv in ([], ["--quick"], ["--quick", "--processes", "4"]):
        assert sp.main(argv + ["--no-write", "--malloc", "system"]) == 0
    assert seen == [6, 2, 4]


def test_child_processes_time_the_row_and_report_their_failures():
    from benchmarks.speed_processes import pairs_in_processes

    spec = dict(name="ULA", n=100, compiled=False, layout="per-coordinate", device="cpu", quick=True, repeats=1, threads=1)
    steps, groups = pairs_in_processes(spec, 2)
    assert steps == sp.n_steps_for(100, "ULA", True) and [len(g) for g in groups] == [1, 1]
    pairs = [p for g in groups for p in g]
    assert all(t > 0 for p in pairs for side in p for t in side)
    with pytest.raises(RuntimeError, match="timing NOPE at N = 100 in a child process failed"):
        pairs_in_processes(dict(spec, name="NOPE"), 1)
