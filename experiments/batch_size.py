"""Batch size: full fine-tuning and LoRA from small to large batches, at equal tokens seen.

    python -m experiments.batch_size                          # CPU, tiny model, offline
    python -m experiments.batch_size --device cuda --preset small

Claim (LoRA Without Regret, Schulman et al. 2025): LoRA is less tolerant of large batches than
full fine-tuning: as the batch grows, its loss degrades sooner, and the gap to full widens.

Every run sees the same number of sequences (--sequences): a batch of b runs sequences / b steps.
Each method keeps its one learning rate at every batch size, as the paper's comparison does, so
what changes is only how the same data is cut into steps.
Writes OUT/records.json, OUT/batch_size.json, OUT/batch_size.png, OUT/results.md.
"""
import os

import matplotlib.pyplot as plt

from experiments.common import check_runs, load_setup, make_parser, parse_targets, positive_int, positive_ints, run_kwargs
from experiments.plots import finish, log2_axis, write_report
from experiments.seeds import run_seeds, seed_list, separated, show, spread
from nanogpt.train import write_json


def plot_batch_size(rows, path, title):
    fig, (ax_l, ax_g) = plt.subplots(1, 2, figsize=(11, 4.4))
    batches = [row["batch_size"] for row in rows]
    for key, name, style in (("full", "full fine-tuning", dict(color="black", linestyle="--")),
                             ("lora", "LoRA", dict(color="#4C72B0"))):
        means = [row[key]["mean"] for row in rows]
        low = [row[key]["mean"] - row[key]["min"] for row in rows]
        high = [row[key]["max"] - row[key]["mean"] for row in rows]
        ax_l.errorbar(batches, means, yerr=[low, high], marker="o", capsize=3, label=name, **style)
    log2_axis(ax_l, batches, "batch size in sequences")
    ax_l.set_ylabel("final validation loss on target (nats/byte)")
    ax_l.set_title("final loss at equal tokens seen (bars: seed min-max)")
    ax_l.legend(fontsize=8)
    gaps = [row["gap"] for row in rows]
    ax_g.errorbar(batches, [g["mean"] for g in gaps], yerr=[[g["mean"] - g["min"] for g in gaps],
                                                             [g["max"] - g["mean"] for g in gaps]],
                  marker="o", capsize=3, color="#C44E52", label="LoRA - full (same seed)")
    ax_g.axhline(0, color="gray", linestyle=":")
    log2_axis(ax_g, batches, "batch size in sequences")
    ax_g.set_ylabel("loss gap, LoRA minus full (nats/byte)")
    ax_g.set_title("does LoRA fall further behind as the batch grows?")
    ax_g.legend(fontsize=8)
    return finish(fig, title, path)


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/batch_size")
    p.add_argument("--batch-sizes", type=lambda t: positive_ints(t, "--batch-sizes"), default=[4, 8, 16, 32, 64],
                   help="comma-separated, e.g. 4,16,64")
    p.add_argument("--sequences", type=positive_int, default=7200,
                   help="sequences seen per run (default 600 steps x batch 12, as the other experiments)")
    p.add_argument("--r", type=positive_int, default=8, help="LoRA rank")
    p.add_argument("--seeds", type=positive_int, default=2, help="fine-tuning seeds per point")
    p.add_argument("--evals", type=positive_int, default=6, help="evaluations per run, spread evenly")
    args = p.parse_args(argv)
    check_runs(args, ranks=[args.r])
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    for k in ("seed", "steps", "batch_size", "eval_interval"):
        kwargs.pop(k)
    seeds = seed_list(args.seed, args.seeds)
    specs = {"full": {"method": "full", "lr": args.full_lr},
             "lora": {"method": "lora", "variant": "lora", "r": args.r, "alpha": args.alpha,
                      "targets": parse_targets(args.targets), "lr": args.lora_lr}}
    records, rows = [], []
    for b in args.batch_sizes:
        steps = max(1, args.sequences // b)
        row = {"batch_size": b, "steps": steps}
        runs = {}
        for method, spec in specs.items():
            print(f"fine-tuning: {method}, batch {b}, {steps} steps, seeds {seeds}")
            runs[method] = run_seeds(base, base_key, spec, target, source, seeds, steps=steps, batch_size=b,
                                     eval_interval=max(1, steps // args.evals), **kwargs)
            records += runs[method]
            row[method] = spread([r["final_target_loss"] for r in runs[method]])
        row["gap"] = spread([lo["final_target_loss"] - fu["final_target_loss"]
                             for lo, fu in zip(runs["lora"], runs["full"])])
        rows.append(row)
    for row in rows:  # a gap that differs from the smallest batch's beyond the seed spread
        row["gap_separated_from_smallest_batch"] = row is not rows[0] and separated(row["gap"], rows[0]["gap"])
    write_json(records, os.path.join(args.out, "records.json"))
    write_json({"seeds": seeds, "sequences": args.sequences, "rows": rows}, os.path.join(args.out, "batch_size.json"))
    title = (f"batch size: {args.preset} GPT, {source.name} -> {target.name}, {args.sequences} sequences per run, "
             f"LoRA r={args.r}, {len(seeds)} seeds, {device}")
    plot_batch_size(rows, os.path.join(args.out, "batch_size.png"), title)

    lines = ["| batch | steps | full: target loss mean (min to max) | LoRA: target loss mean (min to max) | LoRA - full mean (min to max) | "
             "gap differs from the smallest batch's |", "| ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        f, lo, g = row["full"], row["lora"], row["gap"]
        lines.append(f"| {row['batch_size']} | {row['steps']} | {show(f)} | "
                     f"{show(lo)} | {show(g, signed=True)} | "
                     f"{'-' if row is rows[0] else ('yes' if row['gap_separated_from_smallest_batch'] else 'no')} |")
    table = write_report(os.path.join(args.out, "results.md"), "Batch size", title, "\n".join(lines) + "\n")
    print(table)
    print(f"wrote {args.out}/records.json, batch_size.json, batch_size.png, results.md")


if __name__ == "__main__":
    main()
