"""Shared test setup: plots go to files only (no display on CI), and notebooks run in fast mode."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("NOTEBOOK_FAST", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Test models are tiny: they gain nothing from threads, and on a busy machine thread
    hand-offs dominate their run time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
