"""Checkpoints: a ``.safetensors`` file of tensors plus a ``.json`` config that rebuilds the model.

Never a pickle: ``torch.load`` of a pickle runs arbitrary code, so weights are stored with
`safetensors <https://github.com/huggingface/safetensors>`_ and everything else as JSON.

A checkpoint called ``name`` in folder ``d`` is the pair::

    d/name.safetensors   the module's state_dict (contiguous copies, any dtype)
    d/name.json          {"format": "ebmcompose.checkpoint", "format_version": 1,
                          "kind": ..., "config": {...}, "tensors": {key: {"shape", "dtype"}},
                          "sha256": <hash of the .safetensors bytes>}

``config`` is the caller's dict: it must hold a string ``"kind"`` (what to build) and whatever
the builder of that kind needs (constructor keyword arguments, schedule, ...).

Both files are written with :func:`ebmcompose.io.atomic_write` (temporary file + rename): a
crash or Ctrl-C mid-save leaves the previous checkpoint (or nothing), never a half-written
file. The ``.safetensors`` file is committed first and the ``.json`` last; the JSON records the
SHA-256 of the tensors it belongs to, so a stale or swapped pair is detected at load time.

Errors are :class:`CheckpointError` (:class:`CheckpointNotFoundError` for a missing file) with
messages that name the file, what is wrong, and how to fix or regenerate it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .io import atomic_write

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointNotFoundError",
    "checkpoint_paths",
    "save",
    "load_state",
    "load_into",
    "state_mismatches",
]

PathLike = Union[str, os.PathLike]

#: Value of the ``"format"`` field of every checkpoint JSON.
FORMAT = "ebmcompose.checkpoint"
#: Version written by :func:`save`; :func:`load_state` reads versions up to this one.
FORMAT_VERSION = 1
#: Stem used when :func:`save` is given a directory.
DEFAULT_NAME = "model"
#: How many mismatches an error message lists.
_MAX_LISTED = 5


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file does not exist."""


def checkpoint_paths(path: PathLike) -> Tuple[Path, Path]:
    """The ``(.safetensors, .json)`` pair a checkpoint path refers to.

    Parameters
    ----------
    path : str or PathLike
        A stem (``d/name``), either file of the pair (``d/name.safetensors``, ``d/name.json``),
        or an existing directory (then the stem is ``d/model``).

    Returns
    -------
    (Path, Path)
        ``d/name.safetensors`` and ``d/name.json``.
    """
    p = Path(path)
    if p.is_dir():
        p = p / DEFAULT_NAME
    elif p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_json(obj: Any, where: str) -> None:
    """Raise ``TypeError`` if ``obj`` does not survive a JSON round trip unchanged."""
    try:
        text = json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where} must be JSON-serialisable (str, int, float, bool, None, lists, dicts): {exc}") from None
    if json.loads(text) != obj:
        raise TypeError(
            f"{where} changes in a JSON round trip (tuples become lists, non-string keys become "
            "strings); use lists and string keys so the loaded config equals the saved one"
        )


def save(path: PathLike, module: Union[nn.Module, Mapping[str, Tensor]], config: Mapping[str, Any]) -> Tuple[Path, Path]:
    """Save ``module``'s state_dict and ``config`` atomically as ``.safetensors`` + ``.json``.

    Parameters
    ----------
    path : str or PathLike
        Stem, either file name of the pair, or a directory (see :func:`checkpoint_paths`).
        Parent directories are created.
    module : nn.Module or mapping of str to Tensor
        The model (its ``state_dict()`` is saved: parameters and persistent buffers) or a state
        dict. Tensors are copied to contiguous CPU tensors; their dtype is kept.
    config : mapping
        JSON-serialisable description that rebuilds the model; must contain a non-empty string
        ``"kind"``. Stored verbatim under ``"config"``.

    Returns
    -------
    (Path, Path)
        The ``.safetensors`` and ``.json`` paths written.

    Raises
    ------
    TypeError
        If ``config`` has no string ``"kind"`` or is not JSON-serialisable, or a value of the
        state dict is not a tensor.
    """
    from safetensors.torch import save as st_save

    if not isinstance(config, Mapping) or not isinstance(config.get("kind"), str) or not config["kind"]:
        raise TypeError(
            "config must be a dict with a non-empty string 'kind' (what to build) and the "
            "constructor arguments, e.g. {'kind': 'toy.ResMLP/epsilon', 'net': {...}}"
        )
    config = dict(config)
    _check_json(config, "config")
    state = module.state_dict() if isinstance(module, nn.Module) else dict(module)
    tensors: Dict[str, Tensor] = {}
    for key, value in sorted(state.items()):  # sorted: the same bytes whatever the input order
        if not isinstance(value, Tensor):
            raise TypeError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; only tensors are saved")
        # clone: safetensors refuses shared storage (tied weights) and non-contiguous tensors
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    # one key only: safetensors writes its metadata map in arbitrary order, and a checkpoint
    # must be byte-identical when regenerated (the JSON holds the full description)
    meta = {"format": f"{FORMAT} v{FORMAT_VERSION}"}
    blob = st_save(tensors, metadata=meta)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": config["kind"],
        "config": config,
        "tensors": {k: {"shape": list(v.shape), "dtype": _dtype_name(v.dtype)} for k, v in tensors.items()},
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    text = json.dumps(header, indent=2, allow_nan=False) + "\n"
    st_path, json_path = checkpoint_paths(path)
    # Nested: both payloads are written to temporary files first; the tensors are renamed into
    # place, then the JSON (which names their hash). If committing the JSON fails, fresh tensors
    # are removed again; over an existing checkpoint the old JSON's hash no longer matches, so
    # load_state reports the pair as mismatched instead of loading it.
    existed = st_path.exists()
    tensors_committed = False
    try:
        with atomic_write(json_path, "w") as fj:
            fj.write(text)
            with atomic_write(st_path, "wb") as fs:
                fs.write(blob)
            tensors_committed = True
    except BaseException:
        if tensors_committed and not existed:
            st_path.unlink(missing_ok=True)
        raise
    return st_path, json_path


def _missing(path: Path, hint: Optional[str]) -> CheckpointNotFoundError:
    how = hint or "save one with ebmcompose.checkpoint.save(path, module, config)"
    return CheckpointNotFoundError(f"checkpoint file not found: {path}; {how}")


def load_state(
    path: PathLike,
    *,
    kind: Union[None, str, Sequence[str]] = None,
    missing_hint: Optional[str] = None,
) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """Read a checkpoint written by :func:`save` (safetensors + JSON; no pickle).

    Parameters
    ----------
    path : str or PathLike
        Stem, either file of the pair, or a directory (see :func:`checkpoint_paths`).
    kind : str or sequence of str, optional
        The kinds the caller can build; another kind raises :class:`CheckpointError`.
    missing_hint : str, optional
        How to obtain a missing checkpoint (appended to the "not found" message), e.g. the
        command that regenerates it.

    Returns
    -------
    state_dict : dict of str to Tensor
        CPU tensors, as saved.
    config : dict
        The ``config`` passed to :func:`save` (with its ``"kind"``).

    Raises
    ------
    CheckpointNotFoundError
        If either file of the pair is missing.
    CheckpointError
        If the JSON is invalid or not an ebmcompose checkpoint, its format version is newer
        than this code reads, its kind is not one of ``kind``, the ``.safetensors`` file is
        truncated or not a safetensors file, or the tensors do not belong to the JSON.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    st_path, json_path = checkpoint_paths(path)
    for p in (json_path, st_path):
        if not p.is_file():
            raise _missing(p, missing_hint)
    try:
        header = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"corrupt checkpoint config {json_path}: not valid JSON ({exc}); the file is damaged or "
            "was not written by ebmcompose.checkpoint.save: regenerate the checkpoint"
        ) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(
            f"{json_path} is not an ebmcompose checkpoint config (expected a JSON object with "
            f"\"format\": \"{FORMAT}\"); regenerate the checkpoint with ebmcompose.checkpoint.save"
        )
    version = header.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not (1 <= version <= FORMAT_VERSION):
        raise CheckpointError(
            f"unsupported checkpoint format version {version!r} in {json_path}; this ebmcompose "
            f"reads versions 1 to {FORMAT_VERSION}: upgrade ebmcompose or regenerate the checkpoint"
        )
    config = header.get("config")
    tensor_table = header.get("tensors")
    if not isinstance(config, dict) or not isinstance(config.get("kind"), str) or not isinstance(tensor_table, dict):
        raise CheckpointError(
            f"corrupt checkpoint config {json_path}: missing 'config' (with a string 'kind') or "
            "'tensors'; regenerate the checkpoint"
        )
    if kind is not None:
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        if config["kind"] not in kinds:
            raise CheckpointError(
                f"unknown checkpoint kind {config['kind']!r} in {json_path}; expected one of "
                f"{', '.join(map(repr, kinds))}"
            )
    blob = st_path.read_bytes()
    try:
        state = st_load(blob)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(
            f"corrupt checkpoint tensors {st_path} ({len(blob)} bytes): not a readable safetensors "
            f"file ({exc}); it is truncated or overwritten: regenerate the checkpoint"
        ) from None
    digest = hashlib.sha256(blob).hexdigest()
    if header.get("sha256") not in (None, digest):
        raise CheckpointError(
            f"checkpoint pair mismatch: {st_path} is not the tensor file {json_path} was saved with "
            "(SHA-256 differs); one of the two was replaced or modified: save or regenerate them together"
        )
    table = {k: (list(v.shape), _dtype_name(v.dtype)) for k, v in state.items()}
    expected = {}
    for k, v in tensor_table.items():
        try:
            expected[k] = (list(v["shape"]), str(v["dtype"]))
        except (TypeError, KeyError):
            raise CheckpointError(f"corrupt checkpoint config {json_path}: bad entry for tensor {k!r}") from None
    problems = _diff_tables(expected, table, "config lists", "file holds")
    if problems:
        raise CheckpointError(
            f"checkpoint pair mismatch between {json_path} and {st_path}: " + "; ".join(problems)
        )
    return dict(state), config


def _diff_tables(
    expected: Mapping[str, Tuple[Any, Any]], actual: Mapping[str, Tuple[Any, Any]], exp_name: str, act_name: str
) -> list:
    """First differences between two ``key -> (shape, dtype)`` tables, as readable strings."""
    out = []
    missing = [k for k in expected if k not in actual]
    extra = [k for k in actual if k not in expected]
    changed = [k for k in expected if k in actual and tuple(expected[k]) != tuple(actual[k])]

    def listed(keys: Iterable[str]) -> str:
        keys = list(keys)
        more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
        return ", ".join(keys[:_MAX_LISTED]) + more

    if missing:
        out.append(f"missing tensors {listed(missing)}")
    if extra:
        out.append(f"unexpected tensors {listed(extra)}")
    for k in changed[:_MAX_LISTED]:
        (es, ed), (as_, ad) = expected[k], actual[k]
        out.append(f"{k}: {exp_name} shape {tuple(es)} {ed}, {act_name} shape {tuple(as_)} {ad}")
    if len(changed) > _MAX_LISTED:
        out.append(f"(+{len(changed) - _MAX_LISTED} more shape mismatches)")
    return out


def state_mismatches(module: nn.Module, state: Mapping[str, Tensor]) -> list:
    """Differences between ``module.state_dict()`` and ``state`` (keys, shapes, dtypes).

    Returns
    -------
    list of str
        Empty when ``state`` fits ``module`` exactly; otherwise the first few mismatches.
    """
    mine = {k: (tuple(v.shape), _dtype_name(v.dtype)) for k, v in module.state_dict().items()}
    theirs = {k: (tuple(v.shape), _dtype_name(v.dtype)) for k, v in state.items()}
    return _diff_tables(mine, theirs, "model expects", "checkpoint has")


def load_into(module: nn.Module, state: Mapping[str, Tensor], source: Optional[PathLike] = None) -> nn.Module:
    """Copy ``state`` into ``module`` strictly (same keys, shapes and dtypes); returns ``module``.

    Parameters
    ----------
    module : nn.Module
        A model built from the checkpoint's config.
    state : mapping of str to Tensor
        From :func:`load_state`.
    source : str or PathLike, optional
        The checkpoint path, for the error message.

    Raises
    ------
    CheckpointError
        Listing the first mismatched keys/shapes, if ``state`` does not fit ``module`` (e.g.
        the config says ``hidden=64`` but the tensors were saved from ``hidden=128``).
    """
    problems = state_mismatches(module, state)
    if problems:
        where = f" {source}" if source is not None else ""
        raise CheckpointError(
            f"checkpoint{where} does not match the model built from its config: "
            + "; ".join(problems)
            + "; the config and tensors disagree (edited config or mixed files): regenerate the checkpoint"
        )
    module.load_state_dict(dict(state), strict=True)
    return module
