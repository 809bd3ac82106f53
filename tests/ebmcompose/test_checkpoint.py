"""ebmcompose.checkpoint: one safetensors file with its JSON config, atomic saves, clear errors
(never a pickle); version-1 pairs (.safetensors + .json) still load."""

import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
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


def _assert_same_model(m, m2):
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(m(x), m2(x))
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]) and v.dtype == m2.state_dict()[k].dtype


def _metadata(path):
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    return st_load(blob), json.loads(blob[8 : 8 + n])["__metadata__"]


def _rewrite_metadata(path, metadata):
    state, _ = _metadata(path)
    path.write_bytes(st_save(state, metadata=metadata))


# ---------------------------------------------------------------------------------- one file
def test_roundtrip_bit_exact_one_file(tmp_path):
    m = Tiny()
    path = ckpt.save(tmp_path / "sub" / "tiny", m, _config())
    assert path == tmp_path / "sub" / "tiny.safetensors" and path.is_file()
    state, meta = _metadata(path)
    assert list(meta) == [ckpt.METADATA_KEY]
    assert json.loads(meta[ckpt.METADATA_KEY]) == {"format_version": ckpt.FORMAT_VERSION, "config": _config()}
    assert state["fc.weight"].shape == (4, 2) and state["scale"].dtype == torch.float64
    # the stem or the file name loads the same checkpoint
    for p in (tmp_path / "sub" / "tiny", path):
        _assert_same_model(m, _roundtrip(p))
    # nothing but the file in the folder (no temporary files left over)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["tiny.safetensors"]


def test_directory_path_uses_default_name(tmp_path):
    path = ckpt.save(tmp_path, Tiny(), _config())
    assert path.name == "model.safetensors"
    _roundtrip(tmp_path)


def test_never_unpickles(tmp_path, monkeypatch):
    ckpt.save(tmp_path / "m", Tiny(), _config())
    _save_v1(tmp_path / "old", Tiny(), _config())

    def boom(*a, **k):
        raise AssertionError("torch.load / pickle must not be used")

    monkeypatch.setattr(torch, "load", boom)
    import pickle

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    _roundtrip(tmp_path / "m")
    _roundtrip(tmp_path / "old")


def test_config_needs_kind_and_json(tmp_path):
    with pytest.raises(TypeError, match="kind"):
        ckpt.save(tmp_path / "m", Tiny(), {"hidden": 4})
    with pytest.raises(TypeError, match="JSON"):
        ckpt.save(tmp_path / "m", Tiny(), {"kind": "x", "bad": object()})
    with pytest.raises(TypeError, match="round trip"):
        ckpt.save(tmp_path / "m", Tiny(), {"kind": "x", "shape": (1, 2)})
    assert not any(tmp_path.iterdir())


def test_missing_file_names_path_and_hint(tmp_path):
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"not found: .*nothere\.safetensors; run make-it"):
        ckpt.load_state(tmp_path / "nothere", missing_hint="run make-it")
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError
        ckpt.load_state(tmp_path / "nothere")


def test_truncated_tensors(tmp_path):
    path = ckpt.save(tmp_path / "m", Tiny(), _config())
    blob = path.read_bytes()
    for cut in (3, 20, len(blob) - 5):
        path.write_bytes(blob[:cut])
        with pytest.raises(ckpt.CheckpointError, match=r"corrupt checkpoint tensors .*m\.safetensors.*truncated"):
            ckpt.load_state(tmp_path / "m")


def test_garbage_tensors(tmp_path):
    path = ckpt.save(tmp_path / "m", Tiny(), _config())
    path.write_bytes(os.urandom(256))
    with pytest.raises(ckpt.CheckpointError, match="corrupt checkpoint tensors"):
        ckpt.load_state(tmp_path / "m")
    # a pickle disguised as safetensors is rejected, not executed
    import io
    import pickle

    buf = io.BytesIO()
    pickle.dump({"fc.weight": [1.0]}, buf)
    path.write_bytes(buf.getvalue())
    with pytest.raises(ckpt.CheckpointError, match="not a readable safetensors"):
        ckpt.load_state(tmp_path / "m")


def test_safetensors_file_of_someone_else(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(st_save({"w": torch.zeros(3)}))
    with pytest.raises(ckpt.CheckpointError, match=r"weights\.safetensors is a safetensors file but not an ebmcompose checkpoint.*load_file"):
        ckpt.load_state(path)
    path.write_bytes(st_save({"w": torch.zeros(3)}, metadata={"format": "pt"}))
    with pytest.raises(ckpt.CheckpointError, match="not an ebmcompose checkpoint"):
        ckpt.load_state(path)


def test_corrupt_config_metadata(tmp_path):
    path = ckpt.save(tmp_path / "m", Tiny(), _config())
    _rewrite_metadata(path, {ckpt.METADATA_KEY: '{"format_version": 2, "conf'})
    with pytest.raises(ckpt.CheckpointError, match=r"corrupt checkpoint config in .*m\.safetensors.*not valid JSON"):
        ckpt.load_state(path)
    _rewrite_metadata(path, {ckpt.METADATA_KEY: json.dumps({"format_version": 2, "config": {"hidden": 4}})})
    with pytest.raises(ckpt.CheckpointError, match="no 'config' with a string 'kind'"):
        ckpt.load_state(path)


def test_unknown_version_and_kind(tmp_path):
    path = ckpt.save(tmp_path / "m", Tiny(), _config())
    _rewrite_metadata(path, {ckpt.METADATA_KEY: json.dumps({"format_version": ckpt.FORMAT_VERSION + 1, "config": _config()})})
    with pytest.raises(ckpt.CheckpointError, match="unsupported checkpoint format version 3"):
        ckpt.load_state(tmp_path / "m")
    ckpt.save(tmp_path / "m", Tiny(), _config())
    with pytest.raises(ckpt.CheckpointError, match=r"unknown checkpoint kind 'test.Tiny'.*'other.Kind'"):
        ckpt.load_state(tmp_path / "m", kind="other.Kind")
    ckpt.load_state(tmp_path / "m", kind=("other.Kind", "test.Tiny"))


def test_mismatched_config_lists_first_mismatches(tmp_path):
    path = ckpt.save(tmp_path / "m", Tiny(hidden=4), _config(hidden=4))
    # a config of another shape than the tensors: the model built from it does not fit
    _rewrite_metadata(path, {ckpt.METADATA_KEY: json.dumps({"format_version": 2, "config": _config(hidden=8)})})
    state, config = ckpt.load_state(tmp_path / "m")
    with pytest.raises(ckpt.CheckpointError, match=r"does not match.*fc\.weight: model expects shape \(8, 2\).*checkpoint has shape \(4, 2\)"):
        ckpt.load_into(_build(config), state, source=tmp_path / "m")
    del state["out.bias"]
    state["extra"] = torch.zeros(1)
    with pytest.raises(ckpt.CheckpointError, match=r"missing tensors out\.bias.*unexpected tensors extra"):
        ckpt.load_into(Tiny(hidden=4), state)


class _HalfThenFail:
    """A file whose write stores half of the bytes, then fails (a full disk, a crash)."""

    def __init__(self, f, exc):
        self._f, self._exc = f, exc

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        raise self._exc

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


@pytest.mark.parametrize("fail_at", ["serialise", "write", "interrupt", "fsync", "replace"])
def test_failed_save_leaves_nothing(tmp_path, monkeypatch, fail_at):
    import ebmcompose.io as eio

    if fail_at == "serialise":
        import safetensors.torch

        def boom(*a, **k):
            raise RuntimeError("out of memory")

        monkeypatch.setattr(safetensors.torch, "save", boom)
    elif fail_at in ("write", "interrupt"):
        real_fdopen = os.fdopen
        exc = OSError("No space left on device") if fail_at == "write" else KeyboardInterrupt()
        monkeypatch.setattr(eio.os, "fdopen", lambda fd, mode: _HalfThenFail(real_fdopen(fd, mode), exc))
    elif fail_at == "fsync":

        def flaky_fsync(fd):
            raise OSError("I/O error during fsync")

        monkeypatch.setattr(eio.os, "fsync", flaky_fsync)
    else:

        def no_replace(src, dst):
            raise OSError("cross-device link")

        monkeypatch.setattr(eio.os, "replace", no_replace)
    with pytest.raises((RuntimeError, OSError, KeyboardInterrupt)):
        ckpt.save(tmp_path / "m", Tiny(), _config())
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import ebmcompose.io as eio

    old = Tiny(hidden=4)
    ckpt.save(tmp_path / "m", old, _config(hidden=4))
    real_fdopen = os.fdopen
    monkeypatch.setattr(eio.os, "fdopen", lambda fd, mode: _HalfThenFail(real_fdopen(fd, mode), OSError("crash mid-write")))
    with pytest.raises(OSError):
        ckpt.save(tmp_path / "m", Tiny(hidden=8), _config(hidden=8))
    monkeypatch.undo()
    _assert_same_model(old, _roundtrip(tmp_path / "m"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_saves_are_byte_identical(tmp_path):
    m = Tiny()
    a = ckpt.save(tmp_path / "a", m, _config())
    reordered = dict(reversed(list(m.state_dict().items())))
    b = ckpt.save(tmp_path / "b", reordered, _config())
    assert a.read_bytes() == b.read_bytes()
    assert oct(a.stat().st_mode & 0o777) == oct(0o644)


# ---------------------------------------------------------------------------------- version 1
def _save_v1(path, module, config):
    """The version-1 writer's layout: tensors + {stem}.json with config, tensor table, SHA-256."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in sorted(module.state_dict().items())}
    blob = st_save(tensors, metadata={"format": "ebmcompose.checkpoint v1"})
    header = {
        "format": "ebmcompose.checkpoint",
        "format_version": 1,
        "kind": config["kind"],
        "config": config,
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in tensors.items()},
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    st, js = path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")
    st.write_bytes(blob)
    js.write_text(json.dumps(header, indent=2) + "\n")
    return st, js


def test_v1_pair_loads_bit_exact_by_any_name(tmp_path):
    m = Tiny()
    st, js = _save_v1(tmp_path / "old", m, _config())
    for p in (tmp_path / "old", st, js):
        _assert_same_model(m, _roundtrip(p))
    assert ckpt.checkpoint_paths(tmp_path / "old") == (st, js)


def test_v1_resaved_as_one_file_keeps_the_weights_bit_identical(tmp_path):
    m = Tiny()
    _save_v1(tmp_path / "old", m, _config())
    state, config = ckpt.load_state(tmp_path / "old")
    new = ckpt.save(tmp_path / "new", state, config)
    state2, config2 = ckpt.load_state(new)
    assert config2 == config == _config() and state2.keys() == state.keys()
    for k in state:
        assert state2[k].dtype == state[k].dtype and torch.equal(state2[k], state[k])
    # saved in place over the pair, the new file wins; the old .json stays (never deleted)
    ckpt.save(tmp_path / "old", Tiny(hidden=3), _config(hidden=3))
    assert _roundtrip(tmp_path / "old").hidden == 3 and (tmp_path / "old.json").is_file()


def test_v1_missing_files(tmp_path):
    st, js = _save_v1(tmp_path / "m", Tiny(), _config())
    js.unlink()
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"not found: .*m\.json; run make-it"):
        ckpt.load_state(tmp_path / "m", missing_hint="run make-it")
    _save_v1(tmp_path / "m", Tiny(), _config())
    st.unlink()
    with pytest.raises(ckpt.CheckpointNotFoundError, match=r"m\.safetensors"):
        ckpt.load_state(tmp_path / "m")


def test_v1_invalid_json(tmp_path):
    _, js = _save_v1(tmp_path / "m", Tiny(), _config())
    js.write_text('{"format": "ebmcompose.checkpoint", "format_ver')
    with pytest.raises(ckpt.CheckpointError, match=r"corrupt checkpoint config .*m\.json.*not valid JSON"):
        ckpt.load_state(tmp_path / "m")
    js.write_text("[1, 2, 3]")
    with pytest.raises(ckpt.CheckpointError, match="not an ebmcompose checkpoint"):
        ckpt.load_state(tmp_path / "m")


def test_v1_unknown_version_and_kind(tmp_path):
    _, js = _save_v1(tmp_path / "m", Tiny(), _config())
    header = json.loads(js.read_text())
    header["format_version"] = ckpt.FORMAT_VERSION + 1
    js.write_text(json.dumps(header))
    with pytest.raises(ckpt.CheckpointError, match="unsupported checkpoint format version"):
        ckpt.load_state(tmp_path / "m")
    header["format_version"] = 1
    js.write_text(json.dumps(header))
    with pytest.raises(ckpt.CheckpointError, match=r"unknown checkpoint kind 'test.Tiny'.*'other.Kind'"):
        ckpt.load_state(tmp_path / "m", kind="other.Kind")
    ckpt.load_state(tmp_path / "m", kind=("other.Kind", "test.Tiny"))


def test_v1_truncated_tensors(tmp_path):
    st, _ = _save_v1(tmp_path / "m", Tiny(), _config())
    st.write_bytes(st.read_bytes()[:20])
    with pytest.raises(ckpt.CheckpointError, match=r"corrupt checkpoint tensors .*m\.safetensors.*truncated"):
        ckpt.load_state(tmp_path / "m")


def test_v1_swapped_pair_detected(tmp_path):
    _save_v1(tmp_path / "a", Tiny(hidden=4), _config(hidden=4))
    _save_v1(tmp_path / "b", Tiny(hidden=8), _config(hidden=8))
    os.replace(tmp_path / "b.safetensors", tmp_path / "a.safetensors")
    with pytest.raises(ckpt.CheckpointError, match="pair mismatch"):
        ckpt.load_state(tmp_path / "a")


def test_v1_tensor_table_mismatch(tmp_path):
    _, js = _save_v1(tmp_path / "m", Tiny(), _config())
    header = json.loads(js.read_text())
    header["sha256"] = None  # no hash: the table check still catches a wrong listing
    header["tensors"]["fc.weight"]["shape"] = [5, 2]
    js.write_text(json.dumps(header))
    with pytest.raises(ckpt.CheckpointError, match=r"pair mismatch between .*fc\.weight: config lists shape \(5, 2\)"):
        ckpt.load_state(tmp_path / "m")
