"""Property tests (hypothesis) of the output-folder rules of ``ebmcompose.cli.outputs``.

For any folder contents and any set of outputs: files the command does not write are kept byte
for byte, its own outputs are replaced, nothing else appears (no staging leftovers), and a run
that fails leaves the folder exactly as it was (not even created when it did not exist).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebmcompose.cli.errors import OutputError
from ebmcompose.cli.outputs import staged_output

OUTPUTS = ["samples.pt", "metrics.json", "metrics.md", "samples.png"]
names = st.sampled_from(OUTPUTS + ["important.csv", "notes.txt", "metrics.json.bak", ".hidden", "data.npy"])
contents = st.binary(max_size=64)
folders = st.dictionaries(names, contents, max_size=6)
outputs = st.dictionaries(st.sampled_from(OUTPUTS), contents, min_size=1, max_size=4)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Planted(Exception):
    pass


def snapshot(folder: Path):
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else None


def make(existing, exists: bool) -> Path:
    root = Path(tempfile.mkdtemp(prefix="ebmc-prop-"))
    folder = root / "out"
    if exists:
        folder.mkdir()
        for name, data in existing.items():
            (folder / name).write_bytes(data)
    return folder


@SETTINGS
@given(existing=folders, written=outputs, exists=st.booleans())
def test_success_keeps_every_other_file_and_replaces_only_its_outputs(existing, written, exists):
    folder = make(existing, exists)
    try:
        before = snapshot(folder) or {}
        with staged_output(folder, "sample") as staging:
            for name, data in written.items():
                (staging / name).write_bytes(data)
        after = snapshot(folder)
        assert after == {**before, **written}  # nothing lost, nothing extra, outputs replaced
    finally:
        shutil.rmtree(folder.parent)


@SETTINGS
@given(existing=folders, written=outputs, exists=st.booleans())
def test_a_failed_run_leaves_the_folder_exactly_as_it_was(existing, written, exists):
    folder = make(existing, exists)
    try:
        before = snapshot(folder)
        with pytest.raises(Planted):
            with staged_output(folder, "sample") as staging:
                for name, data in written.items():
                    (staging / name).write_bytes(data)
                raise Planted
        assert snapshot(folder) == before  # None: still not created
        assert sorted(p.name for p in folder.parent.iterdir()) == (["out"] if exists else [])
    finally:
        shutil.rmtree(folder.parent)


@SETTINGS
@given(existing=folders, written=outputs, clash=st.sampled_from(OUTPUTS))
def test_a_folder_named_like_an_output_moves_nothing(existing, written, clash):
    folder = make(existing, True)
    try:
        existing.pop(clash, None)
        (folder / clash).unlink(missing_ok=True)
        (folder / clash).mkdir()
        (folder / clash / "inside.txt").write_text("mine")
        before = snapshot(folder / clash), {p.name for p in folder.iterdir()}
        written = {**written, clash: b"new"}
        with pytest.raises(OutputError, match=f"holds a folder named {clash}"):
            with staged_output(folder, "sample") as staging:
                for name, data in written.items():
                    (staging / name).write_bytes(data)
        assert (snapshot(folder / clash), {p.name for p in folder.iterdir()}) == before
        assert all((folder / n).read_bytes() == d for n, d in existing.items())
    finally:
        shutil.rmtree(folder.parent)


@SETTINGS
@given(data=contents)
def test_out_that_is_a_file_is_refused_and_kept(data):
    root = Path(tempfile.mkdtemp(prefix="ebmc-prop-"))
    try:
        f = root / "metrics.json"
        f.write_bytes(data)
        for target in (f, f / "sub"):
            with pytest.raises(OutputError, match="is a file"):
                with staged_output(target, "sample"):
                    pytest.fail("the block must not run")
        assert f.read_bytes() == data and [p.name for p in root.iterdir()] == ["metrics.json"]
    finally:
        shutil.rmtree(root)
