"""The classroom notebooks: each runs top to bottom (in fast mode), and each committed notebook
was executed at its default settings and ends with exercises.

The kernel inherits this process's environment, where conftest.py sets NOTEBOOK_FAST=1 (fewer
steps, a temporary cache) and MPLBACKEND=Agg. Notebooks run on an in-memory copy with
cwd = notebooks/, so the committed files are never rewritten.
"""
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = [
    "01_low_rank_intuition.ipynb",
    "02_lora_layer_from_scratch.ipynb",
    "03_finetune_gpt_with_lora.ipynb",
    "04_rank_sweep.ipynb",
]
MAX_BYTES = 1024 * 1024  # outputs must stay small: PNG figures, no printed tensors


def read(name):
    path = NB_DIR / name
    assert path.is_file(), f"missing notebook {path}; build it with python notebooks/build_notebooks.py --execute"
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_fast_mode(name, monkeypatch):
    monkeypatch.setenv("NOTEBOOK_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # Fast mode's tensors are tiny, so extra threads buy nothing, and on a busy CPU (tests beside
    # other jobs) oversubscribed threads can make torch many times slower. A user's setting wins.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    nb = read(name)  # an in-memory copy: the committed file keeps its outputs
    client = NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(NB_DIR)}})
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "mode: FAST" in text, "the notebook did not see NOTEBOOK_FAST=1"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_was_executed_at_default_settings(name):
    nb = read(name)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells, "no code cells"
    counts = [c.execution_count for c in code_cells]
    assert all(counts), f"cells never executed (execution_count None): {counts}"
    assert counts == sorted(counts) and len(set(counts)) == len(counts), f"not run top to bottom in order: {counts}"
    outputs = [o for c in code_cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], "a saved output is an error"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "mode: default" in text and "mode: FAST" not in text, "saved outputs are not from a default-settings run"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure in the saved outputs"
    assert (NB_DIR / name).stat().st_size < MAX_BYTES, "notebook file over 1 MB: outputs too large"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_teaches_and_ends_with_exercises(name):
    nb = read(name)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert "What you will learn" in markdown[0], "the first cell should say what the student will learn"
    exercises = [i for i, m in enumerate(markdown) if re.search(r"^#+ Exercises", m, re.MULTILINE)]
    assert exercises, "no Exercises section"
    after = "\n".join(markdown[exercises[0]:])
    assert len(re.findall(r"^\d\. ", after, re.MULTILINE)) >= 2, "fewer than two exercises"
    assert "<details>" in after and "Solution" in after, "solutions should be hidden in <details> blocks"


def test_notebooks_are_built_from_the_build_script():
    """The .ipynb sources match notebooks/build_notebooks.py, so edits go through one place."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_notebooks", NB_DIR / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert sorted(module.NOTEBOOKS) == NOTEBOOKS
    for name, cells in module.NOTEBOOKS.items():
        built = module.build(name, cells)
        committed = read(name)
        assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], (
            f"{name} differs from build_notebooks.py; rebuild: python notebooks/build_notebooks.py --execute "
            f"{name[:2]}")
