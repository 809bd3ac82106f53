"""Composable text-to-image over a local diffusers Stable Diffusion pipeline.

>>> cp = ComposablePipeline.from_pretrained("path/to/stable-diffusion-folder")
>>> out = cp("a red cube AND a blue sphere AND NOT a table", guidance=7.5, generator=g)
>>> out.images[0].save("composed.png")

The prompt expression (:func:`~ebmcompose.pipelines.parse_prompt`) becomes an energy expression
over one :class:`~ebmcompose.EpsilonModel` of the UNet: the unconditional leaf holds the
negative prompt's embedding ("" by default) and each prompt is a conditional leaf, so the
guided noise estimate is the article's ``ε = ε_u + w Σ_i s_i (ε_i − ε_u)`` and every step is
**one** UNet forward over ``K`` images × (prompts + unconditional), unless ``max_batch``
chunks it. With one prompt and the pipeline's own scheduler, the loop is diffusers' own:
``prepare_latents``' noise, ``scale_model_input``, ``scheduler.step``, the VAE decode and
post-processing, so the images equal ``pipe(prompt, guidance_scale=w, generator=g)``.

Diffusers and transformers are imported when a pipeline is loaded, never at import time.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..checks import check_positive_int
from ..energy import Energy
from ..epsilon import EpsilonModel
from ..errors import InputError, InputTypeError
from ..schedule import VPSchedule
from .prompts import PromptTerm, parse_prompt
from .schedulers import epsilon_scheduler, make_scheduler

__all__ = ["ComposablePipeline", "Composition", "ComposableOutput", "OUTPUT_TYPES"]

#: Values of ``output_type``: PIL images, a numpy ``(K, H, W, 3)`` array in [0, 1], a torch
#: ``(K, 3, H, W)`` tensor in [0, 1], or the final latents ``(K, C, h, w)``.
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass(frozen=True)
class Composition:
    """A prompt expression as an energy over one UNet.

    Attributes
    ----------
    energy : Energy
        ``u + w Σ_i s_i (c_i − u)``: its score is ``−ε/σ_t`` of the guided estimate.
    model : EpsilonModel
        The UNet as a leaf family (``null_condition``: the negative prompt's embedding).
    terms : tuple of PromptTerm
        The parsed prompts with signed weights ``s_i``.
    guidance : float
        ``w``.
    """

    energy: Energy
    model: EpsilonModel
    terms: Tuple[PromptTerm, ...]
    guidance: float


@dataclass(frozen=True)
class ComposableOutput:
    """What a generation returns.

    Attributes
    ----------
    images : list of PIL.Image, ndarray, Tensor
        As ``output_type`` asks (see :data:`OUTPUT_TYPES`); ``K = num_images`` of them.
    latents : Tensor
        The final latents ``(K, C, h, w)`` (before the VAE).
    composition : Composition
        The energy that was sampled.
    nfe : int
        UNet forwards (one per step unless chunked).
    timesteps : Tensor
        The scheduler's timesteps (empty when a toolkit ``sampler`` drove the latents).
    """

    images: Any
    latents: Tensor
    composition: Composition
    nfe: int
    timesteps: Tensor


def _check_number(value, name: str, minimum: Optional[float] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be >= {minimum:g}, got {value!r}")
    return float(value)


class ComposablePipeline:
    """Composable Diffusion (Liu et al. 2022) on a diffusers text-to-image pipeline.

    Parameters
    ----------
    pipe : diffusers pipeline
        A loaded Stable Diffusion 1.x/2.x pipeline (anything with ``unet``, ``vae``,
        ``text_encoder``, ``tokenizer``, ``scheduler`` and ``encode_prompt``); used as it is
        (device, dtype, scheduler), never modified.
    max_batch : int, optional
        Default largest UNet batch (the joint batch of a step is chunked above it).
    """

    def __init__(self, pipe, max_batch: Optional[int] = None):
        missing = [c for c in _COMPONENTS if getattr(pipe, c, None) is None]
        if missing or not callable(getattr(pipe, "encode_prompt", None)):
            raise InputTypeError(
                f"ComposablePipeline needs a Stable Diffusion-style text-to-image pipeline (unet, vae, "
                f"text_encoder, tokenizer, scheduler, encode_prompt); {type(pipe).__name__} lacks "
                f"{', '.join(missing) or 'encode_prompt'}"
            )
        cfg = pipe.unet.config
        if getattr(cfg, "time_cond_proj_dim", None) is not None or getattr(cfg, "addition_embed_type", None):
            raise InputError(
                f"{type(pipe).__name__}'s UNet needs extra conditions (guidance embeddings or SDXL's "
                "added text/time embeddings), which ComposablePipeline does not provide yet; use a "
                "Stable Diffusion 1.x/2.x pipeline"
            )
        if max_batch is not None:
            check_positive_int(max_batch, "max_batch")
        self.pipe = pipe
        self.max_batch = max_batch

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        folder: Union[str, Path],
        *,
        torch_dtype: Optional[torch.dtype] = None,
        device: Union[str, torch.device, None] = None,
        max_batch: Optional[int] = None,
        **kwargs,
    ) -> "ComposablePipeline":
        """Load a pipeline from a local folder (never the hub: ``local_files_only=True``).

        Parameters
        ----------
        folder : str or Path
            A folder written by ``save_pretrained`` (``model_index.json`` and one subfolder per
            component), e.g. a downloaded Stable Diffusion repository.
        torch_dtype : torch.dtype, optional
            Load the weights in this dtype (``torch.float16`` on a GPU).
        device : str or torch.device, optional
            Move the pipeline there.
        **kwargs
            Passed to ``diffusers.DiffusionPipeline.from_pretrained``.

        Raises
        ------
        InputError
            The folder does not exist, has no ``model_index.json``, or a component is missing or
            unreadable (the message names it).
        """
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise InputError(f"pipeline folder {folder} does not exist; pass the folder of a saved diffusers pipeline")
        if not (folder / "model_index.json").is_file():
            raise InputError(
                f"{folder} is not a diffusers pipeline folder: it has no model_index.json (write one with "
                "pipe.save_pretrained(folder), or download a Stable Diffusion repository there)"
            )
        import diffusers

        try:
            with warnings.catch_warnings():  # newer diffusers rename torch_dtype to dtype; both work
                warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
                pipe = diffusers.DiffusionPipeline.from_pretrained(
                    str(folder), torch_dtype=torch_dtype, local_files_only=True, **kwargs
                )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(
                f"cannot load the pipeline in {folder}: {exc}. Check that every component named in "
                "model_index.json has its subfolder with config and weights"
            ) from None
        if device is not None:
            pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, max_batch=max_batch)

    # ------------------------------------------------------------------ pieces
    @property
    def device(self) -> torch.device:
        """Where the UNet runs."""
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's dtype (the latents' dtype)."""
        return self.pipe.unet.dtype

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Text-encoder embeddings ``(P, seq, dim)`` of ``texts``, exactly as the pipeline encodes prompts."""
        with torch.no_grad():
            emb, _ = self.pipe.encode_prompt(list(texts), self.device, 1, False)
        return emb

    def compose(
        self,
        prompt: str,
        *,
        guidance: float = 7.5,
        negative_prompt: Optional[str] = None,
        weights: Optional[Sequence[float]] = None,
        neg_weight: float = 1.0,
        max_batch: Optional[int] = None,
        scheduler=None,
    ) -> Composition:
        """The prompt expression as an energy over the UNet (see :class:`Composition`).

        Parameters
        ----------
        prompt : str
            A prompt expression (:func:`~ebmcompose.pipelines.parse_prompt`).
        guidance : float
            ``w`` in ``ε = ε_u + w Σ_i s_i (ε_i − ε_u)``.
        negative_prompt : str, optional
            The unconditional prompt (diffusers' negative prompt); default ``""``.
        weights : sequence of float, optional
            One multiplier per term.
        neg_weight : float
            ``β``: a ``NOT`` term's ``s_i`` is ``−β`` times its number.
        max_batch : int, optional
            Largest UNet batch (default: the pipeline's).
        scheduler : diffusers scheduler, optional
            Whose ``alphas_cumprod`` defines the energy's time ``t`` (default: the pipeline's).
        """
        w = _check_number(guidance, "guidance")
        terms = parse_prompt(prompt, weights=weights, neg_weight=neg_weight)
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise InputTypeError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}")
        texts = list(dict.fromkeys(t.text for t in terms))
        emb = self.encode(["" if negative_prompt is None else negative_prompt] + texts)
        sched = scheduler if scheduler is not None else self.pipe.scheduler
        model = EpsilonModel(
            self.pipe.unet, VPSchedule.from_diffusers(sched), null_condition=emb[0],
            max_batch=max_batch or self.max_batch, name="unet",
        )
        leaves = {text: model.condition(emb[1 + i], name=repr(text)) for i, text in enumerate(texts)}
        u = model.unconditional()
        energy: Energy = u
        for term in terms:
            energy = energy + (w * term.weight) * (leaves[term.text] - u)
        return Composition(energy=energy, model=model, terms=terms, guidance=w)

    # ------------------------------------------------------------------ generation
    def __call__(
        self,
        prompt: str,
        *,
        guidance: float = 7.5,
        num_inference_steps: int = 50,
        negative_prompt: Optional[str] = None,
        weights: Optional[Sequence[float]] = None,
        neg_weight: float = 1.0,
        num_images: int = 1,
        height: Optional[int] = None,
        width: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        latents: Optional[Tensor] = None,
        output_type: str = "pil",
        eta: float = 0.0,
        scheduler=None,
        sampler=None,
        max_batch: Optional[int] = None,
        progress: bool = True,
    ) -> ComposableOutput:
        """Generate ``num_images`` images of a prompt expression.

        Parameters
        ----------
        prompt : str
            E.g. ``"a red cube AND a blue sphere AND NOT a table"``, ``"2*(a cube) AND a sphere"``.
        guidance : float
            ``w`` (diffusers' ``guidance_scale``); the formula is applied for every ``w``
            (diffusers switches guidance off for ``w <= 1``).
        num_inference_steps : int
            Scheduler steps.
        negative_prompt, weights, neg_weight, max_batch
            See :meth:`compose`.
        num_images : int
            ``K``, images per expression.
        height, width : int, optional
            Pixels, multiples of 8 (default: the UNet's ``sample_size`` × the VAE's scale).
        generator : torch.Generator, optional
            Source of all randomness: the starting latents first (as diffusers'
            ``prepare_latents``), then the scheduler's noise.
        latents : Tensor, optional
            Starting noise ``(K, C, h, w)`` (scaled by ``init_noise_sigma`` as in diffusers).
        output_type : {"pil", "np", "pt", "latent"}
            See :data:`OUTPUT_TYPES`.
        eta : float
            DDIM's η (for schedulers whose ``step`` takes it).
        scheduler : str or diffusers scheduler, optional
            Step with this instead of the pipeline's scheduler: a name of
            :data:`~ebmcompose.pipelines.SCHEDULERS` (built from the pipeline's scheduler config)
            or a scheduler object (copied, never modified).
        sampler : ebmcompose sampler, optional
            Any sampler of the toolkit (``samplers.ReverseDiffusion.from_diffusers(...)``,
            ``samplers.PredictorCorrector(...)`` with a corrector on the latents) drives the
            latents instead: called as ``sampler.sample(energy, shape=..., generator=...,
            device=..., dtype=..., progress=...)``.
        progress : bool
            Show a progress bar.

        Returns
        -------
        ComposableOutput
        """
        check_positive_int(num_inference_steps, "num_inference_steps")
        check_positive_int(num_images, "num_images")
        if output_type not in OUTPUT_TYPES:
            raise InputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        _check_number(eta, "eta", 0.0)
        pipe = self.pipe
        if scheduler is None:
            sched = copy.deepcopy(pipe.scheduler)
        elif isinstance(scheduler, str):
            sched = make_scheduler(scheduler, pipe.scheduler.config)
        else:
            sched = copy.deepcopy(scheduler)
        sched = epsilon_scheduler(sched)
        shape = self._latent_shape(num_images, height, width)
        comp = self.compose(
            prompt, guidance=guidance, negative_prompt=negative_prompt, weights=weights,
            neg_weight=neg_weight, max_batch=max_batch, scheduler=sched,
        )
        device, dtype = self.device, self.dtype
        with torch.no_grad():
            if sampler is not None:
                if latents is not None:
                    raise InputError("pass latents or a sampler, not both: the sampler draws its own x_T from the generator")
                res = sampler.sample(comp.energy, shape=shape, generator=generator, device=device, dtype=dtype, progress=progress)
                out, nfe, timesteps = res.samples, int(res.info.get("nfe", 0)), torch.empty(0)
            else:
                out, nfe, timesteps = self._denoise(comp, sched, shape, num_inference_steps, generator, latents, eta, progress)
            images = self._decode(out, output_type, generator)
        return ComposableOutput(images=images, latents=out, composition=comp, nfe=nfe, timesteps=timesteps)

    def _latent_shape(self, k: int, height: Optional[int], width: Optional[int]) -> Tuple[int, ...]:
        pipe = self.pipe
        scale = int(getattr(pipe, "vae_scale_factor", 2 ** (len(pipe.vae.config.block_out_channels) - 1)))
        size = int(pipe.unet.config.sample_size) * scale
        height, width = height or size, width or size
        for name, v in (("height", height), ("width", width)):
            check_positive_int(v, name)
            if v % 8:
                raise InputError(f"{name} must be a multiple of 8 pixels (the VAE and UNet downsample), got {v}")
        return (k, int(pipe.unet.config.in_channels), height // scale, width // scale)

    def _denoise(self, comp: Composition, sched, shape, n_steps, generator, latents, eta, progress):
        """diffusers' denoising loop with the composed ε̂; ``(latents, nfe, timesteps)``."""
        from diffusers.utils.torch_utils import randn_tensor

        device, dtype = self.device, self.dtype
        sched.set_timesteps(n_steps, device=device)
        if latents is None:
            x = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != tuple(shape):
                raise InputError(f"latents must have shape {tuple(shape)}, got {tuple(latents.shape)}")
            x = latents.to(device=device, dtype=dtype)
        x = x * sched.init_noise_sigma
        params = inspect.signature(sched.step).parameters
        extra = {}
        if "eta" in params:
            extra["eta"] = eta
        if "generator" in params:
            extra["generator"] = generator
        schedule = comp.model.schedule
        big_n = schedule.num_train_timesteps
        timesteps = sched.timesteps
        ks = timesteps.detach().cpu().to(torch.float64).tolist()
        ts = [(k + 1.0) / big_n for k in ks]
        sigmas = schedule.sigma(torch.tensor(ts, dtype=torch.float64)).tolist()
        nfe = 0
        from tqdm import tqdm

        for i in tqdm(range(len(ts)), disable=not progress, desc="t2i", leave=False):
            k = timesteps[i]
            x_in = sched.scale_model_input(x, k)
            if i == 0:
                comp.energy.check_input(x_in, ts[0])
            ev = comp.energy.evaluate(x_in, ts[i], energy=False, grad=True, validate=False)
            nfe += ev.nfe
            x = sched.step(sigmas[i] * ev.grad, k, x, **extra, return_dict=False)[0]
        return x, nfe, timesteps.detach().cpu().clone()

    def _decode(self, latents: Tensor, output_type: str, generator):
        """The VAE decode and post-processing of diffusers' pipeline (its safety checker too, if any)."""
        if output_type == "latent":
            return latents
        pipe = self.pipe
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        flagged = None
        if getattr(pipe, "safety_checker", None) is not None:
            image, flagged = pipe.run_safety_checker(image, self.device, latents.dtype)
        denormalize = [True] * image.shape[0] if flagged is None else [not f for f in flagged]
        return pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize)

