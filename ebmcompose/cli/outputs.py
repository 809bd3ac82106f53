"""Output folders that never lose a user's files.

A command stages its files in a hidden temporary folder (inside ``--out`` when it exists, else
inside its nearest existing ancestor, so that the final moves stay on one file system) and moves
each file into ``--out`` with ``os.replace`` only after the whole run succeeded. Files in
``--out`` that this run does not write are kept; nothing is ever removed from it. The
temporary folder is created *before* the run, so an unwritable or impossible ``--out`` is an
:class:`~ebmcompose.cli.errors.OutputError` before any work is done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List, Union

from .errors import OutputError

__all__ = ["staged_output", "writable_base", "commit"]

PathLike = Union[str, os.PathLike]


def writable_base(folder: PathLike, option: str = "--out") -> Path:
    """The existing folder to stage outputs in: ``folder`` itself or its nearest existing ancestor.

    Raises
    ------
    OutputError
        ``folder`` is a file, lies under a file, or is not writable.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is a file, not a folder: choose a folder for the outputs")
    base = folder.absolute()
    while not base.exists():
        if base.parent == base:
            break
        base = base.parent
    if not base.is_dir():
        raise OutputError(
            f"{option} {folder} cannot be created: {base} is a file, not a folder. Choose another {option}."
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {folder}: no permission to write in {base}. Choose a folder you can write to.")
    return base


def commit(staging: Path, folder: Path, option: str = "--out") -> List[Path]:
    """Move every file of ``staging`` into ``folder`` (created if missing) with ``os.replace``.

    Checks every destination first (none may be a folder), so a conflict moves nothing.
    """
    files = sorted(p for p in staging.iterdir())
    for f in files:
        if not f.is_file():
            raise RuntimeError(f"staged output {f.name} is not a plain file")  # a bug of the command
        dest = folder / f.name
        if dest.is_dir():
            raise OutputError(
                f"{option} {folder} holds a folder named {f.name}, which is one of this command's output "
                "files; rename that folder or choose another " + option
            )
    folder.mkdir(parents=True, exist_ok=True)
    moved = []
    for f in files:
        os.replace(f, folder / f.name)
        moved.append(folder / f.name)
    return moved


@contextlib.contextmanager
def staged_output(folder: PathLike, command: str, option: str = "--out") -> Iterator[Path]:
    """Stage a command's outputs; move them into ``folder`` when the block succeeds.

    Enter this *before* the run: it checks ``folder`` and creates the staging folder, so a bad
    ``--out`` fails first. On any exception (including Ctrl-C) the staged files are dropped and
    ``folder`` is left exactly as it was (not even created).

    Parameters
    ----------
    folder : str or PathLike
        The user's ``--out``; other files in it are kept.
    command : str
        Names the temporary folder (``.ebmcompose-<command>-*.tmp``).

    Yields
    ------
    Path
        The staging folder: write every output file directly into it (no subfolders).
    """
    folder = Path(folder).expanduser()
    base = writable_base(folder, option)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".ebmcompose-{command}-", suffix=".tmp", dir=base))
    except OSError as exc:
        raise OutputError(
            f"{option} {folder}: cannot write in {base} ({exc.strerror or exc}). Choose a folder you can write to."
        ) from None
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; staged files keep their own modes
        yield staging
        commit(staging, folder, option)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
