"""LoRA variants at the same rank: plain LoRA, rsLoRA, LoRA+, DoRA and PiSSA, against full fine-tuning.

    python -m experiments.variants                            # CPU, tiny model, offline
    python -m experiments.variants --device cuda --preset small

Claims, each from its paper:
- LoRA+ (Hayou et al. 2024): B's learning rate 16x A's converges faster.
- rsLoRA (Kalajdzievski 2023): scaling alpha/sqrt(r) instead of alpha/r keeps high ranks learning,
  so r=64 beats r=8 by more than it does with plain LoRA.
- DoRA (Liu et al. 2024) and PiSSA (Meng et al. 2024): close part of the gap to full fine-tuning.
Every variant trains at the same rank, alpha and learning rate (--lora-lr); the papers tune each,
so a variant that wants another rate is at a disadvantage here, and the write-up says so. LoRA+
also runs at a lower base rate (--loraplus-lr), since at --lora-lr its B trains 16x faster than
the rate tuned for plain LoRA.
Writes OUT/records.json, OUT/variants.json, OUT/variants.png, OUT/results.md.
"""
import os

import matplotlib.pyplot as plt

from experiments.common import (check_runs, load_setup, make_parser,
                                non_negative_int, parse_targets, positive_float, positive_int, run_kwargs)
from experiments.plots import finish, write_report
from experiments.seeds import run_seeds, seed_list, separated, show, spread
from nanogpt.train import write_json

VARIANT_NAMES = {"lora": "LoRA", "rslora": "rsLoRA", "loraplus": "LoRA+", "dora": "DoRA", "pissa": "PiSSA"}


def loss_at(history, step):
    """Target loss at the evaluation nearest to step."""
    return min(history, key=lambda h: abs(h["step"] - step))["target_loss"]


def plot_variants(groups, path, title):
    """Left: loss curves (mean over seeds) at rank r; right: final loss per group, one dot per seed."""
    fig, (ax_c, ax_f) = plt.subplots(1, 2, figsize=(12.5, 4.8), gridspec_kw={"width_ratios": [1.1, 1]})
    for g in groups:
        h0 = g["runs"][0]["history"]
        steps = [h["step"] for h in h0]
        mean = [sum(r["history"][i]["target_loss"] for r in g["runs"]) / len(g["runs"]) for i in range(len(h0))]
        style = dict(color="black", linestyle="--", linewidth=2) if g["name"] == "full fine-tuning" else {}
        if g.get("high_rank"):
            style = dict(linestyle=":")
        ax_c.plot(steps[1:], mean[1:], label=g["name"], **style)  # step 0 is the base model, far above
    ax_c.set_xlabel("fine-tuning step")
    ax_c.set_ylabel("validation loss on target (nats/byte, mean over seeds)")
    ax_c.set_title("loss curves (lower is better)")
    ax_c.grid(alpha=0.3)
    ax_c.legend(fontsize=8)
    names = [g["name"] for g in groups]
    for i, g in enumerate(groups):
        values = [r["final_target_loss"] for r in g["runs"]]
        ax_f.bar(i, sum(values) / len(values), color="gray" if g["name"] == "full fine-tuning" else "#4C72B0",
                 alpha=0.6)
        ax_f.scatter([i] * len(values), values, color="black", s=14, zorder=3)
    ax_f.set_xticks(range(len(names)), names, rotation=25, ha="right")
    low = min(r["final_target_loss"] for g in groups for r in g["runs"])
    high = max(r["final_target_loss"] for g in groups for r in g["runs"])
    ax_f.set_ylim(low - 0.03, high + 0.03)
    ax_f.set_ylabel("final validation loss on target (nats/byte)")
    ax_f.set_title("final loss: bar = mean, dots = seeds")
    ax_f.grid(axis="y", alpha=0.3)
    return finish(fig, title, path)


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/variants")
    p.add_argument("--r", type=positive_int, default=8, help="the rank every variant trains at")
    p.add_argument("--high-r", type=non_negative_int, default=64, help="the high rank for LoRA vs rsLoRA (0 to skip)")
    p.add_argument("--loraplus-lr", type=positive_float, default=1e-3,
                   help="LoRA+ also at this lower base rate (A's; B's is 16x), 0 to skip")
    p.add_argument("--seeds", type=positive_int, default=2, help="fine-tuning seeds per variant")
    # The default --eval-interval (100) puts the first evaluation at the early step (a sixth of 600);
    # evaluating every 50 steps gave the same numbers (evaluation never changes training) but pushed
    # the default run past 15 minutes on 2 cores.
    p.add_argument("--early-step", type=positive_int, help="step at which 'converges faster' is judged (default: a sixth of the run)")
    args = p.parse_args(argv)
    check_runs(args, ranks=[args.r] + ([args.high_r] if args.high_r else []), variants=("lora", "dora", "pissa"))
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    kwargs.pop("seed")
    seeds = seed_list(args.seed, args.seeds)
    targets = parse_targets(args.targets)
    early = args.early_step or max(1, args.max_iters // 6)

    def lora_spec(variant, r):
        return {"method": "lora", "variant": variant, "r": r, "alpha": args.alpha, "targets": targets,
                "lr": args.lora_lr}

    plan = [(f"{VARIANT_NAMES[v]} r={args.r}", lora_spec(v, args.r), False) for v in VARIANT_NAMES]
    if args.loraplus_lr:  # at --lora-lr, B's rate is 16x a rate tuned for plain LoRA: also try a lower one
        plan.insert(3, (f"LoRA+ r={args.r}, lr {args.loraplus_lr:g}",
                        {**lora_spec("loraplus", args.r), "lr": args.loraplus_lr}, False))
    if args.high_r:
        plan += [(f"{VARIANT_NAMES[v]} r={args.high_r}", lora_spec(v, args.high_r), True) for v in ("lora", "rslora")]
    plan.append(("full fine-tuning", {"method": "full", "lr": args.full_lr}, False))
    groups = []
    for name, spec, high in plan:
        print(f"fine-tuning: {name}, seeds {seeds}")
        groups.append({"name": name, "high_rank": high,
                       "runs": run_seeds(base, base_key, spec, target, source, seeds, **kwargs)})
    rows = []
    for g in groups:
        rows.append({"name": g["name"], "trainable_params": g["runs"][0]["trainable_params"],
                     "final_target_loss": spread([r["final_target_loss"] for r in g["runs"]]),
                     "early_target_loss": spread([loss_at(r["history"], early) for r in g["runs"]]),
                     "final_source_loss": spread([r["final_source_loss"] for r in g["runs"]]),
                     "median_step_ms": 1000 * sum(r["median_step_s"] for r in g["runs"]) / len(g["runs"])})
    plain = rows[0]
    for row in rows[1:]:  # only differences beyond the seed spread count
        row["final_separated_from_lora"] = separated(row["final_target_loss"], plain["final_target_loss"])
        row["early_separated_from_lora"] = separated(row["early_target_loss"], plain["early_target_loss"])
    records = [r for g in groups for r in g["runs"]]
    write_json(records, os.path.join(args.out, "records.json"))
    write_json({"seeds": seeds, "early_step": early, "rows": rows}, os.path.join(args.out, "variants.json"))
    title = (f"variants: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, alpha {args.alpha:g}, "
             f"lr {args.lora_lr:g}, {len(seeds)} seeds, {device}")
    plot_variants(groups, os.path.join(args.out, "variants.png"), title)

    lines = [f"| run | trainable params | target loss at step {early} mean (min to max) | final target loss mean (min to max) | "
             "final source loss | beyond the seed spread of LoRA r=" + str(args.r) + ": early / final | median step (ms) |",
             "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for row in rows:
        e, f = row["early_target_loss"], row["final_target_loss"]
        apart = "-" if row is plain else " / ".join("yes" if row[k] else "no" for k in
                                                     ("early_separated_from_lora", "final_separated_from_lora"))
        lines.append(f"| {row['name']} | {row['trainable_params']:,} | {show(e)} | "
                     f"{show(f)} | {row['final_source_loss']['mean']:.3f} | "
                     f"{apart} | {row['median_step_ms']:.1f} |")
    table = write_report(os.path.join(args.out, "results.md"), "LoRA variants", title, "\n".join(lines) + "\n")
    print(table)
    print(f"wrote {args.out}/records.json, variants.json, variants.png, results.md")


if __name__ == "__main__":
    main()
