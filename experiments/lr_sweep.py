"""Learning rate: full fine-tuning and LoRA at several ranks, each over two decades of rates.

    python -m experiments.lr_sweep                            # CPU, tiny model, offline
    python -m experiments.lr_sweep --device cuda --preset small

Claim (LoRA Without Regret, Schulman et al. 2025): the best LoRA learning rate is about 10x the
best full fine-tuning one, and roughly the same for every rank (with alpha fixed, as here: the
1/r in alpha/r is what makes the rate rank-independent).

Each method traces a U-curve of final loss against learning rate. The best rate is read off a
parabola through the lowest grid point and its two neighbours in log(rate), so it can fall
between grid points. Writes OUT/records.json, OUT/lr_sweep.json, OUT/lr_sweep.png, OUT/results.md.
"""
import argparse
import math
import os
import statistics

import matplotlib.pyplot as plt

from experiments.common import finish_experiment, load_setup, make_parser, parse_ranks, parse_targets, run_kwargs
from experiments.plots import finish, write_report
from experiments.runs import run_all
from experiments.seeds import seed_list, show, spread
from nanogpt.train import write_json


def parse_lrs(text, flag="--lrs"):
    """'1e-4,1e-3,1e-2' -> [0.0001, 0.001, 0.01]; anything else is a clear error naming the flag."""
    message = f"{flag} must be comma-separated positive numbers like 1e-4,1e-3,1e-2; got {text!r}"
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if len(values) < 3 or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(message + " (at least three, to find a minimum)")
    return sorted(values)


def best_lr(lrs, losses):
    """The rate at the bottom of the U-curve: the vertex of the parabola through the lowest point
    and its neighbours, in log10(rate). At the edge of the grid, the edge point itself (and the
    caller should widen the grid). Diverged runs (nan or inf) count as worst."""
    clean = [x if math.isfinite(x) else math.inf for x in losses]
    i = min(range(len(clean)), key=clean.__getitem__)
    if i == 0 or i == len(lrs) - 1 or not math.isfinite(clean[i - 1] + clean[i + 1]):
        return lrs[i], True
    x = [math.log10(lrs[j]) for j in (i - 1, i, i + 1)]
    y = [clean[j] for j in (i - 1, i, i + 1)]
    # vertex of the parabola through three points
    d1, d2 = (y[1] - y[0]) / (x[1] - x[0]), (y[2] - y[1]) / (x[2] - x[1])
    curvature = (d2 - d1) / (x[2] - x[0])
    vertex = (x[0] + x[1]) / 2 - d1 / (2 * curvature)
    return 10 ** min(max(vertex, x[0]), x[2]), False


def sweep_curves(methods, records, seeds):
    """One curve per method from its records (ordered method, rate, seed): the seed-mean loss at
    each rate, the best rate of that mean curve, and each seed's own best rate, for the spread."""
    curves, i = [], 0
    for name, spec, lrs in methods:
        per_lr = []
        for _ in lrs:
            per_lr.append([r["final_target_loss"] for r in records[i:i + len(seeds)]])
            i += len(seeds)
        mean = [statistics.fmean(v) if all(map(math.isfinite, v)) else math.inf for v in per_lr]
        lr_star, at_edge = best_lr(lrs, mean)
        per_seed = [best_lr(lrs, [v[k] for v in per_lr])[0] for k in range(len(seeds))]
        curves.append({"name": name, "r": spec.get("r"), "lrs": lrs, "losses": mean,
                       "loss_spreads": [spread(v) for v in per_lr], "best_lr": lr_star,
                       "best_at_grid_edge": at_edge, "best_lr_per_seed": per_seed,
                       "best_grid_lr": lrs[min(range(len(lrs)), key=mean.__getitem__)],
                       "best_grid_loss": min(x for x in mean if math.isfinite(x))})
    full = curves[0]
    for curve in curves:
        curve["ratio_to_full"] = curve["best_lr"] / full["best_lr"]
        curve["ratio_to_full_per_seed"] = [a / b for a, b in zip(curve["best_lr_per_seed"], full["best_lr_per_seed"])]
    return curves


def plot_lr_sweep(curves, base_target, path, title):
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for curve in curves:
        finite = [(lr, s) for lr, s in zip(curve["lrs"], curve["loss_spreads"]) if math.isfinite(s["mean"])]
        style = dict(color="black", linestyle="--") if curve["name"] == "full fine-tuning" else {}
        line = ax.errorbar([a for a, _ in finite], [s["mean"] for _, s in finite],
                           yerr=[0 if s["n"] == 1 else s["ci"] for _, s in finite], marker="o", capsize=3,
                           label=curve["name"], **style)[0]
        ax.axvline(curve["best_lr"], color=line.get_color(), linestyle=":", alpha=0.8)
    ax.axhline(base_target, color="gray", linestyle="-.", label="base model (before)")
    ax.set_xscale("log")
    ax.set_ylim(top=base_target + 0.1)
    ax.set_xlabel("peak learning rate (log scale); dotted: best rate of each curve")
    ax.set_ylabel("final validation loss on target (nats/byte)")
    ax.set_title("U-curves: final loss against learning rate, mean and 95% CI over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return finish(fig, title, path)


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/lr_sweep")
    # Quarter-decade steps, a window of four rates around each method's bottom (found on wider
    # grids: 1e-4 to 3e-2 in half decades, then 3e-4 to 1.8e-2 in quarter decades).
    p.add_argument("--full-lrs", type=lambda t: parse_lrs(t, "--full-lrs"), default=[1e-3, 1.8e-3, 3e-3, 5.6e-3],
                   help="comma-separated learning rates for full fine-tuning")
    p.add_argument("--lora-lrs", type=lambda t: parse_lrs(t, "--lora-lrs"), default=[3e-3, 5.6e-3, 1e-2, 1.8e-2],
                   help="comma-separated learning rates for LoRA, the same at every rank")
    p.add_argument("--ranks", type=parse_ranks, default=[1, 8, 64], help="LoRA ranks, e.g. 1,8,64")
    p.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per rate")
    args = p.parse_args(argv)
    seeds = seed_list(args.seed, args.seeds)
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    targets = parse_targets(args.targets)

    methods = [("full fine-tuning", {"method": "full"}, args.full_lrs)]
    methods += [(f"LoRA r={r}", {"method": "lora", "variant": "lora", "r": r, "alpha": args.alpha,
                                 "targets": targets}, args.lora_lrs) for r in args.ranks]
    plan = [dict(base=base, base_key=base_key, spec={**spec, "lr": lr}, target=target, source=source,
                 **{**kwargs, "seed": s})
            for _, spec, lrs in methods for lr in lrs for s in seeds]
    records = run_all(plan, workers=args.workers, progress=not args.no_progress, desc="lr sweep")
    curves = sweep_curves(methods, records, seeds)
    write_json(records, os.path.join(args.out, "records.json"))
    write_json({"seeds": seeds, "curves": curves}, os.path.join(args.out, "lr_sweep.json"))
    title = (f"learning rate sweep: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, "
             f"alpha {args.alpha:g}, {len(seeds)} seeds, {device}")
    plot_lr_sweep(curves, records[0]["base_target_loss"], os.path.join(args.out, "lr_sweep.png"), title)
    table = write_report(os.path.join(args.out, "results.md"), "Learning rate sweep", title, lr_table(curves))
    finish_experiment(args, argv)
    print(table)
    print(f"wrote {args.out}/records.json, lr_sweep.json, lr_sweep.png, results.md")


def lr_table(curves):
    """Final target loss (mean +- 95% CI over seeds) at every rate, and the best rates."""
    all_lrs = sorted({lr for c in curves for lr in c["lrs"]})
    lines = ["| method | " + " | ".join(f"{lr:g}" for lr in all_lrs) +
             " | best rate (parabola; per seed) | best / full's (per seed) |",
             "| --- |" + " ---: |" * (len(all_lrs) + 2)]
    for c in curves:
        by_lr = dict(zip(c["lrs"], c["loss_spreads"]))
        cells = []
        for lr in all_lrs:
            s = by_lr.get(lr)
            cell = "" if s is None else (show(s) if math.isfinite(s["mean"]) else "diverged")
            cells.append(f"**{cell}**" if lr == c["best_grid_lr"] else cell)
        edge = " (grid edge)" if c["best_at_grid_edge"] else ""
        per_seed = ", ".join(f"{x:.2g}" for x in c["best_lr_per_seed"])
        ratios = ", ".join(f"{x:.1f}" for x in c["ratio_to_full_per_seed"])
        lines.append(f"| {c['name']} | {' | '.join(cells)} | {c['best_lr']:.2g}{edge} ({per_seed}) | "
                     f"{c['ratio_to_full']:.1f}x ({ratios}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
