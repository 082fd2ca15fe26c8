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

from experiments.lib.runs import run_all
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
