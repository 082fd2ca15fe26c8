"""QLoRA: LoRA on a 4-bit base, against LoRA and full fine-tuning; what 4 bits cost and save.

    python -m experiments.qlora                               # CPU, tiny model, offline
    python -m experiments.qlora --device cuda --preset small

Claims (Dettmers et al. 2023, arXiv:2305.14314):
(1) NF4 has lower quantization error than FP4 and Int4 on normally distributed weights, and
    on this model's weights;
(2) QLoRA with NF4 and double quantization matches 16-bit LoRA's fine-tuned quality (here fp32
    LoRA): the paired difference of final target losses, seed by seed, with its 95% interval;
(3) double quantization saves about 0.37 bits per parameter (4.5 -> 4.127 bits).
Runs, --seeds each (3 by default: the spread a difference must clear): full fine-tuning
(--full-lr), LoRA r (--lora-lr), and QLoRA r (LoRA's rate) on NF4, FP4 and Int4 bases, all with
double quantization. Also measured: the base model's loss after quantization, before any
fine-tuning (what 4 bits cost); quantization error (MSE, and the error's norm relative to the
weight's) of each data type on every weight matrix of the base model and on N(0, 1) data;
memory by part; adapter size; and for each QLoRA run, its adapter loaded onto the
full-precision base, the model unloaded to full precision (dequantize(W0) + delta W: the same
function, a check), and the adapter merged back into 4 bits (what that loses, qlora.py).
Step times are not compared here (runs share the machine): experiments/bench/lora.py times them in turns.
Nothing is chosen here (default rates), and every loss is on the held-out test half.
Writes OUT/records.json, OUT/qlora.json, OUT/levels.png, OUT/quant_error.png, OUT/memory.png,
OUT/results.md.
"""
import argparse
import functools
import os
import statistics

import matplotlib.pyplot as plt
import torch

import minilora
from experiments.lib.common import check_runs, finish_experiment, load_setup, make_parser, parse_targets, run_kwargs
from experiments.lib.finetune import reported_loss, reported_on
from experiments.lib.four_bit import (FINAL_EVAL, bits_per_value, qlora_final_eval, quantization_errors,
                                      quantized_copy)
from experiments.lib.plots import MIB, finish, plot_memory_bars, write_report
from experiments.lib.runs import run_all
from experiments.lib import verdicts
from experiments.lib.seeds import paired, seed_list, show, show_difference, spread
from minilora.quantize import LEVELS, QUANT_TYPES
from nanogpt.data import fixed_batches
from nanogpt.train import evaluate, write_json

NAMES = {"nf4": "NF4", "fp4": "FP4", "int4": "Int4"}
COLORS = {"nf4": "#4C72B0", "fp4": "#DD8452", "int4": "#55A868"}
PAPER_BITS = {"plain": 4 + 32 / 64, "double_quant": 4 + 8 / 64 + 32 / (64 * 256)}  # 4.5 and 4.127


def positive_int(flag):
    """An argparse type: one positive integer, or a clear error naming the flag."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be a positive integer like 3; got {text!r}")
        return value
    return parse


def plot_levels(path, title, n_values=2 ** 16):
    """The three data types' levels over the distribution they quantize: N(0, 1) values divided
    by the absmax of their block of 64."""
    g = torch.Generator().manual_seed(0)
    blocks = torch.randn(n_values // 64, 64, generator=g)
    normalized = (blocks / blocks.abs().amax(1, keepdim=True)).view(-1)
    fig, axes = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    for ax, q in zip(axes, QUANT_TYPES):
        ax.hist(normalized.numpy(), bins=200, density=True, color="lightgray",
                label="N(0, 1) / absmax of its block of 64")
        for i, level in enumerate(LEVELS[q].tolist()):
            ax.axvline(level, color=COLORS[q], linewidth=1.2, label=f"{NAMES[q]} levels" if i == 0 else None)
        ax.set_ylabel("density")
        ax.set_title(f"{NAMES[q]}: {len(LEVELS[q])} levels")
        ax.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("normalized weight value (weight / block absmax)")
    return finish(fig, title, path)


def plot_errors(errors, gaussian_name, path, title):
    """Relative quantization error by data type: on N(0, 1) data, and on each weight of the model."""
    model_names = [n for n in errors if n != gaussian_name]
    fig, (ax_g, ax_m) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 2.6]})
    values = [errors[gaussian_name][q]["relative"] for q in QUANT_TYPES]
    ax_g.bar([NAMES[q] for q in QUANT_TYPES], values, color=[COLORS[q] for q in QUANT_TYPES])
    for i, v in enumerate(values):
        ax_g.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize=8)
    ax_g.set_ylabel("||W - W_hat|| / ||W||")
    ax_g.set_title(gaussian_name)
    ax_g.margins(y=0.15)
    for q in QUANT_TYPES:
        ax_m.plot(range(len(model_names)), [errors[n][q]["relative"] for n in model_names], "o",
                  color=COLORS[q], label=NAMES[q])
    ax_m.set_xticks(range(len(model_names)), [n.removesuffix(".weight") for n in model_names], rotation=60,
                    ha="right", fontsize=7)
    ax_m.set_ylim(0, None)
    ax_m.set_ylabel("||W - W_hat|| / ||W||")
    ax_m.set_title("each weight matrix of the base model")
    ax_m.grid(axis="y", alpha=0.3)
    ax_m.legend(fontsize=8)
    return finish(fig, title, path)


def plot_memory(records, path, title):
    """Training memory by part for full fine-tuning, LoRA and QLoRA (NF4), as measured."""
    fig, ax = plt.subplots(figsize=(7, 4.8))
    plot_memory_bars(ax, records)
    ax.set_title("training memory by part (measured; 4-bit weights by their real bytes)")
    return finish(fig, title, path)


def summarize(groups, errors, gaussian_name, base_losses, bits):
    """The numbers the claims are judged on (OUT/qlora.json)."""
    rows = []
    lora = next(g for g in groups if g["key"] == "lora")
    for g in groups:
        runs = g["runs"]
        row = {"name": g["name"], "key": g["key"], "lr": runs[0]["lr"],
               "trainable_params": runs[0]["trainable_params"],
               "base_target_loss": reported_loss(runs[0], "target", "base"),
               "base_source_loss": reported_loss(runs[0], "source", "base"),
               "final_target_loss": spread([reported_loss(r, "target") for r in runs]),
               "final_source_loss": spread([reported_loss(r, "source") for r in runs]),
               "memory": runs[0]["memory"], "saved_bytes": runs[0]["saved_bytes"]}
        if g is not lora:  # minus LoRA, seed by seed (same seeds, same batches): called if its 95% CI excludes 0
            for domain in ("target", "source"):
                row[f"{domain}_minus_lora"] = paired([reported_loss(r, domain) for r in lora["runs"]],
                                                     [reported_loss(r, domain) for r in runs])
        if "final_eval" in runs[0]:
            row["final_eval"] = {
                part: {k: spread([r["final_eval"][part][k] for r in runs]) for k in runs[0]["final_eval"][part]}
                for part in runs[0]["final_eval"]}
        rows.append(row)
    by_key = {row["key"]: row for row in rows}
    weights = [n for n in errors if n != gaussian_name]
    nf4_lowest = [n for n in weights
                  if all(errors[n]["nf4"]["relative"] < errors[n][q]["relative"] for q in ("fp4", "int4"))]
    gaussian = errors[gaussian_name]
    return {
        "rows": rows,
        "base_losses_after_quantization": base_losses,
        "claim_1_quantization_error": {
            "gaussian_relative": {q: gaussian[q]["relative"] for q in QUANT_TYPES},
            "nf4_lowest_on_gaussian": all(gaussian["nf4"]["relative"] < gaussian[q]["relative"]
                                          for q in ("fp4", "int4")),
            "model_weights": len(weights), "nf4_lowest_on_weights": len(nf4_lowest),
            "mean_relative_on_weights": {q: statistics.fmean(errors[n][q]["relative"] for n in weights)
                                         for q in QUANT_TYPES}},
        "claim_2_qlora_matches_lora": {
            "lora": by_key["lora"]["final_target_loss"], "qlora_nf4": by_key["nf4"]["final_target_loss"],
            "qlora_minus_lora": by_key["nf4"]["target_minus_lora"],
            "lora_seed_sd": by_key["lora"]["final_target_loss"]["sd"]},
        "claim_3_double_quant_bits": {**bits, "saving": bits["plain"] - bits["double_quant"],
                                      "paper": PAPER_BITS, "paper_saving": PAPER_BITS["plain"] - PAPER_BITS["double_quant"]},
    }


def results_tables(summary, errors, gaussian_name, quantized_targets):
    """OUT/results.md's tables."""
    c1, c2, c3 = (summary[k] for k in ("claim_1_quantization_error", "claim_2_qlora_matches_lora",
                                       "claim_3_double_quant_bits"))
    lines = ["## Fine-tuning\n",
             "| run | lr | trainable params | base loss target / source (after quantization) | final target loss | "
             "final source loss | target loss minus LoRA's (paired) | memory (MiB): weights / grads / "
             "optimizer / activations | adapter or checkpoint (KiB) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for row in summary["rows"]:
        m = row["memory"]
        apart = show_difference(row["target_minus_lora"], digits=4) if "target_minus_lora" in row else "-"
        lines.append(
            f"| {row['name']} | {row['lr']:g} | {row['trainable_params']:,} | {row['base_target_loss']:.3f} / "
            f"{row['base_source_loss']:.3f} | {show(row['final_target_loss'])} | {show(row['final_source_loss'])} | "
            f"{apart} | {m['params'] / MIB:.2f} / {m['grads'] / MIB:.2f} / {m['optimizer'] / MIB:.2f} / "
            f"{m['activations'] / MIB:.2f} | {row['saved_bytes'] / 1024:,.1f} |")
    lines += ["\n## What the QLoRA adapters become (target / source loss, mean over seeds)\n",
              "| run | as trained (4-bit base) | adapter on the full-precision base | unloaded: dequantize(W0) + delta W "
              "| merged back into 4 bits | that merge's error / norm of delta W | share of delta W kept along itself |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in summary["rows"]:
        if "final_eval" not in row:
            continue
        fe = row["final_eval"]

        def pair(part):
            return f"{fe[part]['target']['mean']:.3f} / {fe[part]['source']['mean']:.3f}"
        lines.append(f"| {row['name']} | {row['final_target_loss']['mean']:.3f} / {row['final_source_loss']['mean']:.3f} | "
                     f"{pair('on_full_precision_base')} | {pair('unloaded')} | {pair('merged_into_4bit')} | "
                     f"{fe['requantization']['lost']['mean']:.3f} | {fe['requantization']['kept']['mean']:.3f} |")
    lines += ["\n## The base model after quantization, before fine-tuning\n",
              "| base weights | target loss | source loss |", "| --- | ---: | ---: |"]
    for name, losses in summary["base_losses_after_quantization"].items():
        lines.append(f"| {name} | {losses['target']:.3f} | {losses['source']:.3f} |")
    lines += ["\n## Quantization error, blocks of 64 with double quantization (relative: ||W - W_hat|| / ||W||)\n",
              "| weight | quantized in the QLoRA runs | " + " | ".join(f"{NAMES[q]} relative" for q in QUANT_TYPES)
              + " | " + " | ".join(f"{NAMES[q]} MSE" for q in QUANT_TYPES) + " |",
              "| --- | --- | " + "---: | " * (2 * len(QUANT_TYPES))]
    for name, by_type in errors.items():
        lines.append(f"| {name} | {'yes' if name in quantized_targets else 'no'} | "
                     + " | ".join(f"{by_type[q]['relative']:.4f}" for q in QUANT_TYPES) + " | "
                     + " | ".join(f"{by_type[q]['mse']:.3g}" for q in QUANT_TYPES) + " |")
    g = errors[gaussian_name]
    lines += [f"\nWithout double quantization, on {gaussian_name}: "
              + ", ".join(f"{NAMES[q]} {g[q]['relative_no_dq']:.4f}" for q in QUANT_TYPES) + ".",
              f"NF4 has the lowest error on {c1['nf4_lowest_on_weights']} of "
              f"{c1['model_weights']} weight matrices, and {'the lowest' if c1['nf4_lowest_on_gaussian'] else 'not the lowest'} "
              f"on {gaussian_name}.",
              f"\nQLoRA (NF4) against LoRA, final target loss: {show(c2['qlora_nf4'])} against {show(c2['lora'])}; "
              f"paired difference {show_difference(c2['qlora_minus_lora'], digits=4)} "
              f"({'called' if c2['qlora_minus_lora']['called'] else 'not called'}: "
              f"{'its 95% interval excludes 0' if c2['qlora_minus_lora']['called'] else 'its 95% interval includes 0'}).",
              f"\nLosses on {summary.get('scored_on', 'validation')} text in nats/byte, mean ± 95% CI over the seeds; "
              "differences seed by seed, * where called.",
              f"\nBits per value of the NF4 base, read from the tensors: {c3['plain']:.4f} without double quantization, "
              f"{c3['double_quant']:.4f} with it (saving {c3['saving']:.4f}); the paper's arithmetic: "
              f"{c3['paper']['plain']:.4f} and {c3['paper']['double_quant']:.4f} (saving {c3['paper_saving']:.4f}); "
              f"the difference is the fp32 mean of each tensor's block constants, and a last group of fewer than 256 "
              f"block constants where a tensor has one.",
              "\nNo step times: runs shared the machine; experiments/bench/lora.py times QLoRA and LoRA steps in turns."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/qlora", test_split=True)
    p.add_argument("--r", type=positive_int("--r"), default=8, help="the rank of LoRA and QLoRA")
    p.add_argument("--seeds", type=positive_int("--seeds"), default=3,
                   help="fine-tuning seeds per method (3+ to call a difference)")
    p.add_argument("--gaussian-values", type=positive_int("--gaussian-values"), default=2 ** 20,
                   help="how many N(0, 1) values the data types' error is measured on")
    args = p.parse_args(argv)
    check_runs(args, ranks=[args.r])
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    kwargs.pop("seed")
    seeds = seed_list(args.seed, args.seeds)
    targets = parse_targets(args.targets)
    block_size = base.config.block_size
    # The base after quantization and the adapters' final forms are scored where the runs report: on test.
    eval_batches = {name: fixed_batches(c.val if c.test is None else c.test, args.eval_iters, args.batch_size,
                                        block_size) for name, c in (("target", target), ("source", source))}

    print("quantization error of NF4, FP4 and Int4")
    gaussian_name = "N(0, 1) data"
    weights = {n: p for n, p in base.named_parameters() if p.dim() == 2}
    g = torch.Generator().manual_seed(args.seed)
    errors = quantization_errors({**weights, gaussian_name: torch.randn(args.gaussian_values, generator=g)})
    quantized_targets = {n + ".weight" for n, _ in minilora.find_targets(base, targets)}
    bits = {"plain": bits_per_value([weights[n] for n in quantized_targets], double_quant=False),
            "double_quant": bits_per_value([weights[n] for n in quantized_targets], double_quant=True)}

    print("the base model's loss after quantization")
    base_losses = {"fp32 (no quantization)": {k: evaluate(base, b, device) for k, b in eval_batches.items()}}
    for q in QUANT_TYPES:
        for dq in (False, True):
            model = quantized_copy(base, targets, q, dq)
            name = f"{NAMES[q]}{' + double quantization' if dq else ''}"
            base_losses[name] = {k: evaluate(model, b, device) for k, b in eval_batches.items()}

    lora = {"method": "lora", "variant": "lora", "r": args.r, "alpha": args.alpha, "targets": targets, "lr": args.lora_lr}
    contenders = [("full fine-tuning", "full", {"method": "full", "lr": args.full_lr}),
                  (f"LoRA r={args.r}", "lora", lora)]
    contenders += [(f"QLoRA {NAMES[q]} r={args.r}", q, {**lora, "quantize": q}) for q in QUANT_TYPES]
    final_eval = (FINAL_EVAL, functools.partial(qlora_final_eval, base, eval_batches, device))
    plan = [dict(base=base, base_key=base_key, spec=spec, target=target, source=source, **kwargs, seed=s,
                 **({"final_eval": final_eval} if spec.get("quantize") else {}))
            for _, _, spec in contenders for s in seeds]
    records = run_all(plan, workers=args.workers, progress=not args.no_progress, desc="qlora")
    groups = [{"name": name, "key": key, "runs": records[k * len(seeds):(k + 1) * len(seeds)]}
              for k, (name, key, _) in enumerate(contenders)]

    summary = summarize(groups, errors, gaussian_name, base_losses, bits)
    summary.update(seeds=seeds, quantized_targets=sorted(quantized_targets), quantization_errors=errors,
                   scored_on=reported_on(records[0]))
    write_json(records, os.path.join(args.out, "records.json"))
    write_json(summary, os.path.join(args.out, "qlora.json"))
    title = (f"QLoRA: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, r={args.r}, "
             f"{len(seeds)} seeds, {device}")
    plot_levels(os.path.join(args.out, "levels.png"), "NF4 against FP4 and evenly spaced (Int4) levels")
    plot_errors(errors, gaussian_name, os.path.join(args.out, "quant_error.png"),
                "quantization error by data type (blocks of 64, double quantization)")
    firsts = [g["runs"][0] for g in groups if g["key"] in ("full", "lora", "nf4")]
    plot_memory(firsts, os.path.join(args.out, "memory.png"), title)
    table = write_report(os.path.join(args.out, "results.md"), "QLoRA", title,
                         results_tables(summary, errors, gaussian_name, quantized_targets))
    finish_experiment(args, argv)
    print(table)
    print(f"wrote {args.out}/records.json, qlora.json, levels.png, quant_error.png, memory.png, results.md")


def comparisons(summary):
    """The two "matches" claims, by the shared equivalence rule (experiments/lib/verdicts.py): (2)
    QLoRA (NF4) against 16-bit (here fp32) LoRA; (4) QLoRA against 16-bit full fine-tuning, the
    paper's other half ("QLoRA replicates 16-bit full fine-tuning performance"). Seed by seed, QLoRA
    minus the other; (4) only where qlora.json has the runs' per-seed losses."""
    out = [verdicts.matches(summary["claim_2_qlora_matches_lora"]["qlora_minus_lora"], "loss",
                            "QLoRA NF4 matches 16-bit LoRA")]
    rows = {row["key"]: row for row in summary.get("rows", [])}
    if "full" in rows and "nf4" in rows:
        full, nf4 = (rows[k]["final_target_loss"]["values"] for k in ("full", "nf4"))
        out.append(verdicts.matches([q - f for q, f in zip(nf4, full)], "loss",
                                    "QLoRA NF4 matches 16-bit full fine-tuning"))
    return out


def claim_verdicts(summary):
    """Each claim's verdict, from the numbers in qlora.json: (1) NF4's error, (2) QLoRA matches
    LoRA, (3) double quantization's saving, and (4) QLoRA matches full fine-tuning where measured."""
    c1, c2, c3 = (summary[k] for k in ("claim_1_quantization_error", "claim_2_qlora_matches_lora",
                                       "claim_3_double_quant_bits"))
    on_weights = c1["nf4_lowest_on_weights"] == c1["model_weights"]
    v1 = ("reproduced" if c1["nf4_lowest_on_gaussian"] and on_weights else
          "partly" if c1["nf4_lowest_on_gaussian"] or c1["nf4_lowest_on_weights"] else "not reproduced")
    v3 = "reproduced" if abs(c3["saving"] - c3["paper_saving"]) < 0.01 else "partly"
    v2, *v4 = (c["outcome"] for c in comparisons(summary))
    return (v1, v2, v3, *v4)


def report(results):
    """Section of REPRODUCTIONS.md from results/qlora."""
    summary = results.json("qlora", "qlora.json")
    r = next(rec["r"] for rec in results.json("qlora", "records.json") if rec["method"] == "lora")
    c1, c2, c3 = (summary[k] for k in ("claim_1_quantization_error", "claim_2_qlora_matches_lora",
                                       "claim_3_double_quant_bits"))
    parts = claim_verdicts(summary)
    v1, v2, v3 = parts[:3]
    judged = comparisons(summary)
    verdict = verdicts.combine(list(parts))
    rows = {row["key"]: row for row in summary["rows"]}
    g = c1["gaussian_relative"]
    w = c1["mean_relative_on_weights"]
    d = c2["qlora_minus_lora"]
    n = len(summary["seeds"])
    base = summary["base_losses_after_quantization"]
    fp32 = base["fp32 (no quantization)"]["target"]
    nf4_dq = base["NF4 + double quantization"]["target"]
    nf4 = rows["nf4"]
    fe = nf4.get("final_eval", {})
    lines = ["| run | lr | trainable params | final target loss | final source loss | QLoRA or full minus LoRA "
             "(paired) | memory (MiB): weights / grads / optimizer / activations | adapter or checkpoint |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in summary["rows"]:
        m = row["memory"]
        apart = show_difference(row["target_minus_lora"]) if "target_minus_lora" in row else "-"
        lines.append(f"| {row['name']} | {row['lr']:g} | {row['trainable_params']:,} | {show(row['final_target_loss'])} | "
                     f"{show(row['final_source_loss'])} | {apart} | {m['params'] / MIB:.2f} / {m['grads'] / MIB:.2f} / "
                     f"{m['optimizer'] / MIB:.2f} / {m['activations'] / MIB:.2f} | {row['saved_bytes'] / 1024:,.0f} KiB |")
    bullets = [
        f"- (1) Quantization error, relative (||W - W_hat|| / ||W||, blocks of 64, double quantization): on N(0, 1) "
        f"data NF4 {g['nf4']:.4f}, FP4 {g['fp4']:.4f}, Int4 {g['int4']:.4f}; on this model's weights (mean over "
        f"{c1['model_weights']} matrices) NF4 {w['nf4']:.4f}, FP4 {w['fp4']:.4f}, Int4 {w['int4']:.4f}. NF4 is the "
        f"lowest on {c1['model_weights'] if c1['nf4_lowest_on_weights'] == c1['model_weights'] else c1['nf4_lowest_on_weights']} "
        f"of {c1['model_weights']} matrices. **{v1}**.",
        f"- (2) QLoRA (NF4, double quantization) against fp32 LoRA at the same settings (r={r}, "
        f"LoRA's rate {nf4['lr']:g}), {n} seeds: {show(c2['qlora_nf4'])} against {show(c2['lora'])}, paired difference "
        f"{show_difference(d)}; by the equivalence rule: {verdicts.show_interval(judged[0])}: "
        f"**{verdicts.show(judged[0])}**.",
        f"- (3) Bits per weight of the quantized base, read from the tensors: {c3['plain']:.4f} without double "
        f"quantization, {c3['double_quant']:.4f} with it: a saving of {c3['saving']:.3f} bits (the paper's arithmetic: "
        f"{c3['paper_saving']:.3f}; the small difference is each tensor's fp32 mean of its block constants and a last "
        f"group of fewer than 256). **{v3}**.",
        f"- What 4 bits cost before any fine-tuning: the base model's docs loss goes from {fp32:.3f} (fp32) to "
        f"{nf4_dq:.3f} with NF4 and double quantization; "
        + ", ".join(f"{k} {v['target']:.3f}" for k, v in base.items() if k not in ("fp32 (no quantization)",
                                                                                   "NF4 + double quantization")) + ".",
    ]
    if fe:
        bullets.append(
            f"- The QLoRA adapter on the full-precision base gives {fe['on_full_precision_base']['target']['mean']:.3f} "
            f"(as trained on the 4-bit base: {nf4['final_target_loss']['mean']:.3f}); merged back into 4 bits it gives "
            f"{fe['merged_into_4bit']['target']['mean']:.3f}: requantizing W0 + delta W loses part of delta W "
            f"(error {fe['requantization']['lost']['mean']:.2f} of its norm), which is why `unload_lora` returns a "
            f"full-precision model.")
    if len(judged) > 1:  # (4), after (3)
        c4 = judged[1]
        bullets.insert(3, f"- (4) The paper's other half, QLoRA matches 16-bit full fine-tuning: "
                          f"{show(nf4['final_target_loss'])} against full fine-tuning's "
                          f"{show(rows['full']['final_target_loss'])} (each at its own rate), QLoRA minus full seed by "
                          f"seed {verdicts.show_interval(c4)}: **{verdicts.show(c4)}**.")
    bullets.append(memory_line(rows, results))
    body = f"""**Claims.** QLoRA (Dettmers et al. 2023): (1) the 4-bit NormalFloat (NF4) data type has lower
quantization error than FP4 and Int4 on normally distributed weights; (2) LoRA on an NF4 base
with double quantization matches 16-bit LoRA's fine-tuned quality, and (4) 16-bit full
fine-tuning's; (3) double quantization saves about 0.37 bits per parameter.

**Command.** `python -m experiments.qlora` (`results/qlora/`): full fine-tuning, LoRA r={r} and
QLoRA r={r} on NF4, FP4 and Int4 bases (double quantization), {n} seeds each; QLoRA at LoRA's
rate, as the paper keeps LoRA's hyperparameters. The six block linears are quantized; the
embeddings, head and norms stay fp32.

![NF4 levels](../results/qlora/levels.png)

![quantization error](../results/qlora/quant_error.png)

![memory](../results/qlora/memory.png)

{chr(10).join(lines)}

Final losses on {summary.get('scored_on', 'validation')} text in nats/byte, mean ± 95% CI over seeds; `*` marks a called difference. All numbers:
`results/qlora/results.md`.

**Verdict: {verdict}.**
""" + "\n".join(bullets)
    detail = (f"(1) NF4 lowest error, {g['nf4']:.3f} vs FP4 {g['fp4']:.3f}, Int4 {g['int4']:.3f} on N(0,1): {v1}; "
              f"(2) QLoRA - LoRA {show_difference(d)}: {v2}; (3) double quantization saves {c3['saving']:.3f} bits: {v3}"
              + (f"; (4) QLoRA - full {judged[1]['mean']:+.3f}: {parts[3]}" if len(judged) > 1 else ""))
    return {"title": "QLoRA: a 4-bit NormalFloat base", "source": "QLoRA (Dettmers et al. 2023)",
            "claim": "NF4 quantizes normal weights best; QLoRA matches 16-bit LoRA and 16-bit full fine-tuning; double "
                     "quantization saves ~0.37 bits/param", "verdict": verdict, "detail": detail, "body": body,
            "comparisons": judged}


def memory_line(rows, results):
    """The memory bullet: the counted parts, the totals with the activations, and the measured peak
    where a record holds one (results/scale/, at its own batch)."""
    names = (("full", "full fine-tuning"), ("lora", "LoRA"), ("nf4", "QLoRA"))

    def counted(key, parts=("params", "grads", "optimizer")):
        return sum(rows[key]["memory"][k] for k in parts) / MIB
    line = (f"- Memory (batch {results.json('qlora', 'records.json')[0]['batch_size']}, counted from the tensors): "
            f"weights, gradients and optimizer state are {counted('full'):.2f} MiB (full fine-tuning), "
            f"{counted('lora'):.2f} (LoRA) and {counted('nf4'):.2f} (QLoRA); with the activations saved for the "
            f"backward pass the training totals are "
            + " / ".join(f"{counted(k, ('params', 'grads', 'optimizer', 'activations')):.1f}" for k, _ in names)
            + " MiB (full / LoRA / QLoRA): 4-bit weights save "
            + f"{counted('lora') - counted('nf4'):.2f} MiB of LoRA's "
            + f"{counted('lora', ('params', 'grads', 'optimizer', 'activations')):.1f}. These counts leave out "
            "the dequantized copy of each W0 that QLoRA makes in every forward and backward, and the allocator's "
            "slack.")
    if results.has("scale", "scale.json"):
        scale = results.json("scale", "scale.json")
        tiny = next((s for s in scale["sizes"] if s["preset"] == "tiny"), None)
        variants = {"full": "full", "lora": "lora", "nf4": "qlora"}
        if tiny and all("peak" in tiny["variants"].get(v, {}) for v in variants.values()):
            peaks = [tiny["variants"][variants[k]]["peak"] for k, _ in names]
            line += (f" Measured peak (resident memory over two training steps, above the process's baseline; "
                     f"`results/scale/`, the tiny GPT at batch {scale['settings']['batch_size']} of "
                     f"{scale['settings']['block_size']} bytes, not these runs' batch): "
                     + " / ".join(f"{p['measured'] / MIB:.1f}" for p in peaks) + " MiB against "
                     + " / ".join(f"{p['predicted'] / MIB:.1f}" for p in peaks) + " MiB counted there "
                     "(full / LoRA / QLoRA).")
    else:
        line += " The peak is not measured for these runs."
    return line + (" The 65B-in-48-GB claim is about a model whose weights dwarf its activations: "
                   "[`docs/scale.md`](../docs/scale.md) predicts it with the cost model.")


if __name__ == "__main__":
    main()
