"""Several seeds of one run, and the statistics a difference must clear before we call it.

A fine-tuning seed changes the batches drawn and the adapter's random init, never the base model
(that has its own seed, from --seed), so the spread is that of fine-tuning alone. Two methods run
with the same seeds see the same batches in the same order, so their difference is taken seed by
seed (a paired comparison), which cancels the part of the noise the batches cause.

A difference is called (marked `*`) when the 95% confidence interval of its mean (Student's t,
n - 1 degrees of freedom) excludes zero. With 3 seeds the interval is +-2.48 standard deviations
of one seed's difference wide: small differences are left uncalled. What a claim needs beyond
that (a minimum effect, an equivalence margin, enough seeds) is experiments/lib/verdicts.py's rule.
"""
import math
import statistics

# Two-sided 95% quantiles of Student's t by degrees of freedom (standard tables), so that the
# project needs no scipy. Beyond 30 the normal quantile is close enough.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101,
         19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052,
         28: 2.048, 29: 2.045, 30: 2.042}
# One-sided 95% quantiles (the two one-sided tests of an equivalence, each at 5%, read the 90% interval).
T_95 = {1: 6.314, 2: 2.920, 3: 2.353, 4: 2.132, 5: 2.015, 6: 1.943, 7: 1.895, 8: 1.860, 9: 1.833, 10: 1.812,
        11: 1.796, 12: 1.782, 13: 1.771, 14: 1.761, 15: 1.753, 16: 1.746, 17: 1.740, 18: 1.734, 19: 1.729, 20: 1.725,
        21: 1.721, 22: 1.717, 23: 1.714, 24: 1.711, 25: 1.708, 26: 1.706, 27: 1.703, 28: 1.701, 29: 1.699, 30: 1.697}
# One-sided 80% quantiles: the power term of the smallest detectable effect (80% power).
T_80 = {1: 1.376, 2: 1.061, 3: 0.978, 4: 0.941, 5: 0.920, 6: 0.906, 7: 0.896, 8: 0.889, 9: 0.883, 10: 0.879,
        11: 0.876, 12: 0.873, 13: 0.870, 14: 0.868, 15: 0.866, 16: 0.865, 17: 0.863, 18: 0.862, 19: 0.861, 20: 0.860,
        21: 0.859, 22: 0.858, 23: 0.858, 24: 0.857, 25: 0.856, 26: 0.856, 27: 0.855, 28: 0.855, 29: 0.854, 30: 0.854}


def seed_list(first_seed, n_seeds):
    """The fine-tuning seeds of an experiment: first_seed, first_seed + 1, ..."""
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"--seeds must be a positive integer; got {n_seeds!r}")
    return [first_seed + i for i in range(n_seeds)]


def t_quantile(df, p=0.975):
    """The p quantile of Student's t with df degrees of freedom: p = 0.975 (a two-sided 95%
    interval), 0.95 (one-sided 5%, the equivalence test's) or 0.80 (the 80% power term); beyond 30
    degrees of freedom, the normal's."""
    table, normal = {0.975: (T_975, 1.960), 0.95: (T_95, 1.645), 0.80: (T_80, 0.842)}[p]
    return table[df] if df <= 30 else normal


def smallest_detectable(sd, n):
    """The smallest true mean difference that n paired seeds would call (95% interval clear of 0)
    with 80% power: (t_0.975 + t_0.80) * sd / sqrt(n), t with n - 1 degrees of freedom, sd the SD
    of the per-seed differences. With 3 seeds: (4.303 + 1.061) * sd / sqrt(3) = 3.10 sd. NaN
    without a spread."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return (t_quantile(n - 1) + t_quantile(n - 1, 0.80)) * sd / math.sqrt(n)


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


def difference_sd(d):
    """The SD of the per-seed differences of a paired() dict (from its ci where an older record lacks it)."""
    if "sd" in d:
        return d["sd"]
    n = d["n"]
    return d["ci"] * math.sqrt(n) / t_quantile(n - 1) if n > 1 else math.nan


def show_difference(d, digits=3):
    """A paired difference as text, marked when it is called, with the smallest effect its seeds
    could detect (80% power): '+0.012 ± 0.004 * (MDE 0.005)'."""
    text = show(d, signed=True, digits=digits) + (" *" if d["called"] else "")
    mde = smallest_detectable(difference_sd(d), d["n"])
    return text + (f" (MDE {mde:.{digits}f})" if math.isfinite(mde) else "")
