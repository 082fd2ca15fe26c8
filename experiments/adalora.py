"""AdaLoRA against LoRA at the same final rank budget: does spending it adaptively help, and where does it go?

    python -m experiments.adalora                            # CPU, tiny model, offline
    python -m experiments.adalora --device cuda --preset small

Claims (Zhang et al. 2023, "AdaLoRA", arXiv:2303.10512), on DeBERTaV3 and BART there:
(1) at an equal final budget AdaLoRA beats uniform LoRA. Here AdaLoRA starts at init_r=12 triplets
    per matrix and prunes to target_r=8 per matrix on average, so it ends with the total rank of
    LoRA r=8 on the same matrices (the same number of kept triplets; the parameter count can differ,
    since a triplet of a wide MLP matrix weighs more than one of an attention matrix: both are in the
    JSON). LoRA r=12, AdaLoRA's starting rank, shows what the larger rank alone would give.
(2) the budget goes mostly to the MLP matrices and to the top layers: read off the final rank of
    every adapted matrix (layers x matrix type), against the uniform shares (MLP: 2 of 6 types; top
    half of the layers: 1/2), seed by seed.
Each contender trains at its own learning rate: a small sweep, every rate over all --seeds, the
best by mean final docs loss; the comparison then reads those runs (no extra runs). LoRA sweeps
--lrs (default --lora-lr / 3, x1, x10/3), AdaLoRA --adalora-lrs (default --lora-lr x1, x10/3, x10):
with Adam each lambda_i moves about lr per step whatever the matrix's width, while LoRA's B A grows
about sqrt(width) times faster, so AdaLoRA wants a higher rate (a one-seed check at the default
setup: 1.634 / 1.566 / 1.589 / 1.652 at 3e-3 / 1e-2 / 3e-2 / 1e-1). A best rate at the edge of its
grid is flagged in the JSON and the table. Differences count only beyond the seed spread.

Writes OUT/records.json, OUT/adalora.json (the summary), OUT/budget.png, OUT/final_ranks.png,
OUT/loss_curves.png and OUT/results.md.
"""
import argparse
import itertools
import os
import re
import statistics

import matplotlib.pyplot as plt
import numpy as np

from experiments.common import load_setup, make_parser, parse_targets, run_kwargs
from experiments.lr_sweep import parse_lrs
from experiments.plots import finish, write_report
from experiments.seeds import run_seeds, seed_list, separated, show, spread
from nanogpt.train import write_json

MATRIX_TYPES = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
MLP_TYPES = ("up_proj", "down_proj")


def default_lrs(lr, factors=(1 / 3, 1, 10 / 3)):
    """A small grid of rates around lr: by default lr / 3, lr, lr x 10/3 (1e-3, 3e-3, 1e-2 at 3e-3)."""
    return [float(f"{lr * f:.3g}") for f in factors]


def nonnegative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def number_flag(low, below=None):
    """An argparse type: a number >= low, and < below if given."""
    what = f"a number >= {low:g}" if below is None else f"a number in [{low:g}, {below:g})"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value >= low and (below is None or value < below)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


def layer_and_type(name):
    """'blocks.3.mlp.up_proj' -> (3, 'up_proj')."""
    match = re.fullmatch(r"blocks\.(\d+)\..*\.(\w+)", name)
    if match is None or match.group(2) not in MATRIX_TYPES:
        raise ValueError(f"cannot place {name!r} in the layers x matrix-types grid")
    return int(match.group(1)), match.group(2)


def rank_grid(final_ranks, n_layer):
    """{layer name: rank} -> (n_layer, 6) array, rows = layers, columns = MATRIX_TYPES; NaN = not adapted."""
    grid = np.full((n_layer, len(MATRIX_TYPES)), np.nan)
    for name, rank in final_ranks.items():
        layer, kind = layer_and_type(name)
        grid[layer, MATRIX_TYPES.index(kind)] = rank
    return grid


def shares(grid):
    """Where the kept triplets went: the MLP's share, and the top half of the layers' share."""
    total = np.nansum(grid)
    mlp = np.nansum(grid[:, [MATRIX_TYPES.index(t) for t in MLP_TYPES]])
    top = np.nansum(grid[(grid.shape[0] + 1) // 2:])  # with an odd layer count the middle one counts as bottom
    return {"mlp_share": float(mlp / total), "top_half_share": float(top / total)}


def uniform_shares(grid):
    """The same shares if every adapted matrix kept the same rank."""
    return shares(np.where(np.isnan(grid), np.nan, 1.0))


def seed_agreement(grids):
    """How alike the seeds' rank maps are: the mean correlation over pairs of seeds (None when a
    map is constant), and the fraction of matrices whose rank is the same in every seed."""
    flat = [g[~np.isnan(g)] for g in grids]
    correlations = [float(np.corrcoef(a, b)[0, 1]) for a, b in itertools.combinations(flat, 2)
                    if a.std() > 0 and b.std() > 0]
    same = np.all([f == flat[0] for f in flat], axis=0)
    return {"mean_pairwise_correlation": statistics.fmean(correlations) if correlations else None,
            "fraction_same_in_every_seed": float(same.mean())}


def side_of(values, uniform):
    """'above' / 'below' when every seed is on that side of the uniform share, else 'mixed'
    ('n/a' when the share cannot differ from uniform, as the top half of a one-layer model)."""
    if uniform in (0.0, 1.0):
        return "n/a"
    if all(v > uniform for v in values):
        return "above"
    if all(v < uniform for v in values):
        return "below"
    return "mixed"


def claim1_verdict(adalora, lora_same_budget):
    """From the two final docs-loss spreads: reproduced only when AdaLoRA is lower beyond the seed spread."""
    if separated(adalora, lora_same_budget):
        better = adalora["mean"] < lora_same_budget["mean"]
        return "reproduced" if better else "not reproduced: uniform LoRA is better"
    return "no difference beyond the seed spread (not at this scale)"


def claim2_verdict(mlp_side, top_side):
    found = [what for what, side in (("the MLP matrices", mlp_side), ("the top layers", top_side)) if side == "above"]
    if len(found) == 2:
        return "reproduced: more than their uniform share to the MLP matrices and to the top layers, in every seed"
    if found:
        return f"partly: more than the uniform share to {found[0]} in every seed, not to the other"
    return "not reproduced at this scale"


def mean_curve(runs, key):
    steps = [h["step"] for h in runs[0]["history"]]
    values = np.array([[h[key] for h in r["history"]] for r in runs])  # (seeds, evaluations)
    return steps, values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def plot_loss_curves(contenders, path, title):
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4))
    for ax, key, what in ((axes[0], "target_loss", "learning"), (axes[1], "source_loss", "forgetting")):
        for c in contenders:
            steps, mean, low, high = mean_curve(c["runs"], key)
            line, = ax.plot(steps[1:], mean[1:], label=f"{c['name']}, lr {c['lr']:g}")  # step 0: the base model
            ax.fill_between(steps[1:], low[1:], high[1:], color=line.get_color(), alpha=0.2)
        corpus = contenders[0]["runs"][0]["target_corpus" if key == "target_loss" else "source_corpus"]
        ax.set_title(f"{what}: {corpus} (lower is better)")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("validation loss (nats/byte)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, title="line: mean over seeds; band: their range", title_fontsize=8)
    return finish(fig, title, path)


def plot_budget(adalora_runs, n_matrices, target_r, init_r, phases, path, title):
    """Left: the budget b(t), the total kept triplets, with the uniform LoRA ranks' totals. Right: the
    mean rank per matrix type at every reallocation (mean over layers and seeds)."""
    fig, (ax_b, ax_t) = plt.subplots(1, 2, figsize=(12, 4.4))
    budget = adalora_runs[0]["adalora"]["budget"]
    ax_b.plot(range(len(budget)), budget, color="#4C72B0", label="AdaLoRA budget b(t)")
    for r, style in ((target_r, "--"), (init_r, ":")):
        ax_b.axhline(n_matrices * r, color="gray", linestyle=style, label=f"LoRA r={r}: {n_matrices * r} in all")
    t_init, final_start = phases
    for ax in (ax_b, ax_t):
        ax.axvspan(0, t_init, color="#DDDDDD", alpha=0.5, lw=0)
        ax.axvspan(final_start, len(budget), color="#DDDDDD", alpha=0.5, lw=0)
        ax.set_xlabel("fine-tuning step (shaded: warm-up, then the fixed final mask)")
        ax.set_xlim(0, len(budget))
        ax.grid(alpha=0.3)
    ax_b.set_ylim(0, n_matrices * init_r * 1.1)
    ax_b.set_ylabel(f"kept triplets, summed over {n_matrices} matrices")
    ax_b.set_title("the global budget")
    ax_b.legend(fontsize=8, loc="lower left")
    steps = [a["step"] for a in adalora_runs[0]["adalora"]["allocations"]]
    for kind in MATRIX_TYPES:
        means = []
        for i in range(len(steps)):
            values = [rank for run in adalora_runs
                      for name, rank in run["adalora"]["allocations"][i]["ranks"].items()
                      if layer_and_type(name)[1] == kind]
            means.append(statistics.fmean(values) if values else np.nan)
        ax_t.plot(steps, means, marker=".", label=kind, linestyle="--" if kind in MLP_TYPES else "-")
    ax_t.axhline(target_r, color="gray", linestyle="--", linewidth=1)
    ax_t.set_ylim(0, init_r + 0.5)
    ax_t.set_ylabel("mean rank at each reallocation (over layers and seeds)")
    ax_t.set_title("where it goes, by matrix type (dashed: MLP)")
    ax_t.legend(fontsize=8, ncol=2, loc="lower left")
    return finish(fig, title, path)


def plot_final_ranks(grids, init_r, agreement, path, title):
    """Left: the mean final rank of each matrix (rows = layers, top layer on top), every seed's value
    written in its cell. Right: the seeds' range (max - min) per matrix."""
    stack = np.stack(grids)  # (seeds, layers, types)
    mean, spread_ = stack.mean(axis=0), stack.max(axis=0) - stack.min(axis=0)
    n_layer = mean.shape[0]
    fig, (ax_m, ax_s) = plt.subplots(1, 2, figsize=(12, 1.2 + 0.75 * n_layer + 1.5))
    for ax, data, vmax, cmap, what in ((ax_m, mean, init_r, "viridis", "mean final rank (kept triplets)"),
                                       (ax_s, spread_, init_r, "Reds", "range over seeds (max - min)")):
        image = ax.imshow(data, origin="lower", aspect="auto", vmin=0, vmax=vmax, cmap=cmap)
        fig.colorbar(image, ax=ax, label=what)
        ax.set_xticks(range(len(MATRIX_TYPES)), MATRIX_TYPES)
        ax.set_yticks(range(n_layer), [f"layer {i}" for i in range(n_layer)])
        ax.set_xlabel("matrix type")
        ax.set_ylabel("layer (top of the network at the top)")
    for i in range(n_layer):
        for j in range(len(MATRIX_TYPES)):
            if not np.isnan(mean[i, j]):
                ax_m.text(j, i, "/".join(f"{v:.0f}" for v in stack[:, i, j]), ha="center", va="center", fontsize=8,
                          color="white" if mean[i, j] < 0.6 * init_r else "black")
                ax_s.text(j, i, f"{spread_[i, j]:.0f}", ha="center", va="center", fontsize=8)
    corr = agreement["mean_pairwise_correlation"]
    ax_m.set_title("final rank of every adapted matrix (cell text: each seed's)")
    ax_s.set_title(f"seed agreement: mean pairwise correlation {'n/a' if corr is None else f'{corr:.2f}'}, "
                   f"{100 * agreement['fraction_same_in_every_seed']:.0f}% of cells equal", fontsize=9)
    return finish(fig, title, path)


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/adalora")
    p.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per run (3+ to call a difference)")
    p.add_argument("--lrs", type=lambda t: parse_lrs(t, "--lrs"),
                   help="learning rates swept for each LoRA contender (default: --lora-lr / 3, x1, x10/3)")
    p.add_argument("--adalora-lrs", type=lambda t: parse_lrs(t, "--adalora-lrs"),
                   help="learning rates swept for AdaLoRA (default: --lora-lr x1, x10/3, x10)")
    p.add_argument("--init-r", type=int, default=12, help="AdaLoRA's initial rank per matrix")
    p.add_argument("--target-r", type=int, default=8,
                   help="AdaLoRA's final rank per matrix, on average; LoRA runs at this rank and at --init-r")
    p.add_argument("--t-init", type=nonnegative_int,
                   help="AdaLoRA warm-up steps before pruning (default: a tenth of --max-iters)")
    p.add_argument("--t-final", type=nonnegative_int,
                   help="steps at the fixed final mask (default: a third of --max-iters)")
    p.add_argument("--delta-t", type=int, help="steps between reallocations (default: --max-iters / 60, at least 1)")
    p.add_argument("--beta1", type=number_flag(0, 1), default=0.85, help="EMA of the sensitivity (the paper's 0.85)")
    p.add_argument("--beta2", type=number_flag(0, 1), default=0.85, help="EMA of its uncertainty (the paper's 0.85)")
    p.add_argument("--gamma", type=number_flag(0), default=0.1,
                   help="weight of the orthogonality regulariser (the paper's 0.1; its code and PEFT weigh the "
                        "mean of unsquared norms, we the sum of squares the paper writes)")
    p.add_argument("--no-pruning-control", action="store_true",
                   help="also run AdaLoRA with target_r = init_r (the SVD form, the regulariser, nothing pruned): "
                        "tells what the pruning does apart from the parameterisation")
    args = p.parse_args(argv)
    t_init = args.max_iters // 10 if args.t_init is None else args.t_init
    t_final = args.max_iters // 3 if args.t_final is None else args.t_final
    delta_t = max(1, args.max_iters // 60) if args.delta_t is None else args.delta_t
    if t_init + t_final >= args.max_iters or delta_t < 1:  # checked before the base model is trained
        p.error(f"--t-init + --t-final = {t_init} + {t_final} must be less than --max-iters={args.max_iters}, "
                f"and --delta-t={delta_t} at least 1")
    if not 1 <= args.target_r <= args.init_r:
        p.error(f"--target-r={args.target_r} must be in 1..--init-r={args.init_r}")
    lrs = args.lrs or default_lrs(args.lora_lr)
    adalora_lrs = args.adalora_lrs or default_lrs(args.lora_lr, (1, 10 / 3, 10))
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    kwargs.pop("seed")
    seeds = seed_list(args.seed, args.seeds)
    targets = parse_targets(args.targets)

    lora = {"method": "lora", "variant": "lora", "alpha": args.alpha, "targets": targets}
    adalora = {"method": "lora", "variant": "adalora", "r": args.init_r, "target_r": args.target_r, "alpha": args.alpha,
               "targets": targets, "t_init": t_init, "t_final": t_final, "delta_t": delta_t, "beta1": args.beta1,
               "beta2": args.beta2, "gamma": args.gamma}
    plan = [(f"AdaLoRA {args.init_r}->{args.target_r}", adalora, adalora_lrs),
            (f"LoRA r={args.target_r}", {**lora, "r": args.target_r}, lrs),
            (f"LoRA r={args.init_r}", {**lora, "r": args.init_r}, lrs)]
    if args.no_pruning_control:
        plan.append((f"AdaLoRA {args.init_r}->{args.init_r} (no pruning)", {**adalora, "target_r": args.init_r},
                     adalora_lrs))
    n_runs = sum(len(rates) for _, _, rates in plan) * len(seeds)
    print(f"{n_runs} runs: {len(plan)} contenders x their rates x {len(seeds)} seeds")
    sweep, contenders, records = [], [], []
    for name, spec, rates in plan:
        by_lr = []
        for lr in rates:
            print(f"fine-tuning: {name}, lr {lr:g}, seeds {seeds}")
            runs = run_seeds(base, base_key, {**spec, "lr": lr}, target, source, seeds, **kwargs)
            records += runs
            by_lr.append((lr, runs))
        means = [statistics.fmean(r["final_target_loss"] for r in runs) for _, runs in by_lr]
        best = min(range(len(rates)), key=means.__getitem__)
        sweep.append({"name": name, "lrs": rates, "mean_final_target_loss": means, "best_lr": rates[best],
                      "best_at_grid_edge": best in (0, len(rates) - 1)})
        contenders.append({"name": name, "lr": rates[best], "runs": by_lr[best][1]})

    ada = contenders[0]
    n_layer = base.config.n_layer
    grids = [rank_grid(r["adalora"]["final_ranks"], n_layer) for r in ada["runs"]]
    n_matrices = int(np.sum(~np.isnan(grids[0])))
    per_seed = [shares(g) for g in grids]
    uniform = uniform_shares(grids[0])
    agreement = seed_agreement(grids)
    mlp_values = [s["mlp_share"] for s in per_seed]
    top_values = [s["top_half_share"] for s in per_seed]
    mean_grid = np.stack(grids).mean(axis=0)
    rows = []
    for c in contenders:
        runs = c["runs"]
        row = {"name": c["name"], "lr": c["lr"], "trainable_params": runs[0]["trainable_params"],
               "final_target_loss": spread([r["final_target_loss"] for r in runs]),
               "final_source_loss": spread([r["final_source_loss"] for r in runs]),
               "saved_bytes": spread([r["saved_bytes"] for r in runs])}
        if "adalora" in runs[0]:  # what is left after pruning
            row["final_params"] = spread([r["adalora"]["final_params"] for r in runs])
        else:
            row["final_params"] = spread([r["trainable_params"] for r in runs])
        rows.append(row)
    claim1 = claim1_verdict(rows[0]["final_target_loss"], rows[1]["final_target_loss"])
    mlp_side, top_side = side_of(mlp_values, uniform["mlp_share"]), side_of(top_values, uniform["top_half_share"])
    summary = {
        "seeds": seeds,
        "settings": {k: adalora[k] for k in ("r", "target_r", "alpha", "t_init", "t_final", "delta_t", "beta1",
                                               "beta2", "gamma")} | {"targets": targets, "steps": args.max_iters},
        "sweep": sweep,
        "contenders": rows,
        "allocation": {
            "layers": list(range(n_layer)), "matrix_types": MATRIX_TYPES,
            "final_ranks_per_seed": [[[None if np.isnan(v) else int(v) for v in row] for row in g] for g in grids],
            "mean_final_rank": [[None if np.isnan(v) else float(v) for v in row] for row in mean_grid],
            "mean_rank_by_type": {t: float(np.nanmean(mean_grid[:, j])) for j, t in enumerate(MATRIX_TYPES)},
            "mean_rank_by_layer": [float(np.nanmean(row)) for row in mean_grid],
            "seed_agreement": agreement,
            "mlp_share": spread(mlp_values), "mlp_share_uniform": uniform["mlp_share"], "mlp_side": mlp_side,
            "top_half_share": spread(top_values), "top_half_share_uniform": uniform["top_half_share"],
            "top_half_side": top_side,
        },
        "claims": {
            "1_equal_budget_beats_uniform_lora": {
                "adalora": rows[0]["final_target_loss"], "lora_same_budget": rows[1]["final_target_loss"],
                "lora_init_rank": rows[2]["final_target_loss"],
                "separated": separated(rows[0]["final_target_loss"], rows[1]["final_target_loss"]),
                "verdict": claim1},
            "2_budget_to_mlp_and_top_layers": {"mlp_side": mlp_side, "top_half_side": top_side,
                                               "verdict": claim2_verdict(mlp_side, top_side)},
        },
    }
    write_json(records, os.path.join(args.out, "records.json"))
    write_json(summary, os.path.join(args.out, "adalora.json"))
    title = (f"AdaLoRA vs LoRA: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, "
             f"alpha {args.alpha:g}, {len(seeds)} seeds, {device}")
    plot_loss_curves(contenders, os.path.join(args.out, "loss_curves.png"), title)
    plot_budget(ada["runs"], n_matrices, args.target_r, args.init_r, (t_init, args.max_iters - t_final),
                os.path.join(args.out, "budget.png"), title)
    plot_final_ranks(grids, args.init_r, agreement, os.path.join(args.out, "final_ranks.png"), title)

    lines = ["| run | best lr | trainable params (training) | params kept at the end | final docs loss mean "
             "(min to max) | final code loss mean (min to max) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['lr']:g} | {row['trainable_params']:,} | "
                     f"{row['final_params']['mean']:,.0f} | {show(row['final_target_loss'])} | "
                     f"{show(row['final_source_loss'])} |")
    lines += ["", "Mean final docs loss at each rate (the best of each row is the one used above):", "",
              "| run | mean final docs loss by rate |", "| --- | --- |"]
    for s in sweep:
        cells = ", ".join(f"{lr:g}: {m:.3f}" for lr, m in zip(s["lrs"], s["mean_final_target_loss"]))
        lines.append(f"| {s['name']} | {cells}{' (best at the grid edge)' if s['best_at_grid_edge'] else ''} |")
    lines += ["", f"Final ranks (kept triplets; rows = layers, columns {', '.join(MATRIX_TYPES)}), mean over seeds:", ""]
    lines += ["| layer | " + " | ".join(MATRIX_TYPES) + " |", "| --- |" + " ---: |" * len(MATRIX_TYPES)]
    for i in reversed(range(n_layer)):
        lines.append(f"| {i} | " + " | ".join("" if np.isnan(v) else f"{v:.1f}" for v in mean_grid[i]) + " |")
    lines += ["", f"MLP share of the kept triplets: {show(spread(mlp_values))} (uniform {uniform['mlp_share']:.3f}; "
              f"{mlp_side}). Top half of the layers: {show(spread(top_values))} (uniform "
              f"{uniform['top_half_share']:.3f}; {top_side}).",
              f"Claim 1 (equal final budget beats uniform LoRA): {claim1}.",
              f"Claim 2 (budget to the MLP and the top layers): {claim2_verdict(mlp_side, top_side)}."]
    table = write_report(os.path.join(args.out, "results.md"), "AdaLoRA", title, "\n".join(lines) + "\n")
    print(table)
    print(f"wrote {args.out}/records.json, adalora.json, budget.png, final_ranks.png, loss_curves.png, results.md")


if __name__ == "__main__":
    main()
