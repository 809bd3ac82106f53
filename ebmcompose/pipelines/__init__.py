"""Composable text-to-image over a local diffusers pipeline (``ec.pipelines``).

>>> from ebmcompose.pipelines import ComposablePipeline
>>> cp = ComposablePipeline.from_pretrained("path/to/stable-diffusion")
>>> cp("a red cube AND a blue sphere AND NOT a table", generator=torch.Generator().manual_seed(0)).images[0]

Diffusers and transformers (``pip install ebmcompose[t2i]``) are imported when a pipeline is
loaded or built, never when this package is imported.
"""

from .composable import OUTPUT_TYPES, ComposableOutput, ComposablePipeline, Composition
from .prompts import PromptTerm, parse_prompt
from .schedulers import SCHEDULERS, epsilon_scheduler, make_scheduler
from .tiny import TINY_IMAGE_SIZE, make_tiny_pipeline

__all__ = [
    "ComposableOutput",
    "ComposablePipeline",
    "Composition",
    "OUTPUT_TYPES",
    "PromptTerm",
    "SCHEDULERS",
    "TINY_IMAGE_SIZE",
    "epsilon_scheduler",
    "make_scheduler",
    "make_tiny_pipeline",
    "parse_prompt",
]
