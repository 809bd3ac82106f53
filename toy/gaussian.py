"""Gaussian mixtures: closed-form energies, exact VP-diffused energies, exact products.

A mixture ``p(x) = Σ_k w_k N(x; μ_k, Σ_k)`` is stored with each covariance eigen-decomposed
once, ``Σ_k = U_k diag(λ_k) U_kᵀ``. Under the VP forward process
``x_t = sqrt(ᾱ) x_0 + sqrt(1 − ᾱ) ε`` the marginal is again a mixture with components
``N(sqrt(ᾱ) μ_k, ᾱ Σ_k + (1 − ᾱ) I)`` and ``ᾱ Σ_k + (1 − ᾱ) I = U_k diag(ᾱ λ_k + 1 − ᾱ) U_kᵀ``,
so the diffused energy at per-sample times costs ``O(B K D²)`` with no factorisation per sample.

All energies are normalised: ``E(x) = −log p(x)``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from ebmcompose.checks import as_scalar_t, check_generator, check_positive_int

from ._common import (
    LOG_2PI,
    ClosedForm,
    DiffusedClosedForm,
    as_float64,
    batch_t,
    infer_device,
    infer_dtype,
    rng_device,
    vp_coefficients,
)

__all__ = ["GaussianMixture", "DiffusedGaussianMixture", "gmm_product", "ring", "bar"]


def _mixture_energy(
    x: Tensor,
    means: Tensor,
    eigvecs: Tensor,
    var: Tensor,
    log_weights: Tensor,
    need_grad: bool,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Closed-form ``−log Σ_k w_k N(x; m_k, U_k diag(v_k) U_kᵀ)`` and its gradient.

    Parameters
    ----------
    x : Tensor
        ``(B, D)``.
    means : Tensor
        ``(K, D)`` or ``(B, K, D)`` component means.
    eigvecs : Tensor
        ``(K, D, D)``, columns are eigenvectors (``U_k``).
    var : Tensor
        ``(K, D)`` or ``(B, K, D)`` eigenvalues of the component covariances.
    log_weights : Tensor
        ``(K,)`` normalised log mixture weights.
    need_grad : bool
        Whether to return ``∇x E`` ``(B, D)``.

    Returns
    -------
    (Tensor, Tensor or None)
        Energies ``(B,)`` and gradients ``(B, D)`` (or ``None``).
    """
    d = x.shape[-1]
    diff = x[:, None, :] - means  # (B, K, D)
    proj = torch.einsum("bkd,kde->bke", diff, eigvecs)  # U_kᵀ (x − m_k)
    scaled = proj / var  # diag(v)^{-1} U_kᵀ (x − m_k)
    maha = (proj * scaled).sum(-1)  # (B, K)
    logdet = torch.log(var).sum(-1)  # (K,) or (B, K)
    logits = log_weights - 0.5 * (maha + logdet + d * LOG_2PI)
    energy = -torch.logsumexp(logits, dim=-1)
    if not need_grad:
        return energy, None
    resp = torch.softmax(logits, dim=-1)  # posterior responsibilities (B, K)
    grad = torch.einsum("bke,kde->bd", scaled * resp[..., None], eigvecs)  # Σ_k r_k Σ_k^{-1}(x − m_k)
    return energy, grad


def _symmetry_tolerance(covs) -> float:
    """Relative asymmetry allowed in ``covs``: a few rounding errors of its own dtype (1e-8 at most strict)."""
    dtype = getattr(covs, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        eps = torch.finfo(dtype).eps
    elif dtype is not None and getattr(dtype, "kind", "") == "f":  # a NumPy array
        import numpy as np

        eps = float(np.finfo(dtype).eps)
    else:
        eps = 0.0  # Python numbers: float64
    return max(1e-8, 16.0 * eps)


class GaussianMixture(ClosedForm):
    """A Gaussian mixture ``p(x) = Σ_k w_k N(x; μ_k, Σ_k)`` with closed-form energy and gradient.

    The energy is normalised, ``E(x) = −log p(x)``; its gradient is the posterior-weighted sum
    ``Σ_k r_k(x) Σ_k⁻¹ (x − μ_k)`` (no autograd).

    Parameters
    ----------
    means : Tensor or array-like
        ``(K, D)`` component means. The first floating tensor among ``means``, ``covs``,
        ``stds``, ``weights`` sets the dtype and device of the buffers (otherwise the default
        dtype, CPU).
    stds : Tensor, array-like or float, optional
        ``(K,)`` isotropic standard deviations (a scalar is shared by all components).
    covs : Tensor or array-like, optional
        ``(K, D, D)`` full covariances, symmetric positive definite. Give exactly one of
        ``stds`` and ``covs``.
    weights : Tensor or array-like, optional
        ``(K,)`` non-negative mixture weights (normalised here); default uniform.
    name : str, optional
        Name used in formulas (default ``"gmm"``).

    Raises
    ------
    ValueError
        On mismatched shapes, non-finite values, non-positive stds, non-symmetric or non
        positive-definite covariances, negative or all-zero weights, or both/neither of
        ``stds`` and ``covs``.

    Examples
    --------
    >>> gm = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), stds=[0.5, 0.5])
    >>> gm.energy(torch.zeros(3, 2)).shape
    torch.Size([3])
    """

    def __init__(self, means, stds=None, covs=None, weights=None, name: Optional[str] = None):
        super().__init__()
        dtype = infer_dtype(means, covs, stds, weights)
        device = infer_device(means, covs, stds, weights)
        mu = as_float64(means, "means", device)
        if mu.dim() != 2 or mu.shape[0] < 1 or mu.shape[1] < 1:
            raise ValueError(
                f"means must have shape (K, D) with K >= 1 components in D >= 1 dimensions, got "
                f"shape {tuple(mu.shape)}; for a single Gaussian pass means[None]"
            )
        k, d = mu.shape
        if stds is not None and covs is not None:
            raise ValueError(
                "give either stds (isotropic, shape (K,)) or covs (full, shape (K, D, D)), not both"
            )
        if stds is None and covs is None:
            raise ValueError(
                "give the component spreads: stds of shape (K,) for isotropic components or covs "
                "of shape (K, D, D) for full covariances"
            )
        eye = torch.eye(d, dtype=torch.float64, device=device)
        if stds is not None:
            s = as_float64(stds, "stds", device)
            if s.dim() == 0:
                s = s.expand(k)
            if tuple(s.shape) != (k,):
                raise ValueError(
                    f"stds must have shape ({k},) (one isotropic std per component), got shape "
                    f"{tuple(s.shape)}; use covs of shape ({k}, {d}, {d}) for anisotropic components"
                )
            if bool((s <= 0).any()):
                raise ValueError(f"stds must be positive, got {s.tolist()}")
            cov = (s**2)[:, None, None] * eye
            lam = (s**2)[:, None].expand(k, d).clone()
            vecs = eye.expand(k, d, d).clone()
        else:
            cov = as_float64(covs, "covs", device)
            if tuple(cov.shape) != (k, d, d):
                raise ValueError(
                    f"covs must have shape ({k}, {d}, {d}) to match means of shape ({k}, {d}), got "
                    f"shape {tuple(cov.shape)}"
                )
            asym = (cov - cov.mT).abs().amax(dim=(-2, -1))
            scale = cov.abs().amax(dim=(-2, -1)).clamp_min(1e-300)
            bad = (asym > _symmetry_tolerance(covs) * scale).nonzero().flatten()
            if bad.numel():
                i = int(bad[0])
                raise ValueError(
                    f"covs[{i}] is not symmetric (max |S - S^T| = {float(asym[i]):.3g}); "
                    "a covariance matrix must be symmetric positive definite"
                )
            cov = 0.5 * (cov + cov.mT)
            lam, vecs = torch.linalg.eigh(cov)
            lam_max = lam.amax(dim=-1)
            bad = (lam.amin(dim=-1) <= 1e-12 * lam_max.clamp_min(0.0)).nonzero().flatten()
            if bad.numel():
                i = int(bad[0])
                raise ValueError(
                    f"covs[{i}] is not positive definite (eigenvalues {lam[i].tolist()}); "
                    "every covariance must be symmetric positive definite"
                )
        if weights is None:
            w = torch.full((k,), 1.0 / k, dtype=torch.float64, device=device)
        else:
            w = as_float64(weights, "weights", device)
            if tuple(w.shape) != (k,):
                raise ValueError(f"weights must have shape ({k},) to match {k} components, got shape {tuple(w.shape)}")
            if bool((w < 0).any()):
                raise ValueError(f"weights must be non-negative, got {w.tolist()}")
            if not float(w.sum()) > 0:
                raise ValueError("weights must not all be zero")
            w = w / w.sum()
        self.name = name or "gmm"
        self.event_shape = (d,)
        self.register_buffer("_means", mu.to(dtype))
        self.register_buffer("_covs", cov.to(dtype))
        self.register_buffer("_eigvals", lam.to(dtype))
        self.register_buffer("_eigvecs", vecs.to(dtype))
        self.register_buffer("_log_weights", torch.log(w).to(dtype))

    # ------------------------------------------------------------------ properties
    @property
    def means(self) -> Tensor:
        """``(K, D)`` component means (a copy)."""
        return self._means.clone()

    @property
    def covs(self) -> Tensor:
        """``(K, D, D)`` component covariances (a copy)."""
        return self._covs.clone()

    @property
    def weights(self) -> Tensor:
        """``(K,)`` normalised mixture weights."""
        return torch.exp(self._log_weights)

    @property
    def dim(self) -> int:
        """Dimension ``D``."""
        return int(self._means.shape[1])

    @property
    def n_components(self) -> int:
        """Number of components ``K``."""
        return int(self._means.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the stored parameters (samples are returned in it)."""
        return self._means.dtype

    # ------------------------------------------------------------------ leaf hooks
    def _parts(self, x: Tensor):
        if self._means.dtype == x.dtype:  # the usual case: no conversion dispatches per call
            return self._means, self._eigvecs, self._eigvals, self._log_weights
        return (
            self._means.to(x.dtype),
            self._eigvecs.to(x.dtype),
            self._eigvals.to(x.dtype),
            self._log_weights.to(x.dtype),
        )

    def _closed_form(self, x: Tensor, t: Optional[Tensor], need_grad: bool):
        return _mixture_energy(x, *self._parts(x), need_grad=need_grad)

    # ------------------------------------------------------------------ density
    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` ``(B,)`` for ``x`` ``(B, D)`` (normalised)."""
        return -self.energy(x)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Exact samples ``(n, D)`` in the mixture's dtype, on its device.

        Random numbers are drawn in float64 on ``generator``'s device (the same seed gives the
        same samples whatever the mixture's device); without a generator, torch's global RNG is
        used (pass one for reproducibility).
        """
        n = check_positive_int(n, "n")
        generator = check_generator(generator)
        dev = self._means.device
        gdev = rng_device(generator, dev)
        w = torch.exp(self._log_weights.to(device=gdev, dtype=torch.float64))
        comp = torch.multinomial(w, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, device=gdev, dtype=torch.float64)
        comp, eps = comp.to(dev), eps.to(dev)
        scale = self._eigvecs.double() * self._eigvals.double().sqrt()[:, None, :]  # U diag(√λ)
        out = torch.empty(n, self.dim, dtype=torch.float64, device=dev)
        for k in range(self.n_components):  # loop over K (small) rather than gather (n, D, D)
            idx = (comp == k).nonzero().flatten()
            if idx.numel():
                out[idx] = self._means[k].double() + eps[idx] @ scale[k].T
        return out.to(self.dtype)

    def mean(self) -> Tensor:
        """Mixture mean ``Σ_k w_k μ_k``, ``(D,)``."""
        w = self.weights.double()
        return (w[:, None] * self._means.double()).sum(0).to(self.dtype)

    def covariance(self) -> Tensor:
        """Mixture covariance ``Σ_k w_k (Σ_k + μ_k μ_kᵀ) − m mᵀ``, ``(D, D)``."""
        w = self.weights.double()
        mu = self._means.double()
        m = (w[:, None] * mu).sum(0)
        second = (w[:, None, None] * (self._covs.double() + mu[:, :, None] * mu[:, None, :])).sum(0)
        return (second - m[:, None] * m[None, :]).to(self.dtype)

    def diffused(self, schedule) -> "DiffusedGaussianMixture":
        """The exact energy of the VP-noised marginal ``p_t`` at every ``t``.

        Parameters
        ----------
        schedule : ebmcompose.VPSchedule
            Gives ``alpha_bar(t)``.

        Returns
        -------
        DiffusedGaussianMixture
            A time-dependent :class:`~ebmcompose.Energy` (``time_dependent`` is ``True``).
        """
        return DiffusedGaussianMixture(self, schedule)

    def extra_repr(self) -> str:
        return f"K={self.n_components}, D={self.dim}"


class DiffusedGaussianMixture(DiffusedClosedForm):
    """Exact energy of a Gaussian mixture noised by a VP process: ``−log p_t(x)``.

    ``p_t = Σ_k w_k N(sqrt(ᾱ_t) μ_k, ᾱ_t Σ_k + (1 − ᾱ_t) I)`` with ``ᾱ_t = schedule.alpha_bar(t)``.
    ``t`` may differ per sample; the eigen-decompositions of ``Σ_k`` are reused, so there is no
    factorisation per call. Build with :meth:`GaussianMixture.diffused`.

    Parameters
    ----------
    base : GaussianMixture
        The data distribution ``p_0``.
    schedule : ebmcompose.VPSchedule
        Noise schedule.
    name : str, optional
        Name in formulas (default ``base.name + "_t"``).
    """

    base_type = GaussianMixture

    def _parts(self, x: Tensor, t: Optional[Tensor]):
        tt = batch_t(t, x, self._label())
        ab, one_minus, sqrt_ab = vp_coefficients(self.schedule, tt, x)  # (B,)
        b = self.base
        means = sqrt_ab[:, None, None] * b._means.to(x.dtype)  # (B, K, D)
        var = ab[:, None, None] * b._eigvals.to(x.dtype) + one_minus[:, None, None]  # (B, K, D)
        return means, b._eigvecs.to(x.dtype), var, b._log_weights.to(x.dtype)

    def _closed_form(self, x: Tensor, t: Optional[Tensor], need_grad: bool):
        return _mixture_energy(x, *self._parts(x, t), need_grad=need_grad)

    def at(self, t) -> GaussianMixture:
        """The marginal ``p_t`` at a fixed scalar ``t`` as a :class:`GaussianMixture` (for exact
        sampling and moments of ``p_t``), in the base mixture's dtype and device."""
        t = as_scalar_t(t, f"{self.label}.at(t)")
        b = self.base
        lam = b._eigvals.double()
        vecs = b._eigvecs.double()
        ab, one_minus, sqrt_ab = vp_coefficients(self.schedule, t, lam.new_zeros(()))
        covs = vecs @ torch.diag_embed(ab * lam + one_minus) @ vecs.mT
        gm = GaussianMixture(
            sqrt_ab * b._means.double(), covs=0.5 * (covs + covs.mT), weights=b.weights.double(),
            name=f"{b.name}@t={t:g}",
        )
        return gm.to(b.dtype)


def gmm_product(a: GaussianMixture, b: GaussianMixture, name: Optional[str] = None) -> GaussianMixture:
    """The exact normalised product ``p(x) ∝ p_a(x) p_b(x)`` of two Gaussian mixtures.

    Component ``(i, j)`` (``K_a · K_b`` in all, index ``i * K_b + j``) is
    ``N(μ_ij, Σ_ij)`` with ``Σ_ij = (Σ_i⁻¹ + Σ_j⁻¹)⁻¹ = Σ_i (Σ_i + Σ_j)⁻¹ Σ_j`` and
    ``μ_ij = Σ_j (Σ_i + Σ_j)⁻¹ μ_i + Σ_i (Σ_i + Σ_j)⁻¹ μ_j``, with weight
    ``∝ w_i w_j N(μ_i; μ_j, Σ_i + Σ_j)``. Computed in float64; works in any dimension.

    Parameters
    ----------
    a, b : GaussianMixture
        Mixtures of the same dimension ``D``.
    name : str, optional
        Name of the result (default ``"a&b"``).

    Returns
    -------
    GaussianMixture
        In the promoted dtype of ``a`` and ``b``, on ``a``'s device.
    """
    if not isinstance(a, GaussianMixture) or not isinstance(b, GaussianMixture):
        raise TypeError(
            f"gmm_product needs two toy.GaussianMixture objects, got {type(a).__name__} and {type(b).__name__}"
        )
    if a.dim != b.dim:
        raise ValueError(f"gmm_product needs mixtures of the same dimension, got D={a.dim} and D={b.dim}")
    dev = a._means.device
    mu_a, mu_b = a._means.double(), b._means.double().to(dev)
    s_a, s_b = a._covs.double(), b._covs.double().to(dev)
    ka, kb, d = mu_a.shape[0], mu_b.shape[0], a.dim
    c = s_a[:, None] + s_b[None, :]  # (Ka, Kb, D, D)
    chol = torch.linalg.cholesky(c)
    diff = (mu_a[:, None, :] - mu_b[None, :, :])[..., None]  # (Ka, Kb, D, 1)
    z = torch.linalg.solve_triangular(chol, diff, upper=False)
    log_norm = -0.5 * (
        (z**2).sum(dim=(-2, -1))
        + 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        + d * LOG_2PI
    )
    sa = s_a[:, None].expand(ka, kb, d, d)
    sb = s_b[None, :].expand(ka, kb, d, d)
    cov = sa @ torch.cholesky_solve(sb, chol)  # Σ_i C⁻¹ Σ_j
    cov = 0.5 * (cov + cov.mT)
    ma = mu_a[:, None, :, None].expand(ka, kb, d, 1)
    mb = mu_b[None, :, :, None].expand(ka, kb, d, 1)
    mean = sb @ torch.cholesky_solve(ma, chol) + sa @ torch.cholesky_solve(mb, chol)
    log_w = a._log_weights.double()[:, None] + b._log_weights.double().to(dev)[None, :] + log_norm
    w = torch.exp(log_w - log_w.max())
    out = GaussianMixture(
        mean.reshape(ka * kb, d),
        covs=cov.reshape(ka * kb, d, d),
        weights=w.reshape(-1),
        name=name or f"{a.name}&{b.name}",
    )
    return out.to(torch.promote_types(a.dtype, b.dtype))


def ring(
    n: int = 8,
    radius: float = 4.0,
    std: float = 0.3,
    name: str = "ring",
    dtype: Optional[torch.dtype] = None,
) -> GaussianMixture:
    """``n`` equal-weight isotropic Gaussians evenly spaced on a circle (the "8 Gaussians").

    Component ``k`` is centred at ``radius · (cos 2πk/n, sin 2πk/n)`` with std ``std``.

    Parameters
    ----------
    n : int
        Number of components (``>= 1``).
    radius, std : float
        Ring radius and component standard deviation (``std > 0``).
    name : str
        Name in formulas.
    dtype : torch.dtype, optional
        Parameter dtype (default: torch's default dtype).
    """
    n = check_positive_int(n, "n (number of ring components)")
    dtype = infer_dtype(dtype=dtype)
    ang = 2.0 * math.pi * torch.arange(n, dtype=torch.float64) / n
    means = float(radius) * torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)
    return GaussianMixture(means.to(dtype), stds=torch.full((n,), float(std), dtype=dtype), name=name)


def bar(
    center: Tuple[float, float] = (0.0, 0.0),
    length: float = 8.0,
    width: float = 0.5,
    n: int = 9,
    vertical: bool = True,
    name: str = "bar",
    dtype: Optional[torch.dtype] = None,
) -> GaussianMixture:
    """A 2-D bar as a column of ``n`` overlapping equal-weight Gaussians.

    Means are evenly spaced along the bar's axis over ``[c − length/2, c + length/2]`` (spacing
    ``h = length / (n − 1)``); each component has std ``h`` along the axis and ``width``
    across it. Gaussians one std apart sum to an almost exactly flat profile (relative ripple
    below ``1e-7``), so the bar is uniform along its axis between the end means with Gaussian
    ends, and Gaussian (std ``width``) across. Being a Gaussian mixture, it has exact products
    (:func:`gmm_product`) and an exact diffused energy.

    Parameters
    ----------
    center : (float, float)
        Centre of the bar.
    length : float
        Distance between the first and last component means (``> 0``).
    width : float
        Cross-section standard deviation (``> 0``).
    n : int
        Number of components (``>= 2``).
    vertical : bool
        Along the y axis (default) or the x axis.
    name : str
        Name in formulas.
    dtype : torch.dtype, optional
        Parameter dtype (default: torch's default dtype).
    """
    n = check_positive_int(n, "n (number of bar components)")
    if n < 2:
        raise ValueError(f"a bar needs n >= 2 components, got {n}")
    if not (length > 0 and width > 0):
        raise ValueError(f"bar length and width must be positive, got length={length}, width={width}")
    dtype = infer_dtype(dtype=dtype)
    cx, cy = (float(c) for c in center)
    h = float(length) / (n - 1)
    along = torch.linspace(-0.5 * length, 0.5 * length, n, dtype=torch.float64)
    if vertical:
        means = torch.stack([torch.full_like(along, cx), cy + along], dim=-1)
        var = torch.tensor([width**2, h**2], dtype=torch.float64)
    else:
        means = torch.stack([cx + along, torch.full_like(along, cy)], dim=-1)
        var = torch.tensor([h**2, width**2], dtype=torch.float64)
    covs = torch.diag(var).expand(n, 2, 2)
    return GaussianMixture(means.to(dtype), covs=covs.to(dtype), name=name)
