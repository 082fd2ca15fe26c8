"""Early stopping as one more choice made on validation: the run's length, beside its rate.

A small fine-tuning set repeated for hundreds of steps is overfitted at any ordinary rate, so a
tuner that may only change the rate walks down to rates at which the run barely moves from the
base model (experiments/data_size.py, its smallest set). Stopping early is the usual remedy. Here
it is a choice like the rate: each contender's rate is tuned again at each shorter run length
(a whole run of that length, its warm-up and decay scaled to it), on the first seed's validation
loss; the length whose best rate scores lowest is kept (the full length is one of the options),
and the other seeds run there. The test half stays unread by every choice.
"""
import math

from experiments.lib import verdicts
from experiments.lib.runs import run_all
from experiments.lib.seeds import paired, show, show_difference, spread
from experiments.lib.tuning import tune


def best_of(result):
    """A tune() result's chosen rate, the first seed's validation loss there (inf where it diverged, as
    tune() counts it), whether the rate sat at the edge of those tried, and whether at the lowest."""
    loss = result["losses"][result["lrs"].index(result["best_lr"])]
    return (result["best_lr"], loss if math.isfinite(loss) else math.inf, result["at_grid_edge"],
            result["best_lr"] == min(result["lrs"]))


def choose_run_length(fixed, contenders, lengths, seeds, *, workers=1, max_extra=2, progress=True):
    """fixed: tune()'s results for contenders at their full length; contenders: the {key: (plan
    entry, first rates)} tune() was given; lengths: the shorter run lengths to try.
    Returns {key: {"steps", "lr", "by_length": {steps: {"lr", "loss"}}, "records": one per seed}}."""
    short = {(key, steps): ({**entry, "steps": steps, "eval_interval": steps}, rates)
             for key, (entry, rates) in contenders.items() for steps in lengths}
    tuned = tune(short, seeds[:1], workers=workers, max_extra=max_extra, progress=progress)
    chosen, plan = {}, []
    for key, (entry, _) in contenders.items():
        options = {entry["steps"]: fixed[key], **{steps: tuned[(key, steps)] for steps in lengths}}
        by_length = {steps: dict(zip(("lr", "loss", "at_grid_edge", "at_lowest"), best_of(t))) for steps, t in options.items()}
        steps = min(by_length, key=lambda k: by_length[k]["loss"])
        chosen[key] = {"steps": steps, "lr": by_length[steps]["lr"], "by_length": by_length}
        if steps == entry["steps"]:
            chosen[key]["records"] = fixed[key]["records"]
        else:
            chosen[key]["records"] = len(plan)  # filled in below, once the other seeds have run
            # the first seed's run is tune()'s own, trained just now: never again, even under --force
            plan += [{**entry, "steps": steps, "eval_interval": steps, "force": entry.get("force", False) and k > 0,
                      "spec": {**entry["spec"], "lr": chosen[key]["lr"]}, "seed": s} for k, s in enumerate(seeds)]
    records = run_all(plan, workers=workers, progress=progress, desc="seeds at the chosen run lengths")
    for c in chosen.values():
        if isinstance(c["records"], int):
            c["records"] = records[c["records"]:c["records"] + len(seeds)]
    return chosen


def early_summary(chosen, ranks, sizes):
    """The early-stopping read for data_size.json: rows (each method and size at its chosen length
    and rate, test losses) and LoRA minus full at each size, seed by seed."""
    rows = [{"name": name, "size": n, "steps": c["steps"], "lr": c["lr"],
             "by_length": {str(k): v for k, v in c["by_length"].items()},
             "test_loss": spread([x["final_target_test_loss"] for x in c["records"]])}
            for (name, n), c in chosen.items()]
    cell = {(row["name"], row["size"]): row for row in rows}
    differences = [{"r": r, "size": n, "difference": paired(cell[("full", n)]["test_loss"]["values"],
                                                            cell[(f"r={r}", n)]["test_loss"]["values"])}
                   for r in ranks for n in sizes]
    return {"rows": rows, "differences": differences}


def early_table(early, names, kib, label, lr_text):
    """The early-stopping read as Markdown: each cell's test loss, run length and rate; then the gaps."""
    cell = {(row["name"], row["size"]): row for row in early["rows"]}
    sizes = sorted({row["size"] for row in early["rows"]})
    lines = ["| data | " + " | ".join(label(n) for n in names) + " |", "| ---: |" + " ---: |" * len(names)]
    for n in sizes:
        lines.append(f"| {kib(n)} | " + " | ".join(
            f"{show(cell[(name, n)]['test_loss'])} ({cell[(name, n)]['steps']} steps, {lr_text(cell[(name, n)]['lr'])})"
            for name in names) + " |")
    lines += ["", "| data | LoRA r | LoRA minus full (95% CI; * = called) | matches (90% interval) |",
              "| ---: | ---: | ---: | --- |"]
    for d in early["differences"]:
        m = verdicts.matches(d["difference"])
        lines.append(f"| {kib(d['size'])} | {d['r']} | {show_difference(d['difference'])} | "
                     f"{m['outcome']} ({m['low']:+.3f} to {m['high']:+.3f}) |")
    return "\n".join(lines) + "\n"


def early_match_points(early):
    """{r: the largest size at which LoRA r matches full fine-tuning in the early-stopping read, or None}."""
    points = {}
    for d in early["differences"]:
        points.setdefault(d["r"], None)
        if verdicts.matches(d["difference"])["outcome"] == verdicts.REPRODUCED:
            points[d["r"]] = max(points[d["r"]] or 0, d["size"])
    return points


def early_matches(early, kib):
    """The match points as text: 'r=1: at no size; r=16: up to 4 KB'."""
    return "; ".join(f"r={r}: {'at no size' if p is None else 'up to ' + kib(p)}"
                     for r, p in early_match_points(early).items())
