"""The AdaLoRA experiment's figures (experiments/adalora.py): the loss curves of every contender,
the budget b(t) with the rank by matrix type at each reallocation, and the final rank map."""
import statistics

import matplotlib.pyplot as plt
import numpy as np

from experiments.lib.plots import finish
from experiments.lib.rank_maps import MATRIX_TYPES, MLP_TYPES, layer_and_type


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
                ax_m.text(j, i, "/".join(f"{v:.0f}" for v in stack[:, i, j]), ha="center", va="center",
                          fontsize=8 if len(stack) <= 3 else 6,  # five seeds' numbers must fit a cell
                          color="white" if mean[i, j] < 0.6 * init_r else "black")
                ax_s.text(j, i, f"{spread_[i, j]:.0f}", ha="center", va="center", fontsize=8)
    corr = agreement["mean_pairwise_correlation"]
    ax_m.set_title("final rank of every adapted matrix (cell text: each seed's)")
    ax_s.set_title(f"seed agreement: mean pairwise correlation {'n/a' if corr is None else f'{corr:.2f}'}, "
                   f"{100 * agreement['fraction_same_in_every_seed']:.0f}% of cells equal", fontsize=9)
    return finish(fig, title, path)
