"""Which weights to adapt under one fixed budget of trainable parameters (LoRA paper, Table 5).

    python -m experiments.which_weights                       # CPU, tiny model, offline
    python -m experiments.which_weights --device cuda --preset small

Claim (Hu et al. 2021, Table 5): with the budget fixed, spreading a low rank over several matrix
types beats putting a high rank on one type. LoRA Without Regret (Schulman et al. 2025) adds:
attention-only LoRA falls short of adapting the MLP too, even at a matched parameter count.

Each target set gets the rank whose parameter count comes closest to the budget (by default:
r=8 on q_proj alone, the paper's single-type setting). Several fine-tuning seeds per set.
Writes OUT/records.json, OUT/which_weights.json, OUT/which_weights.png, OUT/results.md.
"""
import os

import matplotlib.pyplot as plt

from experiments.common import check_runs, load_setup, make_parser, positive_int, run_kwargs
from experiments.plots import finish, write_report
from experiments.seeds import run_seeds, seed_list, separated, show, spread
from minilora import find_targets
from nanogpt.train import write_json

# The paper's Table 5 sets, in our module names, plus the MLP alone and everything.
TARGET_SETS = {
    "q": ["q_proj"], "k": ["k_proj"], "v": ["v_proj"], "o": ["o_proj"],
    "q,v": ["q_proj", "v_proj"], "q,k,v,o": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "up,down": ["up_proj", "down_proj"],
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
}


def params_per_rank(model, targets):
    """Trainable parameters one unit of rank adds: sum of (in + out) over the matched layers."""
    return sum(m.in_features + m.out_features for _, m in find_targets(model, targets))


def rank_for_budget(model, targets, budget):
    """The rank r >= 1 whose LoRA parameter count r * sum(in + out) is closest to budget.

    Its count is within half a rank step of the budget, unless even r=1 is over it."""
    step = params_per_rank(model, targets)
    return max(1, round(budget / step))


def plot_which_weights(rows, full, base_target, path, title):
    """Final target loss per target set: one dot per seed, a bar at the mean."""
    fig, ax = plt.subplots(figsize=(10, 4.6))
    names = [f"{row['set']}\nr={row['r']}, {row['trainable_params']:,}" for row in rows]
    means = [row["target_loss"]["mean"] for row in rows]
    ax.bar(names, means, color="#4C72B0", alpha=0.6, label="mean over seeds")
    for i, row in enumerate(rows):
        values = row["target_loss"]["values"]
        ax.scatter([i] * len(values), values, color="black", s=14, zorder=3,
                   label="one seed" if i == 0 else None)
    if full is not None:
        ax.axhline(full["mean"], color="black", linestyle="--", label="full fine-tuning")
    ax.axhline(base_target, color="gray", linestyle=":", label="base model (before)")
    low = min(min(r["target_loss"]["values"]) for r in rows + ([{"target_loss": full}] if full else []))
    ax.set_ylim(low - 0.05, base_target + 0.03)
    ax.set_xlabel("adapted matrix types (rank that meets the budget, trainable parameters)")
    ax.set_ylabel("final validation loss on target (nats/byte)")
    ax.set_title("same parameter budget, different places (lower is better)")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return finish(fig, title, path)


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/which_weights")
    p.add_argument("--budget", type=positive_int, help="trainable parameters per run (default: r=8 on q_proj alone)")
    p.add_argument("--seeds", type=positive_int, default=2, help="fine-tuning seeds per target set")
    p.add_argument("--no-full", action="store_true", help="skip the full fine-tuning reference")
    args = p.parse_args(argv)
    check_runs(args, runs=lambda model: [(t, rank_for_budget(model, t, args.budget or 8 * params_per_rank(model, TARGET_SETS["q"])))
                                         for t in TARGET_SETS.values()])
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    kwargs.pop("seed")
    seeds = seed_list(args.seed, args.seeds)
    budget = args.budget or 8 * params_per_rank(base, TARGET_SETS["q"])

    records, rows = [], []
    for name, targets in TARGET_SETS.items():
        r = rank_for_budget(base, targets, budget)
        print(f"fine-tuning: LoRA on {name} at r={r} (budget {budget:,})")
        spec = {"method": "lora", "variant": "lora", "r": r, "alpha": args.alpha, "targets": targets,
                "lr": args.lora_lr}
        runs = run_seeds(base, base_key, spec, target, source, seeds, **kwargs)
        records += runs
        rows.append({"set": name, "targets": targets, "r": r, "trainable_params": runs[0]["trainable_params"],
                     "target_loss": spread([x["final_target_loss"] for x in runs]),
                     "source_loss": spread([x["final_source_loss"] for x in runs])})
    full = None
    if not args.no_full:
        print("fine-tuning: full (reference)")
        full_runs = run_seeds(base, base_key, {"method": "full", "lr": args.full_lr}, target, source, seeds, **kwargs)
        records += full_runs
        full = spread([x["final_target_loss"] for x in full_runs])

    best = min(rows, key=lambda row: row["target_loss"]["mean"])
    for row in rows:  # is this set's difference from the best one larger than the seed spread?
        row["separated_from_best"] = row is not best and separated(row["target_loss"], best["target_loss"])
    summary = {"budget": budget, "seeds": seeds, "rows": rows, "full_target_loss": full, "best_set": best["set"]}
    write_json(records, os.path.join(args.out, "records.json"))
    write_json(summary, os.path.join(args.out, "which_weights.json"))
    title = (f"which weights: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, "
             f"budget {budget:,} params, {len(seeds)} seeds, {device}")
    plot_which_weights(rows, full, records[0]["base_target_loss"], os.path.join(args.out, "which_weights.png"), title)

    lines = ["| adapted | r | trainable params | target loss: mean (min to max) | source loss (mean) | "
             "apart from the best beyond the seed spread |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        t = row["target_loss"]
        lines.append(f"| {row['set']} | {row['r']} | {row['trainable_params']:,} | {show(t)} | {row['source_loss']['mean']:.3f} | "
                     f"{'best' if row is best else ('yes' if row['separated_from_best'] else 'no')} |")
    if full:
        full_source = spread([x["final_source_loss"] for x in full_runs])["mean"]
        lines.append(f"| full fine-tuning | - | {full_runs[0]['trainable_params']:,} | {show(full)} | {full_source:.3f} | - |")
    table = write_report(os.path.join(args.out, "results.md"), "Which weights to adapt", title, "\n".join(lines) + "\n")
    print(table)
    print(f"wrote {args.out}/records.json, which_weights.json, which_weights.png, results.md")


if __name__ == "__main__":
    main()
