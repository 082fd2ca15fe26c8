"""Data size against rank: LoRA keeps up with full fine-tuning on small data, falls behind on large.

    python -m experiments.data_size                           # CPU, tiny model, offline
    python -m experiments.data_size --sizes 2048,16384,131072,all --ranks 1,4,16

Claim (Schulman et al. 2025, "LoRA Without Regret"): low-rank LoRA matches full fine-tuning while
the dataset is small, since its capacity suffices to hold what the data teach; once the data hold
more than the rank can, LoRA falls behind, and the size where it does moves to larger data with a
larger rank.

The test: the fine-tuning set is the first N bytes of the target corpus's training part, for N
from 4 KB to all of it (about 420 KB); the validation and test text stay the corpus's own, the
same for every size. Full fine-tuning and LoRA at each rank (on all six linear layers of every
block, alpha fixed) each get, at each size, their own rate tuned on validation (lib/tuning.py);
then three seeds at that rate, scored on test. Every run takes the same number of steps, so a
small set is seen many times over: 300 steps of 12 windows of 64 bytes draw 230,400 bytes, about
56 passes over 4 KB, 7 over 32 KB and half a pass over the whole set. The comparison at a size is
LoRA's test loss minus full fine-tuning's, seed by seed. With --early-stopping, an early-stopping
read beside it (lib/early_stopping.py): each contender's run length chosen on validation too, from
--max-iters and --shorter-runs, since a small set repeated for 300 steps is overfitted at ordinary
rates (off by default, to keep the command within 15 minutes on 2 cores).
The verdict rests on the fixed-length runs, the design set before the runs; the other read checks it.
Writes OUT/records.json, OUT/data_size.json, OUT/data_size.png, OUT/results.md.
"""
import argparse
import dataclasses
import hashlib
import math
import os
import statistics

import matplotlib.pyplot as plt

from experiments.lib import verdicts
from experiments.lib.common import (check_runs, finish_experiment, load_setup, make_parser, model_config, parse_ranks,
                                    parse_targets, positive_int, positive_ints, run_kwargs, stop)
from experiments.lib.early_stopping import choose_run_length
from experiments.lib.data_size_notes import (ahead, behind, early_findings, early_match_points, early_summary,
                                             early_table, edge_note, gap_table, gaps, kib, label, learned_little,
                                             match_text, overfitting, smallest_set)
from experiments.lib.plots import finish, lr_text, write_report
from experiments.lib.seeds import seed_list, show, show_difference, spread
from experiments.lib.tuning import LR_GRID, grid_neighbours, tune
from nanogpt.data import load_corpus
from nanogpt.flags import non_negative_int
from nanogpt.train import write_json

ALL = "all"  # --sizes: the whole training part


def parse_sizes(text):
    """'4096,32768,all' -> [4096, 32768, 'all']: at least two sizes, in bytes of training text, or
    'all' for the whole training part (last). Whether they fit the corpus is checked once it is read
    (sizes_in_bytes)."""
    message = (f"--sizes must be two or more comma-separated sizes in bytes, or {ALL!r} for the whole training "
               f"part, like 4096,32768,all; got {text!r}")
    parts = [x.strip() for x in text.split(",") if x.strip()]
    try:
        numbers = sorted({int(x) for x in parts if x != ALL})
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    sizes = numbers + ([ALL] if ALL in parts else [])
    if len(sizes) < 2 or any(n < 1 for n in numbers):
        raise argparse.ArgumentTypeError(message)
    return sizes


def sizes_in_bytes(sizes, corpus, block_size):
    """The sizes of --sizes in bytes ('all': the whole training part), checked against the corpus:
    each must hold one window (block_size + 1 bytes) and fit in the training part."""
    whole = len(corpus.train)
    out = sorted({whole if n == ALL else n for n in sizes})
    for n in out:
        if n > whole:
            raise ValueError(f"{n} bytes is more than the training part of {corpus.name!r} holds ({whole} bytes): "
                             f"choose sizes from {block_size + 1} to {whole}, or {ALL!r}")
        if n <= block_size:
            raise ValueError(f"{n} bytes is less than one training window (block_size {block_size} + 1 bytes): "
                             f"choose sizes from {block_size + 1} to {whole}, or {ALL!r}")
    if len(out) < 2:
        raise ValueError(f"{sizes} name one size only ({out[0]} bytes is the whole training part): give two or more")
    return out


def first_bytes(corpus, n):
    """The corpus with its training part cut to its first n tokens (bytes for the byte-level model);
    validation and test are the corpus's own, untouched.

    Runs are cached by the corpora's sha256 (finetune.run_key), the hash of the whole file, which a
    cut does not change: the cut corpus needs its own, or every size would read back the first
    size's runs. It is the hash of the original's and n, so the same size is the same key each time
    and every size has a different one. The whole training part is the corpus itself, with its own
    key: the same runs as any other experiment's at the same settings."""
    if not 0 < n <= len(corpus.train):
        raise ValueError(f"cannot cut the training part of {corpus.name!r} ({len(corpus.train)} tokens) to {n}")
    if n == len(corpus.train):
        return corpus
    sha = hashlib.sha256(f"{corpus.sha256}: the first {n} training tokens".encode()).hexdigest()
    return dataclasses.replace(corpus, name=f"{corpus.name} (first {n} training bytes)", train=corpus.train[:n],
                               sha256=sha)


def end_of_training_loss(record, share=0.1):
    """The mean training loss over the last `share` of the steps: the loss on the batches it trains
    on, set against the test loss to show overfitting."""
    losses = record["train_loss"]
    return statistics.fmean(losses[-max(1, int(len(losses) * share)):])


def plot_data_size(summary, path, title):
    fig, (ax_l, ax_d) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    sizes = summary["sizes"]
    for name in summary["contenders"]:
        mine = [row for row in summary["rows"] if row["name"] == name]
        style = dict(color="black", linestyle="--") if name == "full" else {}
        ax_l.errorbar([row["size"] for row in mine], [row["test_loss"]["mean"] for row in mine], marker="o",
                      capsize=3, label=label(name), yerr=[ci(row["test_loss"]) for row in mine], **style)
    ax_l.axhline(summary["base_test_loss"], color="gray", linestyle=":", label="base model (before)")
    ax_l.set_ylabel("final test loss on target (nats/byte)")
    ax_l.set_title("test loss against data size (95% CI)")
    for r in summary["ranks"]:
        mine = [d for d in summary["differences"] if d["r"] == r]
        line = ax_d.errorbar([d["size"] for d in mine], [d["difference"]["mean"] for d in mine], marker="o",
                             capsize=3, label=f"LoRA r={r} minus full", yerr=[ci(d["difference"]) for d in mine])
        early = [d for d in summary.get("early", {}).get("differences", []) if d["r"] == r]
        if early:  # the same gap with each run's length chosen on validation too (nudged right, to be seen)
            ax_d.errorbar([d["size"] * 1.1 for d in early], [d["difference"]["mean"] for d in early], marker="o",
                          mfc="white", linestyle="--", capsize=3, color=line[0].get_color(),
                          label=f"r={r}, early stopping (run length chosen on validation)",
                          yerr=[ci(d["difference"]) for d in early])
    delta = verdicts.DELTAS["loss"]
    ax_d.axhspan(-delta, delta, color="green", alpha=0.12, label=f"match margin ±{delta:g}")
    ax_d.axhline(0, color="black", linewidth=0.8)
    ax_d.set_ylabel("LoRA minus full, test loss (nats/byte)")
    ax_d.set_title("the gap, seed by seed (95% CI; above 0: LoRA behind)")
    for ax in (ax_l, ax_d):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [kib(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("fine-tuning set: first bytes of the training text (log scale)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return finish(fig, title, path)


def ci(s):
    return s["ci"] if s["n"] > 1 and math.isfinite(s["ci"]) else 0


def check_on_grid(args):
    for flag, lr in (("--full-lr", args.full_lr), ("--lora-lr", args.lora_lr)):
        if not any(math.isclose(lr, g, rel_tol=1e-9) for g in LR_GRID):
            stop(f"{flag} {lr:g} is where this experiment starts tuning, so it must be a rate of the tuning grid: "
                 f"one of {[f'{g:g}' for g in LR_GRID]}")


DEFAULT_SEEDS = 3


def command_of(summary):
    """The command that wrote the summary: the default one, or with the seeds and the read it was given."""
    n = len(summary["seeds"])
    return ("python -m experiments.data_size" + ("" if n == DEFAULT_SEEDS else f" --seeds {n}")
            + (" --early-stopping" if summary.get("early") else ""))


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/data_size", test_split=True)
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes(f"4096,32768,{ALL}"),
                   help=f"fine-tuning set sizes, the first N bytes of the training text, e.g. 4096,32768,{ALL}")
    p.add_argument("--ranks", type=parse_ranks, default=[1, 16], help="LoRA ranks, e.g. 1,16")
    # Three keep the command within its time budget from an empty cache; REPRODUCTIONS' run adds
    # two (--seeds 5, as the rules ask where an interval touches the margin), which reuse the first three.
    p.add_argument("--seeds", type=positive_int, default=DEFAULT_SEEDS, help="fine-tuning seeds per point")
    # Six: a set of a few KB, repeated for 300 steps, wants rates up to seven quarter-decades below
    # the defaults (at one extra rate, the first run found every small-set rate at the lowest tried).
    p.add_argument("--max-extra", type=non_negative_int, default=6,
                   help="tuning: rates tried beyond the first three while the best sits at an edge")
    # 300 steps, evaluated at the start and the end only, keep the 3 x 3 contenders' 45+ runs short (a
    # 300-step run takes about 20 s on one core; two run side by side). The early-stopping read adds
    # shorter runs (about 5 more minutes at three seeds, so it is asked for); REPRODUCTIONS' run-time
    # table gives what the section's run cost.
    p.set_defaults(max_iters=300, eval_interval=None)
    p.add_argument("--shorter-runs", type=lambda t: positive_ints(t, "--shorter-runs"),
                   help="run lengths (steps, below --max-iters) the early-stopping read may choose, e.g. 100,30 "
                        "(default: a third and a tenth of --max-iters)")
    p.add_argument("--early-stopping", action="store_true",
                   help="add the early-stopping read: each run length chosen on validation too (--shorter-runs)")
    args = p.parse_args(argv)
    if args.shorter_runs is None:
        args.shorter_runs = sorted({args.max_iters // 3, args.max_iters // 10} - {0}, reverse=True)
    if any(n >= args.max_iters for n in args.shorter_runs):
        p.error(f"--shorter-runs {','.join(map(str, args.shorter_runs))}: each must be below --max-iters "
                f"{args.max_iters} (the full length is always an option)")
    args.eval_interval = args.eval_interval or args.max_iters
    seeds = seed_list(args.seed, args.seeds)
    check_runs(args, ranks=args.ranks)
    check_on_grid(args)
    block_size = model_config(args).block_size
    if not args.init_from:  # a size that does not fit stops the command before the base model is made
        try:
            sizes_in_bytes(args.sizes, load_corpus(args.target, block_size, test_split=True), block_size)
        except ValueError as e:
            stop(f"--sizes: {e}")
    base, base_key, source, target, device = load_setup(args)
    try:
        sizes = sizes_in_bytes(args.sizes, target, base.config.block_size)
    except ValueError as e:
        stop(f"--sizes: {e}")
    kwargs = run_kwargs(args, device)
    targets = parse_targets(args.targets)
    methods = {"full": ({"method": "full"}, args.full_lr)}
    for r in args.ranks:
        methods[f"r={r}"] = ({"method": "lora", "variant": "lora", "r": r, "alpha": args.alpha, "targets": targets},
                             args.lora_lr)
    contenders = {}
    for n in sizes:  # each method at each size at its own rate: a small set may want a lower one
        cut = first_bytes(target, n)
        for name, (spec, lr) in methods.items():
            contenders[(name, n)] = (dict(base=base, base_key=base_key, spec=spec, target=cut, source=source,
                                          **kwargs), grid_neighbours(lr))
    tuned = tune(contenders, seeds, workers=args.workers, max_extra=args.max_extra, progress=not args.no_progress)
    summary, records = summarize(tuned, methods, sizes, seeds, args, target)
    if args.early_stopping and args.shorter_runs:
        chosen = choose_run_length(tuned, contenders, sorted(set(args.shorter_runs), reverse=True), seeds,
                                   workers=args.workers, max_extra=args.max_extra, progress=not args.no_progress)
        summary["early"] = {"lengths": sorted({args.max_iters, *args.shorter_runs}, reverse=True),
                            **early_summary(chosen, summary["ranks"], sizes)}
        known = {id(x) for x in records}
        records += [x for c in chosen.values() for x in c["records"] if id(x) not in known]
    write_json(records, os.path.join(args.out, "records.json"))
    write_json(summary, os.path.join(args.out, "data_size.json"))
    title = (f"data size x rank: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps at every "
             f"size, alpha {args.alpha:g}, each at its tuned rate, {len(seeds)} seeds, test split, {device}")
    plot_data_size(summary, os.path.join(args.out, "data_size.png"), title)
    table = write_report(os.path.join(args.out, "results.md"), "Data size x rank", title, results_table(summary))
    finish_experiment(args, argv)
    print(table)
    print(f"wrote {args.out}/records.json, data_size.json, data_size.png, results.md")


def summarize(tuned, methods, sizes, seeds, args, target):
    """(the summary written to data_size.json, the records of the chosen rates' seeds)."""
    rows, records = [], []
    for (name, n), t in tuned.items():
        runs = t["records"]
        records += runs
        rows.append({"name": name, "method": runs[0]["method"], "r": runs[0]["r"], "size": n, "lr": t["best_lr"],
                     "trainable_params": runs[0]["trainable_params"],
                     "tuning": {k: t[k] for k in ("lrs", "losses", "at_grid_edge")},  # validation, seed 1
                     "test_loss": spread([x["final_target_test_loss"] for x in runs]),
                     "source_test_loss": spread([x["final_source_test_loss"] for x in runs]),
                     "train_loss_end": spread([end_of_training_loss(x) for x in runs])})
    ranks = [spec["r"] for spec, _ in methods.values() if spec["method"] == "lora"]
    differences = gaps(rows, ranks, sizes)
    first = records[0]
    window_bytes = args.batch_size * first["block_size"]
    summary = {"seeds": seeds, "steps": args.max_iters, "batch_size": args.batch_size,
               "block_size": first["block_size"],
               "bytes_drawn": args.max_iters * window_bytes, "whole": len(target.train), "sizes": sizes,
               "ranks": ranks, "contenders": list(methods), "max_extra": args.max_extra, "alpha": args.alpha,
               "targets": parse_targets(args.targets),
               "base_test_loss": first["base_target_test_loss"], "rows": rows, "differences": differences}
    return summary, records


def results_table(summary):
    names = summary["contenders"]
    lines = ["| data | passes | " + " | ".join(label(n) for n in names) + " |",
             "| ---: | ---: |" + " ---: |" * len(names)]
    cell = {(row["name"], row["size"]): row for row in summary["rows"]}
    for n in summary["sizes"]:
        lines.append(f"| {kib(n)} | {summary['bytes_drawn'] / n:.2g} | " + " | ".join(
            f"{show(cell[(name, n)]['test_loss'])} ({lr_text(cell[(name, n)]['lr'])})" for name in names) + " |")
    return "\n".join(lines) + "\n\n" + gap_table(summary["differences"])


def match_point(judged, r):
    """The largest size at which LoRA r matches full fine-tuning (None: at none)."""
    sizes = [size for (rule, rank, size), c in judged.items()
             if rule == "matches" and rank == r and c["outcome"] == verdicts.REPRODUCED]
    return max(sizes) if sizes else None


def early_text(s, points):
    """The early-stopping read (lib/early_stopping.py) as a paragraph and its table; '' if not run."""
    e = s.get("early")
    if not e:
        return ""
    return (f"**Early stopping.** The same contenders, each with its run length chosen on validation too, from "
            f"{', '.join(map(str, e['lengths']))} steps (at each shorter length the rate is tuned again on the first "
            f"seed; `experiments/lib/early_stopping.py`), then {len(s['seeds'])} seeds at the chosen length and "
            f"rate, on test:\n\n{early_table(e, s['contenders'], lr_text).strip()}\n\n"
            f"{early_findings(s, points, early_match_points(e))}\n\n")


def judge(summary):
    """The claim in three parts, by the shared rules, from the test-loss gaps (LoRA minus full, seed
    by seed): (1) on the smallest set some rank matches full fine-tuning (equivalence within delta);
    (2) on the largest set full fine-tuning beats the lowest rank (its gap at least delta, called);
    (3) the largest size at which LoRA matches moves to larger data with the highest rank than with
    the lowest. Returns (verdict, [three part verdicts], {(rule, r, size): comparison},
    {r: match point})."""
    sizes, ranks = summary["sizes"], summary["ranks"]
    small, large, low, high = min(sizes), max(sizes), min(ranks), max(ranks)
    judged = {}
    for d in summary["differences"]:
        judged[("matches", d["r"], d["size"])] = verdicts.matches(
            d["difference"], "loss", f"LoRA r={d['r']} matches full fine-tuning on {kib(d['size'])}")
    for r in ranks:  # the claim's direction: full fine-tuning ahead, LoRA's loss higher (d > 0)
        d = next(x["difference"] for x in summary["differences"] if x["r"] == r and x["size"] == large)
        judged[("beats", r, large)] = verdicts.beats(d, "loss", f"full fine-tuning beats LoRA r={r} on "
                                                                  f"{kib(large)}")
    at_small = [judged[("matches", r, small)]["outcome"] for r in ranks]
    part_small = next((v for v in (verdicts.REPRODUCED, verdicts.NOT_SETTLED) if v in at_small),
                      verdicts.NOT_REPRODUCED)
    if learned_little(summary):  # a match between runs that barely moved says nothing about capacity
        part_small = verdicts.REGIME
    part_large = judged[("beats", low, large)]["outcome"]
    points = {r: match_point(judged, r) for r in ranks}
    if len(ranks) > 1 and (points[high] or 0) > (points[low] or 0):
        part_moves = verdicts.REPRODUCED
    elif any(c["outcome"] == verdicts.NOT_SETTLED for (rule, r, _), c in judged.items()
             if rule == "matches" and r in (low, high)):
        part_moves = verdicts.NOT_SETTLED
    else:
        part_moves = verdicts.NOT_REPRODUCED
    parts = [part_small, part_large, part_moves]
    return verdicts.combine(parts), parts, judged, points


def report(results):
    """Section of REPRODUCTIONS.md from results/data_size."""
    s = results.json("data_size", "data_size.json")
    verdict, (part_small, part_large, part_moves), judged, points = judge(s)
    sizes, ranks = s["sizes"], s["ranks"]
    small, large, low, high = min(sizes), max(sizes), min(ranks), max(ranks)
    delta = verdicts.DELTAS["loss"]

    def said(c):
        return f"{c['question']}: {verdicts.show_interval(c)}, {verdicts.show(c)}"

    fit_lines, fit_answer = overfitting(s)
    targets = ", ".join(s["targets"]) if isinstance(s["targets"], list) else s["targets"]
    trainable = {row["name"]: row["trainable_params"] for row in s["rows"]}
    params = ", ".join(f"{label(name)}: {trainable[name]:,} trainable parameters" for name in s["contenders"])
    where = match_text(points)
    edges = [row for row in s["rows"] if row["tuning"]["at_grid_edge"]]
    rates = "; ".join(f"{label(name)} " + ", ".join(lr_text(row["lr"]) for row in s["rows"] if row["name"] == name)
                      for name in s["contenders"])
    bullets = [
        f"- On the smallest set ({kib(small)}), some rank matches full fine-tuning within ±{delta:g}: "
        f"**{part_small}**"
        + (": every run there sat at the lowest rate tried and moved the base model's test loss by less than 0.05, "
           "too little to test whether a low rank holds what full fine-tuning learns; by the rule alone"
           if part_small == verdicts.REGIME else "")
        + " (" + "; ".join(said(judged[("matches", r, small)]) for r in ranks) + ").",
        f"- On the largest set ({kib(large)}), full fine-tuning beats the lowest rank: **{part_large}** (" +
        "; ".join(said(judged[("beats", r, large)]) for r in ranks) + ").",
        f"- Where LoRA matches full fine-tuning (the largest size with a passed equivalence test): {where}. That "
        f"point moves to larger data with r={high} than with r={low}: **{part_moves}**. {behind(s)}",
        f"- Does full fine-tuning overfit the small sets? {fit_answer} (" + "; ".join(fit_lines) + ").",
        f"- {ahead(s)}",
        f"- {smallest_set(s)}",
        f"- Rates, chosen on validation for each method at each size (smallest size first): {rates}."]
    if edges:
        bullets.append(f"- {edge_note(s)}")
    body = f"""**Claim.** Low-rank LoRA matches full fine-tuning while the dataset is small (its capacity
suffices); as the data grow beyond what the rank can hold, LoRA falls behind, and the point where
it falls behind moves to larger data with a larger rank (Schulman et al. 2025, "LoRA Without Regret").

**Command.** `{command_of(s)}` (`results/data_size/`): the fine-tuning set is the
first N bytes of the docs corpus's training part, N in {{{', '.join(kib(n) for n in sizes)}}}
(the validation and test text are the corpus's own at every size). Full fine-tuning and LoRA at
r = {', '.join(str(r) for r in ranks)} (on {targets}, alpha {s['alpha']:g}; {params}), each at each
size at its own rate, tuned on validation with the first seed (three grid rates around the default, up to
{s['max_extra']} more at an edge), then {len(s['seeds'])} seeds. Every run takes the same
{s['steps']} steps of {s['batch_size']} windows of {s['block_size']} bytes ({s['bytes_drawn']:,} bytes
drawn), so a small set is repeated: "passes" below is bytes drawn over the set's size.
{s['steps']} steps (most other sections train 600), evaluated only at the start and the end, keep
the runs short; the run-time table at the end gives what the command costs. **Every number below
is on the held-out test text**, which no choice read.

![data size x rank](../results/data_size/data_size.png)

{results_table(s).strip()}

Final test losses in nats/byte, mean ± 95% CI over seeds, with each one's tuned rate; `*` marks a
called gap. The base model scores {s['base_test_loss']:.3f} on the same test text.

{early_text(s, points)}**Verdict: {verdict}.**
""" + "\n".join(bullets)
    detail = (f"{kib(small)} runs within 0.05 of the base: not tested there; " if learned_little(s) else "") + "; ".join(f"{kib(n)}: r={r} {show_difference(d['difference'])}" for d in s["differences"]
                       for r, n in [(d["r"], d["size"])] if n in (small, large)) + f"; matches where: {where}; " + \
        f"{len(edges)} of {len(s['rows'])} tuned rates at the edge of those tried" + \
        (f"; with early stopping, matches where: {match_text(early_match_points(s['early']))}" if s.get("early") else "")
    return {"title": "Data size against rank: where LoRA matches full fine-tuning",
            "source": "LoRA Without Regret (Schulman et al. 2025)",
            "claim": "low-rank LoRA matches full fine-tuning on small data and falls behind as data grow; the "
                     "point moves to larger data with larger rank",
            "verdict": verdict, "detail": detail, "body": body, "comparisons": list(judged.values()),
            "command": command_of(s)}


if __name__ == "__main__":
    main()
