"""``ebmcompose t2i`` on the tiny local pipeline: the files, equality with the library, and bad
input as one paragraph with exit status 2 and nothing written."""

import json
import shutil

import numpy as np
import pytest
import torch

from ebmcompose.cli import main

pytest.importorskip("transformers", reason="text-to-image needs transformers (pip install -e .[t2i])")


def _run(argv, capsys):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_writes_pngs_images_npy_and_settings_equal_to_the_library(tiny_sd_folder, tiny_cp, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    prompt = "a red cube AND NOT 0.5*(a table)"
    code, _, err = _run(["t2i", "--pipeline", str(tiny_sd_folder), "--prompt", prompt, "--steps", "4", "--n", "2",
                         "--seed", "3", "--guidance", "5", "--no-progress", "--out", str(out)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["image_000.png", "image_001.png", "images.npy", "keep.txt", "settings.json"]
    images = np.load(out / "images.npy")
    assert images.dtype == np.float32 and images.shape == (2, 16, 16, 3) and 0 <= images.min() <= images.max() <= 1
    ref = tiny_cp(prompt, guidance=5.0, num_inference_steps=4, num_images=2, generator=torch.Generator().manual_seed(3),
                  output_type="np", progress=False).images
    np.testing.assert_allclose(images, ref, atol=1e-5)
    from PIL import Image

    png = np.asarray(Image.open(out / "image_001.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(png, images[1], atol=0.5 / 255 + 1e-6)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["terms"] == [{"text": "a red cube", "weight": 1.0}, {"text": "a table", "weight": -0.5}]
    assert settings["nfe"] == 4 and settings["seed"] == 3 and settings["dtype"] == "float32"
    assert (out / "keep.txt").read_text() == "mine"


def test_other_samplers_run_and_differ(tiny_sd_folder, tmp_path, capsys):
    arrays = {}
    for sampler in ("euler", "pc-ula"):
        out = tmp_path / sampler
        code, _, err = _run(["t2i", "--pipeline", str(tiny_sd_folder), "--prompt", "a cube AND a ball", "--steps", "3",
                             "--sampler", sampler, "--no-progress", "--out", str(out)], capsys)
        assert code == 0, err
        arrays[sampler] = np.load(out / "images.npy")
        assert np.isfinite(arrays[sampler]).all()
    assert json.loads((tmp_path / "pc-ula" / "settings.json").read_text())["nfe"] > 3  # corrector evaluations
    assert not np.array_equal(arrays["euler"], arrays["pc-ula"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "a cube AND AND"], "empty prompt"),
        (["--prompt", "NOT"], "NOT needs a prompt"),
        (["--pipeline", "MISSING"], "does not exist"),
        (["--pipeline", "EMPTY"], "model_index.json"),
        (["--pipeline", "BROKEN"], "cannot load the pipeline"),
        (["--height", "20"], "multiple of 8"),
        (["--dtype", "float8"], "invalid choice"),
    ],
)
def test_bad_input_is_one_paragraph_exit_2_nothing_written(tiny_sd_folder, tmp_path, capsys, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd_folder, broken)
    shutil.rmtree(broken / "vae")
    folders = {"MISSING": str(tmp_path / "missing"), "EMPTY": str(empty), "BROKEN": str(broken)}
    argv = {"--pipeline": str(tiny_sd_folder), "--prompt": "a cube"}
    extra = []
    for i in range(0, len(args), 2):
        if args[i] in argv:
            argv[args[i]] = folders.get(args[i + 1], args[i + 1])
        else:
            extra += args[i : i + 2]
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = _run(["t2i", *sum(([k, v] for k, v in argv.items()), []), *extra, "--steps", "2",
                              "--no-progress", "--out", str(out)], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_dtype_the_device_cannot_run_is_a_clear_error(monkeypatch, tiny_sd_folder, tmp_path, capsys):
    import torch.nn.functional as F

    real = F.conv2d

    def no_half(x, *a, **k):
        if x.dtype == torch.bfloat16:
            raise RuntimeError('"slow_conv2d_cpu" not implemented for \'BFloat16\'')
        return real(x, *a, **k)

    monkeypatch.setattr(F, "conv2d", no_half)
    out = tmp_path / "out"
    code, _, err = _run(["t2i", "--pipeline", str(tiny_sd_folder), "--prompt", "a cube", "--dtype", "bfloat16",
                         "--out", str(out)], capsys)
    assert code == 2 and "--dtype bfloat16 cannot run on cpu" in err and "float32" in err
    assert not out.exists()


def test_blocks_draw_from_their_own_generators_and_two_torchrun_processes_write_the_images_of_one(
        tiny_sd_folder, tiny_cp, tmp_path, capsys):
    """--block B: block b of the images comes from block_generator(seed, b); under torchrun the blocks
    spread over the ranks and rank 0 writes the one-process images."""
    import _distributed_worker as worker

    from ebmcompose import distributed

    args = ["t2i", "--pipeline", str(tiny_sd_folder), "--prompt", "a cube AND NOT a ball", "--steps", "2", "--n", "3",
            "--block", "2", "--seed", "4", "--no-progress"]
    code, _, err = _run(args + ["--out", str(tmp_path / "one")], capsys)
    assert code == 0, err
    one = np.load(tmp_path / "one" / "images.npy")
    ref = [tiny_cp("a cube AND NOT a ball", num_inference_steps=2, num_images=k, generator=distributed.block_generator(4, b),
                   output_type="np", progress=False).images for b, k in ((0, 2), (1, 1))]
    np.testing.assert_allclose(one, np.concatenate(ref), atol=1e-6)
    proc = worker.torchrun(["-m", "--", "ebmcompose", *args, "--out", tmp_path / "two"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert np.array_equal(one, np.load(tmp_path / "two" / "images.npy"))



def test_torchrun_without_block_is_refused_before_anything_is_written(tiny_sd_folder, tmp_path, capsys, monkeypatch):
    import contextlib

    from ebmcompose import distributed

    two = distributed.Session(rank=0, world_size=2, backend="gloo")  # what torchrun's rank 0 gets
    monkeypatch.setattr(distributed, "session", lambda *a, **k: contextlib.nullcontext(two))
    code, _, err = _run(["t2i", "--pipeline", str(tiny_sd_folder), "--prompt", "a cube", "--steps", "2",
                         "--no-progress", "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and "give --block" in err and not (tmp_path / "bad").exists()
