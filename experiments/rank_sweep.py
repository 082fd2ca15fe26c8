"""Sweep the LoRA rank, with alpha fixed (alpha/r) and with rsLoRA (alpha/sqrt(r)), against full fine-tuning.

    python -m experiments.rank_sweep                          # ranks 1..64, CPU, tiny, offline
    python -m experiments.rank_sweep --seeds 3                # what the README's results show
    python -m experiments.rank_sweep --ranks 1,4,16 --device cuda --preset small

Two scalings side by side, because the shape of the curve depends on it. With alpha fixed (as in
the LoRA paper and loralib), the update is scaled by alpha/r, which falls from 16 at r=1 to 0.25
at r=64 with alpha 16: at one learning rate, high ranks then move their update slower. rsLoRA's
alpha/sqrt(r) keeps that scale from shrinking so fast (2 at r=64). Same rate for both: the rate
tuned for r=8 with alpha/r (see lr_sweep.py).

Writes OUT/records.json, OUT/rank_sweep.json (per run group: losses over seeds),
OUT/final_loss_vs_rank.png, OUT/params_memory_vs_rank.png, OUT/loss_curves.png,
OUT/early_curves.png and OUT/results.md.
"""
import os
import statistics

import matplotlib.pyplot as plt

from experiments.common import (check_runs, finish_experiment, load_setup, make_parser, parse_ranks, parse_targets,
                                positive_int, run_kwargs)
from experiments.plots import finish, log2_axis, plot_loss_curves, plot_memory_bars, write_report
from experiments.runs import run_all
from experiments.seeds import seed_list, show, spread
from nanogpt.train import write_json

SCALINGS = {"lora": "LoRA, alpha/r", "rslora": "rsLoRA, alpha/sqrt(r)"}
EARLY_STEPS = (25, 50, 100, 200, 600)  # where the early training curves are compared
SMOOTHING = 25  # steps in the moving average of the training loss (one batch is noisy)


def group_summary(name, kind, r, runs):
    return {"name": name, "kind": kind, "r": r, "trainable_params": runs[0]["trainable_params"],
            "total_params": runs[0]["total_params"], "alpha": runs[0]["alpha"],
            "target_loss": spread([x["final_target_loss"] for x in runs]),
            "source_loss": spread([x["final_source_loss"] for x in runs])}


def smoothed_train_loss(record, step, window=SMOOTHING):
    """Mean training loss over the `window` steps that end at `step` (1-based step count)."""
    losses = record["train_loss"][max(0, step - window):step]
    return statistics.fmean(losses)


def early_curves(groups, steps=EARLY_STEPS):
    """For the fixed-alpha LoRA groups: the smoothed training loss at each of `steps`, over seeds,
    and how far apart the ranks are (max - min of the rank means) against the seed spread."""
    lora = [g for g in groups if g["kind"] == "lora"]
    n = len(lora[0]["runs"][0]["train_loss"]) if lora else 0
    rows = []
    for step in sorted({s for s in steps if s <= n} | {n}) if n else []:
        per_rank = {g["r"]: spread([smoothed_train_loss(x, step) for x in g["runs"]]) for g in lora}
        means = [s["mean"] for s in per_rank.values()]
        sds = [s["sd"] for s in per_rank.values() if s["n"] > 1]
        rows.append({"step": step, "per_rank": per_rank, "rank_range": max(means) - min(means),
                     "seed_sd": statistics.fmean(sds) if sds else None})
    return rows


def plot_final_loss(groups, path, title):
    """Final loss against rank for each scaling (mean and 95% CI over seeds), full fine-tuning as a line."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    full = next((g for g in groups if g["kind"] == "full"), None)
    ranks = sorted({g["r"] for g in groups if g["r"]})
    for ax, key, what in ((axes[0], "target_loss", "target"), (axes[1], "source_loss", "source")):
        for kind, label in SCALINGS.items():
            series = [g for g in groups if g["kind"] == kind]
            if series:
                ax.errorbar([g["r"] for g in series], [g[key]["mean"] for g in series],
                            yerr=[g[key]["ci"] if g[key]["n"] > 1 else 0 for g in series], marker="o", capsize=3,
                            label=label)
        if full is not None:
            ax.axhline(full[key]["mean"], color="black", linestyle="--", label="full fine-tuning")
        ax.axhline(groups[0]["runs"][0][f"base_{what}_loss"], color="gray", linestyle=":",
                   label="base model (before)")
        log2_axis(ax, ranks, "LoRA rank r")
        ax.set_ylabel("final validation loss (nats/byte)")
        ax.legend(fontsize=8)
    corpus = groups[0]["runs"][0]
    axes[0].set_title(f"learned: {corpus['target_corpus']} (lower is better)")
    axes[1].set_title(f"forgotten: {corpus['source_corpus']} (lower is better)")
    return finish(fig, title, path)


def plot_params_memory(groups, path, title):
    """Trainable parameters against rank, and memory by part of one run per rank (first seed)."""
    lora = [g for g in groups if g["kind"] == "lora"]
    full = next((g for g in groups if g["kind"] == "full"), None)
    fig, (ax_p, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_p.plot([g["r"] for g in lora], [g["trainable_params"] for g in lora], "o-", label="LoRA trainable parameters")
    if full is not None:
        ax_p.axhline(full["trainable_params"], color="black", linestyle="--", label="full fine-tuning")
    log2_axis(ax_p, [g["r"] for g in lora], "LoRA rank r")
    ax_p.set_yscale("log")
    ax_p.set_ylabel("trainable parameters (log scale)")
    ax_p.set_title("trainable parameters grow linearly with r")
    ax_p.legend(fontsize=8)
    plot_memory_bars(ax_m, [g["runs"][0] for g in lora] + ([full["runs"][0]] if full else []))
    ax_m.set_title("training memory by part (measured)")
    return finish(fig, title, path)


def plot_early_curves(groups, path, title):
    """Smoothed training loss over the first steps for every rank (fixed alpha), seed mean."""
    fig, (ax_e, ax_a) = plt.subplots(1, 2, figsize=(11, 4.2))
    for g in (g for g in groups if g["kind"] in ("lora", "full")):
        n = len(g["runs"][0]["train_loss"])
        steps = list(range(min(SMOOTHING, n), n + 1, 5))
        mean = [statistics.fmean(smoothed_train_loss(x, s) for x in g["runs"]) for s in steps]
        style = dict(color="black", linestyle="--") if g["kind"] == "full" else {}
        for ax, upto in ((ax_e, 200), (ax_a, n)):
            shown = [(s, m) for s, m in zip(steps, mean) if s <= upto]
            ax.plot([s for s, _ in shown], [m for _, m in shown], label=g["name"], **style)
    ax_e.set_title("the first 200 steps")
    ax_a.set_title("the whole run")
    for ax in (ax_e, ax_a):
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel(f"training loss, mean of the last {SMOOTHING} steps (nats/byte)")
        ax.grid(alpha=0.3)
    ax_a.legend(fontsize=8)
    return finish(fig, title, path)


def results_table(groups):
    lines = ["| run | alpha | trainable params | target loss | source loss |", "| --- | ---: | ---: | ---: | ---: |"]
    for g in groups:
        share = 100 * g["trainable_params"] / g["total_params"]
        alpha = "-" if g["alpha"] is None else f"{g['alpha']:g}"
        lines.append(f"| {g['name']} | {alpha} | {g['trainable_params']:,} ({share:.1f}%) | "
                     f"{show(g['target_loss'])} | {show(g['source_loss'])} |")
    n = groups[0]["target_loss"]["n"]
    lines.append(f"\nFinal validation losses in nats/byte, mean ± 95% CI over {n} seeds"
                 if n > 1 else "\nFinal validation losses in nats/byte, one seed.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/rank_sweep")
    p.add_argument("--ranks", type=parse_ranks, default=[1, 2, 4, 8, 16, 32, 64], help="comma-separated, e.g. 1,2,4")
    p.add_argument("--seeds", type=positive_int, default=1, help="fine-tuning seeds per run (the README's results: 3)")
    p.add_argument("--no-full", action="store_true", help="skip the full fine-tuning reference")
    p.add_argument("--no-rslora", action="store_true", help="skip the rsLoRA series (alpha/sqrt(r))")
    args = p.parse_args(argv)
    seeds = seed_list(args.seed, args.seeds)
    check_runs(args, ranks=args.ranks)
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    targets = parse_targets(args.targets)

    plan_groups = [] if args.no_full else [("full fine-tuning", "full", None, {"method": "full", "lr": args.full_lr})]
    for kind in SCALINGS if not args.no_rslora else ["lora"]:
        name = "LoRA" if kind == "lora" else "rsLoRA"
        # At r=1 the two scalings are the same number (alpha / 1), so rsLoRA r=1 is LoRA r=1's run.
        plan_groups += [(f"{name} r={r}", kind, r, {"method": "lora", "variant": "lora" if r == 1 else kind, "r": r,
                                                    "alpha": args.alpha, "targets": targets, "lr": args.lora_lr})
                        for r in args.ranks]
    plan = [dict(base=base, base_key=base_key, spec=spec, target=target, source=source, **{**kwargs, "seed": s})
            for *_, spec in plan_groups for s in seeds]
    records = run_all(plan, workers=args.workers, progress=not args.no_progress, desc="rank sweep")
    groups = []
    for k, (name, kind, r, _) in enumerate(plan_groups):
        runs = records[k * len(seeds):(k + 1) * len(seeds)]
        groups.append({**group_summary(name, kind, r, runs), "runs": runs})

    write_json(list({id(r): r for r in records}.values()), os.path.join(args.out, "records.json"))
    summary = {"seeds": seeds, "lr": args.lora_lr, "full_lr": args.full_lr,
               "groups": [{k: v for k, v in g.items() if k != "runs"} for g in groups],
               "early_curves": early_curves(groups)}
    write_json(summary, os.path.join(args.out, "rank_sweep.json"))
    title = (f"rank sweep: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, "
             f"alpha {args.alpha:g}, LoRA lr {args.lora_lr:g}, {len(seeds)} seed{'s' * (len(seeds) > 1)}, {device}")
    plot_final_loss(groups, os.path.join(args.out, "final_loss_vs_rank.png"), title)
    plot_params_memory(groups, os.path.join(args.out, "params_memory_vs_rank.png"), title)
    plot_loss_curves([g["runs"][0] for g in groups if g["kind"] != "rslora"],
                     os.path.join(args.out, "loss_curves.png"), title + " (first seed)")
    plot_early_curves(groups, os.path.join(args.out, "early_curves.png"), title)
    table = write_report(os.path.join(args.out, "results.md"), "Rank sweep", title, results_table(groups))
    finish_experiment(args, argv)
    print(table)
    print(f"wrote {args.out}/records.json, rank_sweep.json, final_loss_vs_rank.png, params_memory_vs_rank.png, "
          f"loss_curves.png, early_curves.png, results.md")


if __name__ == "__main__":
    main()
