"""The five-seed reads of experiments/settle.py, for the sections whose comparisons it settles.

Three seeds leave some comparisons in the rules' grey zone (experiments/lib/verdicts.py: "not
settled"). `python -m experiments.settle` runs each again with five seeds, tuned on validation and
scored on a held-out test split, and writes results/settle/settle.json. A section asks `settle`
for its comparison: where three seeds did not settle it and that file holds its five-seed read, the
verdict rests on that read instead, and says so. Only the file is read (no command imports another).
"""
from experiments.lib import verdicts
from experiments.lib.sections import section_ref


def final_read(summary):
    """settle.json's read the verdicts rest on: all its seeds, on test."""
    return summary["reads"][f"all {len(summary['seeds'])} seeds, test"]


def settle(results, c):
    """c (a verdicts.beats() or matches() dict), or its five-seed test read where c is not settled and
    results/settle/ holds a read of the same question; the read keeps c as "three_seeds"."""
    if c["outcome"] != verdicts.NOT_SETTLED or not results.has("settle", "settle.json"):
        return c
    for s in final_read(results.json("settle", "settle.json")):
        if s["question"] == c["question"] and s["n"] >= verdicts.SEEDS_TO_SETTLE:  # a smaller rerun settles nothing
            why = f"{s['n']} seeds on a held-out test split ({section_ref('settle')}): {verdicts.show_interval(s)}; {s['why']}"
            return {**{k: v for k, v in s.items() if k not in ("section", "difference")}, "why": why,
                    "three_seeds": c}
    return c


def shown(c, three_seed_text):
    """A comparison as a summary line shows it: three_seed_text (its section's own numbers), or, where
    settle() replaced it, the five-seed test read it now rests on."""
    if "three_seeds" not in c:
        return three_seed_text
    return f"{verdicts.show_interval(c)} ({c['n']} seeds, test, {section_ref('settle')})"
