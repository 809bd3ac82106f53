"""A tiny random Stable Diffusion folder, written once per session and loaded from disk."""

import pytest


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers", reason="text-to-image needs transformers (pip install -e .[t2i])")
    from ebmcompose.pipelines import make_tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    make_tiny_pipeline(folder, seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_cp(tiny_sd_folder):
    """The folder loaded with ComposablePipeline.from_pretrained (float32, CPU); never modified."""
    from ebmcompose.pipelines import ComposablePipeline

    return ComposablePipeline.from_pretrained(tiny_sd_folder)
