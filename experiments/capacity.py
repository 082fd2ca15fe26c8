"""Capacity: does LoRA keep up with full fine-tuning until the data hold more than it can store?

    python -m experiments.capacity                            # N = 32,128,512 facts; ranks 1,4,16; CPU
    python -m experiments.capacity --seeds 3                  # three fine-tuning seeds (three times as long)
    python -m experiments.capacity --n-facts 64,256,1024 --ranks 1,4,16,64 --max-iters 2000

Claim ("LoRA Without Regret", Schulman et al. 2025): a low-rank adapter matches full fine-tuning
while the dataset is small, and falls behind once the information in it exceeds what the
adapter's parameters can hold; a higher rank holds on longer.

The data are N random facts "key:value" (experiments/lib/facts.py) whose information is known
exactly (13.3 bits per value), so what each run memorized is counted in bits. Bits stored per
trainable parameter is a lower bound on the capacity, not the capacity: a run that stored every
fact was stopped by the data (N x 13.3 bits), not by its parameters, so its bits per parameter
is the data's ceiling. A capacity shows only where a run stores less than the data hold after
training to convergence; models trained to convergence store about 2 bits per parameter
(Allen-Zhu & Li 2024), which is what a run's parameters "have room for" below.

Writes OUT/records.json, OUT/capacity.json, OUT/capacity.png, OUT/bits_per_param.png, OUT/results.md.
"""
import functools
import math
import os

import matplotlib.pyplot as plt

from experiments.lib import verdicts
from experiments.lib.common import (check_runs, finish_experiment, load_setup, make_parser, parse_ranks, parse_targets,
                                    positive_int, positive_ints, run_kwargs)
from experiments.lib.facts import facts_corpus, make_facts, recall
from experiments.lib.plots import finish, label, log2_axis, lr_text, write_report
from experiments.lib.runs import run_all
from experiments.lib.seeds import seed_list, show, spread
from nanogpt.train import write_json

FINAL_EVAL = "recall-v1"  # part of the run cache key: change it when facts.recall changes
BITS_PER_PARAM_AT_CONVERGENCE = 2.0  # Allen-Zhu & Li 2024: what trained-to-convergence models store
ALL_THE_DATA = 0.95  # a run that stored this share of the data's bits was stopped by the data
KEEPS_UP = 0.9  # LoRA "keeps up" when it recalls this share of the facts full fine-tuning recalls


def parse_n_facts(text):
    return positive_ints(text, "--n-facts")


def make_capacity_parser():
    p = make_parser(__doc__.splitlines()[0], default_out="results/capacity")
    p.add_argument("--n-facts", type=parse_n_facts, default=[32, 128, 512], help="dataset sizes, e.g. 32,128,512")
    p.add_argument("--ranks", type=parse_ranks, default=[1, 4, 16], help="comma-separated, e.g. 1,4,16")
    p.add_argument("--no-full", action="store_true", help="skip full fine-tuning")
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="fine-tuning seeds per run (the facts stay the same; default 1: each more seed trains "
                        "every run again)")
    # Memorizing random facts needs many more passes, and a higher rate, than learning prose.
    # Measured on the tiny base (N=256, 300 steps): full at 1e-3 / 3e-3 / 1e-2 reached value loss
    # 2.26 / 2.21 / 2.29 nats/byte (ln 10 = 2.30 is no memorization); LoRA r=16 at N=64, 400 steps:
    # 3e-3 / 1e-2 / 3e-2 reached 1.38 / 0.44 / diverged, and r=1 diverges at 3e-2 too.
    # 1000 steps let full fine-tuning memorize 512 facts (recall 0.95). Evaluating every 250 steps
    # keeps evaluation cheap.
    p.set_defaults(max_iters=1000, full_lr=3e-3, lora_lr=1e-2, eval_interval=250)
    return p


def method_name(record):
    return "full" if record["method"] == "full" else f"lora-r{record['r']}"


def capacity_rows(records):
    """One row per (N, method): what its seeds memorized, and per trainable parameter."""
    groups = {}
    for rec in records:
        groups.setdefault((rec["n_facts"], method_name(rec)), []).append(rec)
    rows = []
    for (n, method), recs in groups.items():
        first = recs[0]
        evals = [rec["final_eval"] for rec in recs]
        bits = [ev["bits"] for ev in evals]
        rows.append({"n_facts": n, "method": method, "label": label(first), "r": first["r"],
                     "seeds": [rec["seed"] for rec in recs], "trainable_params": first["trainable_params"],
                     "value_loss": spread([ev["value_loss"] for ev in evals]),
                     "recall": spread([ev["recall"] for ev in evals]), "bits": spread(bits),
                     "bits_possible": first["final_eval"]["bits_possible"],
                     "bits_per_param": spread([b / first["trainable_params"] for b in bits]),
                     # would the data fit in these parameters at the converged models' ~2 bits each?
                     "room_bits": BITS_PER_PARAM_AT_CONVERGENCE * first["trainable_params"],
                     "all_the_data": min(bits) >= ALL_THE_DATA * first["final_eval"]["bits_possible"],
                     "source_loss": spread([rec["final_source_loss"] for rec in recs]),
                     "base_source_loss": first["base_source_loss"]})
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
    """Value loss and exact recall against the number of facts, one line per method (seed means)."""
    ns = sorted({r["n_facts"] for r in rows})
    fig, (ax_l, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, group in by_method(rows).items():
        x = [r["n_facts"] for r in group]
        ax_l.plot(x, [r["value_loss"]["mean"] for r in group], label=group[0]["label"], **line_style(method))
        ax_r.plot(x, [r["recall"]["mean"] for r in group], label=group[0]["label"], **line_style(method))
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


def plot_bits(rows, most, path, title):
    """Bits memorized against N, and the most bits per trainable parameter each method stored,
    hatched where that run stored all the data (the data's ceiling, not a capacity)."""
    ns = sorted({r["n_facts"] for r in rows})
    fig, (ax_b, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2))
    possible = {r["n_facts"]: r["bits_possible"] for r in rows}
    ax_b.plot(ns, [possible[n] for n in ns], color="gray", linestyle=":", label="all of it (N x 13.3 bits)")
    for method, group in by_method(rows).items():
        ax_b.plot([r["n_facts"] for r in group], [r["bits"]["mean"] for r in group], label=group[0]["label"],
                  **line_style(method))
    log2_axis(ax_b, ns, "number of facts N")
    ax_b.set_yscale("symlog", linthresh=100)  # 0 bits stays on the axis
    ax_b.set_ylim(bottom=-20)  # bits are never negative: no empty negative half
    ax_b.set_ylabel("information memorized (bits, symlog scale)")
    ax_b.set_title("bits memorized (gain over a uniform digit guess)")
    ax_b.legend(fontsize=8)
    names = [e["label"] for e in most]
    values = [e["bits_per_param"] for e in most]
    bars = ax_p.bar(names, values, color=["black" if e["method"] == "full" else "#4C72B0" for e in most])
    for bar, e in zip(bars, most):
        if e["all_the_data"]:
            bar.set_hatch("//")
            bar.set_edgecolor("white")
    for i, e in enumerate(most):
        note = "stored all the data" if e["all_the_data"] else f"N={e['at_n_facts']}"
        ax_p.text(i, values[i], f"{values[i]:.4f}\n{note}\n({e['trainable_params']:,} params)", ha="center",
                  va="bottom", fontsize=7)
    ax_p.set_ylim(0, 1.45 * max(values + [1e-3]))  # room for the labels; a visible axis when all are 0
    ax_p.set_ylabel("most bits stored / trainable parameter, over N")
    ax_p.set_title(f"a lower bound on capacity (hatched: the data ran out)\n"
                   f"converged models store ~{BITS_PER_PARAM_AT_CONVERGENCE:g} bits/param (Allen-Zhu & Li)")
    ax_p.tick_params(axis="x", labelrotation=20)
    return finish(fig, title, path)


def most_bits_per_param(rows):
    """Per method: the most bits per trainable parameter (seed mean) it stored over the dataset
    sizes, and whether that run stored all the data (then it is the data's ceiling)."""
    out = []
    for method, group in by_method(rows).items():
        best = max(group, key=lambda r: r["bits_per_param"]["mean"])
        out.append({"method": method, "label": best["label"], "trainable_params": best["trainable_params"],
                    "bits_per_param": best["bits_per_param"]["mean"], "at_n_facts": best["n_facts"],
                    "all_the_data": best["all_the_data"]})
    return out


def keeping_up(rows):
    """For each LoRA run: did it recall KEEPS_UP of the facts full fine-tuning recalled (exact recall:
    a run can know every value and still be less than certain, which bits count against it),
    and would the facts have fit in its parameters at BITS_PER_PARAM_AT_CONVERGENCE?"""
    full = {r["n_facts"]: r for r in rows if r["method"] == "full"}
    out = []
    for r in rows:
        if r["method"] == "full" or r["n_facts"] not in full:
            continue
        out.append({"n_facts": r["n_facts"], "method": r["method"], "label": r["label"], "r": r["r"],
                    "keeps_up": r["recall"]["mean"] >= KEEPS_UP * full[r["n_facts"]]["recall"]["mean"],
                    "data_fit": r["bits_possible"] <= r["room_bits"], "bits": r["bits"]["mean"],
                    "full_bits": full[r["n_facts"]]["bits"]["mean"], "room_bits": r["room_bits"],
                    "bits_possible": r["bits_possible"]})
    return out


def markdown(rows, most):
    n = len(rows[0]["seeds"])
    lines = ["| N facts | run | trainable params | value loss (nats/byte) | exact recall | bits memorized / possible "
             "| bits/param | source loss (base) |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ceiling = " (all the data)" if r["all_the_data"] else ""
        lines.append(f"| {r['n_facts']} | {r['label']} | {r['trainable_params']:,} | {show(r['value_loss'])} | "
                     f"{show(r['recall'], digits=2)} | {r['bits']['mean']:,.0f} / {r['bits_possible']:,.0f}{ceiling} | "
                     f"{show(r['bits_per_param'], digits=4)} | {show(r['source_loss'])} ({r['base_source_loss']:.3f}) |")
    lines.append(f"\n{'One fine-tuning seed' if n == 1 else f'Mean ± 95% CI over {n} fine-tuning seeds'}; the facts "
                 f"are the same for every run. Most bits stored per trainable parameter over N: " + "; ".join(
                     f"{e['label']} {e['bits_per_param']:.4f} (at N={e['at_n_facts']}"
                     + (", all the data: the data's ceiling, not a capacity)" if e["all_the_data"] else ")")
                     for e in most) + ".")
    lines.append(f"A uniform guess among the digits scores {math.log(10):.3f} nats/byte and 0 bits.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = make_capacity_parser().parse_args(argv)
    check_runs(args, ranks=args.ranks)
    seeds = seed_list(args.seed, args.seeds)
    base, base_key, source, _, device = load_setup(args)  # the facts replace the prose target
    kwargs = run_kwargs(args, device)
    targets = parse_targets(args.targets)
    specs = [] if args.no_full else [{"method": "full", "lr": args.full_lr}]
    specs += [{"method": "lora", "variant": "lora", "r": r, "alpha": args.alpha, "targets": targets,
               "lr": args.lora_lr} for r in args.ranks]
    plan, sizes = [], []
    for n in args.n_facts:
        facts = make_facts(n, args.seed)  # the same facts for every fine-tuning seed
        corpus = facts_corpus(facts, base.config.block_size, args.seed)
        final_eval = (FINAL_EVAL, functools.partial(recall, facts=facts, device=device))  # picklable, for workers
        for spec in specs:
            for s in seeds:
                plan.append(dict(base=base, base_key=base_key, spec=spec, target=corpus, source=source,
                                 final_eval=final_eval, **{**kwargs, "seed": s}))
                sizes.append(n)
    runs = run_all(plan, workers=args.workers, progress=not args.no_progress, desc="capacity")
    records = [{"n_facts": n, **record} for n, record in zip(sizes, runs)]
    write_json(records, os.path.join(args.out, "records.json"))
    rows = capacity_rows(records)
    most = most_bits_per_param(rows)
    write_json({"seeds": seeds, "max_iters": args.max_iters, "lrs": {"full": args.full_lr, "lora": args.lora_lr},
                "rows": rows, "most_bits_per_param": most, "keeping_up": keeping_up(rows)},
               os.path.join(args.out, "capacity.json"))
    title = (f"capacity: {args.preset} GPT ({source.name} base), N random facts 'abcd:1234', {args.max_iters} steps, "
             f"lr full {args.full_lr:g} / LoRA {args.lora_lr:g}, alpha {args.alpha:g}, {len(seeds)} "
             f"seed{'s' * (len(seeds) > 1)}, {device}")
    plot_capacity(rows, os.path.join(args.out, "capacity.png"), title)
    plot_bits(rows, most, os.path.join(args.out, "bits_per_param.png"), title)
    table = markdown(rows, most)
    write_report(os.path.join(args.out, "results.md"), "Capacity", title, table)
    finish_experiment(args, argv)
    print(table)
    print(f"wrote {args.out}/records.json, capacity.json, capacity.png, bits_per_param.png, results.md")


def judge(rows):
    """The claim as comparisons the shared rules judge (experiments/lib/verdicts.py), one per LoRA
    cell, on full fine-tuning's recall minus LoRA's, seed by seed: where the data fit in LoRA's room
    (~2 bits per parameter) the claim says LoRA tracks full fine-tuning (matches, within 0.1 of the
    facts); where they do not, that it falls behind (beats, by at least 0.1). One seed per cell gives
    no interval: every part is then not settled."""
    full = {r["n_facts"]: r for r in rows if r["method"] == "full"}
    parts = []
    for r in rows:
        if r["method"] == "full" or r["n_facts"] not in full:
            continue
        gap = [f - x for f, x in zip(full[r["n_facts"]]["recall"]["values"], r["recall"]["values"])]
        fits = r["bits_possible"] <= r["room_bits"]
        rule = verdicts.matches if fits else verdicts.beats
        parts.append(rule(gap, "recall", f"r={r['r']}, N={r['n_facts']}: "
                                        + ("tracks full" if fits else "falls behind full")))
    return parts


def report(results):
    """Section of REPRODUCTIONS.md from results/capacity."""
    s = results.json("capacity", "capacity.json")
    rows, most, kept = s["rows"], s["most_bits_per_param"], s["keeping_up"]
    n_seeds = len(s["seeds"])
    ns = sorted({r["n_facts"] for r in rows})
    lora = sorted({k["r"] for k in kept})
    # Largest N each rank keeps up at (0: none), and whether higher ranks hold on longer.
    reach = {r: max([k["n_facts"] for k in kept if k["r"] == r and k["keeps_up"]], default=0) for r in lora}
    ordered = all(reach[a] <= reach[b] for a, b in zip(lora, lora[1:]))
    behind = [k for k in kept if not k["keeps_up"]]
    behind_with_room = [k for k in behind if k["data_fit"]]
    # Outside the claim's regime when nothing fell behind (the data never exceeded anything) or every
    # shortfall happened with room to spare (the step budget, not the capacity, held LoRA back).
    regime = not behind or len(behind_with_room) == len(behind)
    parts = judge(rows)
    verdict = verdicts.combine([c["outcome"] for c in parts], regime=regime)
    by = {(r["n_facts"], r["method"]): r for r in rows}
    full_ratio = [e for e in most if e["method"] == "full"]
    lora_most = [e for e in most if e["method"] != "full"]
    header = "| N facts (bits) | " + " | ".join(
        ["full fine-tuning"] * bool(full_ratio) + [f"r={r} ({by[(ns[0], f'lora-r{r}')]['trainable_params']:,} params)"
                                                   for r in lora]) + " |"
    lines_t = [header, "| ---: |" + " ---: |" * (len(lora) + bool(full_ratio))]
    for n in ns:
        cells = []
        for m in (["full"] if full_ratio else []) + [f"lora-r{r}" for r in lora]:
            r = by[(n, m)]
            cells.append(f"{show(r['recall'], digits=2)} / {r['bits']['mean']:,.0f}")
        possible = next(r for r in rows if r["n_facts"] == n)["bits_possible"]
        lines_t.append(f"| {n} ({possible:,.0f}) | " + " | ".join(cells) + " |")
    table = "\n".join(lines_t)
    reach_text = "; ".join(f"r={r} " + (f"up to N={reach[r]}" if reach[r] else "at no N") for r in lora)
    rises = ordered and len(set(reach.values())) > 1
    lines = [("- The pattern the claim predicts is there: " if rises and behind else "- ")
             + f"LoRA keeps up with full fine-tuning (recalls at least {KEEPS_UP:.0%} as many facts exactly) "
               f"{reach_text}"
             + ("; the higher the rank, the larger the N it keeps up to." if rises else
                "; every rank to the same N." if ordered else "; not in the order of rank.")]
    if full_ratio:
        f = full_ratio[0]
        lines.append(f"- Full fine-tuning's {f['bits_per_param']:.4f} bits per parameter "
                     + ("is the data's ceiling, not a capacity: it stored all the facts, so its parameters were never "
                        "the limit." if f["all_the_data"] else "is a lower bound on its capacity."))
    lines.append("- The most bits per trainable parameter LoRA stored: " + "; ".join(
        f"{e['label']} {e['bits_per_param']:.4f} (N={e['at_n_facts']}"
        + (", all the data)" if e["all_the_data"] else ")") for e in lora_most)
        + f". A capacity limit would show as storage levelling off near the "
          f"~{BITS_PER_PARAM_AT_CONVERGENCE:g} bits per parameter of converged models (Allen-Zhu and Li 2024).")
    if behind_with_room:
        tightest = min(behind_with_room, key=lambda k: k["room_bits"] / k["bits_possible"])
        lines.append(f"- {len(behind_with_room)} of the {len(behind)} LoRA runs that fell behind had room for the "
                     f"data: even the tightest, {tightest['label']} at N={tightest['n_facts']}, has room for about "
                     f"{tightest['room_bits']:,.0f} bits, the facts hold {tightest['bits_possible']:,.0f}, and it "
                     f"stored {tightest['bits']:,.0f}.")
    drops = [(by[(a, m)], by[(b, m)]) for m in (f"lora-r{r}" for r in lora) for a, b in zip(ns, ns[1:])
             if by[(b, m)]["bits"]["mean"] < 0.5 * by[(a, m)]["bits"]["mean"]]
    if drops:
        a, b = max(drops, key=lambda d: d[0]["bits"]["mean"])
        lines.append(f"- An adapter out of room would level off at its limit. {a['label']} instead stored "
                     f"{a['bits']['mean']:,.0f} bits at N={a['n_facts']} and {b['bits']['mean']:,.0f} at "
                     f"N={b['n_facts']}: with more facts each one comes round less often in the same "
                     f"{s['max_iters']:,} steps, and LoRA, at the highest rate that does not diverge, is still in its "
                     f"slow first phase. What limits LoRA here is the step budget, not its capacity.")
    lines.append(f"- By the rule, per LoRA cell on full fine-tuning's recall minus LoRA's (tracks: within "
                 f"±{verdicts.DELTAS['recall']:g} of the facts, an equivalence test; falls behind: by at least "
                 f"{verdicts.DELTAS['recall']:g}): " + verdicts.show_parts(parts)
                 + (". With one seed a difference has no interval, so no cell is decided, however large the gap."
                    if n_seeds == 1 else "."))
    if verdict == verdicts.REGIME:
        lines.append("- Testing capacity itself needs every run trained to convergence: many times the steps, "
                     "beyond the 15-minute CPU default (`--max-iters`, `--n-facts` and `--device cuda` are there for "
                     "it).")
    full_rows = [r for r in rows if r["method"] == "full"]
    if full_rows:
        worst = max(full_rows, key=lambda r: r["source_loss"]["mean"])
        lora_src = [r["source_loss"]["mean"] for r in rows if r["method"] != "full"]
        lines.append(f"- Forgetting on facts: full fine-tuning takes the code loss from "
                     f"{worst['base_source_loss']:.2f} to {worst['source_loss']['mean']:.2f} (a uniform guess over "
                     f"256 bytes scores {math.log(256):.2f}); LoRA ends at {min(lora_src):.2f} to {max(lora_src):.2f}.")
    lines.append(f"- {'This rests on one fine-tuning seed per cell' if n_seeds == 1 else f'{n_seeds} fine-tuning seeds per cell'}"
                 + (f" (each {s['max_iters']:,}-step run is costly on a CPU; `--seeds 3` triples the time). The differences it "
                    "rests on are large (whole data sets stored or not), but their exact sizes are one run's."
                    if n_seeds == 1 else "."))
    # One seed keeps the command's time down; the run the section reads may have more (it names them).
    command = "python -m experiments.capacity" + (f" --seeds {n_seeds}" if n_seeds != 1 else "")
    body = f"""**Claim.** LoRA Without Regret (Schulman et al. 2025): on a fixed dataset, low-rank LoRA tracks
full fine-tuning as long as the information in the data fits in the adapter's parameters. Past
that point it falls behind, and a higher rank holds on longer.

**Command.** `{command}` (`results/capacity/`). The data are N random facts
`abcd:1234`, from a seeded generator (`experiments/lib/facts.py`). Each value holds exactly
4 log2(10) = 13.3 bits, so what a run memorised can be counted: the bits it gained over a
uniform guess among the ten digits, summed over all facts. Each run trains {s['max_iters']:,} steps on the
facts and is scored on the same facts, by the loss on the value bytes and by exact recall
(greedy decoding gets all four digits right). Memorising needs higher rates than prose; a
small search chose {lr_text(s['lrs']['full'])} for full fine-tuning and {lr_text(s['lrs']['lora'])} for LoRA.

![capacity](../results/capacity/capacity.png)
![bits per parameter](../results/capacity/bits_per_param.png)

{table}

Each cell: exact recall / bits memorised, {'one seed' if n_seeds == 1 else f'mean over {n_seeds} seeds'}.
Bits stored per trainable parameter is a lower bound on capacity; where a run stored all the data
it is the data's ceiling.

**Verdict: {verdict}.**
""" + "\n".join(lines)
    detail = (f"{reach_text}; LoRA stored at most {max(e['bits_per_param'] for e in lora_most):.4f} bits/param"
              + (f", and every shortfall had room for the data at ~{BITS_PER_PARAM_AT_CONVERGENCE:g} bits/param"
                 if behind and len(behind_with_room) == len(behind) else "")
              + ("; one seed" if n_seeds == 1 else "") + "; by the rule, "
              + verdicts.show_parts(parts, label=lambda c: c["question"].split(":")[0].replace(", ", " ")))
    return {"title": "Capacity: when does a low rank run out of room?", "source": "LoRA Without Regret",
            "claim": "Low-rank LoRA tracks full fine-tuning until the data exceed its capacity", "verdict": verdict,
            "detail": detail, "body": body, "comparisons": parts, "command": command,
            "measured": verdicts.combine([c["outcome"] for c in parts])}


if __name__ == "__main__":
    main()
