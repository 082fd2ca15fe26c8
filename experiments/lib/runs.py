"""Many fine-tuning runs at once: the cached ones read back, the rest trained in parallel processes.

An experiment first writes down every run it needs (a plan), then calls run_all(plan). This is
a speed trick only: each run is the same `run_finetune` call it would be one after the other,
with the same seed, so the records are the same (up to float rounding from the thread count,
about 1e-8 in a loss).

Why processes: the tiny GPT's matrices are too small to keep two cores busy from one process
(a run takes about 25 s with two threads, 37 s with one), but two one-thread processes side by
side each still take about 37 s, so two workers finish a sweep about 1.35x sooner (measured on
a 2-core CPU). On a GPU, or with workers=1, runs go one after the other in this process.

Under torchrun every run is trained by all the processes together (DistributedDataParallel, see
nanogpt/distributed.py), one run after the other: workers is then 1.
"""
import multiprocessing
import os

import torch
from tqdm import tqdm

from experiments.lib.finetune import run_finetune, run_key
from nanogpt import distributed


# This process's distinct runs: planned, and trained (not cached); and the sequences the planned runs
# train (steps x batch), which the run-time table's estimate scales by, since runs differ in length.
COUNTS = {"planned": 0, "trained": 0, "sequences_planned": 0}
_PLANNED_KEYS = {}  # run key -> its sequences: a run a tuner plans again at its next stage counts once


def reset_counts():
    COUNTS.update(planned=0, trained=0, sequences_planned=0)
    _PLANNED_KEYS.clear()


def default_workers(device):
    """One worker per core on a CPU (each with one thread); one on a GPU, which runs them best alone,
    and one under torchrun, where the processes train each run together."""
    if distributed.is_distributed() or not str(device).startswith("cpu"):
        return 1
    return max(1, os.cpu_count() or 1)


def _one_thread():
    torch.set_num_threads(1)


def _run(kwargs):
    return run_finetune(**kwargs)


def run_all(plan, workers=1, progress=True, desc="runs"):
    """[record] for each run in plan, in order.

    plan: a list of keyword-argument dicts for experiments.lib.finetune.run_finetune (base, base_key,
    spec, target, source, steps, seed, ...). Runs already in the cache are read back; the others
    are trained by `workers` processes (1: one after the other, in this process, with its
    per-run progress bars). Each run's record lands in the cache as it finishes, so an
    interrupted sweep resumes where it stopped.
    """
    todo, seen = [], {}
    for i, kwargs in enumerate(plan):  # each missing run once, even if the plan names it twice
        key = run_key(**kwargs)
        if key not in seen and run_finetune(**kwargs, cached_only=True) is None:
            todo.append(i)
        seen[key] = kwargs["steps"] * kwargs["batch_size"]
    _PLANNED_KEYS.update(seen)
    COUNTS["planned"] = len(_PLANNED_KEYS)
    COUNTS["sequences_planned"] = sum(_PLANNED_KEYS.values())
    COUNTS["trained"] += len(todo)
    if distributed.is_distributed():  # every process trains every run, in the same order
        distributed.check_same([run_key(**plan[i]) for i in todo], "the runs still to train (--cache)")
        workers = 1
    if len(todo) <= 1 or workers <= 1:
        for i in tqdm(todo, desc=desc, disable=not progress or len(todo) < 2 or not distributed.is_main(),
                      dynamic_ncols=True):
            run_finetune(**plan[i])
    else:
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
        with context.Pool(min(workers, len(todo)), initializer=_one_thread) as pool:
            jobs = [pool.apply_async(_run, ({**plan[i], "progress": False},)) for i in todo]
            for job in tqdm(jobs, desc=f"{desc} ({min(workers, len(todo))} processes)", disable=not progress,
                            dynamic_ncols=True):
                job.get()  # raises here if the run failed
    by_key = {}  # every run is in the cache now; a run planned twice comes back as one record
    for kwargs in plan:
        key = run_key(**kwargs)
        if key not in by_key:  # read back only: with force=True each run would otherwise train twice
            by_key[key] = run_finetune(**{**kwargs, "force": False})
    return [by_key[run_key(**kwargs)] for kwargs in plan]
