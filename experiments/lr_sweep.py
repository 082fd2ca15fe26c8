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

import matplotlib.pyplot as plt

from experiments.common import check_runs, load_setup, make_parser, parse_ranks, parse_targets, run_kwargs
from experiments.finetune import run_finetune
from experiments.plots import finish, write_report
from nanogpt.train import write_json


def parse_lrs(text, flag="--lrs"):
    """'1e-4,1e-3,1e-2' -> [0.0001, 0.001, 0.01]; anything else is a clear error naming the flag."""
    message = f"{flag} must be comma-separated positive numbers like 1e-4,1e-3,1e-2; got {text!r}"
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if len(values) < 3 or any(not 0 < v < math.inf for v in values):
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


def plot_lr_sweep(curves, base_target, path, title):
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for curve in curves:
        finite = [(lr, loss) for lr, loss in zip(curve["lrs"], curve["losses"]) if math.isfinite(loss)]
        style = dict(color="black", linestyle="--") if curve["name"] == "full fine-tuning" else {}
        line, = ax.plot([a for a, _ in finite], [b for _, b in finite], marker="o", label=curve["name"], **style)
        ax.axvline(curve["best_lr"], color=line.get_color(), linestyle=":", alpha=0.8)
    ax.axhline(base_target, color="gray", linestyle="-.", label="base model (before)")
    ax.set_xscale("log")
    ax.set_ylim(top=base_target + 0.1)
    ax.set_xlabel("peak learning rate (log scale); dotted: best rate of each curve")
    ax.set_ylabel("final validation loss on target (nats/byte)")
    ax.set_title("U-curves: final loss against learning rate (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return finish(fig, title, path)


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/lr_sweep")
    # Quarter-decade steps (a first grid in half decades, 1e-4 to 3e-2, put every bottom between two
    # points a factor 3 apart). Each method gets a window around its own bottom, together 3e-4 to
    # 1.8e-2, so the 17 runs fit the 15-minute CPU budget, where one shared 7-point grid (28 runs)
    # took about 18 minutes. The extra points of the shared grid moved no best rate.
    p.add_argument("--full-lrs", type=lambda t: parse_lrs(t, "--full-lrs"), default=[3e-4, 1e-3, 1.8e-3, 3e-3, 5.6e-3],
                   help="comma-separated learning rates for full fine-tuning")
    p.add_argument("--lora-lrs", type=lambda t: parse_lrs(t, "--lora-lrs"), default=[3e-3, 5.6e-3, 1e-2, 1.8e-2],
                   help="comma-separated learning rates for LoRA, the same at every rank")
    p.add_argument("--ranks", type=parse_ranks, default=[1, 8, 64], help="LoRA ranks, e.g. 1,8,64")
    args = p.parse_args(argv)
    check_runs(args, ranks=args.ranks)
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    targets = parse_targets(args.targets)

    methods = [("full fine-tuning", {"method": "full"}, args.full_lrs)]
    methods += [(f"LoRA r={r}", {"method": "lora", "variant": "lora", "r": r, "alpha": args.alpha,
                                 "targets": targets}, args.lora_lrs) for r in args.ranks]
    records, curves = [], []
    for name, spec, lrs in methods:
        losses = []
        for lr in lrs:
            print(f"fine-tuning: {name}, lr {lr:g}")
            record = run_finetune(base, base_key, {**spec, "lr": lr}, target, source, **kwargs)
            records.append(record)
            losses.append(record["final_target_loss"])
        lr_star, at_edge = best_lr(lrs, losses)
        curves.append({"name": name, "r": spec.get("r"), "lrs": lrs, "losses": losses,
                       "best_lr": lr_star, "best_at_grid_edge": at_edge,
                       "best_grid_loss": min(x for x in losses if math.isfinite(x))})
    full_best = curves[0]["best_lr"]
    for curve in curves:
        curve["ratio_to_full"] = curve["best_lr"] / full_best
    write_json(records, os.path.join(args.out, "records.json"))
    write_json(curves, os.path.join(args.out, "lr_sweep.json"))
    title = (f"learning rate sweep: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, "
             f"alpha {args.alpha:g}, {device}")
    plot_lr_sweep(curves, records[0]["base_target_loss"], os.path.join(args.out, "lr_sweep.png"), title)

    all_lrs = sorted(set(args.full_lrs) | set(args.lora_lrs))
    lines = ["| method | " + " | ".join(f"lr {lr:g}" for lr in all_lrs) + " | best lr (parabola) | best / full's |",
             "| --- |" + " ---: |" * (len(all_lrs) + 2)]
    for c in curves:
        by_lr = dict(zip(c["lrs"], c["losses"]))
        cells = " | ".join("" if lr not in by_lr else (f"{by_lr[lr]:.3f}" if math.isfinite(by_lr[lr]) else "diverged")
                           for lr in all_lrs)
        edge = " (grid edge)" if c["best_at_grid_edge"] else ""
        lines.append(f"| {c['name']} | {cells} | {c['best_lr']:.2g}{edge} | {c['ratio_to_full']:.1f}x |")
    table = write_report(os.path.join(args.out, "results.md"), "Learning rate sweep", title, "\n".join(lines) + "\n")
    print(table)
    print(f"wrote {args.out}/records.json, lr_sweep.json, lr_sweep.png, results.md")


if __name__ == "__main__":
    main()
