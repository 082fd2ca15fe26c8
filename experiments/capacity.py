"""Capacity: LoRA keeps up with full fine-tuning until the data holds more than it can store.

    python -m experiments.capacity                            # N = 32,128,512 facts; ranks 1,4,16; CPU
    python -m experiments.capacity --n-facts 64,256,1024 --ranks 1,4,16,64 --max-iters 2000

Reproduces the capacity argument of "LoRA Without Regret" (Schulman et al. 2025): a low-rank adapter
matches full fine-tuning while the dataset is small, and falls behind once the information in it
exceeds what the adapter's parameters hold. The data are N random facts "key:value" (experiments/facts.py)
whose information is known exactly (13.3 bits per value), so what each run memorized is counted in
bits, and bits per trainable parameter estimates a capacity (Allen-Zhu & Li 2024: about 2 for full
models trained to convergence).

Writes OUT/records.json, OUT/capacity.json, OUT/capacity.png, OUT/bits_per_param.png, OUT/results.md.
"""
import math
import os

import matplotlib.pyplot as plt

from experiments.common import check_runs, load_setup, make_parser, parse_ranks, parse_targets, positive_ints, run_kwargs
from experiments.facts import facts_corpus, make_facts, recall
from experiments.finetune import run_finetune
from experiments.plots import finish, label, log2_axis, write_report
from nanogpt.train import write_json

FINAL_EVAL = "recall-v1"  # part of the run cache key: change it when facts.recall changes


def parse_n_facts(text):
    return positive_ints(text, "--n-facts")


def make_capacity_parser():
    p = make_parser(__doc__.splitlines()[0], default_out="results/capacity")
    p.add_argument("--n-facts", type=parse_n_facts, default=[32, 128, 512], help="dataset sizes, e.g. 32,128,512")
    p.add_argument("--ranks", type=parse_ranks, default=[1, 4, 16], help="comma-separated, e.g. 1,4,16")
    p.add_argument("--no-full", action="store_true", help="skip full fine-tuning")
    # Memorizing random facts needs many more passes, and a higher rate, than learning prose.
    # Measured on the tiny base (N=256, 300 steps): full at 1e-3 / 3e-3 / 1e-2 reached value loss
    # 2.26 / 2.21 / 2.29 nats/byte (ln 10 = 2.30 is no memorization); LoRA r=16 at N=64, 400 steps:
    # 3e-3 / 1e-2 / 3e-2 reached 1.38 / 0.44 / diverged, and r=1 diverges at 3e-2 too.
    # 1000 steps let full fine-tuning memorize 512 facts (recall 0.95); the 12 default runs take about
    # 75 s each on a busy 2-core CPU (15 minutes in all). Evaluating every 250 steps keeps evaluation cheap.
    p.set_defaults(max_iters=1000, full_lr=3e-3, lora_lr=1e-2, eval_interval=250)
    return p


def method_name(record):
    return "full" if record["method"] == "full" else f"lora-r{record['r']}"


def capacity_rows(records):
    """One row per (N, method): what the run memorized, and per trainable parameter."""
    rows = []
    for rec in records:
        ev = rec["final_eval"]
        rows.append({"n_facts": rec["n_facts"], "method": method_name(rec), "label": label(rec), "r": rec["r"],
                     "trainable_params": rec["trainable_params"], "value_loss": ev["value_loss"],
                     "recall": ev["recall"], "bits": ev["bits"], "bits_possible": ev["bits_possible"],
                     "bits_per_param": ev["bits"] / rec["trainable_params"],
                     "source_loss": rec["final_source_loss"], "base_source_loss": rec["base_source_loss"]})
    return rows


def by_method(rows):
    """{method: rows sorted by N}, in the order the methods first appear."""
    groups = {}
    for row in rows:
        groups.setdefault(row["method"], []).append(row)
    return {m: sorted(g, key=lambda r: r["n_facts"]) for m, g in groups.items()}


def line_style(method):
    """Full fine-tuning as the black dashed reference, as in the other experiments' plots."""
    if method == "full":
        return dict(marker="o", color="black", linestyle="--", linewidth=2.2)
    return dict(marker="o")


def plot_capacity(rows, path, title):
    """Value loss and exact recall against the number of facts, one line per method."""
    ns = sorted({r["n_facts"] for r in rows})
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, group in by_method(rows).items():
        x = [r["n_facts"] for r in group]
        ax_l.plot(x, [r["value_loss"] for r in group], label=group[0]["label"], **line_style(method))
        ax_r.plot(x, [r["recall"] for r in group], label=group[0]["label"], **line_style(method))
    ax_l.axhline(math.log(10), color="gray", linestyle=":", label="uniform guess among 10 digits (ln 10)")
    ax_l.set_ylabel("final loss on the value bytes (nats/byte)")
    ax_l.set_title("value loss (lower is better)")
    ax_r.set_ylabel("exact recall (fraction of facts, greedy)")
    ax_r.set_ylim(-0.03, 1.03)
    ax_r.set_title("facts recalled exactly (higher is better)")
    for ax in (ax_l, ax_r):
        log2_axis(ax, ns, "number of facts N")
        ax.legend(fontsize=8)
    return finish(fig, title, path)


def plot_bits(rows, estimates, path, title):
    """Bits memorized against N, and the capacity estimate (best bits per trainable parameter)."""
    ns = sorted({r["n_facts"] for r in rows})
    fig, (ax_b, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2))
    possible = {r["n_facts"]: r["bits_possible"] for r in rows}
    ax_b.plot(ns, [possible[n] for n in ns], color="gray", linestyle=":", label="all of it (N x 13.3 bits)")
    for method, group in by_method(rows).items():
        ax_b.plot([r["n_facts"] for r in group], [r["bits"] for r in group], label=group[0]["label"],
                  **line_style(method))
    log2_axis(ax_b, ns, "number of facts N")
    ax_b.set_yscale("symlog", linthresh=100)  # 0 bits stays on the axis
    ax_b.set_ylim(bottom=-20)  # bits are never negative: no empty negative half
    ax_b.set_ylabel("information memorized (bits, symlog scale)")
    ax_b.set_title("bits memorized (gain over a uniform digit guess)")
    ax_b.legend(fontsize=8)
    names = [e["label"] for e in estimates]
    values = [e["bits_per_param"] for e in estimates]
    ax_p.bar(names, values, color=["black" if e["method"] == "full" else "#4C72B0" for e in estimates])
    for i, e in enumerate(estimates):
        ax_p.text(i, values[i], f"{values[i]:.4f}\n({e['trainable_params']:,} params)", ha="center",
                  va="bottom", fontsize=8)
    ax_p.set_ylim(0, 1.3 * max(values + [1e-3]))  # room for the labels; a visible axis when all are 0
    ax_p.set_ylabel("max over N of bits / trainable parameter")
    ax_p.set_title("capacity estimate (literature: ~2 bits/param at convergence)")
    ax_p.tick_params(axis="x", labelrotation=20)
    return finish(fig, title, path)


def capacity_estimates(rows):
    """Per method: the most bits per trainable parameter it reached over the dataset sizes."""
    out = []
    for method, group in by_method(rows).items():
        best = max(group, key=lambda r: r["bits_per_param"])
        out.append({"method": method, "label": best["label"], "trainable_params": best["trainable_params"],
                    "bits_per_param": best["bits_per_param"], "at_n_facts": best["n_facts"]})
    return out


def markdown(rows, estimates):
    lines = ["| N facts | run | trainable params | value loss (nats/byte) | exact recall | bits memorized / possible "
             "| bits/param | source loss (base) |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['n_facts']} | {r['label']} | {r['trainable_params']:,} | {r['value_loss']:.3f} | "
                     f"{r['recall']:.3f} | {r['bits']:,.0f} / {r['bits_possible']:,.0f} | {r['bits_per_param']:.4f} | "
                     f"{r['source_loss']:.3f} ({r['base_source_loss']:.3f}) |")
    lines.append("\nCapacity estimate, max over N of bits / trainable parameter: " + "; ".join(
        f"{e['label']} {e['bits_per_param']:.4f} (at N={e['at_n_facts']})" for e in estimates) + ".")
    lines.append(f"A uniform guess among the digits scores {math.log(10):.3f} nats/byte and 0 bits.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = make_capacity_parser().parse_args(argv)
    check_runs(args, ranks=args.ranks)
    base, base_key, source, _, device = load_setup(args)  # the facts replace the prose target
    kwargs = run_kwargs(args, device)
    targets = parse_targets(args.targets)
    specs = [] if args.no_full else [{"method": "full", "lr": args.full_lr}]
    specs += [{"method": "lora", "variant": "lora", "r": r, "alpha": args.alpha, "targets": targets,
               "lr": args.lora_lr} for r in args.ranks]
    records = []
    for n in args.n_facts:
        facts = make_facts(n, args.seed)
        corpus = facts_corpus(facts, base.config.block_size, args.seed)
        final_eval = (FINAL_EVAL, lambda model, facts=facts: recall(model, facts, device))
        for spec in specs:
            print(f"N={n} facts: fine-tuning {spec['method']}" + (f" r={spec['r']}" if "r" in spec else ""))
            record = run_finetune(base, base_key, spec, corpus, source, final_eval=final_eval, **kwargs)
            records.append({"n_facts": n, **record})
    write_json(records, os.path.join(args.out, "records.json"))
    rows = capacity_rows(records)
    estimates = capacity_estimates(rows)
    write_json({"rows": rows, "capacity": estimates}, os.path.join(args.out, "capacity.json"))
    title = (f"capacity: {args.preset} GPT ({source.name} base), N random facts 'abcd:1234', {args.max_iters} steps, "
             f"lr full {args.full_lr:g} / LoRA {args.lora_lr:g}, alpha {args.alpha:g}, {device}")
    plot_capacity(rows, os.path.join(args.out, "capacity.png"), title)
    plot_bits(rows, estimates, os.path.join(args.out, "bits_per_param.png"), title)
    table = markdown(rows, estimates)
    write_report(os.path.join(args.out, "results.md"), "Capacity", title, table)
    print(table)
    print(f"wrote {args.out}/records.json, capacity.json, capacity.png, bits_per_param.png, results.md")


if __name__ == "__main__":
    main()
