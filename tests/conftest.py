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


@pytest.fixture
def corpora(tmp_path):
    """Flags for two small local corpora, quick to load and different enough to learn and forget,
    and a cache of their own: what the experiments' end-to-end tests run on."""
    code = tmp_path / "code.txt"
    code.write_text("def f(x):\n    return x * 2\n\nclass A:\n    pass\n" * 200)
    prose = tmp_path / "prose.txt"
    prose.write_text("The quick brown fox jumps over the lazy dog. A statement ends with a period.\n" * 150)
    return ["--source", str(code), "--target", str(prose), "--cache", str(tmp_path / "cache")]
