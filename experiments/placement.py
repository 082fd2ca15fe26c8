"""Where to put LoRA's parameters at matched counts: attention only, the MLP only, or all six matrices.

    python -m experiments.placement                           # CPU, tiny model, offline
    python -m experiments.placement --device cuda --preset small

Claim (Schulman et al. 2025, "LoRA Without Regret"; also Hu et al. 2021, Table 5): apply LoRA to
every layer, the MLP included. Attention-only LoRA falls short even when it is given as many
trainable parameters (a higher rank), and the MLP alone does about as well as all six matrices.

A comparison of target sets at one rank confounds where the parameters go with how many there
are. Here each budget is the parameter count of all six matrices at a rank (--budget-ranks, by
default 1, 4 and 16), and attention only (q, k, v, o: r * (128 + 128) per matrix) and the MLP only
(up, down: r * (128 + 512)) each get the rank whose count comes closest to it, counted on the
model itself (minilora.count_parameters). Each (set, rank) gets its own learning rate, tuned on the
validation half of the held-out text (lib/tuning.py), then three seeds at that rate; every number
reported is on the test half, which no choice reads.
Writes OUT/records.json, OUT/placement.json, OUT/placement.png, OUT/results.md.
"""
import copy
import os

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
import torch

import minilora
from experiments.lib.common import (check_runs, finish_experiment, load_setup, make_parser, model_config,
                                    non_negative_int, positive_int, positive_ints, run_kwargs)
from experiments.lib.plots import finish, write_report
from experiments.lib import verdicts
from experiments.lib.sections import section_ref
from experiments.lib.seeds import paired, seed_list, show, show_difference, spread
from experiments.lib.tuning import grid_neighbours, tune
from nanogpt.model import GPT
from nanogpt.train import write_json

TARGET_SETS = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["up_proj", "down_proj"],
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
}
LABELS = {"attention": "attention only (q, k, v, o)", "mlp": "MLP only (up, down)", "all": "all six"}
# The budgets are set by this set's ranks; the others are matched to it.
REFERENCE = "all"
# The comparisons the claim is about, at each budget: (rule, question, set that should win or match,
# set it is compared with). A difference is the second set's test loss minus the first's, seed by seed:
# positive means the first is better, the direction the paper claims.
CLAIMS = [
    ("beats", "all six beat attention-only", "all", "attention"),
    ("beats", "the MLP alone beats attention-only", "mlp", "attention"),
    ("matches", "the MLP alone matches all six", "all", "mlp"),
]


def parse_budget_ranks(text):
    """'1,4,16' -> [1, 4, 16] (sorted, once each): the ranks of all six matrices that set the budgets."""
    return sorted(set(positive_ints(text, "--budget-ranks")))


def lora_params(model, targets, r):
    """Trainable parameters of LoRA rank r on `targets`, counted on a copy of the model
    (minilora.count_parameters after apply_lora; alpha does not change the count)."""
    adapted = minilora.apply_lora(copy.deepcopy(model), targets, r=r, alpha=1.0)
    return minilora.count_parameters(adapted).trainable


def rank_plan(model, budget_ranks):
    """The matched ranks: for each rank of all six matrices, its parameter count (the budget) and,
    for each target set, the rank whose count lies closest to it (r >= 1) and that count.

    Returns [{"budget_r", "budget", "cells": {set: {"r", "params"}}}], one per budget rank. A LoRA
    count is exactly linear in r (r * sum of in + out), so each is r times the count at r=1, and the
    closest rank is round(budget / count at r=1). Whether each rank fits its matrices is check_runs'
    question (a rank above min(in, out) is a clear error there); main checks the runs' own counts."""
    per_rank = {name: lora_params(model, targets, 1) for name, targets in TARGET_SETS.items()}
    plan = []
    for budget_r in budget_ranks:
        budget = budget_r * per_rank[REFERENCE]
        cells = {}
        for name in TARGET_SETS:
            r = budget_r if name == REFERENCE else max(1, round(budget / per_rank[name]))
            cells[name] = {"r": r, "params": r * per_rank[name]}
        plan.append({"budget_r": budget_r, "budget": budget, "cells": cells})
    return plan


def planned_runs(args):
    """[(targets, r)] of every run the plan makes, from an untrained model of the flags' shape (meta
    device: no memory), for check_runs."""
    with torch.device("meta"):
        model = GPT(model_config(args))
    return [(TARGET_SETS[name], cell["r"]) for b in rank_plan(model, args.budget_ranks) for name, cell in
            b["cells"].items()]


def comparisons(rows):
    """Each claimed relation at each budget as a paired test-loss difference (see CLAIMS)."""
    out = []
    for budget_r in sorted({row["budget_r"] for row in rows}):
        by_set = {row["set"]: row for row in rows if row["budget_r"] == budget_r}
        for rule, question, first, second in CLAIMS:
            if first in by_set and second in by_set:
                d = paired(by_set[first]["test_loss"]["values"], by_set[second]["test_loss"]["values"])
                out.append({"budget_r": budget_r, "budget": by_set[first]["budget"], "rule": rule,
                            "question": question, "first": first, "second": second, "difference": d})
    return out


def judge(comps):
    """The shared rules on every comparison, then the claim's three parts (each over the budgets),
    then the section's verdict, all-six-beats-attention-only its headline.
    Returns (verdict, {question: part verdict}, [judged comparison])."""
    judged = []
    for c in comps:
        rule = verdicts.beats if c["rule"] == "beats" else verdicts.matches
        judged.append(rule(c["difference"], "loss", f"budget {c['budget']:,} (all six at r={c['budget_r']}): "
                                                    f"{c['question']}"))
    parts = {}
    for _, question, _, _ in CLAIMS:
        mine = [j["outcome"] for c, j in zip(comps, judged) if c["question"] == question]
        if mine:
            parts[question] = verdicts.combine(mine)
    verdict = verdicts.combine(list(parts.values()), headline=0)
    return verdict, parts, judged


def plot_placement(rows, path, title):
    """Test loss against trainable parameters (log x), one line per target set, 95% CI bars."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for name in TARGET_SETS:
        mine = sorted((row for row in rows if row["set"] == name), key=lambda row: row["trainable_params"])
        if not mine:
            continue
        xs = [row["trainable_params"] for row in mine]
        ax.errorbar(xs, [row["test_loss"]["mean"] for row in mine], marker="o", capsize=3, label=LABELS[name],
                    yerr=[row["test_loss"]["ci"] if row["test_loss"]["n"] > 1 else 0 for row in mine])
        for row in mine:
            ax.annotate(f"r={row['r']}", (row["trainable_params"], row["test_loss"]["mean"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    budgets = sorted({row["budget"] for row in rows})
    ax.set_xticks(budgets, [f"{b:,}" for b in budgets])  # ticks at the budgets; each point sits at its own count
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("trainable parameters (count, log scale; ticks at the budgets)")
    ax.set_ylabel("final test loss on target (nats/byte)")
    ax.set_title("same parameter count, different places (lower is better; 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return finish(fig, title, path)


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/placement", test_split=True)
    # 300 steps, scored once at the end: nine contenders, each tuned, fit the run-time budget (section text).
    p.set_defaults(max_iters=300, eval_interval=300)
    p.add_argument("--budget-ranks", type=parse_budget_ranks, default=[1, 4, 16],
                   help="ranks of all six matrices whose parameter counts are the budgets, e.g. 1,4,16")
    p.add_argument("--seeds", type=positive_int, default=5,
                   help="fine-tuning seeds per (set, rank): 5, as the rules ask where three leave a comparison open")
    p.add_argument("--max-extra", type=non_negative_int, default=1,
                   help="rates the tuner may add beyond the three around --lora-lr when the best is at an edge")
    args = p.parse_args(argv)
    seeds = seed_list(args.seed, args.seeds)
    check_runs(args, planned=lambda model: planned_runs(args), lr_on_grid=True)
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    plan = rank_plan(base, args.budget_ranks)

    contenders = {}
    for b in plan:
        for name, cell in b["cells"].items():
            spec = {"method": "lora", "variant": "lora", "r": cell["r"], "alpha": args.alpha,
                    "targets": TARGET_SETS[name]}
            contenders[(b["budget_r"], name)] = (dict(base=base, base_key=base_key, spec=spec, target=target,
                                                      source=source, **kwargs), grid_neighbours(args.lora_lr))
    tuned = tune(contenders, seeds, workers=args.workers, max_extra=args.max_extra, progress=not args.no_progress)

    rows, records = [], []
    for b in plan:
        for name, cell in b["cells"].items():
            t = tuned[(b["budget_r"], name)]
            runs = t["records"]
            records += runs
            if runs[0]["trainable_params"] != cell["params"]:
                raise RuntimeError(f"{name} r={cell['r']}: the run trained {runs[0]['trainable_params']} parameters, "
                                   f"the plan counted {cell['params']}")
            rows.append({"budget_r": b["budget_r"], "budget": b["budget"], "set": name, "targets": TARGET_SETS[name],
                         "r": cell["r"], "trainable_params": cell["params"], "lr": t["best_lr"],
                         "tuning": {k: t[k] for k in ("lrs", "losses", "at_grid_edge")},  # validation losses
                         "test_loss": spread([x["final_target_test_loss"] for x in runs]),
                         "source_test_loss": spread([x["final_source_test_loss"] for x in runs])})
    summary = {"seeds": seeds, "steps": args.max_iters, "n_layer": base.config.n_layer,
               "base_target_test_loss": records[0]["base_target_test_loss"], "plan": plan, "rows": rows,
               "comparisons": comparisons(rows)}
    write_json(records, os.path.join(args.out, "records.json"))
    write_json(summary, os.path.join(args.out, "placement.json"))
    title = (f"placement: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, alpha "
             f"{args.alpha:g}, each (set, rank) at its tuned rate, {len(seeds)} seeds, test split, {device}")
    plot_placement(rows, os.path.join(args.out, "placement.png"), title)
    table = write_report(os.path.join(args.out, "results.md"), "Where to put the parameters", title,
                         results_table(summary))
    finish_experiment(args, argv)
    print(table)
    print(f"wrote {args.out}/records.json, placement.json, placement.png, results.md")


def results_table(summary):
    n_layer = summary["n_layer"]
    lines = ["| budget (all six at r) | adapted | r | trainable params | per layer | tuned rate | test loss | "
             "forgetting: source test loss |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in summary["rows"]:
        lines.append(f"| {row['budget']:,} (r={row['budget_r']}) | {LABELS[row['set']]} | {row['r']} | "
                     f"{row['trainable_params']:,} | {row['trainable_params'] / n_layer:,.0f} | {row['lr']:g} | "
                     f"{show(row['test_loss'])} | {show(row['source_test_loss'])} |")
    lines += ["", "| budget | relation | difference in test loss (second minus first), 95% CI; * = called |",
              "| ---: | --- | ---: |"]
    for c in summary["comparisons"]:
        lines.append(f"| {c['budget']:,} | {c['question']} | {show_difference(c['difference'])} |")
    return "\n".join(lines) + "\n"


def bearing_on_which_weights(parts, earlier, steps, plan):
    """What this section says about section 3 (which_weights), which compared the sets at one
    budget where integer ranks gave the MLP and all six more parameters than attention.
    earlier: (its summary, its first run record), or None; steps, plan: this section's steps per run and
    rank plan."""
    where = section_ref("which_weights")
    if earlier is None:
        return f"{where.capitalize()} has no results to compare with."
    summary, record = earlier
    rows = {row["set"]: row for row in summary["rows"]}
    over = ", ".join(f"{name} {100 * (rows[key]['trainable_params'] / summary['budget'] - 1):+.1f}%"
                     for name, key in (("the MLP", "up,down"), ("all six", "all"), ("attention", "q,k,v,o"))
                     if key in rows)
    found = "; ".join(f"{name} ahead of attention-only by {show_difference(c['difference'])} "
                      f"({verdicts.beats(c['difference'], 'loss')['outcome']})"
                      for name, winner in (("the MLP", "up,down"), ("all six", "all"))
                      for c in summary["comparisons"] if (c["winner"], c["loser"]) == (winner, "q,k,v,o"))
    held = [q for q in (CLAIMS[0][1], CLAIMS[1][1]) if parts.get(q) in (verdicts.REPRODUCED, verdicts.PARTLY)]
    now = (f"here, with the counts matched, {' and '.join(f'{q} ({parts[q]})' for q in held)}: where that holds, "
           f"the extra parameters do not explain section 3's ordering" if held else
           "here, with the counts matched, neither all six nor the MLP is shown to beat attention-only: section 3's "
           "ordering may owe something to its extra parameters")
    scored = "test" if "final_target_test_loss" in record else "validation, the text its rates were chosen on"
    ranks = {name: rows[key]["r"] for name, key in (("attention", "q,k,v,o"), ("mlp", "up,down"), ("all", "all"))
             if key in rows}
    same = [b["budget"] for b in plan if {name: c["r"] for name, c in b["cells"].items()} == ranks]
    if same:
        over += f"; the same ranks as this section's {same[0]:,} budget"
    return (f"Bearing on {where}: it compared the sets at one budget ({summary['budget']:,} parameters), where "
            f"integer ranks put them off it ({over}), and found {found or 'no such comparison'}; {now}. "
            f"{where.capitalize()} is left as it ran ({record['steps']} steps, scored on {scored}); this one runs "
            f"{steps} steps and is scored on test.")


def edge_note(row):
    """A row whose tuned rate is the last tried, and what that last step out gained on validation:
    a hint of what a further one might."""
    t = row["tuning"]
    i = t["lrs"].index(row["lr"])
    inner = t["losses"][1] if i == 0 else t["losses"][-2]
    return (f"{LABELS[row['set']]} at r={row['r']}: its tuned rate, {row['lr']:g}, is the last tried (--max-extra), so "
            f"its best may lie further out; that last step gained {inner - t['losses'][i]:.4f} on validation")


def forgetting_note(rows, plan, base_source):
    """The source test loss (what fine-tuning made the model forget) of the three sets at each
    budget: shown, not judged, since the claim is about learning."""
    by = {(row["budget_r"], row["set"]): row["source_test_loss"]["mean"] for row in rows}
    per_budget = ", ".join(f"{b['budget']:,}: " + " / ".join(f"{by[(b['budget_r'], name)]:.3f}" for name in TARGET_SETS
                                                             if (b["budget_r"], name) in by) for b in plan)
    base = f" (base model {base_source:.3f})" if base_source is not None else ""
    return (f"Not part of the claim, so no verdict: forgetting, the source test loss{base}, attention only / MLP only "
            f"/ all six, by budget: {per_budget}")


def report(results):
    """Section of REPRODUCTIONS.md from results/placement: at matched parameter counts, does adapting
    the MLP (alone or with attention) beat attention only?"""
    summary = results.json("placement", "placement.json")
    rows, comps = summary["rows"], summary["comparisons"]
    verdict, parts, judged = judge(comps)
    edges = [edge_note(row) for row in rows if row["tuning"]["at_grid_edge"]]
    bullets = [f"- {c['question']} at {c['budget']:,} parameters: {verdicts.show_interval(j)}: "
               f"**{verdicts.show(j)}**." for c, j in zip(comps, judged)]
    bullets += [f"- Part \"{q}\", over the budgets: **{v}**." for q, v in parts.items()]
    mismatch = ", ".join(f"{100 * max(abs(c['params'] / b['budget'] - 1) for c in b['cells'].values()):.0f}% at "
                         f"{b['budget']:,}" for b in summary["plan"])
    bullets.append(f"- The ranks are integers, so the counts meet each budget only to within {mismatch}; the plot "
                   f"puts each point at its true count.")
    bullets += [f"- {note}." for note in edges]
    base_source = (results.json("placement", "records.json")[0]["base_source_test_loss"]
                   if results.has("placement", "records.json") else None)
    bullets.append(f"- {forgetting_note(rows, summary['plan'], base_source)}.")
    earlier = ((results.json("which_weights", "which_weights.json"), results.json("which_weights", "records.json")[0])
               if results.has("which_weights", "which_weights.json") else None)
    bullets.append("- " + bearing_on_which_weights(parts, earlier, summary["steps"], summary["plan"]))
    budgets = ", ".join(f"{b['budget']:,} (all six r={b['budget_r']}, attention r={b['cells']['attention']['r']}, "
                        f"MLP r={b['cells']['mlp']['r']})" for b in summary["plan"])
    short = (f" (the other sections run 600: {len(rows)} contenders, each tuned, fit the run-time budget only so; "
             f"the losses are higher than theirs, and a difference may grow or shrink with more steps)"
             if summary["steps"] < 600 else "")
    body = f"""**Claim.** LoRA Without Regret (Schulman et al. 2025), as Hu et al. (2021, Table 5) hinted: apply
LoRA to every layer, the MLP included. Attention-only LoRA underperforms even when given as many
trainable parameters (a higher rank), and the MLP alone does about as well as all six matrices.

**Command.** `python -m experiments.placement` (`results/placement/`). Three target sets at
matched parameter counts: {budgets}, counted on the model (`minilora.count_parameters`). Each
(set, rank) at its own learning rate, tuned on the validation half of the held-out text, then
{len(summary['seeds'])} seeds at that rate, {summary['steps']} steps each{short}.
**Every loss below is on the test half**, which no choice read.

![placement](../results/placement/placement.png)

{results_table(summary).strip()}

Test losses in nats/byte, mean ± 95% CI over seeds (the base model: {summary['base_target_test_loss']:.3f}). A
difference is the second set's loss minus the first's, seed by seed: positive as claimed; `*` marks a
called one.

**Verdict: {verdict}.** The headline part is "all six beat attention-only".
""" + "\n".join(bullets)
    detail = "; ".join(f"{q}: {v}" for q, v in parts.items())
    return {"title": "Where to put the parameters, at matched counts", "source": "LoRA Without Regret; LoRA Table 5",
            "claim": "At a matched parameter count, LoRA on all layers (or the MLP alone) beats attention-only",
            "verdict": verdict, "detail": detail, "body": body, "comparisons": judged}


if __name__ == "__main__":
    main()
