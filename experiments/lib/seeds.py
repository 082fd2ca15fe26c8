"""Several seeds of one run, and the statistics a difference must clear before we call it.

A fine-tuning seed changes the batches drawn and the adapter's random init, never the base model
(that has its own seed, from --seed), so the spread is that of fine-tuning alone. Two methods run
with the same seeds see the same batches in the same order, so their difference is taken seed by
seed (a paired comparison), which cancels the part of the noise the batches cause.

The rule every verdict follows: a difference is called only when the 95% confidence interval of
its mean (Student's t, n - 1 degrees of freedom) excludes zero. With 3 seeds the interval is
+-2.48 standard deviations of one seed's difference wide: small differences are left uncalled.
"""
import math
import statistics

# Two-sided 95% quantiles of Student's t by degrees of freedom (standard tables), so that the
# project needs no scipy. Beyond 30 the normal quantile is close enough.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101,
         19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052,
         28: 2.048, 29: 2.045, 30: 2.042}


def seed_list(first_seed, n_seeds):
    """The fine-tuning seeds of an experiment: first_seed, first_seed + 1, ..."""
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"--seeds must be a positive integer; got {n_seeds!r}")
    return [first_seed + i for i in range(n_seeds)]


def t_quantile(df):
    """The two-sided 95% quantile of Student's t with df degrees of freedom."""
    return T_975[df] if df <= 30 else 1.96


def spread(values):
    """{"mean", "sd", "ci", "min", "max", "n", "values"} of one number per seed; ci is the half-width
    of the 95% confidence interval of the mean (nan with a single seed: no spread is known). A NaN
    or inf among the values (a diverged run, a measure undefined for a setting) makes the mean, sd
    and ci NaN: there is no spread to report, and no difference is called on it. min and max are
    NaN too when a value is NaN (Python's min and max would depend on where it stands)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("spread of no values")
    if not all(math.isfinite(v) for v in values):
        has_nan = any(math.isnan(v) for v in values)
        return {"mean": math.nan, "sd": math.nan, "ci": math.nan, "min": math.nan if has_nan else min(values),
                "max": math.nan if has_nan else max(values), "n": n, "values": values}
    sd = statistics.stdev(values) if n > 1 else math.nan
    ci = t_quantile(n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"mean": statistics.fmean(values), "sd": sd, "ci": ci, "min": min(values), "max": max(values),
            "n": n, "values": values}


def paired(a, b):
    """b minus a, seed by seed (a and b: one value per seed, same seeds in the same order): the
    spread of the differences, plus "called": True when the 95% interval excludes zero."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same seeds on both sides; got {len(a)} and {len(b)} values")
    d = spread([y - x for x, y in zip(a, b)])
    d["called"] = bool(d["n"] > 1 and abs(d["mean"]) > d["ci"])
    return d


def show(s, signed=False, digits=3):
    """A spread as text: 'mean +- ci' ('mean' alone for one seed)."""
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if s["n"] == 1:
        return f.format(s["mean"])
    return f"{f.format(s['mean'])} ± {s['ci']:.{digits}f}"


def show_difference(d, digits=3):
    """A paired difference as text, marked when it is called: '+0.012 ± 0.004 *'."""
    return show(d, signed=True, digits=digits) + (" *" if d["called"] else "")


# -- until every experiment plans its runs for runs.run_all (the science rework) ----------------

def run_seeds(base, base_key, spec, target, source, seeds, **kwargs):
    """One run_finetune record per seed, same spec; kwargs as run_finetune's (without seed)."""
    from experiments.lib.finetune import run_finetune

    return [run_finetune(base, base_key, spec, target, source, seed=s, **kwargs) for s in seeds]


def separated(a, b):
    """True when two spreads do not overlap (the old rule; paired() replaces it)."""
    return a["max"] < b["min"] or b["max"] < a["min"]
