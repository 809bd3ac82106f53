"""A tiny Stable-Diffusion-style pipeline with random weights, written to a local folder.

For tests, the notebook and the benchmark: every component of a real text-to-image folder
(CLIP tokenizer and text encoder, cross-attention UNet, VAE, scheduler) at a size that runs a
50-step generation in well under a second on a CPU. Nothing is downloaded: the tokenizer is made
from a small hand-written vocabulary (one token per letter, plus each letter as a word end),
the models from configs with seeded random weights.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Union

__all__ = ["make_tiny_pipeline", "TINY_IMAGE_SIZE"]

#: Height and width (pixels) of the tiny pipeline's images; its latents are 4 x 8 x 8.
TINY_IMAGE_SIZE = 16


def _write_tokenizer_files(folder: Path) -> None:
    """``vocab.json`` and ``merges.txt`` of a character-level CLIP BPE tokenizer."""
    letters = string.ascii_lowercase + string.digits
    tokens = ["!", ",", ".", "-"] + list(letters) + [c + "</w>" for c in letters]
    tokens += [p + "</w>" for p in "!,.-"]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def make_tiny_pipeline(folder: Union[str, Path], seed: int = 0, scheduler: str = "DDIMScheduler"):
    """Build a random tiny ``StableDiffusionPipeline`` and ``save_pretrained`` it into ``folder``.

    Parameters
    ----------
    folder : str or Path
        Where to write the pipeline (``model_index.json`` and one subfolder per component).
    seed : int
        Seed of the random weights.
    scheduler : str
        A diffusers scheduler class name (SD v1 settings: scaled-linear betas, ``steps_offset=1``).

    Returns
    -------
    diffusers.StableDiffusionPipeline
        The pipeline as built (float32, CPU, no safety checker); ``folder`` holds the same.
    """
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tok_dir = folder / "_tokenizer_source"
    _write_tokenizer_files(tok_dir)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=16, projection_dim=16,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    unet = diffusers.UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        norm_num_groups=4, attention_head_dim=4,
    ).eval()
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4,
        sample_size=TINY_IMAGE_SIZE, layers_per_block=1,
    ).eval()
    sched = getattr(diffusers, scheduler)(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        **({"steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False} if scheduler == "DDIMScheduler" else {}),
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(folder))
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    return pipe
