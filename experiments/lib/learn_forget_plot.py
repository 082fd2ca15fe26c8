"""learn_forget's figure (experiments/learn_forget.py), and which LoRA settings its "one curve"
claim is judged on: those on LoRA's front of seed means on validation, marked in the figure."""
import matplotlib.pyplot as plt

from experiments.lib.pareto import pareto_front
from experiments.lib.plots import finish


def mean_point(row):
    return (row["target_loss"]["mean"], row["source_loss"]["mean"])


def judged(lora_rows):
    """The names of the LoRA settings the "one curve" claim is judged on: those on LoRA's front of
    seed-mean points on validation (a choice, so never read off the test half the tables report).
    Records without a test split have only validation: their on_front is that same front."""
    if not all("val_target_loss" in row for row in lora_rows):
        return {row["name"] for row in lora_rows if row["on_front"]}
    points = {row["name"]: (row["val_target_loss"]["mean"], row["val_source_loss"]["mean"]) for row in lora_rows}
    vertices = set(pareto_front(list(points.values())))
    return {name for name, point in points.items() if point in vertices}


def plot_learn_forget(rows, fronts, base, path, title):
    """Left: every setting's seed-mean point (bars: 95% CI) and both fronts. Right: LoRA's source
    loss minus full's front at the same target loss, per LoRA setting."""
    fig, (ax, ax_d) = plt.subplots(1, 2, figsize=(13, 5.4), gridspec_kw={"width_ratios": [1.3, 1]})
    lora_ranks = sorted({row["r"] for row in rows if row["method"] == "lora"})
    colors = dict(zip(lora_ranks, plt.cm.viridis([i / max(1, len(lora_ranks) - 1) for i in range(len(lora_ranks))])))
    full_steps = sorted({row["steps"] for row in rows if row["method"] == "full"})
    greys = dict(zip(full_steps, plt.cm.Greys([0.45 + 0.55 * i / max(1, len(full_steps) - 1)
                                               for i in range(len(full_steps))])))

    def ci(s):
        return s["ci"] if s["n"] > 1 else 0

    labelled = set()
    for row in rows:
        full = row["method"] == "full"
        key = ("full", row["steps"]) if full else ("lora", row["r"])
        label = None if key in labelled else (f"full fine-tuning, {row['steps']} steps" if full else f"LoRA r={row['r']}")
        labelled.add(key)
        x, y = mean_point(row)
        ax.errorbar(x, y, xerr=ci(row["target_loss"]), yerr=ci(row["source_loss"]), marker="s" if full else "o",
                    color=greys[row["steps"]] if full else colors[row["r"]], markersize=6, capsize=2,
                    linestyle="none", label=label, zorder=3)
    for method, style in (("full", dict(color="black", linestyle="--")), ("lora", dict(color="#4C72B0"))):
        v = fronts[method]
        ax.plot([p["target_loss"] for p in v], [p["source_loss"] for p in v], linewidth=1.5, zorder=2,
                label=f"{'full fine-tuning' if method == 'full' else 'LoRA'}'s front", **style)
    ax.scatter([base[0]], [base[1]], marker="*", s=200, color="gray", zorder=3, label="base model (start)")
    ax.set_xlabel("final target loss, docs (nats/byte; left = learned more)")
    ax.set_ylabel("final source loss, code (nats/byte; up = forgot more)")
    ax.set_title("every run setting: mean over seeds (bars: 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)

    shown = [row for row in rows if row["method"] == "lora" and row["above_full_front"] is not None]
    chosen = judged([row for row in rows if row["method"] == "lora"])
    for row in shown:
        d = row["above_full_front"]
        ax_d.errorbar(row["target_loss"]["mean"], d["mean"], yerr=ci(d), marker="o", color=colors[row["r"]],
                      capsize=3, linestyle="none", markeredgecolor="black" if row["name"] in chosen else "none")
    ax_d.axhline(0, color="black", linestyle="--", label="on full fine-tuning's front")
    ax_d.set_xlabel("LoRA's final target loss, docs (nats/byte)")
    ax_d.set_ylabel("LoRA's source loss minus full's front there (nats/byte)")
    ax_d.set_title("above 0: LoRA forgot more than full fine-tuning\nat the same amount learned (black edge: judged, on LoRA's front on validation)")
    ax_d.grid(alpha=0.3)
    ax_d.legend(fontsize=8)
    return finish(fig, title, path)
