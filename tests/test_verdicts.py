"""experiments/lib/verdicts.py: the rules every verdict follows, on hand-made paired samples whose
answers are worked out by hand; and the t quantiles they rest on, against the t distribution."""
import math

import pytest

from experiments.lib import verdicts
from experiments.lib.seeds import T_80, T_95, T_975, paired, smallest_detectable, t_quantile
from experiments.lib.verdicts import NOT_REPRODUCED, NOT_SETTLED, PARTLY, REGIME, REPRODUCED, beats, combine, matches


def t_cdf(x, df, steps=4000):
    """Student's t CDF at x >= 0 by Simpson's rule on the density (no scipy in the project)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def pdf(t):
        return c * (1 + t * t / df) ** (-(df + 1) / 2)
    h = x / steps
    area = pdf(0) + pdf(x) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return 0.5 + area * h / 3


@pytest.mark.parametrize("table, p", [(T_975, 0.975), (T_95, 0.95), (T_80, 0.80)])
def test_t_tables_are_the_t_quantiles_to_three_decimals(table, p):
    for df, q in table.items():
        assert t_cdf(q - 0.0006, df) < p < t_cdf(q + 0.0006, df), (df, q)
    assert t_quantile(2, p) == table[2] and t_quantile(31, p) == {0.975: 1.960, 0.95: 1.645, 0.80: 0.842}[p]


def test_smallest_detectable_effect_by_hand():
    # 3 seeds, SD 0.01: (4.303 + 1.061) * 0.01 / sqrt(3) = 0.053640 / 1.7320508 = 0.0309691.
    assert smallest_detectable(0.01, 3) == pytest.approx(0.0309691, abs=1e-7)
    # 5 seeds: (2.776 + 0.941) / sqrt(5) = 3.717 / 2.2360680 = 1.6622929 SDs.
    assert smallest_detectable(1.0, 5) == pytest.approx(1.6622929, abs=1e-7)
    assert math.isnan(smallest_detectable(0.01, 1)) and math.isnan(smallest_detectable(math.nan, 3))
    # beats() and matches() report it from the differences' own SD (here 0.002).
    assert beats([0.002, 0.004, 0.006])["mde"] == pytest.approx(0.0309691 / 5, abs=1e-7)


def test_beats_needs_a_called_difference_of_at_least_delta():
    # Every seed about 0.05 better: the interval is clear of 0 and of delta = 0.01.
    c = beats([0.05, 0.052, 0.048], question="A beats B")
    assert c["outcome"] == REPRODUCED and c["question"] == "A beats B" and c["low"] > 0.01
    # The other way round, as clearly: not reproduced, and said so.
    c = beats([-0.05, -0.052, -0.048])
    assert (c["outcome"], c["why"]) == (NOT_REPRODUCED, "called the other way")
    # A huge but noisy difference: mean +0.2, the interval holds 0 and delta: three seeds cannot decide.
    assert beats([0.5, -0.3, 0.4])["outcome"] == NOT_SETTLED
    # ... and five seeds that still cannot: the claim is not shown.
    c = beats([0.5, -0.3, 0.4, -0.4, 0.3])
    assert (c["outcome"], c["why"]) == (NOT_REPRODUCED, "not called")
    # Consistent but tiny (0.005): with three seeds, within delta of 0, so not settled ...
    assert beats([0.004, 0.005, 0.006])["outcome"] == NOT_SETTLED
    # ... with five, called but below the minimum: not reproduced.
    c = beats([0.004, 0.005, 0.006, 0.005, 0.005])
    assert (c["outcome"], c["why"]) == (NOT_REPRODUCED, "called, but below the minimum 0.01")
    # Not called, and the claimed effect lies outside the interval: settled even with three seeds.
    c = beats([-0.03, -0.01, -0.02])  # 95% interval -0.045 to +0.005
    assert c["outcome"] == NOT_REPRODUCED and "excludes the minimum" in c["why"]
    # A paired() dict gives the same answer as its per-seed values.
    d = paired([1.5, 1.52, 1.49], [1.55, 1.572, 1.538])
    assert beats(d)["outcome"] == beats(d["values"])["outcome"] == REPRODUCED


def test_matches_is_an_equivalence_test_not_a_missing_call():
    # d = 0.002, 0.004, 0.006: mean 0.004, SD 0.002, 90% half-width 2.920 * 0.002 / sqrt(3) = 0.0033717.
    c = matches([0.002, 0.004, 0.006])
    assert c["outcome"] == REPRODUCED
    assert (c["low"], c["high"]) == (pytest.approx(0.0006283, abs=1e-7), pytest.approx(0.0073717, abs=1e-7))
    # Clearly apart: not a match.
    c = matches([0.05, 0.051, 0.049])
    assert (c["outcome"], c["why"]) == (NOT_REPRODUCED, "differs by more than 0.01")
    # Not called (the 95% interval holds 0), yet no match: the interval also holds the margin.
    noisy = [0.0, 0.03, -0.02]
    assert not paired([0.0] * 3, noisy)["called"] and matches(noisy)["outcome"] == NOT_SETTLED
    c = matches([0.0, 0.03, -0.02, 0.025, -0.03])  # five seeds, still too wide: not shown
    assert (c["outcome"], c["why"]) == (NOT_REPRODUCED, "equivalence within ±0.01 not shown")
    # A share uses its own delta, 0.05.
    assert matches([0.02, 0.03, 0.025], "share")["outcome"] == REPRODUCED
    assert matches([0.02, 0.03, 0.025])["outcome"] == NOT_REPRODUCED


def log10_minus(ratios, claimed):
    return [math.log10(x / claimed) for x in ratios]


def test_about_ten_times_is_within_a_factor_two_on_log10():
    # Section 1's rule: log10(ratio) - 1 seed by seed, matched to 0 within 0.3 (a factor 2).
    assert verdicts.DELTAS["log_ratio"] == 0.3 and 10 ** 0.3 == pytest.approx(2, abs=0.01)
    # 9.5x, 10.5x, 9x: log10 minus 1 = -0.0223, +0.0212, -0.0458, mean -0.0156, SD 0.0339,
    # 90% half-width 2.920 * 0.0339 / sqrt(3) = 0.0572: inside +-0.3.
    c = matches(log10_minus([9.5, 10.5, 9.0], 10), "log_ratio")
    assert c["outcome"] == REPRODUCED and c["mean"] == pytest.approx(-0.0156, abs=1e-4)
    assert (c["low"], c["high"]) == (pytest.approx(-0.0728, abs=1e-3), pytest.approx(0.0415, abs=1e-3))
    # 3x, steadily: log10(0.3) = -0.523, the whole interval below -0.3: not about 10x, even at three seeds.
    c = matches(log10_minus([3.0, 3.1, 2.9], 10), "log_ratio")
    assert (c["outcome"], c["why"]) == (NOT_REPRODUCED, "differs by more than 0.3")
    # 3x on average but noisy: three seeds cannot tell, five that stay as noisy say no.
    assert matches(log10_minus([3.0, 6.0, 2.0], 10), "log_ratio")["outcome"] == NOT_SETTLED
    c = matches(log10_minus([3.0, 6.0, 2.0, 2.5, 4.0], 10), "log_ratio")
    assert c["outcome"] == NOT_REPRODUCED and c["high"] < -0.3
    # The same loss delta would have called 9.5x "not about 10x": the kind matters.
    assert matches(log10_minus([9.5, 10.5, 9.0], 10))["outcome"] == NOT_SETTLED
    # "The same for every rank": r=64's best over r=1's, 1.3x, 1.2x, 1.4x, matches 1.
    assert matches(log10_minus([1.3, 1.2, 1.4], 1), "log_ratio")["outcome"] == REPRODUCED


def test_far_above_and_beyond_chance_are_beats_with_their_own_minimum():
    # Section 6: full fine-tuning's 90% rank over r = 8, 28/8, 29/8, 27/8: log10 = 0.544 etc, at least 0.3.
    c = beats(log10_minus([28 / 8, 29 / 8, 27 / 8], 1), "log_ratio")
    assert (c["outcome"], c["why"]) == (REPRODUCED, "called, at least 0.3")
    # 1.5x, steadily (log10 0.176): within 0.3 of 0 at three seeds; at five, called but too small.
    assert beats(log10_minus([1.5, 1.52, 1.48], 1), "log_ratio")["outcome"] == NOT_SETTLED
    c = beats(log10_minus([1.5, 1.52, 1.48, 1.5, 1.49], 1), "log_ratio")
    assert (c["outcome"], c["why"]) == (NOT_REPRODUCED, "called, but below the minimum 0.3")
    # Section 6 per type: the share of the dimension minus the paper's 0.244, at least 0.01.
    assert beats([0.067, 0.064, 0.070], "rank_share")["outcome"] == REPRODUCED
    c = beats([-0.018, -0.016, -0.014], "rank_share")
    assert (c["outcome"], c["why"]) == (NOT_REPRODUCED, "called the other way")
    assert beats([0.005, 0.004, 0.006], "rank_share")["outcome"] == NOT_SETTLED  # within 0.01 of the paper's
    # Section 5: a chance-corrected similarity beats chance (0) by 0.1; the rest matches chance within 0.1.
    c = beats([0.398, 0.443, 0.250], "similarity")  # mean 0.364, 95% interval 0.113 to 0.615
    assert c["outcome"] == REPRODUCED and c["low"] == pytest.approx(0.113, abs=1e-3)
    assert beats([0.398, 0.443, 0.05], "similarity")["outcome"] == NOT_SETTLED  # the interval holds 0.1
    assert matches([0.353, 0.341, 0.345], "similarity")["why"] == "differs by more than 0.1"
    assert matches([0.02, 0.05, -0.01], "similarity")["outcome"] == REPRODUCED


def test_one_seed_settles_nothing_however_large_the_gap():
    # Section 7 has one seed per cell: no spread, no interval, so every rule waits for seeds.
    for rule in (beats, matches):
        c = rule([0.97], "recall")
        assert c["outcome"] == NOT_SETTLED and c["n"] == 1 and math.isnan(c["mde"])
        assert (c["low"], c["high"]) == (-math.inf, math.inf)
    # Five seeds that agree settle it either way: recall 0.97 apart is behind; 0.02 apart tracks.
    assert beats([0.97, 0.95, 0.96, 0.97, 0.98], "recall")["outcome"] == REPRODUCED
    assert matches([0.02, 0.0, 0.03, 0.01, 0.02], "recall")["outcome"] == REPRODUCED
    assert matches([0.97, 0.95, 0.96, 0.97, 0.98], "recall")["why"] == "differs by more than 0.1"


def test_show_parts_names_the_parts_that_share_an_outcome_together():
    parts = [beats([0.05, 0.052, 0.048], question="a"), beats([0.004, 0.005, 0.006], question="b"),
             beats([0.06, 0.062, 0.058], question="c")]
    assert verdicts.show_parts(parts) == ("a, c: reproduced (called, at least 0.01); "
                                          "b: not settled: needs 5 seeds (within 0.01 of 0)")
    assert verdicts.show_parts(parts, label=lambda c: c["question"].upper()).startswith("A, C: reproduced")
def test_exact_match_and_distinct_n_use_their_own_deltas():
    """Exact match: 5 points (0.05) either way; distinct-n: 0.02."""
    assert matches([0.02, 0.03, 0.025], "exact")["outcome"] == REPRODUCED
    c = matches([0.06, 0.07, 0.065], "exact")
    assert (c["outcome"], c["why"]) == (NOT_REPRODUCED, "differs by more than 0.05")
    assert beats([0.03, 0.035, 0.04], "distinct")["outcome"] == REPRODUCED  # called, and at least 0.02
    c = beats([0.012, 0.014, 0.013, 0.0125, 0.0135], "distinct")  # called, five seeds, but under 0.02
    assert (c["outcome"], c["why"]) == (NOT_REPRODUCED, "called, but below the minimum 0.02")


def test_a_diverged_run_decides_nothing_in_its_favour():
    assert beats([0.05, math.nan, 0.05])["outcome"] == NOT_REPRODUCED
    assert matches([0.0, math.inf, 0.0])["outcome"] == NOT_REPRODUCED


def test_unknown_kinds_and_labels_are_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown kind of quantity 'bits'; choose one of \['distinct', 'exact', "
                                         r"'log_ratio', 'loss', 'rank_share', 'recall', 'share', 'similarity'\]"):
        beats([0.1, 0.2, 0.3], "bits")
    with pytest.raises(ValueError, match="unknown verdict 'maybe'"):
        combine(["maybe"])
    with pytest.raises(ValueError, match="at least one part"):
        combine([])


def test_combine_draws_the_section_verdict_from_its_parts():
    assert combine([REPRODUCED, REPRODUCED]) == REPRODUCED
    assert combine([REPRODUCED, NOT_REPRODUCED]) == PARTLY
    assert combine([REPRODUCED, NOT_SETTLED]) == PARTLY
    assert combine([PARTLY, PARTLY]) == PARTLY
    assert combine([NOT_REPRODUCED, NOT_SETTLED]) == NOT_REPRODUCED
    assert combine([NOT_SETTLED, NOT_SETTLED]) == NOT_SETTLED
    assert combine([REGIME, REGIME]) == REGIME
    # The headline part decides when it fails, whatever the others say.
    assert combine([NOT_REPRODUCED, PARTLY], headline=0) == NOT_REPRODUCED
    assert combine([NOT_SETTLED, REPRODUCED], headline=0) == NOT_SETTLED
    assert combine([REPRODUCED, NOT_REPRODUCED], headline=0) == PARTLY
    # Outside the claim's regime the measured parts are reported, not judged.
    assert combine([REPRODUCED], regime="batches of 6,144 tokens") == REGIME
    assert set(verdicts.VERDICTS) == {REPRODUCED, PARTLY, NOT_REPRODUCED, REGIME, NOT_SETTLED}


def test_multiplicity_counts_the_comparisons_the_verdicts_rest_on():
    sections = [("which_weights", {"comparisons": [beats([0.05, 0.052, 0.048], question="a"),
                                                   beats([0.004, 0.005, 0.006], question="b")]}),
                ("lr_sweep", {}),
                ("qlora", {"comparisons": [matches([0.002, 0.004, 0.006], question="c")]})]
    m = verdicts.multiplicity(sections)
    assert m["n"] == 3 and m["expected_false"] == pytest.approx(0.15)
    assert m["at_least_one"] == pytest.approx(1 - 0.95 ** 3)  # 0.142625
    assert m["by_section"] == [("which_weights", 2), ("lr_sweep", 0), ("qlora", 1)]
    assert [(name, c["question"]) for name, c in m["not_settled"]] == [("which_weights", "b")]
    text = verdicts.method(sections)
    assert "The verdicts rest on 3 comparisons (2 in section 3, 1 in section 12)" in text
    assert "about 0.2 of them would still be called" in text and "would be 14%" in text
    assert "1 of them is not settled with the seeds run: section 3: b." in text
    for kind, delta in verdicts.DELTAS.items():  # every kind's delta is stated in the method
        assert f"{delta:g}" in text, kind
    assert "run again with five seeds on a held-out test split" not in text  # nothing settled by experiments.settle
    # which_weights and lr_sweep went from three seeds to five after three left a comparison open
    assert ("Sections 1 and 3 were themselves re-run at five seeds after three had left a comparison open: a second "
            "look too, so the false-call rate of those comparisons is somewhat above 0.05.") in text


class FakeResults:
    """results/ with only a settle.json holding the five-seed reads."""

    def __init__(self, reads):
        self.summary = {"seeds": [1, 2, 3, 4, 5], "reads": {"all 5 seeds, test": reads}}

    def has(self, experiment, name="run_info.json"):
        return experiment == "settle"

    def json(self, experiment, name):
        assert (experiment, name) == ("settle", "settle.json")
        return self.summary


def test_a_comparison_three_seeds_left_open_takes_its_five_seed_read_and_is_counted_once():
    from experiments.lib.settled import settle

    five = {**beats([0.012, 0.015, 0.011, 0.014, 0.013], question="b"), "section": "which_weights",
            "difference": {}}
    results = FakeResults([five])
    open_ = beats([0.004, 0.005, 0.006], question="b")
    assert open_["outcome"] == verdicts.NOT_SETTLED
    read = settle(results, open_)
    assert read["outcome"] == verdicts.REPRODUCED and read["n"] == 5
    assert read["three_seeds"] is open_ and "5 seeds on a held-out test split (section 14)" in read["why"]
    decided = beats([0.05, 0.052, 0.048], question="b")
    assert settle(results, decided) is decided  # a settled comparison keeps its own read
    assert settle(results, beats([0.004, 0.005, 0.006], question="other"))["outcome"] == verdicts.NOT_SETTLED
    m = verdicts.multiplicity([("which_weights", {"comparisons": [read]})])
    assert m["n"] == 1 and m["not_settled"] == [] and [c["question"] for _, c in m["settled"]] == ["b"]
    text = verdicts.method([("which_weights", {"comparisons": [read]})])
    assert ("run again with five seeds on a held-out test split (section 14), whose read their sections' verdicts "
            "now take: section 3: b (not settled: needs 5 seeds -> reproduced).") in text
