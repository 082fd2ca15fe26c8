"""The rules every verdict in REPRODUCTIONS.md follows, written once, with their thresholds fixed
before the runs that will test them.

A paper's claim about two settings is one of two kinds, and each kind has its own test on their
paired difference d (one value per seed, the same seeds on both sides; experiments/lib/seeds.py),
signed so that d > 0 is the direction the claim predicts:

- "A beats B": called as claimed only when the 95% interval of d excludes 0 AND its mean is at
  least delta, the smallest effect the project counts. Called but smaller than delta: real, but
  too small to count.
- "A matches B": an equivalence test (TOST, two one-sided t tests at 5% each, Schuirmann 1987):
  the 90% interval of d lies inside (-delta, +delta). A difference that is merely not called is
  no match: with few seeds the interval is wide, and a wide interval proves nothing.

delta is one number per kind of quantity (DELTAS). Between a clear yes and a clear no each rule
leaves a zone that a few seeds cannot decide: a "beats" whose mean lies within delta of 0 or whose
95% interval holds delta, a "matches" whose 90% interval holds +delta or -delta. There the rule
asks for SEEDS_TO_SETTLE seeds; with fewer the comparison is "not settled" and nothing is drawn from
it. With that many seeds and still undecided, the claim is not shown: not reproduced.

A section's verdict is drawn from its parts by `combine`. Every comparison a verdict rests on is
returned by beats() or matches(), so the report can count them (`multiplicity`).
"""
import math

from experiments.lib.seeds import difference_sd, smallest_detectable, t_quantile

REPRODUCED, PARTLY, NOT_REPRODUCED = "reproduced", "partly", "not reproduced"
REGIME = "not tested in the claim's regime"
SEEDS_TO_SETTLE = 5
NOT_SETTLED = f"not settled: needs {SEEDS_TO_SETTLE} seeds"
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED, REGIME, NOT_SETTLED)

# delta, the smallest effect of interest, by the quantity compared: both the minimum a "beats" must
# reach and the margin a "matches" must stay inside.
DELTAS = {
    # Final loss, nats per byte. 0.01 is about what the setup's own choices move: the whole damage
    # 4-bit quantization does to the base model before fine-tuning (QLoRA's section), one
    # quarter-decade step of the learning rate near its optimum (section 1), the last doubling of
    # LoRA's rank (r=32 -> 64). A claim that rests on less rests on a choice of the setup.
    "loss": 0.01,
    # A share of AdaLoRA's kept rank (the MLP's, the top half's) against the uniform share. 0.05 is
    # about one matrix's full rank among the 24 adapted matrices: less is a reshuffle, not a preference.
    "share": 0.05,
    # log10 of a ratio (a rate, a rank, an amplification factor against its reference): 0.3, a factor
    # of 2 (log10 2 = 0.301). Section 1's best rates are read on a grid of quarter decades (0.25) and
    # each seed's vertex is known to about one step, so a factor 2 is just over what the reading
    # itself can move: "about 10x" means within a factor 2 of 10, "far above" more than twice.
    "log_ratio": 0.3,
    # Chance-corrected subspace similarity, (phi - chance) / (1 - chance): 0 for unrelated subspaces,
    # 1 for contained ones. 0.1, a tenth of the way from chance to contained: less is "near chance",
    # as section 5 read it before these rules (its NEAR_CHANCE).
    "similarity": 0.1,
    # A share of a matrix's dimension (the 90%-energy rank k over min(out, in)): 0.01, about one
    # singular value of the 128 here (1/128 = 0.008), the resolution of a count of singular values.
    "rank_share": 0.01,
    # A share of the facts recalled exactly (section 7): 0.1, the margin section 7 already used for
    # "keeps up" (LoRA recalls at least 90% as many facts as full fine-tuning).
    "recall": 0.1,
    # Exact match, a share of test prompts (experiments/exact_match.py). 0.05 = 5 points: on its 300
    # test prompts one model's share has a binomial standard error of up to 2.9 points, so a smaller
    # difference is within what another draw of test lines would move. (Hu et al.'s ranks differ by
    # under 1 point in Table 6, on far larger test sets: this margin is looser than theirs.)
    "exact": 0.05,
    # Distinct-n, a share of unique n-grams among free samples (experiments/exact_match.py). 0.02 is
    # about twice the spread of the base model's byte distinct-3 over sets of sampling seeds (SD 0.01
    # with 64 samples; the experiment draws 128): less is what drawing other samples moves.
    "distinct": 0.02,
}
ALPHA = 0.05  # each test's false-call rate when its null is true


def _stats(d):
    """mean, sd, n of a paired() dict (seeds.paired) or of a plain list of per-seed differences."""
    if isinstance(d, dict):
        return d["mean"], difference_sd(d), d["n"]
    values = [float(v) for v in d]
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, sd, n


def _delta(kind):
    if kind not in DELTAS:
        raise ValueError(f"unknown kind of quantity {kind!r}; choose one of {sorted(DELTAS)}")
    return DELTAS[kind]


def beats(d, kind="loss", question=""):
    """The "beats" rule on d (positive: as claimed). Returns {"rule", "question", "kind", "delta",
    "mean", "low", "high" (the 95% interval), "n", "mde", "outcome" (a verdict), "why"}."""
    delta = _delta(kind)
    mean, sd, n = _stats(d)
    half = t_quantile(n - 1) * sd / math.sqrt(n) if n > 1 and math.isfinite(sd) else math.inf
    low, high = mean - half, mean + half
    out = {"rule": "beats", "question": question, "kind": kind, "delta": delta, "mean": mean, "low": low,
           "high": high, "n": n, "mde": smallest_detectable(sd, n)}
    if not math.isfinite(mean):
        return {**out, "outcome": NOT_REPRODUCED, "why": "no number: a run diverged"}
    if n < SEEDS_TO_SETTLE and (abs(mean) < delta or low <= delta <= high):
        why = (f"within {delta:g} of 0" if abs(mean) < delta else f"its interval holds the minimum {delta:g}")
        return {**out, "outcome": NOT_SETTLED, "why": why}
    if low > 0 and mean >= delta:
        return {**out, "outcome": REPRODUCED, "why": f"called, at least {delta:g}"}
    if high < 0 and mean <= -delta:
        return {**out, "outcome": NOT_REPRODUCED, "why": "called the other way"}
    if low > 0:
        return {**out, "outcome": NOT_REPRODUCED, "why": f"called, but below the minimum {delta:g}"}
    return {**out, "outcome": NOT_REPRODUCED,
            "why": "not called" + (f"; its interval excludes the minimum {delta:g}" if high < delta else "")}


def matches(d, kind="loss", question=""):
    """The equivalence rule (TOST at 5% a side: the 90% interval inside +-delta) on d. Returns the
    dict beats() returns, with "low", "high" the 90% interval."""
    delta = _delta(kind)
    mean, sd, n = _stats(d)
    half = t_quantile(n - 1, 0.95) * sd / math.sqrt(n) if n > 1 and math.isfinite(sd) else math.inf
    low, high = mean - half, mean + half
    out = {"rule": "matches", "question": question, "kind": kind, "delta": delta, "mean": mean, "low": low,
           "high": high, "n": n, "mde": smallest_detectable(sd, n)}
    if not math.isfinite(mean):
        return {**out, "outcome": NOT_REPRODUCED, "why": "no number: a run diverged"}
    if -delta < low and high < delta:
        return {**out, "outcome": REPRODUCED, "why": f"90% interval inside ±{delta:g}"}
    if n < SEEDS_TO_SETTLE and (low <= delta <= high or low <= -delta <= high):
        return {**out, "outcome": NOT_SETTLED, "why": f"its 90% interval holds the margin ±{delta:g}"}
    if low >= delta or high <= -delta:
        return {**out, "outcome": NOT_REPRODUCED, "why": f"differs by more than {delta:g}"}
    return {**out, "outcome": NOT_REPRODUCED, "why": f"equivalence within ±{delta:g} not shown"}


def show(c):
    """A comparison's outcome as text: 'reproduced (called, at least 0.01)'."""
    return f"{c['outcome']} ({c['why']})"


def show_parts(parts, label=None):
    """Each part's outcome (show), the parts that share one named together: 'a, b: reproduced
    (called, at least 0.01); c: not settled: needs 5 seeds (within 0.01 of 0)'. label(part) names a
    part (its question by default)."""
    groups = {}
    for c in parts:
        groups.setdefault(show(c), []).append(label(c) if label else c["question"])
    return "; ".join(f"{', '.join(questions)}: {outcome}" for outcome, questions in groups.items())


def show_interval(c, digits=3):
    """A comparison's mean, the interval its rule reads, and the smallest effect its seeds detect:
    '+0.002, 90% interval -0.003 to +0.007, MDE 0.009'."""
    level = "95%" if c["rule"] == "beats" else "90%"
    mde = f", MDE {c['mde']:.{digits}f}" if math.isfinite(c["mde"]) else ""
    return f"{c['mean']:+.{digits}f}, {level} interval {c['low']:+.{digits}f} to {c['high']:+.{digits}f}{mde}"


def combine(parts, headline=None, regime=None):
    """A section's verdict from its parts' verdicts (each a VERDICTS label).

    regime: a reason the section cannot test the claim where the paper made it; the verdict is then
    REGIME whatever the parts say (they are still reported). headline: the index of the part the
    claim stands on; if it is not reproduced (or not settled), neither is the section. Otherwise:
    every part reproduced: reproduced; some reproduced or partly: partly; none, some not reproduced:
    not reproduced; the rest not settled: not settled."""
    for p in parts:
        if p not in VERDICTS:
            raise ValueError(f"unknown verdict {p!r}; choose one of {VERDICTS}")
    if not parts:
        raise ValueError("a verdict needs at least one part")
    if regime:
        return REGIME
    if headline is not None and parts[headline] in (NOT_REPRODUCED, NOT_SETTLED):
        return parts[headline]
    if all(p == REPRODUCED for p in parts):
        return REPRODUCED
    if any(p in (REPRODUCED, PARTLY) for p in parts):
        return PARTLY
    if any(p == NOT_REPRODUCED for p in parts):
        return NOT_REPRODUCED
    if all(p == REGIME for p in parts):
        return REGIME
    return NOT_SETTLED


def multiplicity(sections):
    """{"n", "expected_false", "at_least_one", "not_settled", "by_section"} over the comparisons
    the sections' verdicts rest on (each section dict's "comparisons"): if no effect behind them
    were real, each would still be called with probability ALPHA."""
    by_section = [(name, len(s.get("comparisons", []))) for name, s in sections]
    n = sum(k for _, k in by_section)
    unsettled = [(name, c) for name, s in sections for c in s.get("comparisons", []) if c["outcome"] == NOT_SETTLED]
    # those three seeds left unsettled and five seeds on a test split then decided (lib/settled.py)
    settled = [(name, c) for name, s in sections for c in s.get("comparisons", []) if "three_seeds" in c]
    return {"n": n, "expected_false": ALPHA * n, "at_least_one": 1 - (1 - ALPHA) ** n, "not_settled": unsettled,
            "settled": settled, "by_section": by_section}


def method(sections):
    """REPRODUCTIONS.md's statistics paragraphs: the rules above, and what they mean across the
    comparisons the sections' verdicts rest on (counted here, not typed)."""
    from experiments.lib.sections import section_number

    m = multiplicity(sections)
    counts = ", ".join(f"{k} in section {section_number(name)}" for name, k in m["by_section"] if k)
    unsettled = "; ".join(f"section {section_number(name)}: {c['question']}" for name, c in m["not_settled"])
    settled = "; ".join(f"section {section_number(name)}: {c['question']} ({c['three_seeds']['outcome']} -> "
                        f"{c['outcome']})" for name, c in m["settled"])
    return f"""**Statistics.** A fine-tuning seed changes the batches and the adapter's initialisation, never
the base model. Every comparison uses three seeds (1337, 1338, 1339) unless a section says
otherwise, and reports the mean with its 95% confidence interval (Student's t, 2 degrees of
freedom: the interval is wide). Two methods run with the same seeds see the same batches, so
differences are taken seed by seed, and a difference is **called** (marked `*`) when the 95%
interval of the paired difference excludes zero. Beside each difference, MDE is the smallest
effect its seeds would call with 80% power: (t(0.975) + t(0.80)) x SD / sqrt(n), t with n - 1
degrees of freedom, SD that of the per-seed differences ({smallest_detectable(1.0, 3):.2f} SD with 3 seeds).

**The rules, fixed in advance** (`experiments/lib/verdicts.py`, shared by every section). delta is
the smallest effect the project counts: {DELTAS['loss']:g} nats/byte of final loss (about what the
setup's own choices move: the whole damage 4-bit quantization does to the base model, one
quarter-decade step of the rate near its optimum, the last doubling of LoRA's rank), {DELTAS['share']:g}
of a share of AdaLoRA's kept rank (about one matrix's full rank among 24), {DELTAS['log_ratio']:g} in log10 of a
ratio of rates, ranks or factors (a factor 2: a seed's best rate is read to about one quarter-decade
step), {DELTAS['similarity']:g} of a chance-corrected subspace similarity (a tenth of the way from chance to
contained), {DELTAS['rank_share']:g} of a matrix's dimension (about one singular value of 128), {DELTAS['recall']:g} of
the facts recalled exactly, {DELTAS['exact']:g} of the test prompts answered exactly (5 points: about what
another draw of 300 test prompts moves), {DELTAS['distinct']:g} of distinct n-grams (about twice what
other sampling seeds move). A claim that **A beats B**
holds only when the difference's 95% interval excludes 0 and its mean is at least delta. A claim
that **A matches B** holds only when an equivalence test (TOST: two one-sided t tests at 5% each)
passes: the 90% interval of the difference lies inside ±delta. A difference that is not called is
not a match. Where a "beats" has its mean within delta of 0 or its interval holding delta, or a
"matches" has its interval holding ±delta, {SEEDS_TO_SETTLE} seeds are needed; with fewer the
comparison is **{NOT_SETTLED}**, and no verdict is drawn from it. A section's verdict: **reproduced**
when every part of its claim is, **partly** when some part is, **not reproduced** when none is (or
its headline part is not), **{NOT_SETTLED}** when its parts are undecided, and **not tested in the
claim's regime** when the section cannot reach the setting the claim is about (the comparisons are
still shown). The thresholds were written down after the three-seed runs below existed and before
any five-seed run: the three-seed verdicts are the first read of these rules, the five-seed runs
their first test.

**Multiplicity.** The verdicts rest on {m['n']} comparisons ({counts}). Each test calls a difference
that is not there with probability {ALPHA:g}; if none of the effects behind these comparisons were
real, about {m['expected_false']:.1f} of them would still be called, and the chance of at least one
false call would be {m['at_least_one']:.0%} were the tests independent (they share runs, so they are not). No correction is applied (Bonferroni would test each at
{ALPHA / max(1, m['n']):.4f}): read a single call, above all one near its interval's edge, as one
piece of evidence. {len(m['not_settled'])} of them {'is' if len(m['not_settled']) == 1 else 'are'} not settled with the seeds run{': ' + unsettled if unsettled else ''}.{settled_text(m, settled)}
"""


def settled_text(m, settled):
    from experiments.lib.sections import RERUN_AT_FIVE_SEEDS, numbers_text, section_number, section_ref

    rerun = [name for name, _ in m["by_section"] if name in RERUN_AT_FIVE_SEEDS]
    caveat = ("with the same caveat" if settled else
              f"so the false-call rate of those comparisons is somewhat above {ALPHA:g}")
    again = (f" {numbers_text(sorted(section_number(n) for n in rerun)).capitalize()} "
             f"{'was itself' if len(rerun) == 1 else 'were themselves'} re-run at five seeds after three had left a "
             f"comparison open: a second look too, {caveat}." if rerun else "")
    if not settled:
        return again
    return (f" {len(m['settled'])} more were not settled at three seeds and were run again with five seeds on "
            f"a held-out test split ({section_ref('settle')}), whose read their sections' verdicts now take: {settled}. "
            f"That is a second look at each of them, so their false-call rate is somewhat above {ALPHA:g}: the first "
            f"look could have called them already, had three seeds shown a larger difference.{again}")
