"""Learning against forgetting: full fine-tuning's and LoRA's Pareto fronts of target loss against source loss.

    python -m experiments.learn_forget                        # CPU, tiny model, offline
    python -m experiments.learn_forget --device cuda --preset small

Claim (Biderman et al. 2024, "LoRA Learns Less and Forgets Less"): LoRA adapts less to the new
domain (higher target loss) and forgets less of the source domain (lower source loss) than full
fine-tuning. Their Sec. 4.3 asks the sharper question: at the same amount learned, does LoRA
forget less? Their answer: no, LoRA and full fine-tuning lie on the same learning-forgetting
curve; LoRA forgets less because it learns less.

Two comparisons:
1. Each method at its tuned rate (the best 600-step rate among the runs here, by mean final
   target loss): LoRA minus full fine-tuning, seed by seed, on both losses.
2. The fronts. A finished run is a point (target loss, source loss). Full fine-tuning traces
   its front over learning rates and run lengths (short runs and low rates learn little and
   forget little); LoRA over ranks and rates. For each LoRA run we read full's front at that
   run's target loss (linear between vertices, experiments/lib/pareto.py), seed by seed (the front
   of seed s from seed s's full runs), and call LoRA above (forgets more at equal learning),
   below (forgets less) or on the front by the shared equivalence rule (lib/verdicts.py: on it
   when the 90% interval lies inside +-delta). Only finished runs make a front:
   a mid-run point of a long run at a high rate is not a model anyone would keep, and reading
   full's own path mid-run (the old comparison) is shown beside it for what it misses.

Every rank runs at every LoRA rate here, so each has its own best rate. Best rates are chosen on
validation (the held-out text's first half) and every loss reported is on the test half, which no
choice read. The rank sweep's runs (LoRA r=1 to 64 at the default rate, full fine-tuning at its
default) come from the shared cache. This experiment adds full fine-tuning at low rates and in
short runs, which is where the low-forgetting end of full's front lies.
Writes OUT/records.json, OUT/learn_forget.json, OUT/learn_forget.png, OUT/results.md.
"""
import os

from experiments.lib.common import (check_runs, finish_experiment, load_setup, make_parser, parse_lrs, parse_ranks,
                                    parse_targets, positive_int, positive_ints, run_kwargs)
from experiments.lib.finetune import reported_loss, reported_on
from experiments.lib.learn_forget_plot import judged, mean_point, plot_learn_forget
from experiments.lib.pareto import front_at, pareto_front
from experiments.lib.plots import lr_text, write_report
from experiments.lib.runs import run_all
from experiments.lib import verdicts
from experiments.lib.settled import settle
from experiments.lib.seeds import paired, seed_list, show, show_difference, spread
from nanogpt.train import write_json


def source_loss_at(history, target_loss):
    """Source loss where a run's trajectory first reaches target_loss, interpolated linearly
    between the two evaluations around it; None if the run never gets that low."""
    points = [(h["target_loss"], h["source_loss"]) for h in history]
    for (t0, s0), (t1, s1) in zip(points, points[1:]):
        if t1 <= target_loss <= t0 and t0 != t1:
            return s0 + (s1 - s0) * (t0 - target_loss) / (t0 - t1)
    return None


def run_name(method, r, lr, steps, default_steps):
    name = "full fine-tuning" if method == "full" else f"LoRA r={r}"
    return f"{name}, lr {lr_text(lr)}" + ("" if steps == default_steps else f", {steps} steps")


def plan_configs(args):
    """[(method, r, lr, steps)]: every distinct run setting, full fine-tuning first, each once."""
    configs = [("full", None, lr, args.max_iters) for lr in args.full_lrs]
    configs += [("full", None, lr, steps) for lr in args.short_lrs for steps in args.short_steps]
    configs += [("lora", r, args.lora_lr, args.max_iters) for r in args.ranks]
    configs += [("lora", r, lr, args.max_iters) for r in args.rate_ranks for lr in args.lora_lrs]
    return list(dict.fromkeys(configs))  # in order, duplicates dropped (the two LoRA grids share runs)


def summarize(configs, runs_by_config, default_steps):
    """One row per setting: its seeds' final losses as reported (on the test half when the runs hold
    one out) and on validation (what the best rate is chosen by, and the old mid-run comparison's text)."""
    rows = []
    for (method, r, lr, steps), runs in zip(configs, runs_by_config):
        rows.append({"name": run_name(method, r, lr, steps, default_steps), "method": method, "r": r, "lr": lr,
                     "steps": steps, "scored_on": reported_on(runs[0]),
                     "target_loss": spread([reported_loss(x, "target") for x in runs]),
                     "source_loss": spread([reported_loss(x, "source") for x in runs]),
                     "val_target_loss": spread([x["final_target_loss"] for x in runs]),
                     "val_source_loss": spread([x["final_source_loss"] for x in runs])})
    return rows


def front_rows(rows):
    """The names of the rows on their method's front of seed-mean points, and each front's vertices."""
    fronts = {}
    for method in ("full", "lora"):
        mine = [row for row in rows if row["method"] == method]
        vertices = pareto_front([mean_point(row) for row in mine])
        first_at = {}
        for row in mine:
            first_at.setdefault(mean_point(row), row["name"])
        fronts[method] = [{"name": first_at[v], "target_loss": v[0], "source_loss": v[1]} for v in vertices]
        for row in mine:
            row["on_front"] = mean_point(row) in vertices
    return fronts


def versus_full_front(rows, n_seeds, prefix=""):
    """For each LoRA row: full's front of the same seed read at that seed's LoRA target loss,
    and LoRA's source loss minus it, seed by seed (positive: LoRA forgot more than full
    fine-tuning at the same amount learned). None where a seed's LoRA point lies outside the
    target-loss range of that seed's full front. prefix "val_": the same on validation losses,
    written under keys with that prefix (for the old comparison, whose path is on validation)."""
    full = [row for row in rows if row["method"] == "full"]
    t, s_ = f"{prefix}target_loss", f"{prefix}source_loss"
    fronts = [pareto_front([(row[t]["values"][s], row[s_]["values"][s]) for row in full]) for s in range(n_seeds)]
    for row in rows:
        if row["method"] != "lora":
            continue
        targets, sources = row[t]["values"], row[s_]["values"]
        on_front = [front_at(fronts[s], targets[s]) for s in range(n_seeds)]
        if any(v is None for v in on_front):
            row[f"{prefix}full_front_source_loss"] = row[f"{prefix}above_full_front"] = None
        else:
            row[f"{prefix}full_front_source_loss"] = spread(on_front)
            row[f"{prefix}above_full_front"] = paired(on_front, sources)  # LoRA minus the front, seed by seed


def position(difference):
    """'on' full's front (the shared equivalence rule: within delta), 'above' or 'below' it (beyond
    delta), or 'not settled' (too few seeds to tell); None: outside its range."""
    if difference is None:
        return None
    outcome = verdicts.matches(difference, "loss")["outcome"]
    if outcome == verdicts.NOT_SETTLED:
        return "not settled"
    return "on" if outcome == verdicts.REPRODUCED else "above" if difference["mean"] > 0 else "below"


def mid_run_comparison(rows, runs_by_config, full_row):
    """The old comparison: full fine-tuning's own path at its tuned rate, read mid-run at each LoRA
    row's final target loss (seed by seed; None if the path never got that low). On validation
    losses: a run's path is evaluated only there."""
    full_runs = runs_by_config[rows.index(full_row)]
    for row, runs in zip(rows, runs_by_config):
        if row["method"] != "lora":
            continue
        matched = [source_loss_at(f["history"], x["final_target_loss"]) for f, x in zip(full_runs, runs)]
        row["full_path_source_loss"] = spread(matched) if all(m is not None for m in matched) else None


def tuned(rows, method, r, steps):
    """The row of (method, r) with the lowest mean final target loss on validation among its runs of
    `steps` steps (never on the test half, which the tables report)."""
    mine = [row for row in rows if row["method"] == method and row["r"] == r and row["steps"] == steps]
    return min(mine, key=lambda row: row["val_target_loss"]["mean"])


def headline(rows, ranks, steps):
    """Each LoRA rank at its best rate against full fine-tuning at its best, seed by seed."""
    full = tuned(rows, "full", None, steps)
    out = []
    for r in ranks:
        lora = tuned(rows, "lora", r, steps)
        rates = sorted({row["lr"] for row in rows if row["method"] == "lora" and row["r"] == r and row["steps"] == steps})
        out.append({"r": r, "lora": lora["name"], "lora_lr": lora["lr"], "rates_tried": rates, "full": full["name"],
                    "full_lr": full["lr"],
                    "learned_less": paired(full["target_loss"]["values"], lora["target_loss"]["values"]),
                    "forgot_less": paired(full["source_loss"]["values"], lora["source_loss"]["values"])})
    return out


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/learn_forget", test_split=True)
    p.add_argument("--ranks", type=parse_ranks, default=[1, 2, 4, 8, 16, 32, 64],
                   help="LoRA ranks at --lora-lr (the rank sweep's runs)")
    # Every rank at every rate: each rank's best rate is its own, as full fine-tuning's is.
    p.add_argument("--rate-ranks", type=parse_ranks, default=[1, 2, 4, 8, 16, 32, 64],
                   help="LoRA ranks run at every rate of --lora-lrs too")
    # The learning-rate sweep's LoRA grid, and two lower rates: LoRA gets the same chance as full
    # fine-tuning to trade learning for less forgetting.
    p.add_argument("--lora-lrs", type=lambda t: parse_lrs(t, "--lora-lrs", at_least=1),
                   default=[1e-3, 1.8e-3, 3e-3, 5.6e-3, 1e-2, 1.8e-2], help="LoRA rates for --rate-ranks")
    p.add_argument("--full-lrs", type=lambda t: parse_lrs(t, "--full-lrs", at_least=1),
                   default=[1e-4, 1.8e-4, 3e-4, 5.6e-4, 1e-3, 1.8e-3, 3e-3, 5.6e-3],
                   help="full fine-tuning rates, each run for --max-iters steps")
    # Short runs at low rates are the low-forgetting end of full fine-tuning's front (one seed on a
    # wider grid: short runs at 1e-3 and 1.8e-3 were dominated by long runs at low rates).
    p.add_argument("--short-lrs", type=lambda t: parse_lrs(t, "--short-lrs", at_least=1), default=[1e-4, 3e-4],
                   help="full fine-tuning rates also run for each of --short-steps")
    p.add_argument("--short-steps", type=lambda t: positive_ints(t, "--short-steps"), default=[50, 100, 300],
                   help="shorter full fine-tuning runs (each with its own warm-up and decay)")
    p.add_argument("--seeds", type=positive_int, default=3, help="fine-tuning seeds per setting")
    args = p.parse_args(argv)
    check_runs(args, ranks=sorted(set(args.ranks) | set(args.rate_ranks)))
    seeds = seed_list(args.seed, args.seeds)
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    targets = parse_targets(args.targets)

    def spec(method, r, lr):
        if method == "full":
            return {"method": "full", "lr": lr}
        return {"method": "lora", "variant": "lora", "r": r, "alpha": args.alpha, "targets": targets, "lr": lr}

    configs = plan_configs(args)
    plan = [dict(base=base, base_key=base_key, spec=spec(method, r, lr), target=target, source=source,
                 **{**kwargs, "steps": steps, "seed": s}) for method, r, lr, steps in configs for s in seeds]
    records = run_all(plan, workers=args.workers, progress=not args.no_progress, desc="learn vs forget")
    runs_by_config = [records[k * len(seeds):(k + 1) * len(seeds)] for k in range(len(configs))]
    rows = summarize(configs, runs_by_config, args.max_iters)
    fronts = front_rows(rows)
    versus_full_front(rows, len(seeds))
    versus_full_front(rows, len(seeds), prefix="val_")
    for row in rows:
        row["position"] = position(row.get("above_full_front")) if row["method"] == "lora" else None
    full_tuned = tuned(rows, "full", None, args.max_iters)
    mid_run_comparison(rows, runs_by_config, full_tuned)
    lora_ranks = sorted({r for method, r, *_ in configs if method == "lora"})
    base_point = (reported_loss(records[0], "target", "base"), reported_loss(records[0], "source", "base"))
    summary = {"seeds": seeds, "steps": args.max_iters, "scored_on": rows[0]["scored_on"], "base": {"target_loss": base_point[0], "source_loss": base_point[1]},
               "full_tuned": full_tuned["name"], "headline": headline(rows, lora_ranks, args.max_iters),
               "fronts": fronts, "rows": rows}
    write_json(records, os.path.join(args.out, "records.json"))
    write_json(summary, os.path.join(args.out, "learn_forget.json"))
    title = (f"learning vs forgetting: {args.preset} GPT, {source.name} -> {target.name}, {len(seeds)} seeds, "
             f"alpha {args.alpha:g}, {device}")
    plot_learn_forget(rows, fronts, base_point, os.path.join(args.out, "learn_forget.png"), title)
    table = write_report(os.path.join(args.out, "results.md"), "Learning vs forgetting", title, results_md(summary))
    finish_experiment(args, argv)
    print(table)
    print(f"wrote {args.out}/records.json, learn_forget.json, learn_forget.png, results.md")


def headline_table(summary):
    lines = ["| LoRA rank | LoRA at its best rate | full fine-tuning at its best | docs: LoRA - full | code: LoRA - full |",
             "| ---: | --- | --- | ---: | ---: |"]
    for h in summary["headline"]:
        lines.append(f"| {h['r']} | {h['lora']} | {h['full']} | {show_difference(h['learned_less'])} | "
                     f"{show_difference(h['forgot_less'])} |")
    return "\n".join(lines) + "\n"


def front_table(summary):
    lines = ["| LoRA run | docs loss | code loss | full's front at that docs loss | LoRA - full's front | "
             "against full's front (the rule) | judged (on LoRA's front on validation) |",
             "| --- | ---: | ---: | ---: | ---: | :---: | :---: |"]
    lora = [row for row in summary["rows"] if row["method"] == "lora"]
    chosen = judged(lora)
    for row in lora:
        front, d = row["full_front_source_loss"], row["above_full_front"]
        lines.append(f"| {row['name']} | {show(row['target_loss'])} | {show(row['source_loss'])} | "
                     f"{show(front) if front else 'outside its range'} | {show_difference(d) if d else '-'} | "
                     f"{position(d) or '-'} | {'yes' if row['name'] in chosen else ''} |")
    return "\n".join(lines) + "\n"


def full_table(summary):
    lines = ["| full fine-tuning run | docs loss | code loss | on full's front |", "| --- | ---: | ---: | :---: |"]
    for row in summary["rows"]:
        if row["method"] == "full":
            lines.append(f"| {row['name']} | {show(row['target_loss'])} | {show(row['source_loss'])} | "
                         f"{'yes' if row['on_front'] else ''} |")
    return "\n".join(lines) + "\n"


def results_md(summary):
    b = summary["base"]
    n = len(summary["seeds"])
    return (f"Losses on {summary.get('scored_on', 'validation')} text; best rates chosen on validation. "
            f"Base model: docs (target) {b['target_loss']:.3f}, code (source) {b['source_loss']:.3f} nats/byte. "
            f"Mean ± 95% CI over {n} seeds; differences seed by seed, * = called (the interval excludes 0).\n\n"
            f"Each method at its best rate ({summary['steps']} steps):\n\n{headline_table(summary)}\n"
            f"LoRA against full fine-tuning's front:\n\n{front_table(summary)}\n"
            f"Full fine-tuning's runs:\n\n{full_table(summary)}")


def report(results):
    """Section of REPRODUCTIONS.md from results/learn_forget."""
    s = results.json("learn_forget", "learn_forget.json")
    rows, heads, n = s["rows"], s["headline"], len(s["seeds"])
    lora = [row for row in rows if row["method"] == "lora"]
    full = [row for row in rows if row["method"] == "full"]
    # The shared rules: "learns less" and "forgets less" are beats claims, rank by rank; "one curve" is
    # a matches claim, LoRA's front settings against full's front at the same docs loss.
    learned = [verdicts.beats(h["learned_less"], "loss", f"r={h['r']} learns less than full") for h in heads]
    forgot = [verdicts.beats([-v for v in h["forgot_less"]["values"]], "loss", f"r={h['r']} forgets less than full")
              for h in heads]
    learns_less = all(c["outcome"] == verdicts.REPRODUCED for c in learned)
    forgets_less = all(c["outcome"] == verdicts.REPRODUCED for c in forgot)
    lora = [{**row, "position": position(row["above_full_front"])} for row in lora]  # by the rule, not the record's
    chosen = judged(lora)
    lora_front = [row for row in lora if row["name"] in chosen]
    placed = [row for row in lora_front if row["position"] is not None]
    curve = [settle(results, verdicts.matches(row["above_full_front"], "loss", f"{row['name']} lies on full's front"))
             for row in placed]
    for row, c in zip(placed, curve):  # a position five seeds settled (lib/settled.py)
        if "three_seeds" in c:
            row["position"] = ("on" if c["outcome"] == verdicts.REPRODUCED else "above" if c["mean"] > 0 else "below")
    counts = {k: sum(row["position"] == k for row in placed) for k in ("above", "on", "below", "not settled")}
    majority = max(counts, key=counts.get) if placed else None
    parts = [verdicts.combine([c["outcome"] for c in learned]), verdicts.combine([c["outcome"] for c in forgot]),
             verdicts.combine([c["outcome"] for c in curve]) if curve else verdicts.NOT_REPRODUCED]
    verdict = verdicts.combine(parts)

    def rng(values, fmt="{:+.3f}"):
        return fmt.format(min(values)) + " to " + fmt.format(max(values))

    docs_gaps = [h["learned_less"]["mean"] for h in heads]
    code_gaps = [h["forgot_less"]["mean"] for h in heads]
    fronts = s["fronts"]
    full_front = "; ".join(f"{v['name']} ({v['target_loss']:.3f}, {v['source_loss']:.3f})" for v in fronts["full"])
    in_range = [row for row in lora if row["above_full_front"] is not None]
    all_counts = {k: sum(row["position"] == k for row in in_range) for k in ("above", "on", "below", "not settled")}
    diffs = [row["above_full_front"]["mean"] for row in placed]
    def each(key):
        return ", ".join(f"r={h['r']} {show_difference(h[key])}" for h in heads)

    low_end = fronts["full"][-1]  # the front's vertex that learned least, and forgot least
    lines = [(f"- LoRA learns less: at each method's best rate every rank ends above full fine-tuning on the docs, "
              f"each called ({each('learned_less')})." if learns_less else
              f"- LoRA minus full fine-tuning on the docs, at each method's best rate: {each('learned_less')}; "
              f"not every rank is called as learning less."),
             (f"- LoRA forgets less: every rank ends below full fine-tuning on the code, each called "
              f"({each('forgot_less')})." if forgets_less else
              f"- LoRA minus full fine-tuning on the code, at each method's best rate: {each('forgot_less')}; "
              f"not every rank is called as forgetting less."),
             f"- Full fine-tuning's front runs through {len(fronts['full'])} of its {len(full)} settings: {full_front} "
             f"(docs, code). The run that learned least and forgot least on it is {low_end['name']}."]
    if placed:
        lines.append(f"- At the same amount learned, the {len(placed)} LoRA settings on LoRA's own front (read on "
                     f"validation) that fall "
                     f"inside full's range are {counts['above']} above full's front (forget more), {counts['on']} on it "
                     f"(within ±{verdicts.DELTAS['loss']:g} by the equivalence rule), {counts['below']} below it (forget "
                     f"less) and {counts['not settled']} not settled; LoRA minus the front {rng(diffs)}. One curve: "
                     f"**{parts[2]}**. Over all {len(in_range)} LoRA settings in range: {all_counts['above']} above, "
                     f"{all_counts['on']} on, {all_counts['below']} below, {all_counts['not settled']} not settled.")
    path = [row for row in lora_front if row.get("full_path_source_loss") and row.get("val_above_full_front")]
    if path:  # both on validation: a run's path is evaluated only there
        worst = max(path, key=lambda row: row["full_path_source_loss"]["mean"] - row["val_full_front_source_loss"]["mean"])
        lines.append(f"- Why the old comparison misled (on validation, where a run's path is evaluated): read mid-run "
                     f"on {s['full_tuned']}'s own path, full fine-tuning had a code loss of "
                     f"{show(worst['full_path_source_loss'])} when it had learned as much as {worst['name']}; finished "
                     f"runs on full's front reach that docs loss at {show(worst['val_full_front_source_loss'])}. A run "
                     f"mid-way at a high rate is far off the front.")
    what = {"on": "LoRA lies on full fine-tuning's front, as Biderman et al. (Sec. 4.3) found: it forgets less "
                  "because it learns less, not because it forgets less at equal learning.",
            "not settled": "too few seeds to place most of LoRA's front against full fine-tuning's.",
            "above": "LoRA lies above full fine-tuning's front: at equal learning it forgets more. Its lower "
                     "forgetting at the tuned rates comes from learning less.",
            "below": "LoRA lies below full fine-tuning's front: at equal learning it forgets less, which goes "
                     "beyond Biderman et al., who found one shared curve."}
    if majority:
        lines.append(f"- So: {what[majority]}")
    one_rate = [str(h["r"]) for h in heads if len(h["rates_tried"]) == 1]
    if one_rate:
        lines.append(f"- Ranks {', '.join(one_rate)} ran at one rate only (the default, tuned for r=8); the others "
                     f"at {len(max(heads, key=lambda h: len(h['rates_tried']))['rates_tried'])} rates.")
    lines.append(f"- {n} seeds per setting; a front point is on the front when the equivalence rule places it within "
                 f"±{verdicts.DELTAS['loss']:g}, above or below when its 90% interval lies beyond that. Between vertices the front is read as a straight line, "
                 f"which no trained run sits on; dense vertices keep that reading close.")
    ranks = ", ".join(str(h["r"]) for h in heads)
    body = f"""**Claim.** Biderman et al. 2024, "LoRA Learns Less and Forgets Less": LoRA adapts less to the new
domain than full fine-tuning, and forgets less of the source domain. Their Sec. 4.3: at the same
amount learned, LoRA and full fine-tuning lie on one learning-forgetting curve.

**Command.** `python -m experiments.learn_forget` (`results/learn_forget/`). {len(rows)} settings,
{n} seeds each: full fine-tuning at {len({row['lr'] for row in full})} rates and
{len({row['steps'] for row in full})} run lengths; LoRA at ranks {ranks} and several rates. The
rank sweep's runs come from the shared cache. Each method's best rate, and each rank's, is its
lowest mean final docs loss at {s['steps']} steps among the rates here, read on validation (the
held-out text's first half); every loss shown is on the test half, which no choice read. The
fronts are drawn through finished runs only.

![learning vs forgetting](../results/learn_forget/learn_forget.png)

{headline_table(s).strip()}

{front_table(s).strip()}

Losses in nats/byte, mean ± 95% CI over {n} seeds; differences seed by seed, `*` = called. The
front column reads full fine-tuning's front of the same seed at that seed's LoRA docs loss;
`results/learn_forget/results.md` lists every full fine-tuning run.

**Verdict: {verdict}.**
""" + "\n".join(lines)
    detail = (f"at tuned rates LoRA ends {rng(docs_gaps)} higher on the docs and {rng(code_gaps)} on the code; "
              + (f"its front's settings are {counts['above']} above, {counts['on']} on, {counts['below']} below "
                 f"full's front, {counts['not settled']} not settled" if placed else
                 "no LoRA setting falls in full's front range"))
    return {"title": "Learning versus forgetting, and the two Pareto fronts", "source": "Biderman et al. 2024",
            "claim": "LoRA learns less and forgets less; at equal learning both lie on one curve",
            "verdict": verdict, "detail": detail, "body": body, "comparisons": learned + forgot + curve}


if __name__ == "__main__":
    main()
