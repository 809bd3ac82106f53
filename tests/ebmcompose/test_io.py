"""Atomic output: a failure or interrupt leaves nothing half-written."""

import json
import os

import pytest

from ebmcompose.io import atomic_dir, atomic_write, write_json, write_text


def test_atomic_write_replaces_only_on_success(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(p, "w") as f:
            f.write("new, half")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert sorted(os.listdir(p.parent)) == ["a.txt"]  # no temp file left behind


def test_atomic_write_interrupt_leaves_no_file(tmp_path):
    p = tmp_path / "b.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(p) as f:
            f.write(b"xx")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_write_json_roundtrip_numpy_and_torch(tmp_path):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    p = write_json(tmp_path / "m.json", {"a": np.float32(1.5), "b": torch.tensor([1, 2]), "c": np.arange(2)})
    assert json.loads(p.read_text()) == {"a": 1.5, "b": [1, 2], "c": [0, 1]}


def test_atomic_dir_swaps_whole_directory(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "x.txt").write_text("1")
    assert (out / "x.txt").read_text() == "1"
    with atomic_dir(out) as d:
        (d / "y.txt").write_text("2")
    assert sorted(os.listdir(out)) == ["y.txt"]
    with pytest.raises(ValueError):
        with atomic_dir(out) as d:
            (d / "z.txt").write_text("3")
            raise ValueError("fail midway")
    assert sorted(os.listdir(out)) == ["y.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # temp dirs cleaned


def test_atomic_write_rejects_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "c", "a"):
            pass


def test_written_files_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        p = write_text(tmp_path / "f.txt", "x")
        assert (p.stat().st_mode & 0o777) == 0o644
        with atomic_dir(tmp_path / "d") as d:
            (d / "y").write_text("y")
        assert ((tmp_path / "d").stat().st_mode & 0o777) == 0o755
        os.chmod(p, 0o600)
        write_text(p, "again")  # replacing keeps the existing file's mode
        assert (p.stat().st_mode & 0o777) == 0o600
    finally:
        os.umask(mask)
