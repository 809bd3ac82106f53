"""Energy-parameterised diffusion models: a network that defines a scalar ``E(x, t)``.

An ε-network gives a score field but no energy, so Metropolis corrections (MALA, HMC) and
mixtures cannot use it. :class:`DiffusionEnergy` instead builds a scalar energy from a network
and takes the score by autograd, ``score = −∇x E``, so it is conservative by construction and
trains by denoising score matching through its gradient (Salimans & Ho 2021; Du et al. 2023).

Forms (``form=``):

``"denoiser"`` (default)
    ``E(x, t) = ‖x − f(x, t)‖² / (2 σ_t²)`` with ``f`` shaped like ``x``. If ``f`` ignores its
    Jacobian this is the Gaussian energy around ``f``; with ``f ≈ sqrt(alpha_bar) x̂0`` the
    score is Tweedie's ``−(x − sqrt(alpha_bar) x̂0)/σ²``. The ``1/σ²`` scale makes the network's
    job ``O(1)`` at every noise level.
``"scalar"``
    ``E(x, t) = net(x, t)``: the network returns one number per sample (``(B,)`` or ``(B, 1)``).

Training target (DSM): ``‖σ_t ∇x E(x_t, t) − ε‖²`` with ``x_t = sqrt(alpha_bar) x0 + σ_t ε``,
i.e. ``model.grad(x_t, t, create_graph=True)``.
"""

from __future__ import annotations

from typing import Callable


from .autodiff import energy_and_grad
from .energy import ENERGY, GRAD
from .errors import DetachedEnergyError, InputError
from .network import NetworkModel
from .schedule import VPSchedule

__all__ = ["DiffusionEnergy", "FORMS"]

#: Supported energy forms.
FORMS = ("denoiser", "scalar")


class DiffusionEnergy(NetworkModel):
    """A time-dependent energy ``E(x, t)`` defined by a network (see module notes for forms).

    The model itself is the unconditional leaf; ``model.condition(c)`` gives conditional leaves,
    all evaluated in one joint forward (and one joint backward for their gradients).

    Parameters
    ----------
    net : nn.Module or callable
        ``net(x, t[, cond])``: for ``form="denoiser"`` returns ``f`` shaped like ``x``; for
        ``form="scalar"`` returns energies ``(B,)`` or ``(B, 1)``.
    schedule : VPSchedule
        The noise schedule the network is trained with.
    form : {"denoiser", "scalar"}
        How the network's output defines the energy.
    **kwargs
        ``timestep``, ``time_scale``, ``condition_kwarg``, ``null_condition``, ``sigma_floor``,
        ``max_batch``, ``name``: see :class:`~ebmcompose.network.NetworkModel`.
    """

    has_energy = True

    def __init__(self, net: Callable, schedule: VPSchedule, *, form: str = "denoiser", **kwargs):
        super().__init__(net, schedule, **kwargs)
        if form not in FORMS:
            raise InputError(f"form must be one of {FORMS}, got {form!r}")
        self.form = form

    def _energy_of(self, x, t, cond):
        out = self._call_net(x, t, cond)
        if self.form == "scalar":
            if out.dim() == 2 and out.shape[1] == 1:
                out = out[:, 0]
            if out.shape != x.shape[:1]:
                raise InputError(
                    f"{self.name} (form='scalar') returned shape {tuple(out.shape)}; expected one energy "
                    f"per sample, ({x.shape[0]},) or ({x.shape[0]}, 1)"
                )
            return out
        if out.shape != x.shape:
            raise InputError(
                f"{self.name} (form='denoiser') returned shape {tuple(out.shape)} for input "
                f"{tuple(x.shape)}; the denoiser f(x, t) must be shaped like x (or use form='scalar')"
            )
        r = (x - out).reshape(x.shape[0], -1)
        sigma2 = self.schedule.sigma(t, floor=self.sigma_floor).to(x.dtype) ** 2
        return 0.5 * r.pow(2).sum(dim=1) / sigma2

    def _outputs(self, x, t, cond, need, create_graph):
        if not need & GRAD:
            # Energy only: keep the ambient grad mode, so losses on E train the network.
            return self._energy_of(x, t, cond), None
        e, g = energy_and_grad(lambda xx: self._energy_of(xx, t, cond), x, create_graph)
        if g is None:
            raise DetachedEnergyError(
                f"{self.name}: the network's energy has no autograd path from x, so its gradient (the "
                "score) cannot be computed. The network ran under torch.no_grad()/inference_mode, "
                "detached its input or output, or converted it (.numpy(), .item()). Run it with "
                "torch operations on x and leave grad mode to ebmcompose (parameters may be frozen)"
            )
        if not create_graph:
            e, g = e.detach(), g.detach()
        return (e if need & ENERGY else None), g
