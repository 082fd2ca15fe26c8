"""The subspace experiment's section of REPRODUCTIONS.md: the paper's numbers it is tested against,
the rule that gives the verdict, and the per-module tables (experiments/subspace.py writes them into
its results.md too). It reads results/subspace/subspace.json, written by experiments/subspace.py."""
import math

from experiments.lib import verdicts
from experiments.lib.plots import lr_text
from experiments.lib.seeds import show, show_difference

# The paper's numbers (GPT-3 175B, W_q of layer 48, Table 7): the amplification factor at r=4 and r=64.
PAPER_FACTOR = {4: 21.5, 64: 1.9}
PAPER_D_MODEL = 12288  # GPT-3 175B's width: the d of the paper's phi and projections
TOP_SHARED = 0.5    # the paper's Fig. 3: phi(1, 1) "above 0.5" for the top direction
# A chance-corrected overlap below this is "near chance" (a tenth of the way to contained): the shared
# rules' delta for a similarity, both the least a shared direction must beat chance by and the margin
# an overlap must stay inside to match chance.
NEAR_CHANCE = verdicts.DELTAS["similarity"]


# ---------------------------------------------------------------------------------------------
# Tables

def module_table(analysis, ranks):
    """One row per module: the similarities and the amplification, each over seeds or pairs."""
    r_low, r_high = ranks
    lines = [f"| module | d | phi(1,1), r={r_low} vs r={r_high} | corrected | directions 2-{r_low}, corrected | "
             f"same seed: phi(1,1) / phi({r_low},{r_high}) before training | different seeds before training: phi(1,1) | "
             f"r={r_high} vs r={r_high}: phi(1,1), min-max | amplification r={r_low} | r={r_high} | "
             f"W0 along delta W / random, r={r_low} |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m, v in analysis["modules"].items():
        rk, ss, sh, amp = v["ranks"], v["ranks_same_seed"], v["seeds_high"], v["amplification"]
        lines.append(
            f"| {m} | {v['in_features']} | {show(rk['top'])} | {show(rk['top_corrected'], signed=True)} | "
            f"{show(rk['rest_corrected'], signed=True)} | {ss['top']['mean']:.3f} / {v['at_init_same_seed']['span']['mean']:.3f} | "
            f"{show(v['at_init']['top'])} | {sh['top']['min']:.2f}-{sh['top']['max']:.2f} | "
            f"{show(amp[str(r_low)]['amplification'], digits=1)} | {show(amp[str(r_high)]['amplification'], digits=2)} | "
            f"{show(amp[str(r_low)]['over_random'], digits=1)} |")
    return "\n".join(lines) + "\n"


def how_to_read(ranks, n_pairs):
    r_low, r_high = ranks
    return (f"phi(1,1) of A at r={r_low} against A at r={r_high}: mean ± 95% CI over {n_pairs} independent pairs of "
            f"runs with different seeds; corrected = (phi - chance) / (1 - chance), chance = 1/d for phi(1,1), "
            f"{r_low}/d for directions 2-{r_low} (each direction's share inside the other's top {r_low}). Same seed: "
            f"the old design, r={r_low} and r={r_high} trained from one seed, mean over seeds; phi({r_low},{r_high}) before "
            f"training is 1 where the r={r_high} A starts with the r={r_low} A as its first rows. r={r_high} vs r={r_high}: the paper's Fig. 4 (pairs share runs: the range, no interval). "
            f"Amplification ||delta W||_F / ||U^T W0 V^T||_F, mean ± 95% CI over seeds.\n")


# ---------------------------------------------------------------------------------------------
# The claim as comparisons the shared rules judge (experiments/lib/verdicts.py)

def judge(analysis, ranks):
    """(similarity parts, amplification parts) for one target set. Every value is one per
    independent unit, averaged over the set's modules: per pair of runs (different seeds) for the
    similarities, per seed for the amplification; ratios on log10."""
    r_low, _ = ranks
    mods = list(analysis["modules"].values())

    def per_unit(get):
        """Per pair (or seed), the mean over modules of get(module)'s values."""
        columns = zip(*[get(m) for m in mods])
        return [sum(col) / len(mods) for col in columns]

    def amp(field):
        return lambda m: m["amplification"][str(r_low)][field]["values"]

    similarity = [
        verdicts.beats(per_unit(lambda m: m["ranks"]["top_corrected"]["values"]), "similarity",
                       "top direction shared beyond chance"),
        verdicts.matches(per_unit(lambda m: m["ranks"]["rest_corrected"]["values"]), "similarity",
                         f"directions 2-{r_low} at chance"),
    ]
    amplification = [
        verdicts.beats(per_unit(lambda m: [math.log10(x) for x in amp("over_random")(m)]), "log_ratio",
                       "W0 along delta W above random"),
        verdicts.beats(per_unit(lambda m: [-math.log10(x) for x in amp("of_w0_top")(m)]), "log_ratio",
                       "W0 along delta W short of W0's top"),
        verdicts.matches(per_unit(lambda m: [math.log10(x / PAPER_FACTOR[4]) for x in amp("amplification")(m)]),
                         "log_ratio", f"factor at r={r_low} about the paper's {PAPER_FACTOR[4]:g}"),
    ]
    return similarity, amplification


# ---------------------------------------------------------------------------------------------
# The section of REPRODUCTIONS.md

def report(results):
    """Section of REPRODUCTIONS.md: the claims, and the verdicts from results/subspace."""
    info = results.json("subspace", "subspace.json")
    r_low, r_high = info["ranks"]
    sets = info["sets"]
    paper = info["paper_set"] or next(iter(sets))
    main_set, c = sets[paper], sets[paper]["claims"]
    n = c["modules"]
    first = info["first_module"]
    seeds = info["seeds"]
    pair_text = ", ".join(f"{a}-{b}" for a, b in info["pairs"])

    def rng(key, sub, digits=2, s=paper):
        vals = [m[key][sub]["mean"] for m in sets[s]["modules"].values()]
        return f"{min(vals):.{digits}f}-{max(vals):.{digits}f}"

    # The paper's picture, judged by the shared rules on the paper's target set.
    sim_parts, amp_parts = judge(main_set, info["ranks"])
    sim_verdict = verdicts.combine([p["outcome"] for p in sim_parts])
    amp_verdict = verdicts.combine([p["outcome"] for p in amp_parts])
    verdict = verdicts.combine([sim_verdict, amp_verdict])
    top_avg = c["top_over_modules"]
    top_shared = sim_parts[0]["outcome"] == verdicts.REPRODUCED
    rest_avg = c["rest_corrected_over_modules"]
    rest_shared = rest_avg["mean"] - rest_avg["ci"] > 0
    margin = 10 ** verdicts.DELTAS["log_ratio"]

    # The shared-init diagnostic, in the first adapted module of the paper's set.
    m0 = main_set["modules"][first]
    others = [m for name, m in main_set["modules"].items() if name != first]
    same_init_elsewhere = max(m["at_init_same_seed"]["span"]["max"] for m in others) if others else math.nan
    span_chance = m0["at_init"]["span_chance"]
    loss = main_set["final_target_loss"]
    diff = main_set["high_minus_low"]

    sim_lines = [
        f"- *The bug the old version had.* Run with one seed, r={r_low} and r={r_high} draw A's initial rows from "
        f"one random stream, module after module: in the first adapted module ({first}) the r={r_high} A starts "
        f"with the r={r_low} A as its first {r_low} rows. Before training, phi({r_low},{r_high}) there is "
        f"{m0['at_init_same_seed']['span']['mean']:.3f} (chance {span_chance:.2f}); in the other modules at most "
        f"{same_init_elsewhere:.2f}. After training with the same seed, phi(1,1) in {first} is "
        f"{m0['ranks_same_seed']['top']['mean']:.2f} against {m0['ranks']['top']['mean']:.2f} with different seeds. "
        f"Every number below pairs different seeds ({pair_text}), so the starts are independent: before training, "
        f"phi(1,1) is {rng('at_init', 'top', 3)} (chance {1 / m0['in_features']:.3f}).",
        f"- *Top direction.* With LoRA on {paper} (the paper's setting), phi(1,1) between r={r_low} and r={r_high} is "
        f"{rng('ranks', 'top')} over the {n} modules (chance {m0['ranks']['top_chance']:.3f}); above the paper's "
        f"{TOP_SHARED} in {c['top_above_half']} of {n}, and above chance (its 95% interval clear of it) in "
        f"{c['top_called_above_chance']} of {n}; the intervals are wide, for the seeds disagree. Averaged over the "
        f"{n} modules, pair by pair, phi(1,1) is {show(top_avg)}, "
        f"{top_avg['mean'] / c['top_chance_over_modules']:.0f}x chance. By the rule, chance-corrected, pair by pair: "
        f"{verdicts.show_interval(sim_parts[0])}: **{verdicts.show(sim_parts[0])}**"
        + ("." if top_shared else f"; the top direction is not shown to be shared by {NEAR_CHANCE:g} beyond chance."),
        f"- *The other directions.* Directions 2-{r_low} of the r={r_low} A lie in the r={r_high} A's top {r_low} "
        f"at a chance-corrected {rng('ranks', 'rest_corrected')} (0: chance, 1: contained); near chance (below "
        f"{NEAR_CHANCE}) in {c['rest_near_chance']} of {n} modules; averaged over the modules "
        f"{show(c['rest_corrected_over_modules'], signed=True)}, against "
        f"{show(c['top_corrected_over_modules'], signed=True)} for the top direction."
        + (f" The top direction is not the only one shared: directions 2-{r_low} overlap beyond chance too (the "
           f"interval clear of 0), so they are not the random noise the paper takes them for." if rest_shared else
           f" Directions 2-{r_low} are not shared beyond chance (the interval reaches 0).")
        + f" At chance by the rule (within ±{NEAR_CHANCE:g}): {verdicts.show_interval(sim_parts[1])}: "
          f"**{verdicts.show(sim_parts[1])}**.",
    ]
    for name, s in sets.items():
        if name == paper:
            continue
        cs = s["claims"]
        sim_lines.append(
            f"- *All six matrices* ({name}): phi(1,1) is {rng('ranks', 'top', s=name)}, above {TOP_SHARED} in "
            f"{cs['top_above_half']} of {cs['modules']} modules and above chance in {cs['top_called_above_chance']}; "
            f"directions 2-{r_low} corrected {rng('ranks', 'rest_corrected', s=name)}, near chance in "
            f"{cs['rest_near_chance']} of {cs['modules']}.")
    sim_lines.append(
        f"- *Is the extra rank noise?* On {paper}, r={r_high} ends at {show(loss[str(r_high)])} against r={r_low}'s "
        f"{show(loss[str(r_low)])} (final docs loss on {info.get('scored_on', 'validation')} text); paired difference {show_difference(diff)}"
        + ((" (called): the extra rank learns more, so it is not noise here." if diff["mean"] < 0 else
            " (called): the extra rank does worse here.") if diff["called"] else
           " (not called: its interval includes 0)."))

    amp_lines = [
        f"- W0 along delta W's top-{r_low} directions is {rng_amp(main_set, str(r_low), 'over_random', 1)}x its "
        f"value along random directions (above 1, the interval over seeds clear of it, in {c['more_than_random']} of "
        f"{n} modules), and {rng_amp(main_set, str(r_low), 'of_w0_top', 2)} of its value along W0's own top-{r_low} "
        f"directions (below half in {c['below_half_w0_top']} of {n}): correlated with W0, not W0's strongest "
        f"directions, as the paper says. By the rule, seed by seed, log10 of each ratio averaged over the modules: "
        f"above random {verdicts.show_interval(amp_parts[0])}, **{verdicts.show(amp_parts[0])}**; short of W0's top "
        f"(-log10) {verdicts.show_interval(amp_parts[1])}, **{verdicts.show(amp_parts[1])}**.",
        f"- The factor at r={r_low} is {c['factor_low_range'][0]:.1f}-{c['factor_low_range'][1]:.1f} (the paper: "
        f"{PAPER_FACTOR[4]:g} at r=4), and {c['factor_high_range'][0]:.2f}-{c['factor_high_range'][1]:.2f} at "
        f"r={r_high} (the paper: {PAPER_FACTOR[64]:g}); at least half the paper's r=4 value in "
        f"{c['factor_near_paper']} of {n} modules, and lower at r={r_high} than at r={r_low} in "
        f"{c['factor_falls_with_rank']} of {n}. About the paper's {PAPER_FACTOR[4]:g} (within a factor {margin:.0f}), "
        f"log10 of the factor over it seed by seed: {verdicts.show_interval(amp_parts[2])}, "
        f"**{verdicts.show(amp_parts[2])}**; the paper's value is at r=4, and the factor falls with rank.",
        f"- The size is partly a matter of dimension: with d = {m0['in_features']}, {r_low} random directions already "
        f"hold about {r_low}/{m0['in_features']} of W0 each way (the random projection is "
        f"{rng_amp(main_set, str(r_low), 'projection_random', 2, field_is_spread=False)} here), against "
        f"{min(PAPER_FACTOR)}/{PAPER_D_MODEL} in GPT-3, so no direction can be far below W0's typical size.",
    ]
    for name, s in sets.items():
        if name != paper:
            cs = s["claims"]
            amp_lines.append(f"- All six matrices: the factor at r={r_low} is {cs['factor_low_range'][0]:.1f}-"
                             f"{cs['factor_low_range'][1]:.1f}, at r={r_high} {cs['factor_high_range'][0]:.2f}-"
                             f"{cs['factor_high_range'][1]:.2f}; more than random in {cs['more_than_random']} of "
                             f"{cs['modules']} modules, below half of W0's top in {cs['below_half_w0_top']}.")

    tables = "\n".join(f"LoRA on {name}:\n\n{module_table(s, info['ranks'])}" for name, s in sets.items())
    body = f"""**Claim.** Hu et al. 2021 (Fig. 3 and Section 7), GPT-3 with LoRA on W_q and W_v: the adapters
learned at r=8 and r=64 share their top direction (normalised subspace similarity of the A
matrices' right-singular vectors, phi(i, j) = ||U_8[:, :i]^T U_64[:, :j]||_F^2 / min(i, j), above
{TOP_SHARED} at i = j = 1) while the other directions do not overlap: the extra rank mostly holds noise.
And delta W amplifies directions that W0 does not emphasise: ||U^T W0 V^T||_F along delta W's top
singular directions is more than along random ones but far below W0's own top directions, and the
amplification factor ||delta W||_F / ||U^T W0 V^T||_F is {PAPER_FACTOR[4]:g} at r=4 and {PAPER_FACTOR[64]:g} at r=64.

**Command.** `python -m experiments.subspace` (`results/subspace/`). LoRA at r={r_low} and r={r_high},
seeds {', '.join(str(s) for s in seeds)}, at the default LoRA rate {lr_text(info['lr'])} (not tuned per
target set: nothing here compares losses between methods), twice: on {paper} as the paper, and on all six
linear layers (the first three seeds are `rank_sweep`'s runs). Each r={r_low} run is compared with the r={r_high}
run of the next seed ({pair_text}): independent initialisations, each run in one pair, so the 95% intervals
over the {len(info['pairs'])} pairs are honest. Chance is what a random subspace gives, max(i, j)/d; the
chance-corrected value (phi - chance) / (1 - chance) is 0 there. The control is the same comparison
before training.

![subspace similarity per module](../results/subspace/similarity_per_module.png)
![subspace similarity heatmaps](../results/subspace/similarity_heatmaps.png)
![amplification](../results/subspace/amplification.png)

{how_to_read(info['ranks'], len(info['pairs'])).strip()}

{tables.strip()}

The rule: the shared rules (`experiments/lib/verdicts.py`) on the paper's set, each value averaged over
its {n} modules for each independent unit (a pair of runs for the similarities, a seed for the
amplification). Fig. 3: the top direction's chance-corrected phi(1,1) beats chance by at least
{NEAR_CHANCE:g} (a tenth of the way to contained), and directions 2-{r_low} match chance within ±{NEAR_CHANCE:g}
(an equivalence test). Sec. 7.3, on log10 of each ratio with the margin {verdicts.DELTAS['log_ratio']:g} (a factor
{margin:.0f}): W0 along delta W's top-{r_low} directions beats its value along random directions, and falls short
of its value along W0's own top-{r_low}; and the factor at r={r_low} matches the paper's {PAPER_FACTOR[4]:g}. The
counts over modules (above {TOP_SHARED}, and so on) describe; they do not decide.

**Verdict: {verdict}.**
- *Shared directions (Fig. 3): {sim_verdict}.*
""" + "\n".join("  " + line for line in sim_lines) + f"""
- *Amplification (Sec. 7.3): {amp_verdict}.*
""" + "\n".join("  " + line for line in amp_lines)
    return {"title": "What the rank buys: shared directions and amplification",
            "source": "LoRA (Hu et al. 2021), Fig. 3, Sec. 7.3",
            "claim": "The r=8 and r=64 adapters share their top direction, the rest is noise; delta W amplifies "
                     "directions W0 does not emphasise",
            "verdict": verdict,
            "detail": f"on {paper}, phi(1,1) r={r_low} vs r={r_high} is {rng('ranks', 'top')} (chance "
                      f"{m0['ranks']['top_chance']:.3f}), above 0.5 in {c['top_above_half']} of {n} modules; "
                      f"amplification {c['factor_low_range'][0]:.1f}-{c['factor_low_range'][1]:.1f} at r={r_low} "
                      f"(paper: {PAPER_FACTOR[4]:g} at r=4); " + verdicts.show_parts(sim_parts + amp_parts),
            "body": body, "comparisons": sim_parts + amp_parts}


def rng_amp(analysis, key, field, digits, field_is_spread=True):
    """'a-b': the range over modules of an amplification field's seed mean."""
    vals = [m["amplification"][key][field]["mean"] if field_is_spread else m["amplification"][key][field]
            for m in analysis["modules"].values()]
    return f"{min(vals):.{digits}f}-{max(vals):.{digits}f}"
