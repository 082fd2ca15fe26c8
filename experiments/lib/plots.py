"""Plots and tables from run records: each figure readable without the code."""
import os

import matplotlib.pyplot as plt  # headless machines fall back to the Agg backend by themselves

from experiments.lib.finetune import reported_loss, reported_on

MIB = 1024 ** 2  # memory in MiB (2^20 bytes), files in KiB (2^10)
MEMORY_PARTS = [("params", "weights"), ("grads", "gradients"), ("optimizer", "optimizer state"),
                ("activations", "activations")]
PART_COLORS = {"params": "#4C72B0", "grads": "#DD8452", "optimizer": "#C44E52", "activations": "#8C8C8C"}


def lr_text(lr):
    """A learning rate as people write it: 1.8e-3, 5.6e-4, 1e-2."""
    mantissa, exponent = f"{lr:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def label(record):
    if record["method"] == "full":
        return "full fine-tuning"
    variant = record.get("variant") or "lora"
    name = "LoRA" if variant == "lora" else variant
    if record.get("quantize"):  # QLoRA: LoRA on a 4-bit base
        name = f"QLoRA ({record['quantize'].upper()})" if variant == "lora" else f"{name} ({record['quantize']})"
    return f"{name} r={record['r']}"


def save(fig, path):
    """Write to a temporary file and rename, so a reader never sees half a PNG."""
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def finish(fig, title, path):
    """The figure's overall title, a tight layout, and the atomic save."""
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def plot_loss_curves(records, path, title):
    """Validation loss on the target corpus (learning) and the source corpus (forgetting)."""
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(11, 4.2))
    for rec in records:
        steps = [h["step"] for h in rec["history"]]
        style = dict(color="black", linewidth=2.2, linestyle="--") if rec["method"] == "full" else {}
        ax_t.plot(steps, [h["target_loss"] for h in rec["history"]], label=label(rec), **style)
        ax_s.plot(steps, [h["source_loss"] for h in rec["history"]], label=label(rec), **style)
    first = records[0]
    ax_t.set_title(f"learning: {first['target_corpus']} (lower is better)")
    ax_s.set_title(f"forgetting: {first['source_corpus']} (lower is better)")
    for ax in (ax_t, ax_s):
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("validation loss (nats/byte)")
        ax.grid(alpha=0.3)
    ax_s.legend(fontsize=8, loc="best")
    return finish(fig, title, path)


def log2_axis(ax, values, xlabel):
    """A log2 x axis labelled at exactly the values run (ranks or batch sizes)."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(values, [str(v) for v in values])
    ax.set_xlabel(f"{xlabel} (log scale)")
    ax.grid(alpha=0.3)


def plot_memory_bars(ax, records):
    """Stacked bars of measured memory by part, with the CUDA allocator's peak when there is one."""
    names = [label(r) for r in records]
    bottom = [0.0] * len(records)
    for key, part in MEMORY_PARTS:
        values = [r["memory"][key] / MIB for r in records]
        ax.bar(names, values, bottom=bottom, label=part, color=PART_COLORS[key])
        bottom = [b + v for b, v in zip(bottom, values)]
    for i, total in enumerate(bottom):
        ax.text(i, total, f"{total:.1f} MiB", ha="center", va="bottom", fontsize=8)
    peaks = [r["memory"].get("cuda_peak") for r in records]
    if any(p is not None for p in peaks):
        ax.scatter(names, [(p or 0) / MIB for p in peaks], marker="_", s=600, color="black", zorder=3,
                   label="CUDA allocator peak")
    ax.set_ylabel("memory (MiB)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)
    ax.tick_params(axis="x", labelrotation=20)
    ax.margins(y=0.1)


def plot_memory_vs_batch(rows, path, title):
    """Total training memory of each method against the batch size, and LoRA's share of full's.

    rows: [{"batch_size": int, "full": memory dict, "lora": memory dict}]."""
    batches = [r["batch_size"] for r in rows]
    totals = {m: [sum(r[m][k] for k, _ in MEMORY_PARTS) / MIB for r in rows] for m in ("full", "lora")}
    fig, (ax_m, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, name, color in (("full", "full fine-tuning", "black"), ("lora", "LoRA", "#4C72B0")):
        ax_m.plot(batches, totals[method], "o-", color=color, label=f"{name}: total")
        ax_m.plot(batches, [r[method]["activations"] / MIB for r in rows], ":", color=color,
                  label=f"{name}: activations alone")
    log2_axis(ax_m, batches, "batch size in sequences")
    ax_m.set_yscale("log")
    ax_m.set_ylabel("training memory (MiB, log scale)")
    ax_m.set_title("memory grows with the batch: activations")
    ax_m.legend(fontsize=8)
    ratio = [lo / fu for lo, fu in zip(totals["lora"], totals["full"])]
    ax_r.plot(batches, ratio, "o-", color="#C44E52")
    ax_r.axhline(0.25, color="gray", linestyle=":", label="the limit when weights dominate: 4 of 16 bytes per parameter")
    log2_axis(ax_r, batches, "batch size in sequences")
    ax_r.set_ylim(0, 1.05)
    ax_r.set_ylabel("LoRA memory / full fine-tuning memory")
    ax_r.set_title("LoRA's saving shrinks as activations grow")
    ax_r.legend(fontsize=8)
    return finish(fig, title, path)


def plot_costs(records, path, title):
    """Memory by part, and the size of what must be saved (log scale). No step time: these runs may
    share the machine with others, so their times are noise; experiments/bench/lora.py times steps in turns."""
    fig, (ax_m, ax_c) = plt.subplots(1, 2, figsize=(10, 4.4))
    names = [label(r) for r in records]
    plot_memory_bars(ax_m, records)
    ax_m.set_title("training memory by part (measured)")
    sizes = [r["saved_bytes"] / 1024 for r in records]
    ax_c.bar(names, sizes, color="#8172B3")
    ax_c.set_yscale("log")
    ax_c.set_ylim(min(sizes) / 2, max(sizes) * 3)  # room for the labels above the bars
    for i, s in enumerate(sizes):
        ax_c.text(i, s, f"{s:,.0f} KiB", ha="center", va="bottom", fontsize=8)
    ax_c.set_ylabel("file size (KiB, log scale)")
    ax_c.set_title("what must be saved: checkpoint vs adapter")
    ax_c.tick_params(axis="x", labelrotation=20)
    return finish(fig, title, path)


def write_report(path, heading, title, table):
    """OUT/results.md: a heading, the setup, and a table; written atomically. Returns the table."""
    with open(path + ".tmp", "w") as f:
        f.write(f"# {heading}\n\n{title}\n\n{table}")
    os.replace(path + ".tmp", path)
    return table


def write_markdown(path, heading, title, records):
    """OUT/results.md with the standard table of run records. Returns the table."""
    return write_report(path, heading, title, markdown_table(records))


def markdown_table(records):
    """One row per run: the numbers a reader compares. No step time: runs may share the machine, and
    a time taken so is noise (experiments/bench/lora.py times steps in turns)."""
    rows = ["| run | trainable params | target loss | source loss | memory (MiB): weights / grads / optimizer / "
            "activations | saved file (KiB) |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        m = r["memory"]
        rows.append(
            f"| {label(r)} | {r['trainable_params']:,} ({100 * r['trainable_params'] / r['total_params']:.2f}%) | "
            f"{reported_loss(r, 'target'):.3f} | {reported_loss(r, 'source'):.3f} | "
            f"{m['params'] / MIB:.2f} / {m['grads'] / MIB:.2f} / {m['optimizer'] / MIB:.2f} / {m['activations'] / MIB:.2f} | "
            f"{r['saved_bytes'] / 1024:,.1f} |"
        )
    base = records[0]
    rows.append(f"\nLosses on {reported_on(base)} text. Base model before fine-tuning: target loss "
                f"{reported_loss(base, 'target', 'base'):.3f}, source loss {reported_loss(base, 'source', 'base'):.3f} (nats/byte).")
    return "\n".join(rows) + "\n"
