"""ε-prediction networks as (score-only) energies: ``score(x, t) = −ε(x, t) / σ_t``.

:class:`EpsilonModel` wraps any network ``net(x, t[, cond])`` that predicts the noise of a VP
diffusion — a plain ``nn.Module`` or function, or a diffusers ``UNet2DModel`` /
``UNet2DConditionModel`` — as an :class:`~ebmcompose.Energy` leaf with ``grad = ε / σ_t``.

A conditional model hands out leaves, :meth:`~ebmcompose.network.NetworkModel.condition` and
:meth:`~ebmcompose.network.NetworkModel.unconditional`, that compose with the algebra::

    u, c1, c2 = m.unconditional(), m.condition(1), m.condition(2)
    and_ = ec.conjunction(u, [c1, c2], weight=3.0)       # the paper's AND
    cfg = u + 7.5 * (c1 - u)                              # classifier-free guidance

All leaves of one model that appear in an expression are evaluated in **one** forward pass
(see :mod:`ebmcompose.network`). NFE counts network forwards.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from .energy import ENERGY, ScoreOnlyError
from .errors import InputError
from .network import NO_CONDITION, NetworkModel, as_condition, expand_condition
from .schedule import VPSchedule

__all__ = ["EpsilonModel"]

_PREDICTIONS = ("epsilon", "v_prediction", "sample")

class EpsilonModel(NetworkModel):
    """Wrap an ε-network as a score-only energy, ``grad(x, t) = ε(x, t) / σ_t``.

    The model itself is the unconditional leaf; ``model.condition(c)`` gives conditional leaves.

    Parameters
    ----------
    net : nn.Module or callable
        ``net(x, t)`` or ``net(x, t, cond)`` returning the prediction shaped like ``x``; a
        diffusers model's ``.sample`` is unwrapped, and an output with twice the input channels
        (learned variance) is cut to its first half.
    schedule : VPSchedule
        The noise schedule the network was trained with.
    prediction : {"epsilon", "v_prediction", "sample"}
        What the network predicts; converted to ε with ``ε = α v + σ x`` (v) or
        ``ε = (x − α x̂0) / σ`` (sample), ``α = sqrt(alpha_bar)``.
    **kwargs
        ``timestep``, ``time_scale``, ``condition_kwarg``, ``null_condition``, ``sigma_floor``,
        ``max_batch``, ``name``: see :class:`~ebmcompose.network.NetworkModel`.

    Notes
    -----
    ``has_energy`` is ``False``: an ε-network defines a score field, not an energy. Use ULA-type
    samplers, or :class:`~ebmcompose.DiffusionEnergy` for Metropolis corrections and mixtures.
    """

    has_energy = False

    def __init__(self, net: Callable, schedule: VPSchedule, *, prediction: str = "epsilon", **kwargs):
        super().__init__(net, schedule, **kwargs)
        if prediction not in _PREDICTIONS:
            raise InputError(f"prediction must be one of {_PREDICTIONS}, got {prediction!r}")
        self.prediction = prediction

    def _outputs(self, x, t, cond, need, create_graph):
        if need & ENERGY:
            raise ScoreOnlyError.for_energy(self)
        with torch.enable_grad() if create_graph else torch.no_grad():
            eps = self._eps(x, t, cond)
        return None, eps / self._sigma(t, x)

    def epsilon(self, x: Tensor, t, cond: Any = NO_CONDITION, per_sample: bool = False) -> Tensor:
        """The network's ε-prediction ``(B, *event)`` at ``(x, t)`` (unconditional by default).

        Parameters
        ----------
        x : Tensor
            ``(B, *event)``.
        t : float or Tensor
            Diffusion time, scalar or ``(B,)``.
        cond : optional
            A condition (as in :meth:`condition`).
        per_sample : bool
            Whether ``cond`` holds one condition per sample.
        """
        tt = self.check_input(x, t)
        if cond is NO_CONDITION and self.null_condition is not None:
            cond = self.null_condition
        if cond is NO_CONDITION:
            self.check_unconditional()
            cs = None
        else:
            c = self.shared_condition(as_condition(cond), per_sample)
            cs = expand_condition(c, x.shape[0], x.device, per_sample, x.dtype)
        with torch.no_grad():
            return self._eps(x, tt, cs)

    def _eps(self, x: Tensor, t: Tensor, cond) -> Tensor:
        out = self._call_net(x, t, cond)
        if out.dim() == x.dim() and x.dim() >= 2 and out.shape[1] == 2 * x.shape[1] and out.shape[2:] == x.shape[2:]:
            out = out[:, : x.shape[1]]  # learned-variance models: ε is the first half
        if out.shape != x.shape:
            raise InputError(
                f"{self.name} returned shape {tuple(out.shape)} for input {tuple(x.shape)}; an ε-network "
                "must return a prediction shaped like its input"
            )
        if self.prediction == "epsilon":
            return out
        ab = self.schedule.alpha_bar(t).to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
        alpha = ab.sqrt()
        sigma = self._sigma(t, x)
        if self.prediction == "v_prediction":
            return alpha * out + sigma * x
        return (x - alpha * out) / sigma  # prediction == "sample"
