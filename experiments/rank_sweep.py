"""Sweep the LoRA rank, with alpha fixed (alpha/r) and with rsLoRA (alpha/sqrt(r)), against full fine-tuning.

    python -m experiments.rank_sweep                          # the quickstart: ranks 1,4,8,16,64, one seed
    python -m experiments.rank_sweep --reproduce              # REPRODUCTIONS.md's sweep: ranks 1..64, 3 seeds, rsLoRA too
    python -m experiments.rank_sweep --ranks 1,4,16 --seeds 3 --rslora --device cuda --preset small

Two sweeps, one per use. The default is the quickstart (minutes on a laptop CPU): one seed of
full fine-tuning and of LoRA at five ranks, alpha/r, into results/rank_sweep/. Its runs are the
first seed of the reproduction's runs (same settings, same seed, same cache key), so they give
the same losses. --reproduce is the three-seed sweep that REPRODUCTIONS.md's rank section and
the README's results read (results/rank_sweep_reproduction/): ranks 1 to 64, both scalings.

Two scalings side by side, because the shape of the curve depends on it. With alpha fixed (as in
the LoRA paper and loralib), the update is scaled by alpha/r, which falls from 16 at r=1 to 0.25
at r=64 with alpha 16: at one learning rate, high ranks then move their update slower. rsLoRA's
alpha/sqrt(r) keeps that scale from shrinking so fast (2 at r=64). Same rate for both: the rate
tuned for r=8 with alpha/r (see lr_sweep.py).

Writes OUT/records.json, OUT/rank_sweep.json (per run group: losses over seeds),
OUT/final_loss_vs_rank.png, OUT/params_memory_vs_rank.png, OUT/loss_curves.png,
OUT/early_curves.png, OUT/results.md and OUT/run_info.json.
"""
import argparse
import os
import statistics
from dataclasses import dataclass

import matplotlib.pyplot as plt

from experiments.lib.common import (check_runs, finish_experiment, load_setup, make_parser, parse_ranks, parse_targets,
                                    positive_int, run_kwargs)
from experiments.lib.finetune import reported_loss, reported_on
from experiments.lib.plots import finish, log2_axis, plot_loss_curves, plot_memory_bars, write_report
from experiments.lib.runs import run_all
from experiments.lib import verdicts
from experiments.lib.sections import MAIN_SWEEP_FOLDER, section_ref
from experiments.lib.seeds import seed_list, show, spread
from nanogpt.train import write_json

SCALINGS = {"lora": "LoRA, alpha/r", "rslora": "rsLoRA, alpha/sqrt(r)"}
EARLY_STEPS = (25, 50, 100, 200, 600)  # where the early training curves are compared
SMOOTHING = 25  # steps in the moving average of the training loss (one batch is noisy)
REPORT_FOLDER = MAIN_SWEEP_FOLDER  # under results/: the sweep REPRODUCTIONS.md and the README read
COMMAND = "python -m experiments.rank_sweep --reproduce"  # the command that writes it


@dataclass(frozen=True)
class Sweep:
    """What a rank sweep trains, and where it writes: the settings --reproduce fixes together."""
    ranks: tuple  # LoRA ranks, each with every scaling
    seeds: int  # fine-tuning seeds per run
    rslora: bool  # also the rsLoRA series (alpha/sqrt(r)) beside alpha/r
    out: str  # the results folder


# The quickstart: full fine-tuning and five ranks, one seed: six runs, two at a time on two cores.
# 1, 4, 16, 64 draw the curve; r=8 is the rank LoRA's rate was tuned at and full_vs_lora's default,
# so full_vs_lora then finds both its runs in the cache.
QUICKSTART = Sweep(ranks=(1, 4, 8, 16, 64), seeds=1, rslora=False, out="results/rank_sweep")
# REPRODUCTIONS.md's section: 42 distinct runs (results/rank_sweep_reproduction/run_info.json has its time).
REPRODUCTION = Sweep(ranks=(1, 2, 4, 8, 16, 32, 64), seeds=3, rslora=True, out=os.path.join("results", REPORT_FOLDER))


def group_summary(name, kind, r, runs):
    return {"name": name, "kind": kind, "r": r, "trainable_params": runs[0]["trainable_params"],
            "total_params": runs[0]["total_params"], "alpha": runs[0]["alpha"],
            "target_loss": spread([reported_loss(x, "target") for x in runs]),
            "source_loss": spread([reported_loss(x, "source") for x in runs]), "scored_on": reported_on(runs[0])}


def smoothed_train_loss(record, step, window=SMOOTHING):
    """Mean training loss over the `window` steps that end at `step` (1-based step count)."""
    losses = record["train_loss"][max(0, step - window):step]
    return statistics.fmean(losses)


def early_curves(groups, steps=EARLY_STEPS):
    """For the fixed-alpha LoRA groups: the smoothed training loss at each of `steps`, over seeds,
    and how far apart the ranks are (max - min of the rank means) against the seed spread."""
    lora = [g for g in groups if g["kind"] == "lora"]
    n = len(lora[0]["runs"][0]["train_loss"]) if lora else 0
    rows = []
    for step in sorted({s for s in steps if s <= n} | {n}) if n else []:
        per_rank = {g["r"]: spread([smoothed_train_loss(x, step) for x in g["runs"]]) for g in lora}
        means = [s["mean"] for s in per_rank.values()]
        sds = [s["sd"] for s in per_rank.values() if s["n"] > 1]
        rows.append({"step": step, "per_rank": per_rank, "rank_range": max(means) - min(means),
                     "seed_sd": statistics.fmean(sds) if sds else None})
    return rows


def plot_final_loss(groups, path, title):
    """Final loss against rank for each scaling (mean and 95% CI over seeds), full fine-tuning as a line."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    full = next((g for g in groups if g["kind"] == "full"), None)
    ranks = sorted({g["r"] for g in groups if g["r"]})
    for ax, key, what in ((axes[0], "target_loss", "target"), (axes[1], "source_loss", "source")):
        for kind, label in SCALINGS.items():
            series = [g for g in groups if g["kind"] == kind]
            if series:
                ax.errorbar([g["r"] for g in series], [g[key]["mean"] for g in series],
                            yerr=[g[key]["ci"] if g[key]["n"] > 1 else 0 for g in series], marker="o", capsize=3,
                            label=label)
        if full is not None:
            ax.axhline(full[key]["mean"], color="black", linestyle="--", label="full fine-tuning")
        first = groups[0]["runs"][0]  # the base line on the same text as the points
        ax.axhline(reported_loss(first, what, "base"), color="gray", linestyle=":", label="base model (before)")
        log2_axis(ax, ranks, "LoRA rank r")
        ax.set_ylabel(f"final {reported_on(first)} loss (nats/byte)")
        ax.legend(fontsize=8)
    corpus = groups[0]["runs"][0]
    axes[0].set_title(f"learned: {corpus['target_corpus']} (lower is better)")
    axes[1].set_title(f"forgotten: {corpus['source_corpus']} (lower is better)")
    return finish(fig, title, path)


def plot_params_memory(groups, path, title):
    """Trainable parameters against rank, and memory by part of one run per rank (first seed)."""
    lora = [g for g in groups if g["kind"] == "lora"]
    full = next((g for g in groups if g["kind"] == "full"), None)
    fig, (ax_p, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_p.plot([g["r"] for g in lora], [g["trainable_params"] for g in lora], "o-", label="LoRA trainable parameters")
    if full is not None:
        ax_p.axhline(full["trainable_params"], color="black", linestyle="--", label="full fine-tuning")
    log2_axis(ax_p, [g["r"] for g in lora], "LoRA rank r")
    ax_p.set_yscale("log")
    ax_p.set_ylabel("trainable parameters (log scale)")
    ax_p.set_title("trainable parameters grow linearly with r")
    ax_p.legend(fontsize=8)
    plot_memory_bars(ax_m, [g["runs"][0] for g in lora] + ([full["runs"][0]] if full else []))
    ax_m.set_title("training memory by part (measured)")
    return finish(fig, title, path)


def plot_early_curves(groups, path, title):
    """Smoothed training loss over the first steps for every rank (fixed alpha), seed mean."""
    fig, (ax_e, ax_a) = plt.subplots(1, 2, figsize=(11, 4.2))
    for g in (g for g in groups if g["kind"] in ("lora", "full")):
        n = len(g["runs"][0]["train_loss"])
        steps = list(range(min(SMOOTHING, n), n + 1, 5))
        mean = [statistics.fmean(smoothed_train_loss(x, s) for x in g["runs"]) for s in steps]
        style = dict(color="black", linestyle="--") if g["kind"] == "full" else {}
        for ax, upto in ((ax_e, 200), (ax_a, n)):
            shown = [(s, m) for s, m in zip(steps, mean) if s <= upto]
            ax.plot([s for s, _ in shown], [m for _, m in shown], label=g["name"], **style)
    ax_e.set_title("the first 200 steps")
    ax_a.set_title("the whole run")
    for ax in (ax_e, ax_a):
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel(f"training loss, mean of the last {SMOOTHING} steps (nats/byte)")
        ax.grid(alpha=0.3)
    ax_a.legend(fontsize=8)
    return finish(fig, title, path)


def results_table(groups):
    lines = ["| run | alpha | trainable params | target loss | source loss |", "| --- | ---: | ---: | ---: | ---: |"]
    for g in groups:
        share = 100 * g["trainable_params"] / g["total_params"]
        alpha = "-" if g["alpha"] is None else f"{g['alpha']:g}"
        lines.append(f"| {g['name']} | {alpha} | {g['trainable_params']:,} ({share:.1f}%) | "
                     f"{show(g['target_loss'])} | {show(g['source_loss'])} |")
    n, text = groups[0]["target_loss"]["n"], groups[0].get("scored_on", "validation")
    lines.append(f"\nFinal {text} losses in nats/byte, mean ± 95% CI over {n} seeds"
                 if n > 1 else f"\nFinal {text} losses in nats/byte, one seed.")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    """The flags, with the sweep's shape filled in: the quickstart's, or with --reproduce the
    reproduction's (which fixes ranks, seeds and scalings, and writes its own folder unless --out says)."""
    p = make_parser(__doc__.splitlines()[0], default_out=QUICKSTART.out, test_split=True)
    p.add_argument("--reproduce", action="store_true",
                   help=f"the three-seed sweep of REPRODUCTIONS.md: ranks {','.join(map(str, REPRODUCTION.ranks))}, "
                        f"{REPRODUCTION.seeds} seeds, alpha/r and rsLoRA, full fine-tuning; writes {REPRODUCTION.out}")
    p.add_argument("--ranks", type=parse_ranks,
                   help=f"comma-separated, e.g. 1,2,4 (default {','.join(map(str, QUICKSTART.ranks))})")
    p.add_argument("--seeds", type=positive_int,
                   help=f"fine-tuning seeds per run (default {QUICKSTART.seeds}: a quick look; 3 to call a difference)")
    p.add_argument("--rslora", action=argparse.BooleanOptionalAction,
                   help="also sweep rsLoRA (alpha/sqrt(r)) beside alpha/r (default: alpha/r only; --no-rslora is that)")
    p.add_argument("--no-full", action="store_true", help="skip the full fine-tuning reference")
    p.set_defaults(out=None)  # the default folder depends on --reproduce
    args = p.parse_args(argv)
    shape = REPRODUCTION if args.reproduce else QUICKSTART
    if args.reproduce:
        given = [flag for flag, value in (("--ranks", args.ranks), ("--seeds", args.seeds),
                                          ("--rslora/--no-rslora", args.rslora), ("--no-full", args.no_full or None))
                 if value is not None]
        if given:
            p.error(f"--reproduce runs the reproduction's own ranks, seeds and scalings, so it takes no "
                    f"{', '.join(given)}; leave out --reproduce to choose them")
    args.ranks = list(shape.ranks) if args.ranks is None else args.ranks
    args.seeds = shape.seeds if args.seeds is None else args.seeds
    args.rslora = shape.rslora if args.rslora is None else args.rslora
    args.full = not args.no_full
    args.out = shape.out if args.out is None else args.out
    return args


def plan_groups(args, targets):
    """[(name, kind, r, spec)]: full fine-tuning, then LoRA at every rank, then rsLoRA at every rank."""
    groups = [("full fine-tuning", "full", None, {"method": "full", "lr": args.full_lr})] if args.full else []
    for kind in SCALINGS if args.rslora else ["lora"]:
        name = "LoRA" if kind == "lora" else "rsLoRA"
        # At r=1 the two scalings are the same number (alpha / 1), so rsLoRA r=1 is LoRA r=1's run.
        groups += [(f"{name} r={r}", kind, r, {"method": "lora", "variant": "lora" if r == 1 else kind, "r": r,
                                               "alpha": args.alpha, "targets": targets, "lr": args.lora_lr})
                   for r in args.ranks]
    return groups


def main(argv=None):
    args = parse_args(argv)
    seeds = seed_list(args.seed, args.seeds)
    check_runs(args, ranks=args.ranks)
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    planned = plan_groups(args, parse_targets(args.targets))
    plan = [dict(base=base, base_key=base_key, spec=spec, target=target, source=source, **{**kwargs, "seed": s})
            for *_, spec in planned for s in seeds]
    records = run_all(plan, workers=args.workers, progress=not args.no_progress, desc="rank sweep")
    groups = []
    for k, (name, kind, r, _) in enumerate(planned):
        runs = records[k * len(seeds):(k + 1) * len(seeds)]
        groups.append({**group_summary(name, kind, r, runs), "runs": runs})

    write_json(list({id(r): r for r in records}.values()), os.path.join(args.out, "records.json"))
    summary = {"seeds": seeds, "lr": args.lora_lr, "full_lr": args.full_lr, "steps": args.max_iters,
               "groups": [{k: v for k, v in g.items() if k != "runs"} for g in groups],
               "early_curves": early_curves(groups)}
    write_json(summary, os.path.join(args.out, "rank_sweep.json"))
    title = (f"rank sweep: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, "
             f"alpha {args.alpha:g}, LoRA lr {args.lora_lr:g}, {len(seeds)} seed{'s' * (len(seeds) > 1)}, {device}")
    plot_final_loss(groups, os.path.join(args.out, "final_loss_vs_rank.png"), title)
    plot_params_memory(groups, os.path.join(args.out, "params_memory_vs_rank.png"), title)
    plot_loss_curves([g["runs"][0] for g in groups if g["kind"] != "rslora"],
                     os.path.join(args.out, "loss_curves.png"), title + " (first seed)")
    plot_early_curves(groups, os.path.join(args.out, "early_curves.png"), title)
    table = write_report(os.path.join(args.out, "results.md"), "Rank sweep", title, results_table(groups))
    finish_experiment(args, argv)
    print(table)
    print(f"wrote {args.out}/records.json, rank_sweep.json, final_loss_vs_rank.png, params_memory_vs_rank.png, "
          f"loss_curves.png, early_curves.png, results.md")


if __name__ == "__main__":
    main()


# The expected range (max - min) of k independent normal draws, in standard deviations, for the
# number of ranks a sweep has (Tippett's table): what the spread of the rank means would be if
# only the seeds made them differ.
EXPECTED_RANGE = {2: 1.128, 3: 1.693, 4: 2.059, 5: 2.326, 6: 2.534, 7: 2.704, 8: 2.847}


def report(results):
    """Section of REPRODUCTIONS.md from the three-seed sweep (results/rank_sweep_reproduction): the
    early curves (LoRA Without Regret) and what more rank buys at the tuned rate, with alpha/r and
    with alpha/sqrt(r)."""
    summary = results.json(REPORT_FOLDER, "rank_sweep.json")
    groups = summary["groups"]
    lora = [g for g in groups if g["kind"] == "lora"]
    rs = [g for g in groups if g["kind"] == "rslora"]
    full = next(g for g in groups if g["kind"] == "full")
    n = len(summary["seeds"])
    rows = []
    for row in summary["early_curves"]:
        noise = EXPECTED_RANGE[len(row["per_rank"])] * row["seed_sd"] / n ** 0.5
        rows.append({**row, "noise_range": noise, "apart": row["rank_range"] > noise})
    together = [row["step"] for row in rows if not row["apart"]]
    first_apart = next((row["step"] for row in rows if row["apart"]), None)
    warmup = max(1, summary["steps"] // 10)  # as run_finetune schedules it
    # The rule (fixed before the runs' reading): agreement counts only once the rate has warmed up to
    # its tuned value; before that the ranks are compared at a rate the claim is not about, and the
    # seeds' own range can hide a difference larger than the one they show. (1) the curves coincide
    # early: the ranks agree at the first step after the warm-up; (2) low ranks fall behind later:
    # apart at the end, in rank order. (1) is the headline.
    informative = [row for row in rows if row["step"] >= warmup]
    coincide = (verdicts.REPRODUCED if informative and not informative[0]["apart"] else verdicts.NOT_REPRODUCED)
    last = [m["mean"] for m in rows[-1]["per_rank"].values()]
    behind = (verdicts.REPRODUCED if rows[-1]["apart"] and all(a > b for a, b in zip(last, last[1:]))
              else verdicts.NOT_REPRODUCED)
    verdict = verdicts.combine([coincide, behind], headline=0)
    early_table = ["| step | " + " | ".join(f"r={r}" for r in rows[0]["per_rank"]) +
                   " | range over ranks | range the seeds alone would give |", "| ---: |" + " ---: |" * (len(rows[0]["per_rank"]) + 2)]
    for row in rows:
        early_table.append(f"| {row['step']} | " + " | ".join(f"{s['mean']:.3f}" for s in row["per_rank"].values()) +
                           f" | {row['rank_range']:.3f} | {row['noise_range']:.3f} |")
    by_r = {g["r"]: g for g in lora}
    rs_by_r = {g["r"]: g for g in rs}
    top = max(by_r)
    gains = [(a, b, by_r[a]["target_loss"]["mean"] - by_r[b]["target_loss"]["mean"])
             for a, b in zip(sorted(by_r), sorted(by_r)[1:])]
    bullets = [
        f"- Early on the ranks move together: over the first {together[-1] if together else '?'} steps the rank "
        f"means lie within the range the seeds alone would give. From step {first_apart} on they separate, in rank "
        f"order, and the gap grows to {rows[-1]['rank_range']:.3f} at the end."
        if first_apart else "- The ranks never separate beyond the seed spread.",
        f"- The learning rate warms up over the first {warmup} steps, so the curves agree only while the rate is "
        f"still ramping: over {100 * (together[-1] if together else 0) / summary['steps']:.0f}% of the run, where "
        f"the seeds alone would give a range ({rows[0]['noise_range']:.3f} at step {rows[0]['step']}) larger than "
        f"the ranks' ({rows[0]['rank_range']:.3f}): agreement there is no evidence. "
        + (f"At the first step after the warm-up (step {informative[0]['step']}) the ranks are "
           f"{'apart' if informative[0]['apart'] else 'together'}: the curves coincide early: **{coincide}**; "
           if informative else "No step after the warm-up was recorded: **not reproduced**; ")
        + f"the low ranks fall behind later (apart at the end, in rank order): **{behind}**.",
        "- What more rank buys at the end (alpha/r; how much each doubling lowers the mean final docs loss): "
        + ", ".join(f"r={a} to {b}: {d:.3f}" for a, b, d in gains) + f". Full fine-tuning reaches "
        f"{show(full['target_loss'])}; r={top} stays {by_r[top]['target_loss']['mean'] - full['target_loss']['mean']:.3f} above it.",
    ]
    if rs_by_r:
        bullets.append(
            f"- rsLoRA at the same rate: alpha/sqrt(r) grows the update's scale over alpha/r by sqrt(r), and with Adam "
            f"that acts like a sqrt(r)-times larger rate for B ({section_ref('variants')}). At r=8 it ends at "
            f"{show(rs_by_r[8]['target_loss'])} against {show(by_r[8]['target_loss'])}; at r={top} at "
            f"{show(rs_by_r[top]['target_loss'])} against {show(by_r[top]['target_loss'])}"
            + (f": a rate tuned for alpha/r is too high for rsLoRA at high rank, so a change of scaling needs its own "
               f"rate ({section_ref('variants')} tunes both)."
               if rs_by_r[top]["target_loss"]["mean"] > by_r[top]["target_loss"]["mean"] else
               f": at the same rate rsLoRA does not fall behind here ({section_ref('variants')} tunes both)."))
    table = results_table_from(summary)
    body = f"""**Claim.** LoRA Without Regret (Schulman et al. 2025): with the 1/r in alpha/r and one learning
rate, LoRA's learning curves at different ranks coincide early in training; the low ranks fall
behind later, once the data ask for more than they can hold.

**Command.** `{COMMAND}` (`results/{REPORT_FOLDER}/`): ranks
{', '.join(str(r) for r in sorted(by_r))}, alpha 16 fixed (alpha/r) and rsLoRA (alpha/sqrt(r)), all at LoRA's tuned rate
{summary['lr']:g}; full fine-tuning at {summary['full_lr']:g}; seeds {', '.join(str(s) for s in summary['seeds'])}. The training loss is averaged over
{SMOOTHING} steps (one batch is noisy) and over the seeds. The quickstart's `python -m experiments.rank_sweep`
runs the first seed of full fine-tuning and of LoRA at ranks {', '.join(str(r) for r in QUICKSTART.ranks)} (alpha/r), the same runs
with the same losses, into `{QUICKSTART.out}/`.

![early curves](../results/{REPORT_FOLDER}/early_curves.png)

{chr(10).join(early_table)}

"Range the seeds alone would give": the expected range of {len(rows[0]['per_rank'])} means of {n} seeds each
if only the seeds made them differ (Tippett's constant times the mean seed SD over sqrt({n})).

![final loss against rank](../results/{REPORT_FOLDER}/final_loss_vs_rank.png)

{table.strip()}

**Verdict: {verdict}.**
""" + "\n".join(bullets)
    detail = (f"the ranks' curves agree only during the warm-up (to step {together[-1]}, where the seeds alone "
              f"would give a wider range) and part from step {first_apart}; r={top} ends "
              f"{by_r[top]['target_loss']['mean'] - full['target_loss']['mean']:.3f} above full fine-tuning"
              if first_apart and together else "see the section")
    return {"title": "Rank: early learning curves, and what more rank buys", "source": "LoRA Without Regret",
            "claim": "With alpha/r and one rate, the learning curves of all ranks coincide early; low ranks fall behind later",
            "verdict": verdict, "detail": detail, "body": body, "folder": REPORT_FOLDER, "command": COMMAND}


def results_table_from(summary):
    return results_table([{**g} for g in summary["groups"]])
