"""``ebmcompose scenes``: bad input exits 2 and writes nothing; same seed, same images; user files survive."""

import json

import numpy as np
import pytest

from benchmarks import cli
from toy import image_train as it
from toy.scene_nets import SceneUNet


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    for res in (32, 64):
        cfg = it.config_for("position", "epsilon", "quick", resolution=res)
        it.save_model(d / f"pos{res}", SceneUNet(**cfg.net_config()), cfg, half=True)
    return d


def _sample(out, ckpt, *extra):
    argv = ["scenes", "sample", "--checkpoint", str(ckpt), "--n", "2", "--steps", "2", "--out", str(out), *extra]
    return cli.main([str(a) for a in argv])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--at", "1.5,0.2"], "in [0, 1]"),
        (["--at", "0.5"], "two numbers"),
        (["--at", "a,b"], "two numbers"),
        (["--attr", "purple"], "unknown attribute"),
        (["--at", "0.2,0.2", "--attr", "red"], "different models"),
        (["--at", "0.2,0.2", "--resolution", "64"], "32x32"),
        (["--at", "0.2,0.2", "--sampler", "pc-mala", "--model", "epsilon"], "needs energies"),
        ([], "nothing to sample"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, checkpoints, capsys, extra, message):
    out = tmp_path / "out"
    assert _sample(out, checkpoints / "pos32", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_other_resolution_checkpoint_is_refused(tmp_path, checkpoints, capsys):
    out = tmp_path / "out"
    assert _sample(out, checkpoints / "pos64", "--at", "0.2,0.2", "--resolution", "32") == 2
    assert "64x64" in capsys.readouterr().err and not out.exists()


def test_same_seed_same_images_and_user_files_survive(tmp_path, checkpoints):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _sample(out, checkpoints / "pos32", "--at", "0.25,0.25", "--at", "0.75,0.5", "--seed", "3") == 0
    first = np.load(out / "samples.npy")
    assert first.dtype == np.float32 and first.shape == (2, 3, 32, 32)
    assert first.min() >= 0.0 and first.max() <= 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nfe"] == 2 and 0.0 <= metrics["accuracy"] <= 1.0 and "strict_accuracy" in metrics
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "metrics.json", "notes.txt", "samples.npy"]
    assert _sample(out, checkpoints / "pos32", "--at", "0.25,0.25", "--at", "0.75,0.5", "--seed", "3") == 0
    assert np.array_equal(first, np.load(out / "samples.npy"))
    assert _sample(out, checkpoints / "pos32", "--at", "0.25,0.25", "--at", "0.75,0.5", "--seed", "4") == 0
    assert not np.array_equal(first, np.load(out / "samples.npy"))


def test_train_stops_resumes_and_exports(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["scenes", "train", "--size", "quick", "--steps", "2", "--out", str(out), "--export"]
    assert cli.main(base + ["--until", "1"]) == 0
    assert (out / "resume.safetensors").is_file() and not (out / "scenes_position_eps.safetensors").exists()
    assert cli.main(base) == 2  # a run is there: continue it explicitly
    assert "--resume" in capsys.readouterr().err
    assert cli.main(base + ["--resume"]) == 0
    model, _, config = it.load_model(out / "scenes_position_eps")
    assert config["storage"] == "float16" and config["train"]["steps"] == 2


def test_two_torchrun_processes_write_the_images_of_one(tmp_path, checkpoints):
    """Blocks of --block images, each seeded from (--seed, block): 2 gloo processes share the 3 blocks
    and rank 0 writes exactly the one-process images (and only rank 0 writes)."""
    import _distributed_worker as worker

    args = ["--checkpoint", checkpoints / "pos32", "--n", "5", "--block", "2", "--steps", "2", "--at", "0.3,0.6", "--seed", "5"]
    assert _sample(tmp_path / "one", *args[1:2], *args[2:]) == 0
    proc = worker.torchrun(["-m", "--", "ebmcompose", "scenes", "sample", *args, "--out", tmp_path / "two"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("scenes sample: 5 images") == 1  # rank 0 reports, rank 1 stays quiet
    assert np.array_equal(np.load(tmp_path / "one" / "samples.npy"), np.load(tmp_path / "two" / "samples.npy"))
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert one["accuracy"] == two["accuracy"] and one["block"] == two["block"] == 2


def test_block_is_checked(tmp_path, checkpoints, capsys):
    assert _sample(tmp_path / "out", checkpoints / "pos32", "--at", "0.2,0.2", "--block", "0") == 2
    assert "--block" in capsys.readouterr().err and not (tmp_path / "out").exists()
