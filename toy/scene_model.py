"""Composition on images: a trained scene network as energy leaves, and AND / NOT builders.

A :class:`SceneModel` wraps one conditional :class:`~toy.scene_nets.SceneUNet` (as an
:class:`ebmcompose.EpsilonModel` or :class:`ebmcompose.DiffusionEnergy`) and hands out leaves::

    sm = SceneModel.load("toy/checkpoints/scenes_position_eps")
    e = sm.compose(at=[(0.25, 0.25), (0.75, 0.75)], weight=3.0)        # object here AND there
    e = sm.compose(at=[(0.25, 0.25)], not_at=[(0.75, 0.25)])            # ... AND NOT there
    e = ec.parse("a AND NOT b", {"a": sm.at(0.25, 0.25), "b": sm.at(0.75, 0.25)})

Everything goes through the algebra (:func:`ebmcompose.conjunction`, :func:`ebmcompose.negation`),
so all leaves of an expression — the unconditional one included — run in **one** batched forward
of the UNet per evaluation (``K + 1`` leaves → batch ``(K + 1)·B``, chunked by ``max_batch``).

Conditions are those of :mod:`toy.scenes` (``scenes.at``, ``scenes.attribute``,
``scenes.joint_at``); bad positions or attribute names raise :class:`ebmcompose.InputError`.
Images: the models work on ``[-1, 1]``; :func:`to_unit` maps samples to ``[0, 1]`` for the evaluator.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from torch import Tensor

import ebmcompose as ec

from . import scenes
from .image_train import load_model

__all__ = ["SceneModel", "to_unit", "image_grid", "DEFAULT_WEIGHT", "DEFAULT_NEG_WEIGHT"]

#: Default guidance scale ``α`` of AND / NOT and negation strength ``β``.
DEFAULT_WEIGHT = 3.0
DEFAULT_NEG_WEIGHT = 1.0

Position = Tuple[float, float]


def to_unit(x: Tensor) -> Tensor:
    """Model samples in ``[-1, 1]`` (approximately) → images clamped to ``[0, 1]``, ``(N, 3, H, W)``."""
    return ((x.detach().float() + 1.0) / 2.0).clamp(0.0, 1.0)


def image_grid(images: Tensor, ncol: Optional[int] = None, gutter: int = 1):
    """Images ``(N, 3, H, W)`` in ``[0, 1]`` → one ``uint8`` array ``(rows·(H+g)+g, ncol·(W+g)+g, 3)``
    (white gutters ``g``; ``ncol`` default ``ceil(sqrt(N))``)."""
    import math

    import numpy as np

    n, _, h, w = images.shape
    ncol = ncol or max(1, math.ceil(math.sqrt(n)))
    nrow = max(1, math.ceil(n / ncol))
    grid = np.full((nrow * (h + gutter) + gutter, ncol * (w + gutter) + gutter, 3), 255, dtype=np.uint8)
    arr = (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = gutter + r * (h + gutter), gutter + c * (w + gutter)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


class SceneModel:
    """A trained scene network as a family of energy leaves (see module notes).

    Parameters
    ----------
    model : EpsilonModel or DiffusionEnergy
        The wrapped network; its ``null_condition`` is the zero condition.
    family : {"position", "attribute", "joint"}
    resolution : int
        Image side the network was trained at.
    config : dict, optional
        The checkpoint's config (kept for reference).
    """

    def __init__(self, model: ec.Energy, family: str, resolution: int, config: Optional[Dict[str, Any]] = None):
        self.model = model
        self.family = family
        self.resolution = int(resolution)
        self.config = dict(config or {})

    @classmethod
    def load(cls, path, *, parameterisation: Optional[str] = None, max_batch: Optional[int] = None,
             missing_hint: Optional[str] = None) -> "SceneModel":
        """Load a checkpoint written by :mod:`toy.image_train` (see :func:`~toy.image_train.load_model`)."""
        model, net, config = load_model(path, parameterisation=parameterisation, max_batch=max_batch, missing_hint=missing_hint)
        return cls(model, net.family, net.resolution, config)

    @classmethod
    def from_net(cls, net, parameterisation: str = "epsilon", *, max_batch: Optional[int] = None) -> "SceneModel":
        """Wrap an (e.g. freshly trained or random) :class:`~toy.scene_nets.SceneUNet`."""
        from .scene_nets import build_model

        return cls(build_model(parameterisation, net, ec.VPSchedule.cosine(), max_batch=max_batch), net.family, net.resolution)

    # ------------------------------------------------------------------ properties
    @property
    def schedule(self) -> ec.VPSchedule:
        """The noise schedule the network was trained with."""
        return self.model.schedule

    @property
    def parameterisation(self) -> str:
        """``"energy"`` when the model has energies (Metropolis correctors work), else ``"epsilon"``."""
        return "energy" if self.model.has_energy else "epsilon"

    def shape(self, n: int) -> Tuple[int, int, int, int]:
        """``(n, 3, H, W)``: the sample shape of ``n`` images."""
        return (int(n), 3, self.resolution, self.resolution)

    # ------------------------------------------------------------------ leaves
    def _need(self, family: str, what: str) -> None:
        if self.family != family:
            raise ec.InputError(
                f"{what} needs a {family} model, but this is a {self.family} model; load "
                f"toy.pretrained.scene_model(family={family!r})"
            )

    def unconditional(self) -> ec.Energy:
        """The unconditional leaf ``E(x, t)`` (the null condition)."""
        return self.model.unconditional()

    def at(self, x: float, y: float) -> ec.Energy:
        """The leaf "an object at ``(x, y)``" (``x`` column, ``y`` row, in ``[0, 1]``)."""
        self._need("position", "a position concept")
        return self.model.condition(scenes.at(x, y), name=f"at({float(x):g},{float(y):g})")

    def attribute(self, name: str) -> ec.Energy:
        """The leaf "the object is ``name``" (a colour, shape or size of :data:`toy.scenes.ATTRIBUTES`)."""
        self._need("attribute", "an attribute concept")
        return self.model.condition(scenes.attribute(name), name=str(name))

    @property
    def attribute_labels(self) -> Optional[str]:
        """How an attribute model was trained: ``"one"`` (one attribute per image) or ``"multi"``."""
        if self.family != "attribute":
            return None
        return self.config.get("train", {}).get("attribute_labels", "one")

    def attributes(self, names: Sequence[str]) -> ec.Energy:
        """The jointly conditioned leaf "the object is all of ``names``" (one multi-hot condition).

        Needs a model trained with multi-hot labels (``attribute_labels="multi"``): a one-hot model
        never saw two attributes in one condition.
        """
        self._need("attribute", "an attribute concept")
        names = [names] if isinstance(names, str) else list(names)
        if len(names) > 1 and self.attribute_labels != "multi":
            raise ec.InputError(
                "a joint attribute condition needs a model trained with multi-hot labels (attribute_labels='multi'); "
                "this one was trained on one attribute per image: compose the attributes instead (compose_attributes)"
            )
        return self.model.condition(scenes.attributes(names), name=" & ".join(map(str, names)))

    def joint(self, positions: Sequence[Position]) -> ec.Energy:
        """The jointly conditioned leaf "objects at all ``positions``" (the baseline; up to 5)."""
        self._need("joint", "a joint condition")
        return self.model.condition(scenes.joint_at(list(positions)), name="joint(" + ", ".join(f"{x:g},{y:g}" for x, y in positions) + ")")

    # ------------------------------------------------------------------ compositions
    def compose(self, at: Sequence[Position] = (), not_at: Sequence[Position] = (), *,
                weight: float = DEFAULT_WEIGHT, neg_weight: float = DEFAULT_NEG_WEIGHT) -> ec.Energy:
        """``at(p_1) AND … AND at(p_K) [AND NOT at(q_1) …]`` (Liu et al. 2022, eqs. for AND / NOT).

        Parameters
        ----------
        at, not_at : sequence of (x, y)
            Positions to ask for and to forbid (at least one in all).
        weight : float
            Guidance scale ``α``.
        neg_weight : float
            Negation strength ``β``.
        """
        keep = [self.at(x, y) for x, y in at]
        negs = [self.at(x, y) for x, y in not_at]
        return self._combine(keep, negs, weight, neg_weight, "positions")

    def compose_attributes(self, require: Sequence[str] = (), forbid: Sequence[str] = (), *,
                           weight: float = DEFAULT_WEIGHT, neg_weight: float = DEFAULT_NEG_WEIGHT) -> ec.Energy:
        """``a_1 AND … [AND NOT b_1 …]`` over attribute names (e.g. ``["red", "square"]``, ``["small"]``)."""
        keep = [self.attribute(a) for a in require]
        negs = [self.attribute(a) for a in forbid]
        return self._combine(keep, negs, weight, neg_weight, "attributes")

    def joint_condition(self, at: Sequence[Position], *, weight: float = DEFAULT_WEIGHT) -> ec.Energy:
        """Classifier-free guidance on the joint condition: ``E_u + α (E(all) − E_u)``."""
        return ec.conjunction(self.unconditional(), [self.joint(at)], weight)

    def leaf(self, cond: Tensor, name: Optional[str] = None) -> ec.Energy:
        """A leaf with one condition per sample, ``cond (B, cond_dim)`` (e.g. rows of ``scenes.at``)."""
        return self.model.condition(cond, name=name, per_sample=True)

    def combine(self, keep: Sequence[ec.Energy], negs: Sequence[ec.Energy] = (), *,
                weight: float = DEFAULT_WEIGHT, neg_weight: float = DEFAULT_NEG_WEIGHT) -> ec.Energy:
        """AND of ``keep`` [AND NOT ``negs``] over this model's unconditional leaf (any leaves)."""
        return self._combine(list(keep), list(negs), weight, neg_weight, "concepts")

    def _combine(self, keep, negs, weight, neg_weight, what):
        if not keep and not negs:
            raise ec.InputError(f"nothing to compose: give at least one of the {what} to require or forbid")
        base = self.unconditional()
        if not negs:
            return ec.conjunction(base, keep, weight)
        return ec.negation(base, keep, negs, weight, neg_weight)

    def parse(self, text: str, names: Dict[str, ec.Energy]) -> ec.Energy:
        """``ec.parse(text, names)`` with ``uncond`` bound to the unconditional leaf."""
        return ec.parse(text, {"uncond": self.unconditional(), **names})
