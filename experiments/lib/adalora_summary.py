"""The AdaLoRA experiment's numbers (experiments/adalora.py): its two claims judged by the shared rules
(lib/verdicts.py), adalora.json's rows and comparisons, and the tables of its write-up. Every choice
(a rate, gamma, the schedule) reads the validation loss; every reported number the test loss."""
import numpy as np

from experiments.lib import verdicts
from experiments.lib.rank_maps import (MATRIX_TYPES, seed_agreement, share_against_uniform, shares,
                                       uniform_shares)
from experiments.lib.seeds import paired, show, show_difference, spread


CLAIM1 = "AdaLoRA beats LoRA at the same final rank"


def claim1_parts(same, low):
    """same, low: paired(AdaLoRA, LoRA at its final rank) on the test text, LoRA minus AdaLoRA per seed
    (> 0: AdaLoRA lower), at the paper's budget and at the low one. The shared "beats" rule on each."""
    return [verdicts.beats(same, "loss", CLAIM1), verdicts.beats(low, "loss", f"{CLAIM1}, low budget")]


def one_detail(c):
    if c["outcome"] == verdicts.REPRODUCED:
        return "AdaLoRA's final docs loss is lower"
    if c["why"] == "called the other way":
        return "uniform LoRA's final docs loss is lower"
    return f"no difference of at least {c['delta']:g} called between AdaLoRA and LoRA ({c['why']})"


def claim1_verdict(same, low):
    """Both budgets by the rule: reproduced; one: partly (verdicts.combine). Returns (verdict, detail)."""
    parts = claim1_parts(same, low)
    detail = "; ".join(f"{what}: {c['outcome']}, {one_detail(c)}"
                       for what, c in zip(("at the paper's budget", "at the low budget"), parts))
    return verdicts.combine([c["outcome"] for c in parts]), detail


def claim2_parts(mlp, top):
    """mlp, top: share_against_uniform spreads (or None), judged by the shared "beats" rule on shares."""
    return [verdicts.beats(d, "share", f"more than the uniform share to {what}")
            for what, d in (("the MLP matrices", mlp), ("the top layers", top)) if d is not None]


def claim2_verdict(mlp, top):
    """Both shares above uniform by the rule: reproduced; one: partly. Returns (verdict, detail)."""
    parts = claim2_parts(mlp, top)
    found = [c["question"].removeprefix("more than the uniform share to ") for c in parts
             if c["outcome"] == verdicts.REPRODUCED]
    detail = "; ".join(f"{c['question']}: {verdicts.show(c)}" for c in parts)
    if len(found) == 2:
        return verdicts.REPRODUCED, detail
    if found:
        return verdicts.PARTLY, detail
    return verdicts.combine([c["outcome"] for c in parts]) if parts else verdicts.NOT_REPRODUCED, detail


def summarise(tuned, names, grids, seeds):
    """adalora.json less its settings: the rows (validation losses for the choices, test losses for the
    report), the comparisons on the test losses, the rank allocation and the claims."""
    runs_of = {name: tuned[name]["records"] for name in names}
    per_seed = [shares(g) for g in grids]
    uniform = uniform_shares(grids[0])
    agreement = seed_agreement(grids)
    mlp_values = [s["mlp_share"] for s in per_seed]
    top_values = [s["top_half_share"] for s in per_seed]
    mlp_vs_uniform = share_against_uniform(mlp_values, uniform["mlp_share"])
    top_vs_uniform = share_against_uniform(top_values, uniform["top_half_share"])
    mean_grid = np.stack(grids).mean(axis=0)
    rows = []
    for name in names:
        runs = runs_of[name]
        kept = [r["adalora"]["final_params"] if "adalora" in r else r["trainable_params"] for r in runs]
        rows.append({"name": name, "lr": tuned[name]["best_lr"], "trainable_params": runs[0]["trainable_params"],
                     "final_params": spread(kept),
                     "final_target_loss": spread([r["final_target_loss"] for r in runs]),
                     "final_target_test_loss": spread([r["final_target_test_loss"] for r in runs]),
                     "final_source_test_loss": spread([r["final_source_test_loss"] for r in runs]),
                     "saved_bytes": spread([r["saved_bytes"] for r in runs]),
                     "tuning": {k: tuned[name][k] for k in ("lrs", "losses", "best_lr", "at_grid_edge")}})

    def versus(a, b):  # b minus a on the test text, seed by seed: > 0 when a's final docs loss is lower
        return paired([r["final_target_test_loss"] for r in runs_of[a]],
                      [r["final_target_test_loss"] for r in runs_of[b]])
    ada, same, larger, low, low_same = names[:5]
    comparisons = [{"question": f"{ada} beats {same} (same final rank)", "difference": versus(ada, same)},
                   {"question": f"{low} beats {low_same} (same final rank, low budget)", "difference": versus(low, low_same)},
                   {"question": f"{ada} beats {larger}", "difference": versus(ada, larger)},
                   {"question": f"{larger} beats {same}", "difference": versus(larger, same)}]
    comparisons += [{"question": f"{ada} beats {name} (what pruning costs or gains)", "difference": versus(ada, name)}
                    for name in names[5:]]
    verdict1, detail1 = claim1_verdict(comparisons[0]["difference"], comparisons[1]["difference"])
    verdict2, detail2 = claim2_verdict(mlp_vs_uniform, top_vs_uniform)
    return {
        "seeds": seeds, "scored_on": "test", "contenders": rows, "comparisons": comparisons,
        "allocation": {
            "layers": list(range(len(mean_grid))), "matrix_types": MATRIX_TYPES,
            "final_ranks_per_seed": [[[None if np.isnan(v) else int(v) for v in row] for row in g] for g in grids],
            "mean_final_rank": [[None if np.isnan(v) else float(v) for v in row] for row in mean_grid],
            "mean_rank_by_type": {t: float(np.nanmean(mean_grid[:, j])) for j, t in enumerate(MATRIX_TYPES)},
            "mean_rank_by_layer": [float(np.nanmean(row)) for row in mean_grid],
            "seed_agreement": agreement,
            "mlp_share": spread(mlp_values), "mlp_share_uniform": uniform["mlp_share"],
            "mlp_share_minus_uniform": mlp_vs_uniform,
            "top_half_share": spread(top_values), "top_half_share_uniform": uniform["top_half_share"],
            "top_half_share_minus_uniform": top_vs_uniform,
        },
        "claims": {
            "1_equal_budget_beats_uniform_lora": {
                "claim": "at an equal final rank budget AdaLoRA beats uniform LoRA", "verdict": verdict1,
                "detail": detail1, "difference": comparisons[0]["difference"],
                "low_budget_difference": comparisons[1]["difference"]},
            "2_budget_to_mlp_and_top_layers": {
                "claim": "the budget goes mostly to the MLP matrices and to the top layers", "verdict": verdict2,
                "detail": detail2},
        },
    }


def results_table(summary):
    lines = ["| run | tuned rate (tried: final docs loss on validation, first seed) | trainable params (training) | "
             "params kept at the end | final docs loss (test) | final code loss (test) |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for row in summary["contenders"]:
        t = row["tuning"]
        tried = ", ".join(f"{lr:g}: {x:.3f}" for lr, x in zip(t["lrs"], t["losses"]))
        edge = " (best at the grid edge)" if t["at_grid_edge"] else ""
        lines.append(f"| {row['name']} | {row['lr']:g} ({tried}){edge} | {row['trainable_params']:,} | "
                     f"{row['final_params']['mean']:,.0f} | {show(row['final_target_test_loss'])} | "
                     f"{show(row['final_source_test_loss'])} |")
    search = summary["setting_search"]
    lines += ["", f"AdaLoRA's settings at its tuned rate {search['lr']:g}, seed {search['seed']} (validation; "
                  f"the lowest is kept, **bold**):", "", "| gamma | warm-up t_init | final mask t_final | "
                  "final docs loss (validation) |", "| ---: | ---: | ---: | ---: |"]
    for i, s in enumerate(search["tried"]):
        mark = "**" if i == search["chosen"] else ""
        lines.append(f"| {mark}{s['gamma']:g}{mark} | {s['t_init']} | {s['t_final']} | "
                     f"{mark}{s['final_target_loss']:.4f}{mark} |")
    lines += ["", "| question | difference in final docs loss on the test text (the other minus the claimed "
                  "winner), 95% CI; * = called |", "| --- | ---: |"]
    lines += [f"| {c['question']} | {show_difference(c['difference'])} |" for c in summary["comparisons"]]
    a = summary["allocation"]
    lines += ["", "Final ranks of AdaLoRA at the paper's budget (kept triplets), mean over seeds; rows are layers, "
                  "the top layer first:", "",
              "| layer | " + " | ".join(MATRIX_TYPES) + " |", "| --- |" + " ---: |" * len(MATRIX_TYPES)]
    for i in reversed(a["layers"]):
        lines.append(f"| {i} | " + " | ".join("" if v is None else f"{v:.1f}" for v in a["mean_final_rank"][i]) + " |")

    def against(d):
        return "not defined for one layer" if d is None else f"{show_difference(d)} against uniform"
    agreement = a["seed_agreement"]
    corr = agreement["mean_pairwise_correlation"]
    lines += ["", f"- MLP share of the kept triplets: {show(a['mlp_share'])} (uniform {a['mlp_share_uniform']:.3f}; "
                  f"{against(a['mlp_share_minus_uniform'])}).",
              f"- Top half of the layers: {show(a['top_half_share'])} (uniform {a['top_half_share_uniform']:.3f}; "
              f"{against(a['top_half_share_minus_uniform'])}).",
              f"- Seed agreement of the rank maps: mean pairwise correlation "
              f"{'n/a' if corr is None else f'{corr:.2f}'}, {100 * agreement['fraction_same_in_every_seed']:.0f}% "
              f"of the matrices at the same rank in every seed."]
    for i, claim in enumerate(summary["claims"].values(), 1):
        lines.append(f"- Claim {i}, {claim['claim']}: **{claim['verdict']}**: {claim['detail']}.")
    return "\n".join(lines) + "\n"
