"""Several seeds of one run, and the spread between them: so a small difference is not called.

A fine-tuning seed changes the batches drawn and the adapter's random init, never the base model
(that has its own seed, from --seed), so the spread is that of fine-tuning alone.
"""
import statistics

from experiments.finetune import run_finetune


def seed_list(first_seed, n_seeds):
    """The fine-tuning seeds of an experiment: first_seed, first_seed + 1, ..."""
    if n_seeds < 1:
        raise ValueError(f"--seeds must be at least 1; got {n_seeds}")
    return [first_seed + i for i in range(n_seeds)]


def run_seeds(base, base_key, spec, target, source, seeds, **kwargs):
    """One run_finetune record per seed, same spec; kwargs as run_finetune's (without seed)."""
    return [run_finetune(base, base_key, spec, target, source, seed=s, **kwargs) for s in seeds]


def spread(values):
    """{"mean", "min", "max", "values"} of a list of numbers (one per seed)."""
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "values": values}


def separated(a, b):
    """True when two spreads do not overlap: the only differences our verdicts call real."""
    return a["max"] < b["min"] or b["max"] < a["min"]


def show(s, signed=False):
    """A spread as text for tables: 'mean (min to max)'."""
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(s['mean'])} ({f.format(s['min'])} to {f.format(s['max'])})"
