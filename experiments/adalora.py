"""AdaLoRA against LoRA at the same final rank budget: does spending it adaptively help, and where does it go?

    python -m experiments.adalora                            # CPU, tiny model, offline
    python -m experiments.adalora --device cuda --preset small

Claims (Zhang et al. 2023, "AdaLoRA", arXiv:2303.10512), on DeBERTaV3 and BART there:
(1) at an equal final budget AdaLoRA beats uniform LoRA. Here AdaLoRA starts at init_r=12 triplets
    per matrix and prunes to target_r=8 per matrix on average, so it ends with the total rank of
    LoRA r=8 on the same matrices (the same number of kept triplets; the parameter count can differ,
    since a triplet of a wide MLP matrix weighs more than one of an attention matrix: both are in the
    JSON). LoRA r=12, AdaLoRA's starting rank, shows what the larger rank alone would give. The paper's
    gains are largest at small budgets, so the claim is also tried there: AdaLoRA 4->2 (a final
    average rank of 2) against LoRA r=2 on the same matrices.
(2) the budget goes mostly to the MLP matrices and to the top layers: read off the final rank of
    every adapted matrix (layers x matrix type), against the uniform shares (MLP: 2 of 6 types; top
    half of the layers: 1/2).
On the held-out test split (nanogpt.data.load_corpus): every choice reads the validation half, every
reported number the test half. Each contender trains at its own rate (lib/tuning.py: the first seed
on the quarter-decade grid around a guess, widened at an edge, then the other seeds at the chosen
rate). LoRA's guess is --lora-lr; AdaLoRA's one grid step higher: with Adam each lambda_i moves about
lr per step whatever the matrix's width, while LoRA's B A grows about sqrt(width) times faster, so
AdaLoRA wants a higher rate. At its tuned rate, on the first seed, AdaLoRA then tries its
orthogonality weight (--gamma and --gammas: the paper's 0.1, PEFT's 0.5) with two schedules (the
one set, and one that prunes earlier) and keeps the validation best for its seeds; the low-budget
AdaLoRA (and the control) take that setting, with their rates tuned around AdaLoRA's.
--no-pruning-control adds AdaLoRA 12->12, the SVD form with nothing pruned, to tell the pruning from
the parameterisation. Differences are paired over seeds (lib/seeds.py) and judged by the shared
rules (lib/verdicts.py): a "beats" needs its 95% interval clear of 0 and at least delta.

Writes OUT/records.json, OUT/adalora.json (the summary), OUT/budget.png, OUT/final_ranks.png,
OUT/loss_curves.png, OUT/results.md and OUT/run_info.json.
"""
import argparse
import math
import os

import numpy as np

from experiments.lib.adalora_plots import plot_budget, plot_final_ranks, plot_loss_curves
from experiments.lib.adalora_summary import (claim1_parts, claim1_verdict, claim2_parts, claim2_verdict,  # noqa: F401
                                             results_table, summarise)
from experiments.lib.common import (check_runs, finish_experiment, load_setup, make_parser, parse_targets,
                                    positive_float, positive_int, run_kwargs)
from experiments.lib.plots import write_report
from experiments.lib.rank_maps import rank_grid
from experiments.lib import verdicts
from experiments.lib.runs import run_all
from experiments.lib.seeds import seed_list, show, show_difference
from experiments.lib.tuning import LR_GRID, grid_index, grid_neighbours, tune
from nanogpt.train import write_json


def nonnegative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def number_flag(low, below=None):
    """An argparse type: a finite number >= low, and < below if given."""
    what = f"a finite number >= {low:g}" if below is None else f"a number in [{low:g}, {below:g})"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value >= low and math.isfinite(value) and (below is None or value < below)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


def next_grid_rate(lr):
    """The quarter-decade grid rate one step above lr (lr itself at the top of the grid)."""
    return LR_GRID[min(grid_index(lr) + 1, len(LR_GRID) - 1)]


def number_list(text):
    """An argparse type: comma-separated finite numbers >= 0 (the orthogonality weights to try)."""
    parse = number_flag(0)
    values = [parse(t.strip()) for t in text.split(",") if t.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers >= 0, got {text!r}")
    return values


def setting_grid(spec, gammas, max_iters):
    """AdaLoRA's settings tried at its tuned rate: every gamma with the schedule as set, and with one
    that prunes earlier (half the warm-up, pruning over by half the steps). The first is spec's own."""
    early = (spec["t_init"] // 2, max(spec["t_final"], max_iters // 2))
    grid = []
    for gamma in [spec["gamma"], *gammas]:
        for t_init, t_final in ((spec["t_init"], spec["t_final"]), early):
            s = {**spec, "gamma": gamma, "t_init": t_init, "t_final": t_final}
            if s not in grid:
                grid.append(s)
    return grid


def choose_setting(grid, losses):
    """The grid's index with the lowest validation loss (a diverged run, nan, never wins)."""
    clean = [x if math.isfinite(x) else math.inf for x in losses]
    return min(range(len(clean)), key=clean.__getitem__)


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/adalora", test_split=True)
    p.add_argument("--seeds", type=positive_int, default=5,
                   help="fine-tuning seeds per contender: 5, as the rules ask where three leave a comparison open")
    p.add_argument("--adalora-lr", type=positive_float,
                   help="AdaLoRA's first guess for the rate tuner, on its grid (default: one step above --lora-lr)")
    p.add_argument("--init-r", type=positive_int, default=12, help="AdaLoRA's initial rank per matrix")
    p.add_argument("--target-r", type=positive_int, default=8,
                   help="AdaLoRA's final rank per matrix, on average; LoRA runs at this rank and at --init-r")
    p.add_argument("--low-init-r", type=positive_int, default=4, help="the low-budget AdaLoRA's initial rank")
    p.add_argument("--low-target-r", type=positive_int, default=2,
                   help="the low-budget AdaLoRA's final average rank; LoRA runs at this rank too")
    p.add_argument("--t-init", type=nonnegative_int,
                   help="AdaLoRA warm-up steps before pruning (default: a tenth of --max-iters)")
    p.add_argument("--t-final", type=nonnegative_int,
                   help="steps at the fixed final mask (default: a third of --max-iters)")
    p.add_argument("--delta-t", type=positive_int, help="steps between reallocations (default: --max-iters / 60, at least 1)")
    p.add_argument("--beta1", type=number_flag(0, 1), default=0.85, help="EMA of the sensitivity (the paper's 0.85)")
    p.add_argument("--beta2", type=number_flag(0, 1), default=0.85, help="EMA of its uncertainty (the paper's 0.85)")
    p.add_argument("--gamma", type=number_flag(0), default=0.1,
                   help="weight of the orthogonality regulariser the rate is tuned at (the paper's 0.1; its code and "
                        "PEFT weigh the mean of unsquared norms, we the sum of squares the paper writes)")
    p.add_argument("--gammas", type=number_list, default=[0.5],
                   help="further orthogonality weights tried at the tuned rate, on the first seed (PEFT's default 0.5)")
    p.add_argument("--no-pruning-control", action="store_true",
                   help="also run AdaLoRA with target_r = init_r (the SVD form, the regulariser, nothing pruned): "
                        "tells what the pruning does apart from the parameterisation")
    args = p.parse_args(argv)
    t_init = args.max_iters // 10 if args.t_init is None else args.t_init
    t_final = args.max_iters // 3 if args.t_final is None else args.t_final
    delta_t = max(1, args.max_iters // 60) if args.delta_t is None else args.delta_t
    # Checked here, before the base model is trained.
    if t_init + t_final >= args.max_iters or delta_t < 1:
        p.error(f"--t-init + --t-final = {t_init} + {t_final} must be less than --max-iters={args.max_iters}, "
                f"and --delta-t={delta_t} at least 1")
    for flag, (low, high) in (("--target-r", (args.target_r, args.init_r)),
                              ("--low-target-r", (args.low_target_r, args.low_init_r))):
        if not 1 <= low <= high:
            p.error(f"{flag}={low} must be in 1..{flag.replace('target', 'init')}={high}")
    for flag, lr in (("--lora-lr", args.lora_lr), ("--adalora-lr", args.adalora_lr)):
        if lr is not None and not any(abs(lr / g - 1) < 1e-9 for g in LR_GRID):
            p.error(f"{flag}={lr:g} is not on the tuning grid {list(LR_GRID)}")
    seeds = seed_list(args.seed, args.seeds)
    check_runs(args, ranks=[args.target_r, args.init_r, args.low_target_r, args.low_init_r])
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    targets = parse_targets(args.targets)

    def entry(spec):
        return dict(base=base, base_key=base_key, spec=spec, target=target, source=source, **kwargs)

    lora = {"method": "lora", "variant": "lora", "alpha": args.alpha, "targets": targets}
    adalora = {"method": "lora", "variant": "adalora", "r": args.init_r, "target_r": args.target_r, "alpha": args.alpha,
               "targets": targets, "t_init": t_init, "t_final": t_final, "delta_t": delta_t, "beta1": args.beta1,
               "beta2": args.beta2, "gamma": args.gamma}
    lora_rates = grid_neighbours(args.lora_lr)
    adalora_rates = grid_neighbours(args.adalora_lr or next_grid_rate(args.lora_lr))
    ada_name, low_name = f"AdaLoRA {args.init_r}->{args.target_r}", f"AdaLoRA {args.low_init_r}->{args.low_target_r}"
    loras = {f"LoRA r={r}": (entry({**lora, "r": r}), lora_rates)
             for r in (args.target_r, args.init_r, args.low_target_r)}
    progress = not args.no_progress
    # 1. The rates, on the first seed (validation): AdaLoRA at its starting setting, LoRA at each rank.
    first = tune({ada_name: (entry(adalora), adalora_rates), **loras}, seeds[:1], workers=args.workers,
                 progress=progress)
    # 2. AdaLoRA's gamma and schedule at that rate, on the first seed; the validation best is kept.
    ada_lr = first[ada_name]["best_lr"]
    grid = setting_grid(adalora, args.gammas, args.max_iters)
    plan = [{**entry(s), "spec": {**s, "lr": ada_lr}, "seed": seeds[0]} for s in grid]
    grid_losses = [r["final_target_loss"] for r in run_all(plan, workers=args.workers, progress=progress,
                                                          desc="AdaLoRA's settings")]
    chosen = grid[choose_setting(grid, grid_losses)]
    # 3. The seeds: AdaLoRA at the chosen setting and rate; the others tuned (the low-budget AdaLoRA and
    # the control at the chosen setting), then their seeds.
    around = grid_neighbours(ada_lr)  # their rates start around the rate AdaLoRA's own tuning chose
    contenders = {**loras, low_name: (entry({**chosen, "r": args.low_init_r, "target_r": args.low_target_r}), around)}
    if args.no_pruning_control:
        contenders[f"{ada_name[:-len(str(args.target_r))]}{args.init_r} (no pruning)"] = (
            entry({**chosen, "target_r": args.init_r}), around)
    tuned = tune(contenders, seeds, workers=args.workers, progress=progress)
    plan = [{**entry(chosen), "spec": {**chosen, "lr": ada_lr}, "seed": s} for s in seeds]
    tuned = {ada_name: {**first[ada_name], "records": run_all(plan, workers=args.workers, progress=progress,
                                                             desc="AdaLoRA's seeds")}, **tuned}
    order = [ada_name, f"LoRA r={args.target_r}", f"LoRA r={args.init_r}", low_name, f"LoRA r={args.low_target_r}"]
    names = order + [n for n in tuned if n not in order]
    runs_of = {name: tuned[name]["records"] for name in names}

    ada_runs = runs_of[ada_name]
    n_layer = base.config.n_layer
    grids = [rank_grid(r["adalora"]["final_ranks"], n_layer) for r in ada_runs]
    n_matrices = int(np.sum(~np.isnan(grids[0])))
    summary = summarise(tuned, names, grids, seeds)
    summary["settings"] = ({k: chosen[k] for k in ("r", "target_r", "alpha", "t_init", "t_final", "delta_t", "beta1",
                                                  "beta2", "gamma")}
                           | {"targets": targets, "steps": args.max_iters, "low_r": args.low_init_r,
                              "low_target_r": args.low_target_r})
    summary["setting_search"] = {
        "lr": ada_lr, "seed": seeds[0], "chosen": grid.index(chosen),
        "tried": [{k: s[k] for k in ("gamma", "t_init", "t_final")} | {"final_target_loss": x}
                  for s, x in zip(grid, grid_losses)]}
    records = [r for name in names for r in runs_of[name]]
    write_json(records, os.path.join(args.out, "records.json"))
    write_json(summary, os.path.join(args.out, "adalora.json"))
    title = (f"AdaLoRA vs LoRA: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, "
             f"alpha {args.alpha:g}, each at its tuned rate, {len(seeds)} seeds, {device}")
    plot_loss_curves([{"name": n, "lr": tuned[n]["best_lr"], "runs": runs_of[n]} for n in names],
                     os.path.join(args.out, "loss_curves.png"), title)
    plot_budget(ada_runs, n_matrices, args.target_r, args.init_r,
                (chosen["t_init"], args.max_iters - chosen["t_final"]), os.path.join(args.out, "budget.png"), title)
    plot_final_ranks(grids, args.init_r, summary["allocation"]["seed_agreement"],
                     os.path.join(args.out, "final_ranks.png"), title)
    table = write_report(os.path.join(args.out, "results.md"), "AdaLoRA", title, results_table(summary))
    finish_experiment(args, argv)
    print(table)
    print(f"wrote {args.out}/records.json, adalora.json, budget.png, final_ranks.png, loss_curves.png, results.md")


def report(results):
    """Section of REPRODUCTIONS.md from results/adalora: every number read off the test text."""
    summary = results.json("adalora", "adalora.json")
    a = summary["allocation"]
    same, low = (c["difference"] for c in summary["comparisons"][:2])
    c1, c1_detail = claim1_verdict(same, low)  # the verdicts by the shared rules, recomputed
    c2, c2_detail = claim2_verdict(a["mlp_share_minus_uniform"], a["top_half_share_minus_uniform"])
    summary = {**summary, "claims": {k: {**c, "verdict": v, "detail": d} for (k, c), (v, d) in
                                     zip(summary["claims"].items(), ((c1, c1_detail), (c2, c2_detail)))}}
    judged = claim1_parts(same, low) + claim2_parts(a["mlp_share_minus_uniform"], a["top_half_share_minus_uniform"])
    # The headline is claim 1, AdaLoRA against LoRA at equal final budgets (both budgets; reproduced at one of
    # them: partly): the paper's claim is about equal budgets, and where the rank goes cannot rescue it.
    verdict = verdicts.combine([c1, c2], headline=0)
    st, search = summary["settings"], summary["setting_search"]
    n = len(summary["seeds"])
    rows = {row["name"]: row for row in summary["contenders"]}
    names = list(rows)
    bullets = [f"- At equal final budgets (the headline, claim 1): at {st['target_r']} per matrix "
               f"{verdicts.show(judged[0])} ({show_difference(same)}); at {st['low_target_r']} per matrix, AdaLoRA's "
               f"favourable regime, {verdicts.show(judged[1])} ({show_difference(low)}). Parameters: "
               + "; ".join(f"{name} {rows[name]['trainable_params']:,} trained, {rows[name]['final_params']['mean']:,.0f} "
                           f"kept" for name in names[:5] if name != names[2]) + "."]
    control = [c for c in summary["comparisons"] if "no pruning" in c["question"]]
    if control:
        no_prune = next(row for name, row in rows.items() if "no pruning" in name)
        d = control[0]["difference"]
        larger = rows[f"LoRA r={st['r']}"]
        bullets.append(f"- Pruning or the form? AdaLoRA with nothing pruned ({st['r']} triplets per matrix) ends at "
                       f"{show(no_prune['final_target_test_loss'])}, LoRA r={st['r']} at "
                       f"{show(larger['final_target_test_loss'])}; pruned to {st['target_r']} it "
                       f"ends {abs(d['mean']):.3f} {'higher' if d['mean'] < 0 else 'lower'} than unpruned (the "
                       f"unpruned minus the pruned, seed by seed: {show_difference(d)}: "
                       f"{verdicts.show(verdicts.beats(d, 'loss'))}).")
    else:
        bullets.append("- Pruning or the form? Not asked in this run: `--no-pruning-control` (AdaLoRA with nothing "
                       "pruned) was left out to keep the run within its time.")
    tried = search["tried"]
    bullets.append(f"- The search the review asked for: gamma in {sorted({s['gamma'] for s in tried})} and "
                   f"{len({(s['t_init'], s['t_final']) for s in tried})} schedules at AdaLoRA's tuned rate "
                   f"{search['lr']:g}, seed {search['seed']}, on validation: kept gamma {st['gamma']:g}, warm-up "
                   f"{st['t_init']}, final {st['t_final']} (validation losses "
                   f"{min(s['final_target_loss'] for s in tried):.4f} to {max(s['final_target_loss'] for s in tried):.4f}"
                   f"; one seed each: a choice, not a comparison, so no verdict rests on it).")
    bullets.append(f"- Where the rank went (mean over seeds): by matrix type "
                   + ", ".join(f"{t} {v:.1f}" for t, v in a["mean_rank_by_type"].items())
                   + "; by layer, bottom to top, " + ", ".join(f"{v:.1f}" for v in a["mean_rank_by_layer"]) + ".")
    command = "python -m experiments.adalora" + (" --no-pruning-control" if control else "")
    body = f"""**Claims.** AdaLoRA (Zhang et al. 2023, on DeBERTaV3 and BART): (1) at an equal final budget of
rank, spending it adaptively (pruning the least important singular triplets during training)
beats uniform LoRA; (2) the budget goes mostly to the MLP matrices and to the top layers.

**Command.** `{command}` (`results/adalora/`), on the held-out test split: every rate, gamma
and schedule was chosen on the validation half of the held-out text (`final_target_loss`), and every
number below except those two tuning tables is read off the test half (`final_target_test_loss`,
`final_source_test_loss`), which no choice saw. AdaLoRA from {st['r']} to {st['target_r']} triplets
per matrix on average (warm-up {st['t_init']} steps, final {st['t_final']} steps fixed, masking every
{st['delta_t']} steps; beta1 {st['beta1']:g}, beta2 {st['beta2']:g}, orthogonality gamma {st['gamma']:g}:
the validation best of the grid below) against LoRA r={st['target_r']} (the same final rank) and
r={st['r']} (its starting rank); and at a low budget AdaLoRA {st['low_r']}->{st['low_target_r']} (the
same gamma and schedule) against LoRA r={st['low_target_r']} on the same matrices; each at its own
tuned rate, {n} seeds.

![final ranks](../results/adalora/final_ranks.png)

![budget](../results/adalora/budget.png)

![loss curves](../results/adalora/loss_curves.png)

{results_table(summary).strip()}

Losses in nats/byte, mean ± 95% CI over seeds; `*` marks a called difference. The loss curves are
on validation, the text the choices read.

**Verdict: {verdict}.**
""" + "\n".join(bullets)
    detail = (f"vs LoRA at the same final rank, test: r={st['target_r']} {show_difference(same)}, "
              f"r={st['low_target_r']} {show_difference(low)}; "
              + "; ".join(f"({i}) {c['verdict']}" for i, c in enumerate(summary["claims"].values(), 1)))
    return {"title": "AdaLoRA: where a fixed budget of rank should go",
            "source": "AdaLoRA (Zhang et al. 2023)",
            "claim": "At an equal final rank budget AdaLoRA beats uniform LoRA; the budget goes to the MLP and the top "
                     "layers", "verdict": verdict, "detail": detail, "body": body, "comparisons": judged}


if __name__ == "__main__":
    main()
