"""LoRA+ as its paper states it: B's learning rate a multiple of A's, each ratio at its tuned base rate.

    python -m experiments.loraplus                            # CPU, tiny model, offline
    python -m experiments.loraplus --device cuda --preset small

Claim (Hayou et al. 2024, arXiv:2402.12354): giving B a learning rate lambda times A's (about
16) makes LoRA fine-tune better and faster, because with B starting at zero and A random the two
play different roles, and one shared rate is too slow for B or too fast for A in wide models.
The test: for lambda in {1, 4, 16} (lambda = 1 is plain LoRA) at r=8 and r=64, tune the base
rate (A's) for each, then compare the final docs loss and the steps each needs to reach plain
LoRA's final loss (read off the validation curve, interpolated between evaluations).
Writes OUT/records.json, OUT/loraplus.json, OUT/loraplus.png, OUT/results.md.
"""
import argparse
import math
import os

import matplotlib.pyplot as plt

from experiments.lib.common import (check_runs, finish_experiment, load_setup, make_parser, parse_ranks, parse_targets,
                                    positive_int, run_kwargs)
from experiments.lib.finetune import reported_loss, reported_on
from experiments.lib.plots import finish, log2_axis, write_report
from experiments.lib.sections import section_ref
from experiments.lib import verdicts
from experiments.lib.settled import settle, shown
from experiments.lib.seeds import paired, seed_list, show, show_difference, spread
from experiments.lib.tuning import LR_GRID, grid_neighbours, tune
from nanogpt.train import write_json


def parse_ratios(text):
    message = f"--ratios must be comma-separated numbers >= 1 like 1,4,16; got {text!r}"
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not values or any(not (math.isfinite(v) and v >= 1) for v in values):
        raise argparse.ArgumentTypeError(message)
    return sorted(set(values))


def steps_to_reach(history, loss):
    """The first step at which the validation curve reaches `loss`, interpolated linearly between
    the evaluations around it; None if it never does."""
    points = [(h["step"], h["target_loss"]) for h in history]
    for (s0, l0), (s1, l1) in zip(points, points[1:]):
        if l1 <= loss <= l0 and l0 != l1:
            return s0 + (s1 - s0) * (l0 - loss) / (l0 - l1)
    return None


def nearest_grid_rate(lr):
    return min(LR_GRID, key=lambda g: abs(math.log(g / lr)))


def plot_loraplus(rows, path, title, scored_on="validation"):
    fig, (ax_f, ax_s) = plt.subplots(1, 2, figsize=(11, 4.3))
    for r in sorted({row["r"] for row in rows}):
        mine = [row for row in rows if row["r"] == r]
        ratios = [row["ratio"] for row in mine]
        ax_f.errorbar(ratios, [row["target_loss"]["mean"] for row in mine], marker="o", capsize=3, label=f"r={r}",
                      yerr=[row["target_loss"]["ci"] if row["target_loss"]["n"] > 1 else 0 for row in mine])
        reach = [row["steps_to_target"] for row in mine]
        ax_s.plot([x for x, s in zip(ratios, reach) if s is not None], [s["mean"] for s in reach if s is not None],
                  "o-", label=f"r={r}")
    for ax in (ax_f, ax_s):
        log2_axis(ax, sorted({row["ratio"] for row in rows}), "lambda = B's rate / A's rate")
        ax.legend(fontsize=8)
    ax_f.set_ylabel(f"final {scored_on} loss on target (nats/byte)")
    ax_f.set_title("final loss, each ratio at its tuned base rate (95% CI)")
    ax_s.set_ylabel("steps to reach plain LoRA's final loss\n(on the validation curve)")
    ax_s.set_ylim(bottom=0)
    ax_s.set_title("speed: fewer steps is faster")
    return finish(fig, title, path)


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/loraplus", test_split=True)
    p.add_argument("--ratios", type=parse_ratios, default=[1.0, 4.0, 16.0], help="lambda values, e.g. 1,4,16")
    p.add_argument("--ranks", type=parse_ranks, default=[8, 64], help="LoRA ranks, e.g. 8,64")
    p.add_argument("--seeds", type=positive_int, default=3, help="fine-tuning seeds per point")
    args = p.parse_args(argv)
    seeds = seed_list(args.seed, args.seeds)
    check_runs(args, ranks=args.ranks)
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    targets = parse_targets(args.targets)

    contenders = {}
    for r in args.ranks:
        for ratio in args.ratios:
            spec = {"method": "lora", "variant": "lora", "r": r, "alpha": args.alpha, "targets": targets}
            if ratio != 1:  # lambda = 1 is plain LoRA: the same runs as the other experiments'
                spec = {**spec, "variant": "loraplus", "ratio": ratio}
            # B's rate is lambda times the base rate: start near the plain rate divided by sqrt(lambda).
            start = grid_neighbours(nearest_grid_rate(args.lora_lr / math.sqrt(ratio)))
            contenders[(r, ratio)] = (dict(base=base, base_key=base_key, spec=spec, target=target, source=source,
                                           **kwargs), start)
    tuned = tune(contenders, seeds, workers=args.workers, progress=not args.no_progress)

    rows = []
    for (r, ratio), t in tuned.items():
        runs = t["records"]
        rows.append({"r": r, "ratio": ratio, "lr": t["best_lr"], "runs": runs,
                     "tuning": {k: t[k] for k in ("lrs", "losses", "at_grid_edge")},
                     "target_loss": spread([reported_loss(x, "target") for x in runs]),
                     "source_loss": spread([reported_loss(x, "source") for x in runs]),
                     # validation: what the best ratio is chosen by, and the text of the curves "faster" reads
                     "val_target_loss": spread([x["final_target_loss"] for x in runs])})
    for row in rows:  # against plain LoRA at the same rank, seed by seed
        plain = next(x for x in rows if x["r"] == row["r"] and x["ratio"] == 1)
        goal = plain["val_target_loss"]["mean"]  # the curves are evaluated on validation only
        reach = [steps_to_reach(x["history"], goal) for x in row["runs"]]
        row["target"] = goal
        row["steps_to_target"] = spread(reach) if all(s is not None for s in reach) else None
        row["vs_plain"] = paired(row["target_loss"]["values"], plain["target_loss"]["values"])
    records = [x for row in rows for x in row["runs"]]
    summary = {"seeds": seeds, "scored_on": reported_on(records[0]), "rows": [{k: v for k, v in row.items() if k != "runs"} for row in rows]}
    write_json(records, os.path.join(args.out, "records.json"))
    write_json(summary, os.path.join(args.out, "loraplus.json"))
    title = (f"LoRA+: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, alpha {args.alpha:g}, "
             f"each ratio at its tuned base rate, {len(seeds)} seeds, {device}")
    plot_loraplus(rows, os.path.join(args.out, "loraplus.png"), title, reported_on(records[0]))
    table = write_report(os.path.join(args.out, "results.md"), "LoRA+", title, results_table(summary))
    finish_experiment(args, argv)
    print(table)
    print(f"wrote {args.out}/records.json, loraplus.json, loraplus.png, results.md")


def results_table(summary):
    lines = ["| r | lambda | tuned base rate (A's) | B's rate | final target loss | plain LoRA minus this, 95% CI | "
             "steps to plain LoRA's final loss |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in summary["rows"]:
        reach = ("-" if row["ratio"] == 1 else "never" if row["steps_to_target"] is None else
                 show(row["steps_to_target"], digits=0))
        versus = "-" if row["ratio"] == 1 else show_difference(row["vs_plain"])
        lines.append(f"| {row['r']} | {row['ratio']:g} | {row['lr']:g} | {row['lr'] * row['ratio']:.3g} | "
                     f"{show(row['target_loss'])} | {versus} | {reach} |")
    return "\n".join(lines) + "\n"


def best_ratio(rows, r):
    """The row with the lowest mean final loss on validation among ratios above 1 at rank r (None if
    none ran): a choice, so never read off the test half the tables report."""
    mine = [row for row in rows if row["r"] == r and row["ratio"] != 1]
    return min(mine, key=lambda row: row.get("val_target_loss", row["target_loss"])["mean"]) if mine else None


def report(results):
    """Section of REPRODUCTIONS.md from results/loraplus: is a larger rate for B better and faster,
    once each ratio has its own tuned base rate?"""
    summary = results.json("loraplus", "loraplus.json")
    rows = summary["rows"]
    steps = results.json("loraplus", "records.json")[0]["steps"]
    ranks = sorted({row["r"] for row in rows})
    bests = {r: best_ratio(rows, r) for r in ranks}
    judged = {r: settle(results, verdicts.beats(b["vs_plain"], "loss", f"r={r}: lambda {b['ratio']:g} beats one "
                                                                       f"shared rate"))
              for r, b in bests.items() if b}  # the shared rule, at each rank's best ratio
    verdict = verdicts.combine([j["outcome"] for j in judged.values()])
    edges = [f"r={row['r']}, lambda {row['ratio']:g}" for row in rows if row["tuning"]["at_grid_edge"]]
    bullets = []
    for r, b in bests.items():
        if b is None:
            continue
        d = b["vs_plain"]
        plain = next(row for row in rows if row["r"] == r and row["ratio"] == 1)
        state = verdicts.show(judged[r])
        reach = b["steps_to_target"]
        goal = plain.get("val_target_loss", plain["target_loss"])["mean"]
        speed = (f"on the validation curve it reaches plain LoRA's final validation loss ({goal:.3f}) after "
                 f"{show(reach, digits=0)} of {steps} steps" if reach else "it never reaches plain LoRA's final loss")
        bullets.append(f"- r={r}: the best ratio, lambda {b['ratio']:g} at base rate {b['lr']:g} (B at "
                       f"{b['lr'] * b['ratio']:.3g}), ends at {show(b['target_loss'])} against plain LoRA's "
                       f"{show(plain['target_loss'])} at {plain['lr']:g}: difference {show_difference(d)}: **{state}**; "
                       f"{speed}.")
    bullets.append(f"- rsLoRA is this knob turned by the scaling: at rank r it is LoRA with lambda = sqrt(r) "
                   f"({section_ref('variants')}).")
    if edges:
        bullets.append(f"- The tuned base rate of {', '.join(edges)} sat at the edge of the rates tried, so its best "
                       f"may lie further out.")
    narrow = ("" if verdict == verdicts.REPRODUCED else " The paper's argument is about width, and this model is narrow "
              "(128 dims): what is not seen here may still hold in wide models.")
    body = f"""**Claim.** LoRA+ (Hayou et al. 2024): giving B a learning rate lambda times A's (about 16)
makes LoRA fine-tune better and faster: B starts at zero and A at random, so one shared rate is
too slow for B or too fast for A in wide models.

**Command.** `python -m experiments.loraplus` (`results/loraplus/`): lambda in
{{{', '.join(f"{x:g}" for x in sorted({row['ratio'] for row in rows}))}}} (1 is plain LoRA) at ranks
{', '.join(str(r) for r in ranks)}, each pair at its own tuned base rate (A's), then
{len(summary['seeds'])} seeds at that rate. "Faster" is read as the steps each needs to reach plain
LoRA's mean final validation loss, off the validation curve (runs are evaluated only there during
training).

![LoRA+](../results/loraplus/loraplus.png)

{results_table(summary).strip()}

Final losses on {summary.get('scored_on', 'validation')} text in nats/byte (each pair's base rate and each
rank's best ratio chosen on validation), mean ± 95% CI over seeds; `*` marks a called difference.

**Verdict: {verdict}.**{narrow}
""" + "\n".join(bullets)
    detail = "; ".join(f"r={r}: lambda {b['ratio']:g} vs 1 {shown(judged[r], show_difference(b['vs_plain']))}: {judged[r]['outcome']}"
                       for r, b in bests.items() if b)
    return {"title": "LoRA+: a larger learning rate for B", "source": "LoRA+ (Hayou et al. 2024)",
            "claim": "B's rate about 16 times A's fine-tunes better and faster than one shared rate",
            "verdict": verdict, "detail": detail, "body": body, "comparisons": list(judged.values())}


if __name__ == "__main__":
    main()
