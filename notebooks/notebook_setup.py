"""The lines every classroom notebook starts with, in one place: find the code, choose the CPU
threads, set up the plots, and load the experiments' pretrained base model.

    import notebook_setup
    ROOT, FAST = notebook_setup.setup(threads=4)
    EXP = notebook_setup.experiment_settings()       # the experiments' defaults (fast mode: tiny)
    base, ckpt_path = notebook_setup.base_model(EXP)  # from runs/cache, pretrained there if missing

It runs inside a notebook's kernel (imported from notebooks/, the kernel's working folder).
The teacher's commands (prepare the cache, execute and stamp, student versions) are in
classroom.py. NOTEBOOK_FAST=1 is the tests' quick mode: the same code with tiny step counts,
whose numbers mean nothing.
"""
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: nanogpt/, minilora/, experiments/
FAST = os.environ.get("NOTEBOOK_FAST") == "1"
FAST_PRETRAIN_ITERS = 50


def find_code():
    """Import nanogpt, minilora and experiments from this clone. From a clone the clone comes
    first, so the code you read is the code you run; without one, an installed copy is used."""
    if (ROOT / "minilora").is_dir() and str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def thread_count(threads):
    """torch's CPU threads: OMP_NUM_THREADS if set (a shared server's setting wins), else
    `threads`, at most the cores there are. The tiny GPT gains little past 4, and on a machine
    shared with other jobs more threads than free cores make every step wait."""
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, min(threads, os.cpu_count() or 1))


def setup(threads=4):
    """Everything a notebook's first cell needs. Returns (ROOT, FAST); safe to run again."""
    find_code()
    import torch

    torch.set_num_threads(thread_count(threads))
    import matplotlib.pyplot as plt

    try:  # inside Jupyter: figures inline, whatever MPLBACKEND says
        ipython = get_ipython()  # noqa: F821 (defined by IPython)
        ipython.run_line_magic("matplotlib", "inline")
    except NameError:
        pass
    plt.rcParams.update({"figure.dpi": 80, "font.size": 10})
    print(f"torch {torch.__version__} | CPU threads: {torch.get_num_threads()} | "
          f"mode: {'FAST (tests)' if FAST else 'default'}")
    return ROOT, FAST


_fast_cache = None


def cache_dir():
    """Where base models (and cached runs) live: the experiments' runs/cache, shared with
    `python -m experiments.*`; in fast mode a temporary folder (NOTEBOOK_CACHE if set, so the
    tests pretrain one 50-step model for all notebooks)."""
    global _fast_cache
    if not FAST:
        return ROOT / "runs" / "cache"
    if os.environ.get("NOTEBOOK_CACHE"):
        return Path(os.environ["NOTEBOOK_CACHE"])
    if _fast_cache is None:
        _fast_cache = Path(tempfile.mkdtemp(prefix="minilora-notebook-"))
    return _fast_cache


def experiment_settings():
    """The experiments' default settings (experiments/lib/common.py: corpora, preset, steps, batch,
    learning rates, seed), with the cache as an absolute path; fast mode pretrains 50 steps."""
    find_code()
    from experiments.lib.common import make_parser

    settings = make_parser("notebook", str(ROOT / "runs" / "notebooks")).parse_args([])
    settings.cache = str(cache_dir())
    if FAST:
        settings.pretrain_iters = FAST_PRETRAIN_ITERS
    return settings


def base_model(settings, progress=False):
    """(base GPT, checkpoint path): the model the experiments pretrain with these settings, from
    the cache, or pretrained into it first (about two minutes on a laptop CPU, once)."""
    from experiments.lib.base_model import get_base_model
    from nanogpt.presets import config_from_preset

    config = config_from_preset(settings.preset)
    base, ckpt_path = get_base_model(settings.source, config, max_iters=settings.pretrain_iters,
                                     batch_size=settings.pretrain_batch_size, lr=settings.pretrain_lr,
                                     seed=settings.seed, device=settings.device, cache_dir=settings.cache,
                                     progress=progress)
    print(f"base model: {base.num_parameters():,} parameters, pretrained for {settings.pretrain_iters} steps "
          f"on {settings.source!r}")
    return base, ckpt_path
