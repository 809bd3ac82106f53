"""Shared pytest configuration: `slow` tests run only with --runslow (or -m slow)."""

import os

import pytest
import torch

# Small-tensor tests are dominated by per-op overhead; intra-op threads only add contention on
# the 2-core CI machine (10-50x slower under load). Override with EBMCOMPOSE_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("EBMCOMPOSE_TEST_THREADS", "1")))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or "slow" in (config.getoption("-m") or "")
    skip_slow = pytest.mark.skip(reason="slow statistical test: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="no CUDA device available")
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture
def generator():
    """A seeded CPU generator; tests that need another seed make their own."""
    return torch.Generator().manual_seed(0)
