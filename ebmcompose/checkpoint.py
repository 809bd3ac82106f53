"""Checkpoints: one ``.safetensors`` file holding the tensors and the JSON config that rebuilds the model.

Never a pickle: ``torch.load`` of a pickle runs arbitrary code, so weights are stored with
`safetensors <https://github.com/huggingface/safetensors>`_ and everything else as JSON.

A checkpoint called ``name`` in folder ``d`` is the file ``d/name.safetensors``: the module's
state_dict (contiguous copies, any dtype) plus one metadata entry::

    "ebmcompose.checkpoint": '{"format_version": 2, "config": {...}}'   (a JSON string)

One entry, not several, because safetensors writes its metadata map in arbitrary order and a
regenerated checkpoint must be byte-identical. ``config`` is the caller's dict: it holds a
string ``"kind"`` (what to build) and whatever the builder of that kind needs.

Writing is atomic (:func:`ebmcompose.io.atomic_write`: a temporary file in the same folder,
then ``os.replace``): a crash or Ctrl-C mid-save leaves the previous checkpoint (or nothing).

Format version 1 (``d/name.safetensors`` plus ``d/name.json`` with the config and the SHA-256
of the tensor file) is still read: :func:`load_state` takes either. Errors are
:class:`CheckpointError` (:class:`CheckpointNotFoundError` for a missing file) with messages
that name the file, what is wrong, and how to fix or regenerate it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .errors import InputError, InputTypeError
from .io import atomic_write

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_KEY",
    "CheckpointError",
    "CheckpointNotFoundError",
    "checkpoint_path",
    "checkpoint_paths",
    "save",
    "load_state",
    "load_into",
    "state_mismatches",
]

PathLike = Union[str, os.PathLike]

#: Name of the format (the ``"format"`` field of version-1 JSON configs).
FORMAT = "ebmcompose.checkpoint"
#: Version written by :func:`save` (2: one file); :func:`load_state` reads versions 1 to this one.
FORMAT_VERSION = 2
#: The safetensors metadata key that holds the JSON of a version-2 checkpoint.
METADATA_KEY = FORMAT
#: Stem used when a directory is given.
DEFAULT_NAME = "model"
#: How many mismatches an error message lists.
_MAX_LISTED = 5


class CheckpointError(InputError, RuntimeError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file does not exist."""


def _stem(path: PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        return p / DEFAULT_NAME
    if p.suffix in (".safetensors", ".json"):
        return p.with_suffix("")
    return p


def checkpoint_path(path: PathLike) -> Path:
    """The ``.safetensors`` file a checkpoint path refers to.

    Parameters
    ----------
    path : str or PathLike
        A stem (``d/name``), the file (``d/name.safetensors``; ``d/name.json`` of a version-1
        pair also works), or an existing directory (then the stem is ``d/model``).

    Returns
    -------
    Path
        ``d/name.safetensors``.
    """
    p = _stem(path)
    return p.with_name(p.name + ".safetensors")


def checkpoint_paths(path: PathLike) -> Tuple[Path, Path]:
    """The ``(.safetensors, .json)`` pair of a version-1 checkpoint (see :func:`checkpoint_path`)."""
    p = _stem(path)
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_json(obj: Any, where: str) -> None:
    """Raise ``TypeError`` if ``obj`` does not survive a JSON round trip unchanged."""
    try:
        text = json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(f"{where} must be JSON-serialisable (str, int, float, bool, None, lists, dicts): {exc}") from None
    if json.loads(text) != obj:
        raise InputTypeError(
            f"{where} changes in a JSON round trip (tuples become lists, non-string keys become "
            "strings); use lists and string keys so the loaded config equals the saved one"
        )


def save(path: PathLike, module: Union[nn.Module, Mapping[str, Tensor]], config: Mapping[str, Any]) -> Path:
    """Save ``module``'s state_dict and ``config`` atomically as one ``.safetensors`` file.

    Parameters
    ----------
    path : str or PathLike
        Stem, file name, or a directory (see :func:`checkpoint_path`). Parent directories are
        created.
    module : nn.Module or mapping of str to Tensor
        The model (its ``state_dict()`` is saved: parameters and persistent buffers) or a state
        dict. Tensors are copied to contiguous CPU tensors; their dtype is kept.
    config : mapping
        JSON-serialisable description that rebuilds the model; must contain a non-empty string
        ``"kind"``. Stored verbatim in the file's metadata.

    Returns
    -------
    Path
        The ``.safetensors`` file written (the same bytes for the same tensors and config).

    Raises
    ------
    TypeError
        If ``config`` has no string ``"kind"`` or is not JSON-serialisable, or a value of the
        state dict is not a tensor.
    """
    from safetensors.torch import save as st_save

    if not isinstance(config, Mapping) or not isinstance(config.get("kind"), str) or not config["kind"]:
        raise InputTypeError(
            "config must be a dict with a non-empty string 'kind' (what to build) and the "
            "constructor arguments, e.g. {'kind': 'toy.ResMLP/epsilon', 'net': {...}}"
        )
    config = dict(config)
    _check_json(config, "config")
    state = module.state_dict() if isinstance(module, nn.Module) else dict(module)
    tensors: Dict[str, Tensor] = {}
    for key, value in sorted(state.items()):  # sorted: the same bytes whatever the input order
        if not isinstance(value, Tensor):
            raise InputTypeError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; only tensors are saved")
        # clone: safetensors refuses shared storage (tied weights) and non-contiguous tensors
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    meta = json.dumps({"format_version": FORMAT_VERSION, "config": config}, allow_nan=False)
    blob = st_save(tensors, metadata={METADATA_KEY: meta})
    target = checkpoint_path(path)
    with atomic_write(target, "wb") as f:
        f.write(blob)
    return target


def _missing(path: Path, hint: Optional[str]) -> CheckpointNotFoundError:
    how = hint or "save one with ebmcompose.checkpoint.save(path, module, config)"
    return CheckpointNotFoundError(f"checkpoint file not found: {path}; {how}")


def _read_tensors(st_path: Path) -> Tuple[Dict[str, Tensor], Dict[str, str], bytes]:
    """``(state, metadata, file bytes)`` of a safetensors file, or a :class:`CheckpointError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    blob = st_path.read_bytes()
    try:
        state = st_load(blob)
        n = int.from_bytes(blob[:8], "little")  # safetensors: u64 header size, then the JSON header
        metadata = json.loads(blob[8 : 8 + n]).get("__metadata__") or {}
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(
            f"corrupt checkpoint tensors {st_path} ({len(blob)} bytes): not a readable safetensors "
            f"file ({exc}); it is truncated or overwritten: regenerate the checkpoint"
        ) from None
    return dict(state), metadata, blob


def _check_kind(config: Mapping[str, Any], kind, where: Path) -> None:
    if kind is None:
        return
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    if config["kind"] not in kinds:
        raise CheckpointError(
            f"unknown checkpoint kind {config['kind']!r} in {where}; expected one of "
            f"{', '.join(map(repr, kinds))}"
        )


def _check_version(version: Any, where: Path) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or not (1 <= version <= FORMAT_VERSION):
        raise CheckpointError(
            f"unsupported checkpoint format version {version!r} in {where}; this ebmcompose "
            f"reads versions 1 to {FORMAT_VERSION}: upgrade ebmcompose or regenerate the checkpoint"
        )


def load_state(
    path: PathLike,
    *,
    kind: Union[None, str, Sequence[str]] = None,
    missing_hint: Optional[str] = None,
) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
    """Read a checkpoint written by :func:`save` (or a version-1 ``.safetensors`` + ``.json`` pair).

    Parameters
    ----------
    path : str or PathLike
        Stem, file name, or a directory (see :func:`checkpoint_path`).
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
        If the file is missing (or the ``.json`` of a version-1 pair).
    CheckpointError
        If the file is truncated or not a safetensors file, a safetensors file without an
        ebmcompose config, its config is corrupt or of a newer format version, or its kind
        is not one of ``kind``.
    """
    st_path, json_path = checkpoint_paths(path)
    if not st_path.is_file():
        raise _missing(st_path, missing_hint)
    state, metadata, blob = _read_tensors(st_path)
    if METADATA_KEY not in metadata:
        if json_path.is_file() or metadata.get("format", "").startswith(FORMAT):
            return _load_v1(st_path, json_path, state, blob, kind, missing_hint)
        raise CheckpointError(
            f"{st_path} is a safetensors file but not an ebmcompose checkpoint (its metadata has no "
            f"{METADATA_KEY!r} entry with the model's config); save checkpoints with "
            "ebmcompose.checkpoint.save(path, module, config), or load plain weights with "
            "safetensors.torch.load_file"
        )
    try:
        header = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"corrupt checkpoint config in {st_path}: the {METADATA_KEY!r} metadata is not valid JSON "
            f"({exc}); regenerate the checkpoint"
        ) from None
    if not isinstance(header, dict):
        header = {}
    _check_version(header.get("format_version"), st_path)
    config = header.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("kind"), str):
        raise CheckpointError(
            f"corrupt checkpoint config in {st_path}: no 'config' with a string 'kind'; regenerate the checkpoint"
        )
    _check_kind(config, kind, st_path)
    return state, config


def _load_v1(st_path: Path, json_path: Path, state, blob: bytes, kind, missing_hint):
    """Format version 1: the config, tensor table and SHA-256 of the tensors in ``json_path``."""
    if not json_path.is_file():
        raise _missing(json_path, missing_hint)
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
    _check_version(version, json_path)
    if version != 1:
        raise CheckpointError(
            f"{json_path} says format version {version}, but from version 2 on a checkpoint is one "
            ".safetensors file (the config is in its metadata): regenerate the checkpoint"
        )
    config = header.get("config")
    tensor_table = header.get("tensors")
    if not isinstance(config, dict) or not isinstance(config.get("kind"), str) or not isinstance(tensor_table, dict):
        raise CheckpointError(
            f"corrupt checkpoint config {json_path}: missing 'config' (with a string 'kind') or "
            "'tensors'; regenerate the checkpoint"
        )
    _check_kind(config, kind, json_path)
    if header.get("sha256") not in (None, hashlib.sha256(blob).hexdigest()):
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
    return state, config


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
