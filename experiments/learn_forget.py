"""Learning against forgetting: target loss against source loss, for full fine-tuning and each rank.

    python -m experiments.learn_forget                        # CPU, tiny model, offline
    python -m experiments.learn_forget --device cuda --preset small

Claim (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"): LoRA adapts less to the new
domain (higher target loss) and forgets less of the source domain (lower source loss) than full
fine-tuning. The runs are the rank sweep's (same flags, same cache), over several seeds.

A second, sharper question the paper also asks: at the same amount learned, does LoRA forget
less? Full fine-tuning's own trajectory passes through LoRA's final target loss on its way down;
we read full's source loss at that point (interpolated between evaluations) and compare.
Writes OUT/records.json, OUT/learn_forget.json, OUT/learn_forget.png, OUT/results.md.
"""
import os

import matplotlib.pyplot as plt

from experiments.common import check_runs, load_setup, make_parser, parse_ranks, parse_targets, positive_int, run_kwargs
from experiments.plots import finish, write_report
from experiments.seeds import run_seeds, seed_list, show, spread
from nanogpt.train import write_json


def source_loss_at(history, target_loss):
    """Source loss where a run's trajectory first reaches target_loss, interpolated linearly
    between the two evaluations around it; None if the run never gets that low."""
    points = [(h["target_loss"], h["source_loss"]) for h in history]
    for (t0, s0), (t1, s1) in zip(points, points[1:]):
        if t1 <= target_loss <= t0 and t0 != t1:
            return s0 + (s1 - s0) * (t0 - target_loss) / (t0 - t1)
    return None


def plot_learn_forget(groups, path, title):
    """One trajectory per method (first seed, every evaluation) and the final points of all seeds."""
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    colors = plt.cm.viridis([i / max(1, len(groups) - 2) for i in range(len(groups) - 1)])
    for i, g in enumerate(groups):
        full = g["name"] == "full fine-tuning"
        color = "black" if full else colors[i - 1]
        h = g["runs"][0]["history"]
        ax.plot([x["target_loss"] for x in h], [x["source_loss"] for x in h], "--" if full else "-",
                color=color, alpha=0.7, linewidth=2 if full else 1.2)
        ax.scatter([r["final_target_loss"] for r in g["runs"]], [r["final_source_loss"] for r in g["runs"]],
                   color=color, s=40, zorder=3, marker="s" if full else "o", label=g["name"])
    first = groups[0]["runs"][0]
    ax.scatter([first["base_target_loss"]], [first["base_source_loss"]], marker="*", s=200, color="gray",
               zorder=3, label="base model (start)")
    ax.set_xlabel(f"target loss on {first['target_corpus']} (nats/byte; left = learned more)")
    ax.set_ylabel(f"source loss on {first['source_corpus']} (nats/byte; up = forgot more)")
    ax.set_title("lines: path over training (first seed); dots: final point of each seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return finish(fig, title, path)


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/learn_forget")
    p.add_argument("--ranks", type=parse_ranks, default=[1, 2, 4, 8, 16, 32, 64], help="comma-separated, e.g. 1,4,16")
    p.add_argument("--seeds", type=positive_int, default=2, help="fine-tuning seeds per method")
    args = p.parse_args(argv)
    check_runs(args, ranks=args.ranks)
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    kwargs.pop("seed")
    seeds = seed_list(args.seed, args.seeds)
    targets = parse_targets(args.targets)

    methods = [("full fine-tuning", {"method": "full", "lr": args.full_lr})]
    methods += [(f"LoRA r={r}", {"method": "lora", "variant": "lora", "r": r, "alpha": args.alpha,
                                 "targets": targets, "lr": args.lora_lr}) for r in args.ranks]
    groups = []
    for name, spec in methods:
        print(f"fine-tuning: {name}, seeds {seeds}")
        groups.append({"name": name, "runs": run_seeds(base, base_key, spec, target, source, seeds, **kwargs)})
    full_runs = groups[0]["runs"]
    rows = []
    for g in groups:
        row = {"name": g["name"], "r": g["runs"][0]["r"],
               "target_loss": spread([r["final_target_loss"] for r in g["runs"]]),
               "source_loss": spread([r["final_source_loss"] for r in g["runs"]])}
        if g is not groups[0]:  # full's source loss when it had learned as much as this run, same seed
            matched = [source_loss_at(f["history"], r["final_target_loss"]) for f, r in zip(full_runs, g["runs"])]
            row["full_source_loss_at_same_target"] = (spread(matched) if all(m is not None for m in matched)
                                                      else None)
        rows.append(row)
    records = [r for g in groups for r in g["runs"]]
    write_json(records, os.path.join(args.out, "records.json"))
    write_json({"seeds": seeds, "rows": rows}, os.path.join(args.out, "learn_forget.json"))
    title = (f"learning vs forgetting: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, "
             f"{len(seeds)} seeds, {device}")
    plot_learn_forget(groups, os.path.join(args.out, "learn_forget.png"), title)

    base_t, base_s = records[0]["base_target_loss"], records[0]["base_source_loss"]
    lines = [f"Base model: target {base_t:.3f}, source {base_s:.3f} (nats/byte).\n",
             "| method | target loss mean (min to max) | learned (base - final) | source loss mean (min to max) | "
             "forgot (final - base) | full's source loss at the same target loss |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        t, s = row["target_loss"], row["source_loss"]
        m = row.get("full_source_loss_at_same_target")
        matched = "-" if row is rows[0] else (f"{m['mean']:.3f}" if m else "full never got that far")
        lines.append(f"| {row['name']} | {show(t)} | {base_t - t['mean']:.3f} | "
                     f"{show(s)} | {s['mean'] - base_s:.3f} | {matched} |")
    table = write_report(os.path.join(args.out, "results.md"), "Learning vs forgetting", title, "\n".join(lines) + "\n")
    print(table)
    print(f"wrote {args.out}/records.json, learn_forget.json, learn_forget.png, results.md")


if __name__ == "__main__":
    main()
