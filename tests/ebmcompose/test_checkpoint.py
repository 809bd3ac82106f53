"""ebmcompose.checkpoint: safetensors + JSON, atomic saves, clear errors (never a pickle)."""

import json
import os

import pytest
import torch
from torch import nn

from ebmcompose import checkpoint as ckpt


class Tiny(nn.Module):
    def __init__(self, hidden=4):
        super().__init__()
        self.hidden = hidden
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(2, hidden)
        self.out = nn.Linear(hidden, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.register_buffer("scale", torch.tensor([1.5, 2.5], dtype=torch.float64))

    def forward(self, x):
        return self.out(torch.tanh(self.fc(x))) * self.scale.float()


def _config(hidden=4):
    return {"kind": "test.Tiny", "hidden": hidden}


def _build(config):
    return Tiny(hidden=config["hidden"])


def _roundtrip(path):
    state, config = ckpt.load_state(path)
    return ckpt.load_into(_build(config), state, source=path)


def test_roundtrip_bit_exact_and_files(tmp_path):
    m = Tiny()
    st, js = ckpt.save(tmp_path / "sub" / "tiny", m, _config())
    assert st == tmp_path / "sub" / "tiny.safetensors" and st.is_file() and js.is_file()
    header = json.loads(js.read_text())
    assert header["format"] == ckpt.FORMAT and header["format_version"] == ckpt.FORMAT_VERSION
    assert header["kind"] == "test.Tiny" and header["config"] == _config()
    assert header["tensors"]["fc.weight"] == {"shape": [4, 2], "dtype": "float32"}
    assert header["tensors"]["scale"]["dtype"] == "float64"
    # any name of the pair, or the stem, loads the same checkpoint
    for p in (tmp_path / "sub" / "tiny", st, js):
        m2 = _roundtrip(p)
        x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
        assert torch.equal(m(x), m2(x))
        for k, v in m.state_dict().items():
            assert torch.equal(v, m2.state_dict()[k]) and v.dtype == m2.state_dict()[k].dtype
    # nothing but the pair in the folder (no temporary files left over)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["tiny.json", "tiny.safetensors"]


def test_directory_path_uses_default_name(tmp_path):
    st, js = ckpt.save(tmp_path, Tiny(), _config())
    assert st.name == "model.safetensors" and js.name == "model.json"
    _roundtrip(tmp_path)


def test_never_unpickles(tmp_path, monkeypatch):
    ckpt.save(tmp_path / "m", Tiny(), _config())

    def boom(*a, **k):
        raise AssertionError("torch.load / pickle must not be used")

    monkeypatch.setattr(torch, "load", boom)
    import pickle

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    _roundtrip(tmp_path / "m")


def test_config_needs_kind_and_json(tmp_path):
    with pytest.raises(TypeError, match="kind"):
        ckpt.save(tmp_path / "m", Tiny(), {"hidden": 4})
    with pytest.raises(TypeError, match="JSON"):
        ckpt.save(tmp_path / "m", Tiny(), {"kind": "x", "bad": object()})
    with pytest.raises(TypeError, match="round trip"):
        ckpt.save(tmp_path / "m", Tiny(), {"kind": "x", "shape": (1, 2)})
    assert not any(tmp_path.iterdir())


def test_missing_file_names_path_and_hint(tmp_path):
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"not found: .*nothere\.json; run make-it"):
        ckpt.load_state(tmp_path / "nothere", missing_hint="run make-it")
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError
        ckpt.load_state(tmp_path / "nothere")
    st, js = ckpt.save(tmp_path / "m", Tiny(), _config())
    st.unlink()
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"m\.safetensors"):
        ckpt.load_state(tmp_path / "m")


def test_truncated_tensors(tmp_path):
    st, _ = ckpt.save(tmp_path / "m", Tiny(), _config())
    blob = st.read_bytes()
    for cut in (3, 20, len(blob) - 5):
        st.write_bytes(blob[:cut])
        with pytest.raises(ckpt.CheckpointError, match=r"corrupt checkpoint tensors .*m\.safetensors.*truncated"):
            ckpt.load_state(tmp_path / "m")


def test_garbage_tensors(tmp_path):
    st, _ = ckpt.save(tmp_path / "m", Tiny(), _config())
    st.write_bytes(os.urandom(256))
    with pytest.raises(ckpt.CheckpointError, match="corrupt checkpoint tensors"):
        ckpt.load_state(tmp_path / "m")
    # a pickle disguised as safetensors is rejected, not executed
    import io
    import pickle

    buf = io.BytesIO()
    pickle.dump({"fc.weight": [1.0]}, buf)
    st.write_bytes(buf.getvalue())
    with pytest.raises(ckpt.CheckpointError, match="not a readable safetensors"):
        ckpt.load_state(tmp_path / "m")


def test_invalid_json(tmp_path):
    _, js = ckpt.save(tmp_path / "m", Tiny(), _config())
    js.write_text('{"format": "ebmcompose.checkpoint", "format_ver')
    with pytest.raises(ckpt.CheckpointError, match=r"corrupt checkpoint config .*m\.json.*not valid JSON"):
        ckpt.load_state(tmp_path / "m")
    js.write_text("[1, 2, 3]")
    with pytest.raises(ckpt.CheckpointError, match="not an ebmcompose checkpoint"):
        ckpt.load_state(tmp_path / "m")


def test_unknown_version_and_kind(tmp_path):
    _, js = ckpt.save(tmp_path / "m", Tiny(), _config())
    header = json.loads(js.read_text())
    header["format_version"] = ckpt.FORMAT_VERSION + 1
    js.write_text(json.dumps(header))
    with pytest.raises(ckpt.CheckpointError, match="unsupported checkpoint format version"):
        ckpt.load_state(tmp_path / "m")
    header["format_version"] = ckpt.FORMAT_VERSION
    js.write_text(json.dumps(header))
    with pytest.raises(ckpt.CheckpointError, match=r"unknown checkpoint kind 'test.Tiny'.*'other.Kind'"):
        ckpt.load_state(tmp_path / "m", kind="other.Kind")
    ckpt.load_state(tmp_path / "m", kind=("other.Kind", "test.Tiny"))


def test_mismatched_config_lists_first_mismatches(tmp_path):
    ckpt.save(tmp_path / "m", Tiny(hidden=4), _config(hidden=4))
    state, config = ckpt.load_state(tmp_path / "m")
    with pytest.raises(ckpt.CheckpointError, match=r"does not match.*fc\.weight: model expects shape \(8, 2\).*checkpoint has shape \(4, 2\)"):
        ckpt.load_into(Tiny(hidden=8), state, source=tmp_path / "m")
    del state["out.bias"]
    state["extra"] = torch.zeros(1)
    with pytest.raises(ckpt.CheckpointError, match=r"missing tensors out\.bias.*unexpected tensors extra"):
        ckpt.load_into(Tiny(hidden=4), state)


def test_swapped_pair_detected(tmp_path):
    ckpt.save(tmp_path / "a", Tiny(hidden=4), _config(hidden=4))
    ckpt.save(tmp_path / "b", Tiny(hidden=8), _config(hidden=8))
    os.replace(tmp_path / "b.safetensors", tmp_path / "a.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="pair mismatch"):
        ckpt.load_state(tmp_path / "a")


@pytest.mark.parametrize("fail_at", ["tensors", "fsync", "fsync_json", "json"])
def test_failed_save_leaves_nothing(tmp_path, monkeypatch, fail_at):
    import ebmcompose.io as eio

    if fail_at == "tensors":
        import safetensors.torch

        def boom(*a, **k):
            raise RuntimeError("disk full")

        monkeypatch.setattr(safetensors.torch, "save", boom)
    elif fail_at.startswith("fsync"):
        real_fsync = os.fsync
        calls = []
        fail_on = 1 if fail_at == "fsync" else 2  # 2: the tensors are committed, the JSON fails

        def flaky_fsync(fd):
            calls.append(fd)
            if len(calls) == fail_on:
                raise OSError("I/O error during fsync")
            real_fsync(fd)

        monkeypatch.setattr(eio.os, "fsync", flaky_fsync)
    else:
        real_dumps = json.dumps

        def bad_dumps(obj, *a, **k):
            if isinstance(obj, dict) and "sha256" in obj:
                raise KeyboardInterrupt  # Ctrl-C after the tensors were serialised
            return real_dumps(obj, *a, **k)

        monkeypatch.setattr(ckpt.json, "dumps", bad_dumps)
    with pytest.raises((RuntimeError, OSError, KeyboardInterrupt)):
        ckpt.save(tmp_path / "m", Tiny(), _config())
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import ebmcompose.io as eio

    old = Tiny(hidden=4)
    ckpt.save(tmp_path / "m", old, _config(hidden=4))

    def fail(fd):
        raise OSError("crash mid-write")

    monkeypatch.setattr(eio.os, "fsync", fail)
    with pytest.raises(OSError):
        ckpt.save(tmp_path / "m", Tiny(hidden=8), _config(hidden=8))
    monkeypatch.undo()
    m2 = _roundtrip(tmp_path / "m")
    x = torch.randn(5, 2)
    assert torch.equal(old(x), m2(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def test_saves_are_byte_identical(tmp_path):
    m = Tiny()
    ckpt.save(tmp_path / "a", m, _config())
    reordered = dict(reversed(list(m.state_dict().items())))
    ckpt.save(tmp_path / "b", reordered, _config())
    for ext in ("safetensors", "json"):
        assert (tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"b.{ext}").read_bytes()
    assert oct((tmp_path / "a.json").stat().st_mode & 0o777) == oct(0o644)
