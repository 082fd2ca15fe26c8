"""The plots and the write-up of experiments/scale.py, from its records alone: every number in
docs/scale.md is computed here from OUT/scale.json or by the cost model, none typed by hand.

    python -m experiments.scale --report     # or write_report("results/scale/scale.json", ...)

It also writes OUT/extrapolation.json: the cost model, validated on the measured sizes, applied to
GPT-3 175B (LoRA paper) and to a 65B LLaMA shape with QLoRA (QLoRA paper), beside the papers'
numbers (lib/extrapolation.py).
"""
import json
import os
import statistics

import matplotlib.pyplot as plt
import numpy as np

from experiments.lib import cost_model
from experiments.lib.cost_model import Shape, predict
from experiments.lib.extrapolation import (GPT3_FAMILY, MiB, extrapolate, extrapolation_markdown, fmt_bytes,
                                           plot_extrapolation)
from experiments.lib.plots import PART_COLORS, save
from nanogpt.presets import config_from_preset
from nanogpt.train import write_json

PART_LABELS = {"weights": "weights", "grads": "gradients", "optimizer": "optimizer state", "activations": "activations"}
PARTS = tuple(PART_LABELS)
VARIANT_LABELS = {"full": "full fine-tuning", "lora": "LoRA r=8, six linears", "lora-qv": "LoRA r=4, q and v",
                  "floor": "floor (all weights frozen)", "qlora": "QLoRA r=8, NF4 base"}
VARIANT_COLORS = {"full": "black", "lora": "#4C72B0", "lora-qv": "#55A868", "floor": "#8C8C8C", "qlora": "#C44E52"}
BUSY = 0.5  # load average per core before the run above which the write-up warns that timings are unreliable


def curve_shapes(block_size):
    """(name, Shape) from the tiny GPT up to GPT-3 175B, byte vocabulary, block_size positions (GPT-3
    760M rather than gpt2-large, which is about as big but deeper and narrower)."""
    shapes = [(name, cost_model.shape_of(config_from_preset(name, block_size=block_size)))
              for name in ("tiny", "small", "gpt2-small", "gpt2-medium")]
    shapes += [(name, Shape(n_layer, n_head, width, 256, block_size)) for name, n_layer, n_head, width in GPT3_FAMILY]
    return sorted(shapes, key=lambda item: sum(cost_model.parameter_counts(item[1])[0].values()))


def measured_total(variant, batch=None):
    """Weights + gradients + optimizer state + saved activations, measured (at the run's batch, or at batch)."""
    memory = variant["memory"]["measured"]
    activations = memory["activations"] if batch is None else variant["activations_by_batch"][str(batch)]["measured"]
    return memory["weights"] + memory["grads"] + memory["optimizer"] + activations


def predicted_ratio(shape, spec, batch, seq_len):
    lora = predict(shape, spec["method"], spec["r"], spec["targets"], batch, seq_len)["bytes"]["total"]
    return lora / predict(shape, "full", batch_size=batch, seq_len=seq_len)["bytes"]["total"]


# -- plots ----------------------------------------------------------------------------------

def plot_memory_by_part(data, path):
    """Memory by part against model size, full fine-tuning and LoRA side by side, log axes."""
    sizes = data["sizes"]
    params = [s["variants"]["full"]["total_params"] for s in sizes]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, name in zip(axes, ("full", "lora")):
        for part in PARTS:
            measured = [max(s["variants"][name]["memory"]["measured"][part], 1) / MiB for s in sizes]
            predicted = [max(s["variants"][name]["memory"]["predicted"][part], 1) / MiB for s in sizes]
            ax.plot(params, predicted, color=PART_COLORS[{"weights": "params"}.get(part, part)], linewidth=1.2)
            color = PART_COLORS[{"weights": "params"}.get(part, part)]
            hollow = part == "weights"  # full fine-tuning's gradients equal its weights: both must show
            ax.scatter(params, measured, s=70 if hollow else 24, facecolor="none" if hollow else color,
                       edgecolor=color, linewidth=1.5, label=f"{PART_LABELS[part]}", zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("model parameters (log scale)")
        ax.set_title(VARIANT_LABELS[name])
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("memory (MiB, log scale)")
    axes[0].legend(title="dots measured, lines predicted", fontsize=8, title_fontsize=8)
    batch, block = data["settings"]["batch_size"], data["settings"]["block_size"]
    fig.suptitle(f"Memory by part against model size (fp32, AdamW, batch {batch} x {block} tokens)")
    fig.tight_layout()
    return save(fig, path)


def plot_memory_ratio(data, path):
    """LoRA's memory over full fine-tuning's against size at each --memory-batches, with the 4/16 limit."""
    block = data["settings"]["block_size"]
    shapes = curve_shapes(block)
    x_curve = [sum(cost_model.parameter_counts(s)[0].values()) for _, s in shapes]
    fig, ax = plt.subplots(figsize=(8, 4.6))
    styles = ["-", "--", ":", "-."]
    for name in ("lora", "lora-qv"):
        if name not in data["variants"]:
            continue
        spec = data["variants"][name]
        for style, batch in zip(styles, data["settings"]["memory_batches"]):
            ratios = [predicted_ratio(s, spec, batch, block) for _, s in shapes]
            ax.plot(x_curve, ratios, style, color=VARIANT_COLORS[name], linewidth=1.2,
                    label=f"{VARIANT_LABELS[name]}, batch {batch}: predicted")
            measured = [(s["variants"]["full"]["total_params"],
                         measured_total(s["variants"][name], batch) / measured_total(s["variants"]["full"], batch))
                        for s in data["sizes"]]
            ax.scatter(*zip(*measured), color=VARIANT_COLORS[name], marker="o" if style == "-" else "s", s=30,
                       label=f"{VARIANT_LABELS[name]}, batch {batch}: measured")
    ax.axhline(0.25, color="black", linewidth=0.8, linestyle=(0, (1, 3)))
    ax.text(x_curve[0], 0.24, "the limit: 4 of 16 bytes per parameter", fontsize=8, va="top")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("model parameters (log scale; past GPT-2 medium: predicted, GPT-3 shapes)")
    ax.set_ylabel("LoRA memory / full fine-tuning memory")
    ax.set_title(f"LoRA's share of full fine-tuning's memory ({block}-token sequences, fp32, AdamW)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    fig.tight_layout()
    return save(fig, path)


def plot_speedup(data, path):
    """Full fine-tuning's step time over each variant's, measured (median, quartiles) and by FLOPs."""
    sizes = data["sizes"]
    params = [s["variants"]["full"]["total_params"] for s in sizes]
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for name in data["variants"]:
        if name == "full":
            continue
        key = f"{name}/full"
        median = [1 / s["ratios"][key]["step"]["median"] for s in sizes]
        low = [m - 1 / s["ratios"][key]["step"]["q3"] for m, s in zip(median, sizes)]
        high = [1 / s["ratios"][key]["step"]["q1"] - m for m, s in zip(median, sizes)]
        ax.errorbar(params, median, yerr=[low, high], marker="o", capsize=3, color=VARIANT_COLORS[name],
                    label=f"{VARIANT_LABELS[name]}: measured")
        if name in ("lora", "floor"):
            ax.plot(params, [1 / s["ratios"][key]["flop_model"] for s in sizes], "--", color=VARIANT_COLORS[name],
                    linewidth=1, label=f"{VARIANT_LABELS[name]}: FLOP model")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_ylim(0, max(1.8, ax.get_ylim()[1]))
    ax.set_xlabel("model parameters (log scale)")
    ax.set_ylabel("speed-up over full fine-tuning (x)")
    threads = f"{data['threads']} thread" + ("s" if data["threads"] != 1 else "")
    ax.set_title(f"Training step speed-up against size ({data['device']}, {threads}; "
                 f"bars: quartiles of same-round ratios)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def plot_file_sizes(data, path, extrapolation):
    """Checkpoint and adapter file sizes against model size, with GPT-3 175B predicted and the paper's."""
    sizes = data["sizes"]
    params = [s["variants"]["full"]["total_params"] for s in sizes]
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for name in data["variants"]:
        files = [s["variants"][name]["file"] for s in sizes]
        if files[0] is None:
            continue
        label = "full checkpoint" if name == "full" else f"adapter: {VARIANT_LABELS[name]}"
        ax.scatter(params, [f["measured"] for f in files], color=VARIANT_COLORS[name], s=36 if name != "qlora" else 20,
                   marker="o" if name != "qlora" else "x", label=f"{label} (measured)", zorder=3)
        spec = data["variants"][name]
        kind = "checkpoint" if name == "full" else "adapter"
        shapes = curve_shapes(data["settings"]["block_size"])
        curve = [predict(shape, spec["method"], spec["r"] or 8, spec["targets"] or "all-linear", seq_len=8)
                 for _, shape in shapes]
        ax.plot([c["total_params"] - (c["trainable_params"] if name != "full" else 0) for c in curve],
                [c["files"][kind] for c in curve], ":", color=VARIANT_COLORS[name], linewidth=1)
    gpt3 = {row["key"]: row for row in extrapolation["rows"]}
    n = extrapolation["gpt3_params"]
    for key, color in (("gpt3_checkpoint", "black"), ("gpt3_adapter", VARIANT_COLORS["lora-qv"])):
        ax.scatter([n], [gpt3[key]["ours"]], marker="D", facecolor="none", color=color, s=40,
                   label=f"GPT-3 175B, fp16: {gpt3[key]['what']} (cost model)")
        ax.scatter([n], [gpt3[key]["paper"]], marker="*", color=color, s=90, label=f"GPT-3 175B: LoRA paper's {key[5:]}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model parameters (log scale)")
    ax.set_ylabel("file size (bytes, log scale)")
    ax.set_title("What must be saved: the whole model against the adapter\n"
                 "(dotted: predicted payload, fp32, our shapes up to GPT-3 175B's)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def plot_where_lora_pays(data, path):
    """A map over model size and batch of LoRA's predicted memory share, with the measured points."""
    block = data["settings"]["block_size"]
    shapes = curve_shapes(block)
    x = np.array([sum(cost_model.parameter_counts(s)[0].values()) for _, s in shapes], dtype=float)
    batches = np.array([1, 2, 4, 8, 16, 32, 64, 128])
    spec = cost_model_spec(data, "lora")
    ratio = np.array([[predicted_ratio(s, spec, int(b), block) for _, s in shapes] for b in batches])
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    mesh = ax.pcolormesh(x, batches, ratio, shading="gouraud", cmap="viridis_r", vmin=0.25, vmax=1.0)
    contours = ax.contour(x, batches, ratio, levels=[0.3, 0.5, 0.7, 0.9], colors="white", linewidths=0.8)
    ax.clabel(contours, fmt="%.1f", fontsize=8)
    fig.colorbar(mesh, ax=ax, label="LoRA memory / full fine-tuning memory (predicted)")
    measured = [(s["variants"]["full"]["total_params"], b) for s in data["sizes"] for b in data["settings"]["memory_batches"]]
    ax.scatter(*zip(*measured), marker="x", color="red", s=30, label="measured here (cost model within 10%)")
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_yticks(batches, [str(b) for b in batches])
    ax.set_xlabel("model parameters (log scale): our presets, then GPT-3's shapes")
    ax.set_ylabel(f"batch ({block}-token sequences, log scale)")
    ax.set_title("Where LoRA pays in memory: predicted by the cost model (r=8, six linears, fp32, AdamW)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return save(fig, path)


def cost_model_spec(data, name):
    spec = data["variants"].get(name) or {"method": "lora", "r": 8, "targets": "all-linear"}
    return {"method": spec["method"], "r": spec["r"], "targets": spec["targets"]}


# -- the write-up ---------------------------------------------------------------------------

def mib(n):
    return f"{n / MiB:,.2f}"


def validation(data):
    """Which predictions matched: states exactly, activations within 10%, at every size and variant."""
    exact, worst = [], 0.0
    for s in data["sizes"]:
        for name, v in s["variants"].items():
            for part in ("weights", "grads", "optimizer"):
                if v["memory"]["measured"][part] != v["memory"]["predicted"][part]:
                    exact.append(f"{s['preset']}/{name}/{part}")
            pairs = [(v["memory"]["measured"]["activations"], v["memory"]["predicted"]["activations"])]
            pairs += [(a["measured"], a["predicted"]) for a in v["activations_by_batch"].values()]
            for measured, predicted in pairs:
                worst = max(worst, abs(predicted - measured) / measured)
    return exact, worst


def write_markdown(data, extrapolation, figures):
    s = data["settings"]
    sizes = data["sizes"]
    names = list(data["variants"])
    cores = data["cpu_count"] or 1
    load = data.get("load_average") or {}
    busy = (load.get("start") or 0) / cores  # at the end the run's own threads are in it
    exact, worst = validation(data)
    lines = ["# How LoRA's savings grow with the model", ""]
    lines += [f"Made by `python -m experiments.scale` ({data['date']}, {data['device']}, torch {data['torch']}, "
              f"{data['threads']} torch threads, {data['wall_time_s'] / 60:.1f} minutes). Sizes "
              + ", ".join(f"`{r['preset']}` ({r['variants']['full']['total_params'] / 1e6:.3g}M)" for r in sizes)
              + f"; every step {s['batch_size']} x {s['block_size']} tokens. The models are at random initialisation "
              "(costs depend on shapes, not on values; GPT-2's shapes with our 256-byte vocabulary).", ""]
    if data.get("qlora_note"):
        lines += [f"*{data['qlora_note']}.*", ""]
    if busy > BUSY and data["device"] == "cpu":
        lines += [f"**Draft: the machine was busy when this run started (load average {load.get('start'):.1f} on "
                  f"{cores} cores): the timing ratios below are not to be trusted; the memory, file and FLOP numbers "
                  "do not depend on it.**", ""]

    lines += [summary(data), "", "## The savings, size by size", ""]
    head = "| size | parameters | " + " | ".join(f"LoRA/full memory, batch {b}" for b in s["memory_batches"])
    head += " | adapter / checkpoint | LoRA step speed-up (quartiles) | FLOP model | floor speed-up |"
    lines += [head, "| --- " * (head.count("|") - 1) + "|"]
    for r in sizes:
        v, ratios = r["variants"], r["ratios"]
        mem = " | ".join(f"{measured_total(v['lora'], b) / measured_total(v['full'], b):.3f}"
                         for b in s["memory_batches"])
        files = v["lora"]["file"]["measured"] / v["full"]["file"]["measured"]
        lora = ratios["lora/full"]["step"]
        floor = ratios.get("floor/full", {}).get("step")
        floor_text = f"{1 / floor['median']:.2f}x" if floor else "-"
        lines.append(f"| `{r['preset']}` | {v['full']['total_params']:,} | {mem} | {files:.4f} | "
                     f"{1 / lora['median']:.2f}x ({1 / lora['q3']:.2f}-{1 / lora['q1']:.2f}) | "
                     f"{1 / ratios['lora/full']['flop_model']:.2f}x | {floor_text} |")
    lines += ["", "LoRA is r=8 on q, k, v, o, up and down of every block. Memory is weights, gradients, optimizer "
              "state and saved activations, all measured; a speed-up is full fine-tuning's step time over LoRA's, "
              f"the median of {s['rounds']} same-round ratios.", ""]
    lines += [f"![memory by part]({figures['memory_by_part']})", "",
              f"![memory ratio]({figures['memory_ratio']})", "",
              f"![speed-up]({figures['speedup']})", "", f"![file sizes]({figures['file_sizes']})", "",
              f"![where LoRA pays]({figures['where_lora_pays']})", ""]

    lines += ["## Measured beside predicted", ""]
    lines += [f"Weights, gradients and optimizer state: "
              + ("predicted to the byte at every size and variant." if not exact
                 else f"**not exact for {', '.join(exact)}**.")
              + f" Saved activations: the largest difference is {100 * worst:.2f}% of the measured bytes "
                "(the limit set was 10%).", ""]
    lines += ["| size | variant | weights (MiB) | gradients | optimizer | activations, measured / predicted | "
              "peak, measured / predicted (MiB) |", "| --- " * 7 + "|"]
    for r in sizes:
        for name in names:
            v = r["variants"][name]
            m, p = v["memory"]["measured"], v["memory"]["predicted"]
            same = lambda part: mib(m[part]) if m[part] == p[part] else f"{mib(m[part])} / {mib(p[part])}"
            peak = v.get("peak")
            peak_text = f"{mib(peak['measured'])} / {mib(peak['predicted'])}" if peak else "-"
            lines.append(f"| `{r['preset']}` | {name} | {same('weights')} | {same('grads')} | {same('optimizer')} | "
                         f"{mib(m['activations'])} / {mib(p['activations'])} | {peak_text} |")
    kinds = {v["peak"]["kind"] for r in sizes for v in r["variants"].values() if v.get("peak")}
    lines += ["", f"Peak: {', '.join(sorted(kinds)) or 'not measured'}, in a fresh process per variant, less what the "
              "process held before the model existed; predicted as the sum of the four parts. Backward's "
              "temporary buffers (the logits' gradient, each layer's input gradient) come on top, while the "
              "activations are freed layer by layer as backward goes: the two pull in opposite directions.", ""]

    if "qlora" in names:
        lines += ["QLoRA's peak holds more than its parts: each layer's W0 is dequantized for its products (in "
                  "forward, and again in backward), and that full-precision copy, with the index and value "
                  "tensors dequantization makes on the way, lives for the layer's products: one layer at a time, "
                  "but at the peak.", ""]
    lines += ["File sizes, measured / predicted payload (the tensors' bytes; torch.save adds about 270 bytes of zip "
              "and pickle per tensor, and an adapter file its config):", "",
              "| size | " + " | ".join(n for n in names if sizes[0]["variants"][n]["file"]) + " |",
              "| --- " * (1 + sum(1 for n in names if sizes[0]["variants"][n]["file"])) + "|"]
    for r in sizes:
        files = [r["variants"][n]["file"] for n in names if r["variants"][n]["file"]]
        lines.append(f"| `{r['preset']}` | " + " | ".join(f"{fmt_bytes(f['measured'])} / {fmt_bytes(f['predicted_payload'])}"
                                                         for f in files) + " |")
    lines += ["", "## Step time against the FLOP model", ""]
    lines += ["| size | variant | step / full: measured (quartiles) | FLOP model | forward / full | backward / full | "
              "optimizer / full | full's optimizer share |", "| --- " * 8 + "|"]
    for r in sizes:
        full_times = r["variants"]["full"]["step_seconds"]
        share = statistics.median(o / t for o, t in zip(full_times["optimizer"], full_times["step"]))
        for name in names[1:]:
            q = r["ratios"][f"{name}/full"]
            lines.append(f"| `{r['preset']}` | {name} | {q['step']['median']:.3f} ({q['step']['q1']:.3f}-"
                         f"{q['step']['q3']:.3f}) | {q['flop_model']:.3f} | {q['forward']['median']:.3f} | "
                         f"{q['backward']['median']:.3f} | {q['optimizer']['median']:.3f} | {share:.1%} |")
    lines += ["", explain_time(data), ""]

    lines += extrapolation_markdown(extrapolation)
    return "\n".join(lines) + "\n"


def explain_time(data):
    """Sentences on where measured time departs from the FLOP model, from the largest size's numbers."""
    r = data["sizes"][-1]
    v, q = r["variants"], r["ratios"]["lora/full"]
    f_full, f_lora = v["full"]["flops"], v["lora"]["flops"]
    fwd_model = (f_lora["forward"] + f_lora["adapter_forward"]) / f_full["forward"]
    bwd_model = ((f_lora["input_grads"] + f_lora["weight_grads"] + f_lora["adapter"] - f_lora["adapter_forward"])
                 / (f_full["input_grads"] + f_full["weight_grads"]))
    full_times = v["full"]["step_seconds"]
    share = statistics.median(o / t for o, t in zip(full_times["optimizer"], full_times["step"]))
    above = q["step"]["median"] > q["flop_model"]
    return (f"At `{r['preset']}` the FLOP model puts a LoRA step at {q['flop_model']:.3f} of full fine-tuning's "
            f"(matmul FLOPs only: the weight gradients it skips are a third of them), and it measured "
            f"{q['step']['median']:.3f}. By phase: forward {q['forward']['median']:.3f} (FLOP model {fwd_model:.3f}: "
            f"the adapter's products are {100 * (fwd_model - 1):.1f}% more), backward {q['backward']['median']:.3f} "
            f"(FLOP model {bwd_model:.3f}), optimizer step {q['optimizer']['median']:.3f}. The FLOP model leaves out "
            f"what is not a matrix product: the optimizer step, {share:.1%} of full fine-tuning's step here, which "
            "LoRA all but skips (AdamW reads and writes 16 bytes per trainable parameter); LayerNorm, GELU, softmax "
            "and the loss, which LoRA runs as often as full fine-tuning; and the adapter's thin rank-r products "
            "and their Python overhead, which cost more time than their FLOPs say. Here the measured ratio is "
            + ("above the FLOP model's: the adapter's thin products and the element-wise work outweigh the skipped "
               "optimizer work." if above else
               "below the FLOP model's: the skipped optimizer work outweighs the adapter's thin products and the "
               "element-wise work."))


def summary(data):
    """The results in one paragraph: how each saving moved from the smallest size to the largest."""
    sizes, s = data["sizes"], data["settings"]
    first, last = sizes[0], sizes[-1]
    name = lambda r: f"`{r['preset']}` ({r['variants']['full']['total_params'] / 1e6:.3g}M parameters)"
    mem = lambda r, b: measured_total(r["variants"]["lora"], b) / measured_total(r["variants"]["full"], b)
    b0, rest = s["memory_batches"][0], s["memory_batches"][1:]
    gpt3 = dict(curve_shapes(s["block_size"]))["GPT-3 175B"]
    limit = predicted_ratio(gpt3, cost_model_spec(data, "lora"), b0, s["block_size"])
    files = lambda r: r["variants"]["full"]["file"]["measured"] / r["variants"]["lora"]["file"]["measured"]
    speed = lambda r, key: 1 / r["ratios"][key]["step"]["median"]
    def both(value, fmt, suffix="", long=False):
        """'<first's value><suffix> on <first>' and, with more than one size, ' and <last's> on <last>'."""
        label = name if long else (lambda r: f"`{r['preset']}`")
        text = f"{fmt(value(first))}{suffix} on {label(first)}"
        return text if first is last else text + f" and {fmt(value(last))} on {label(last)}"

    percent, times = (lambda v: f"{v:.0%}"), (lambda v: f"{v:.2f}x")
    text = (f"At batch {b0}, LoRA (r=8 on all six linears of every block) needs "
            f"{both(lambda r: mem(r, b0), percent, ' of full fine-tuning' + chr(39) + 's memory', long=True)}. "
            "The limit is "
            f"25%, 4 bytes per frozen parameter against 16 per trained one; the cost model, validated on these "
            f"sizes, gives {limit:.0%} for GPT-3 175B's shape at the same batch and sequence length. ")
    for b in rest:
        text += (f"LoRA does not shrink the activations, so a bigger batch pulls the share back up: at batch {b}, "
                 f"{both(lambda r: mem(r, b), percent)}. ")
    text += (f"The adapter file is {both(files, lambda v: f'1/{v:.0f}', ' of the full checkpoint')}: the adapter "
             f"grows with the width, the model with its square. A LoRA step was "
             f"{both(lambda r: speed(r, 'lora/full'), times, ' as fast as a full fine-tuning step')}")
    if "floor/full" in last["ratios"]:
        text += f"; the floor (every weight frozen, no adapter) {both(lambda r: speed(r, 'floor/full'), times)}"
    return text + (f"; the FLOP model's ceiling is "
                   f"{both(lambda r: 1 / r['ratios']['lora/full']['flop_model'], times)}.")


def write_report(path, out, docs):
    """Plots into out, OUT/extrapolation.json, and the write-up at docs; returns the loaded records."""
    with open(path) as f:
        data = json.load(f)
    last = data["sizes"][-1]
    measured = (1 / last["ratios"]["lora-qv/full"]["step"]["median"]) if "lora-qv/full" in last["ratios"] else None
    extrapolation = extrapolate(measured)
    write_json(extrapolation, os.path.join(out, "extrapolation.json"))
    docs_dir = os.path.dirname(os.path.abspath(docs))
    os.makedirs(docs_dir, exist_ok=True)
    figures = {
        "memory_by_part": plot_memory_by_part(data, os.path.join(out, "memory_by_part.png")),
        "memory_ratio": plot_memory_ratio(data, os.path.join(out, "memory_ratio.png")),
        "speedup": plot_speedup(data, os.path.join(out, "speedup.png")),
        "file_sizes": plot_file_sizes(data, os.path.join(out, "file_sizes.png"), extrapolation),
        "where_lora_pays": plot_where_lora_pays(data, os.path.join(out, "where_lora_pays.png")),
        "extrapolation": plot_extrapolation(extrapolation, os.path.join(out, "extrapolation.png")),
    }
    relative = {k: os.path.relpath(os.path.abspath(v), docs_dir) for k, v in figures.items()}
    text = write_markdown(data, extrapolation, relative)
    text = text.replace("## GPT-3 175B and a 65B LLaMA, predicted\n",
                        f"## GPT-3 175B and a 65B LLaMA, predicted\n\n![extrapolation]({relative['extrapolation']})\n")
    tmp = f"{docs}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, docs)
    print(f"wrote {docs} and the plots in {out}")
    return data
