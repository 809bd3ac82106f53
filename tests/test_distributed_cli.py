"""`torchrun --nproc_per_node=2 --no-python ebmcompose sample` writes what the plain command writes."""

import json
import sys

import numpy as np
import torch

import _distributed_worker as worker
from ebmcompose import cli

ARGS = ["sample", "--task", "product", "--sampler", "pc-mala", "--levels", "5", "--corrector-steps", "1",
        "--n", "40", "--block", "16", "--seed", "3", "--no-progress"]  # blocks of 16, 16, 8 chains


def test_sample_under_torchrun_writes_the_files_of_the_plain_command(tmp_path, capsys):
    plain, two = tmp_path / "plain", tmp_path / "two"
    assert cli.main([*ARGS, "--out", str(plain)]) == 0
    capsys.readouterr()
    # `--` ends torchrun's options: its parser would take `--n` for an ambiguous prefix of `--nnodes`
    proc = worker.torchrun(["--no-python", "--", sys.executable, "-m", "ebmcompose", *ARGS, "--out", two])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("[sample] wrote") == 1  # rank 0 reports, the other rank is quiet

    np.testing.assert_array_equal(np.load(two / "samples.npy"), np.load(plain / "samples.npy"))
    assert torch.equal(torch.load(two / "samples.pt", weights_only=True), torch.load(plain / "samples.pt", weights_only=True))
    records = [json.loads((d / "metrics.json").read_text()) for d in (plain, two)]
    for r in records:
        for timing in ("seconds", "metrics_seconds"):
            r["metrics"].pop(timing)
    assert records[0] == records[1]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in plain.iterdir())
