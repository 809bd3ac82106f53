"""Shipped toy checkpoints: learned component models of the Du et al. tasks.

For every task of :mod:`toy.tasks` (``product``, ``mixture``, ``negation``) and both
parameterisations (``"epsilon"``: :class:`ebmcompose.EpsilonModel`, score-only; ``"energy"``:
:class:`ebmcompose.DiffusionEnergy`, with energies) ``toy/checkpoints/`` holds **one
conditional** :class:`~toy.nets.ResMLP` (files ``<task>_eps.*`` / ``<task>_energy.*``):

* label ``k`` is the task's ``k``-th component (``task.components`` order, e.g. ``ring = 0``,
  ``bar = 1``), trained only on that component's exact samples — the paper's setting of
  concepts learned separately and composed at sampling time;
* the null label ``K`` (``model.unconditional()``) was trained by label dropout on the union of
  the components (their equal-weight mixture).

``components(task)`` gives one leaf per component, so ``task.compose(components(task))`` is the
learned counterpart of ``task.composed_diffused(schedule)``; all leaves run in one batched
forward. The ``mixture`` task (``left | right``) needs energies, so only its ``"energy"``
models compose; ε-models raise :class:`ebmcompose.ScoreOnlyError` there. Learned energies are
unnormalised (``E = ½‖g‖²``, see :class:`toy.train.ResidualDenoiser`), so the weights of a
learned mixture are only as equal as the concepts' normalising constants. The files are
regenerated (deterministically) by ``python -m benchmarks.train_toy --out toy/checkpoints``.

The models were trained on the cosine schedule (``model.schedule``): sample them with it. Its
``alpha_bar(1)`` is about 1e-8, so for compositions whose score does not match the ``N(0, I)``
prior at ``t = 1`` (products, negations) start the reverse process a little lower
(``t_max=0.98`` in :class:`~samplers.ReverseDiffusion` / :class:`~samplers.PredictorCorrector`)
or clip the x0-prediction (``clip_x0``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import ebmcompose as ec

from . import tasks as _tasks
from .train import load_trained

__all__ = ["CHECKPOINT_DIR", "checkpoint_path", "load", "components", "REGENERATE", "scene_model", "scene_checkpoint_path"]

#: Folder of the shipped checkpoints.
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
#: The command that regenerates them (from the repository root).
REGENERATE = "python -m benchmarks.train_toy --out toy/checkpoints"

_SUFFIX = {"epsilon": "eps", "eps": "eps", "energy": "energy"}


def checkpoint_path(task_name: str, parameterisation: str = "epsilon", checkpoint_dir=None) -> Path:
    """Stem ``<checkpoint_dir>/<task>_<eps|energy>`` of a checkpoint (default: the shipped ones).

    Raises
    ------
    ValueError
        For an unknown task or parameterisation.
    """
    if task_name not in _tasks.names():
        raise ValueError(f"unknown task {task_name!r}; valid tasks are {', '.join(_tasks.names())}")
    try:
        suffix = _SUFFIX[parameterisation]
    except (KeyError, TypeError):
        raise ValueError(f"parameterisation must be 'epsilon' or 'energy', got {parameterisation!r}") from None
    return Path(checkpoint_dir or CHECKPOINT_DIR) / f"{task_name}_{suffix}"


def load(
    task_name: str,
    parameterisation: str = "epsilon",
    checkpoint_dir=None,
    missing_hint: Optional[str] = None,
) -> Tuple[ec.Energy, Dict[str, Any]]:
    """Load the conditional model of ``task_name``'s components (shipped, or from a folder).

    Parameters
    ----------
    task_name : {"product", "mixture", "negation"}
    parameterisation : {"epsilon", "energy"}
    checkpoint_dir : str or Path, optional
        A folder written by ``benchmarks.train_toy`` / ``ebmcompose train`` (default: the
        shipped ``toy/checkpoints``).
    missing_hint : str, optional
        What to do when the files are missing (default: the command that regenerates them).

    Returns
    -------
    model : EpsilonModel or DiffusionEnergy
        The model; ``model.condition(k)`` is component ``k``, ``model.unconditional()`` the
        null label (union of the components).
    info : dict
        ``concepts`` (component names in label order), ``labels`` (``{name: label}``),
        ``null_label``, ``schedule`` (the :class:`~ebmcompose.VPSchedule`), ``net`` (the
        :class:`~toy.nets.ResMLP`), ``path`` and ``config`` (the saved JSON config, with
        training hyper-parameters and score errors under ``"metrics"``).

    Raises
    ------
    ebmcompose.checkpoint.CheckpointError
        If the files are missing (the message gives the command that regenerates them),
        corrupt or mismatched.
    """
    path = checkpoint_path(task_name, parameterisation, checkpoint_dir)
    if missing_hint is None:
        out = checkpoint_dir or "toy/checkpoints"
        missing_hint = f"regenerate it with `python -m benchmarks.train_toy --out {out} --tasks {task_name}`"
    model, net, config = load_trained(path, missing_hint=missing_hint)
    concepts = tuple(config["concepts"])
    info = {
        "task": task_name,
        "parameterisation": config["parameterisation"],
        "concepts": concepts,
        "labels": {name: k for k, name in enumerate(concepts)},
        "null_label": config["null_label"],
        "schedule": model.schedule,
        "net": net,
        "path": path,
        "config": config,
    }
    return model, info


def components(task_name: str, parameterisation: str = "epsilon") -> Dict[str, ec.Energy]:
    """The learned component leaves of ``task_name``: ``{name: model.condition(label)}``.

    ``toy.tasks.get(task_name).compose(components(task_name))`` is the learned composition.
    """
    model, info = load(task_name, parameterisation)
    return {name: model.condition(k, name=name) for name, k in info["labels"].items()}


# ---------------------------------------------------------------------------- scene models
#: The command that (re)trains the shipped scene models (from the repository root; resumable).
SCENES_REGENERATE = "python -m benchmarks.train_scenes --out toy/checkpoints --run-root scene-runs"
_SCENE_FAMILIES = ("position", "attribute", "joint")


def scene_checkpoint_path(family: str = "position", parameterisation: str = "epsilon", checkpoint_dir=None) -> Path:
    """Stem ``<checkpoint_dir>/scenes_<family>_<eps|energy>`` of a scene model (default: shipped).

    Raises
    ------
    ebmcompose.InputError
        For an unknown family or parameterisation.
    """
    if family not in _SCENE_FAMILIES:
        raise ec.InputError(f"unknown scene family {family!r}; valid families are {', '.join(_SCENE_FAMILIES)}")
    try:
        suffix = _SUFFIX[parameterisation]
    except (KeyError, TypeError):
        raise ec.InputError(f"parameterisation must be 'epsilon' or 'energy', got {parameterisation!r}") from None
    return Path(checkpoint_dir or CHECKPOINT_DIR) / f"scenes_{family}_{suffix}"


def scene_model(family: str = "position", parameterisation: str = "epsilon", *, checkpoint_dir=None,
                max_batch: Optional[int] = None):
    """The shipped scene model of ``family`` as a :class:`toy.scene_model.SceneModel`.

    Parameters
    ----------
    family : {"position", "attribute", "joint"}
        Position concepts, attribute concepts, or the jointly conditioned baseline.
    parameterisation : {"epsilon", "energy"}
        ε-network (score only) or energy (Metropolis correctors and mixtures work).
    checkpoint_dir : str or Path, optional
        Another folder of ``scenes_*`` checkpoints.
    max_batch : int, optional
        Largest batch of one network forward.

    Raises
    ------
    ebmcompose.checkpoint.CheckpointNotFoundError
        When the checkpoint is missing; the message names the command that trains it.
    """
    from .scene_model import SceneModel

    path = scene_checkpoint_path(family, parameterisation, checkpoint_dir)
    param = "energy" if parameterisation == "energy" else "epsilon"
    hint = (
        f"train it with `python -m benchmarks.train_scenes --models {family}:{param} --out "
        f"{checkpoint_dir or 'toy/checkpoints'} --run-root scene-runs` (or `ebmcompose scenes train --family "
        f"{family} --model {param} --export --out DIR` and pass --checkpoint)"
    )
    return SceneModel.load(path, parameterisation=param, max_batch=max_batch, missing_hint=hint)
