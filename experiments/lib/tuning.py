"""Each contender at its own learning rate: a small cached sweep per contender, then its seeds.

A comparison between methods at one shared rate favours whichever method that rate suits. So
every contender gets its rate from a sweep on one grid of quarter-decade steps: start at a few
rates around a first guess, and while the lowest final target loss sits at the edge of what has
been tried, try the next rate out (up to `max_extra` more). The chosen rate is the grid point
with the lowest final target loss of the first seed; the other seeds then run at that rate only.
Choosing on one seed costs a third of choosing on three, and picks within the flat bottom of
the U-curve, where the seed-to-seed spread is larger than the differences between the rates.
An experiment scored otherwise (exact match on validation prompts) passes its own `score`.

All contenders advance together, so each stage's missing runs train side by side (runs.py).
"""
import math

from experiments.lib.runs import run_all

# Quarter-decade steps (10^(k/4), rounded as the earlier sweeps wrote them). It reaches down to 1e-5
# because a tiny fine-tuning set, repeated for hundreds of steps, wants rates far below the defaults
# (experiments/data_size.py); other tuners start near the defaults and never walk that far.
LR_GRID = (1e-5, 1.8e-5, 3e-5, 5.6e-5, 1e-4, 1.8e-4, 3e-4, 5.6e-4, 1e-3, 1.8e-3, 3e-3, 5.6e-3, 1e-2, 1.8e-2, 3e-2, 5.6e-2, 1e-1)


def grid_neighbours(lr, n=1):
    """The grid rates from n steps below lr to n steps above it (lr must be on the grid)."""
    i = grid_index(lr)
    return list(LR_GRID[max(0, i - n): i + n + 1])


def grid_index(lr):
    for i, g in enumerate(LR_GRID):
        if math.isclose(lr, g, rel_tol=1e-9):
            return i
    raise ValueError(f"learning rate {lr:g} is not on the tuning grid {list(LR_GRID)}")


def tune(contenders, seeds, *, workers=1, max_extra=2, progress=True, score=None):
    """Tune each contender's rate on seeds[0], then run the other seeds at the chosen rate.

    contenders: {name: (plan_entry, first_rates)}, where plan_entry is a run_finetune keyword
        dict whose spec has no "lr" yet and whose seed is ignored, and first_rates are grid
        rates to start from (e.g. grid_neighbours(guess)).
    score: what a rate is chosen by, lowest best: a function of the first seed's record that reads
        validation numbers only (default: its final validation loss on the target, as above).
    Returns {name: {"lrs": [...], "losses": [...] (first seed's scores, by rate), "best_lr",
        "at_grid_edge", "records": [one record per seed at best_lr]}}.
    """
    tried = {name: sorted(rates) for name, (_, rates) in contenders.items()}
    first_seed = seeds[0]
    score = score or (lambda record: record["final_target_loss"])
    done = set()  # (name, lr, seed) already trained by this call: --force retrains a run once, not per stage

    def entry(name, lr, seed):
        kwargs, _ = contenders[name]
        force = kwargs.get("force", False) and (name, lr, seed) not in done
        done.add((name, lr, seed))
        return {**kwargs, "spec": {**kwargs["spec"], "lr": lr}, "seed": seed, "force": force}

    def losses_of(name):
        plan = [entry(name, lr, first_seed) for lr in tried[name]]
        return [score(r) for r in run_all(plan, workers=1, progress=False)]

    # Stage 1 (and later extension stages): the first seed at every rate still to try.
    pending = {name: list(rates) for name, rates in tried.items()}
    for stage in range(max_extra + 1):
        plan = [entry(name, lr, first_seed) for name, rates in pending.items() for lr in rates]
        if not plan:
            break
        run_all(plan, workers=workers, progress=progress, desc=f"tuning rates, stage {stage + 1}")
        pending = {}
        if stage == max_extra:
            break
        for name in tried:
            losses = [x if math.isfinite(x) else math.inf for x in losses_of(name)]
            i = min(range(len(losses)), key=losses.__getitem__)
            step = -1 if i == 0 else 1 if i == len(losses) - 1 else 0
            if step:
                j = grid_index(tried[name][i]) + step
                if 0 <= j < len(LR_GRID):
                    pending[name] = [LR_GRID[j]]
                    tried[name] = sorted(tried[name] + [LR_GRID[j]])

    results = {}
    for name in tried:
        losses = losses_of(name)
        clean = [x if math.isfinite(x) else math.inf for x in losses]
        i = min(range(len(clean)), key=clean.__getitem__)
        results[name] = {"lrs": tried[name], "losses": losses, "best_lr": tried[name][i],
                         "at_grid_edge": i in (0, len(clean) - 1)}
    # Stage 2: the other seeds at each contender's chosen rate.
    plan = [entry(name, results[name]["best_lr"], s) for name in results for s in seeds]
    records = run_all(plan, workers=workers, progress=progress, desc="seeds at the chosen rates")
    for k, name in enumerate(results):
        results[name]["records"] = records[k * len(seeds):(k + 1) * len(seeds)]
    return results
