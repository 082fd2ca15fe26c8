"""Five seeds, on a held-out test split, for the comparisons three seeds left undecided.

    python -m experiments.settle                      # CPU, tiny model, offline

The rules of experiments/lib/verdicts.py ask for 5 seeds wherever three leave a comparison in the
grey zone (within delta of 0, or an interval that holds the margin). Six comparisons of sections
3, 8, 9, 10 and 11 are there. This command runs them again as those rules say, and as a reviewer
asks of every number: each contender's rate is tuned on VALIDATION (the held-out text's first half;
nanogpt.data.load_corpus with test_split), and every number reported is on TEST (its second half),
which no choice read. Contenders at a fixed rate (the front and the batch comparison are about
one setting) are not tuned at all.

The same runs also say what each change did on its own: the first three seeds on validation (as
the sections judged before, tuning leak included), the first three on test, and all five on test.

Writes OUT/records.json, OUT/settle.json, OUT/settle.png, OUT/results.md.
"""
import os

import matplotlib.pyplot as plt

from experiments.lib import verdicts
from experiments.lib.common import (ALL_BLOCK_LINEARS, DEFAULT_LR, check_runs, finish_experiment, load_setup,
                                    make_parser, run_kwargs)
from experiments.lib.pareto import front_at, pareto_front
from experiments.lib.plots import finish, lr_text, write_report
from experiments.lib.runs import run_all
from experiments.lib.sections import numbers_text, section_number, section_ref
from experiments.lib.settled import final_read
from experiments.lib.seeds import paired, seed_list, show, show_difference
from experiments.lib.tuning import grid_neighbours, tune
from nanogpt.flags import positive_int
from nanogpt.train import write_json

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
# The tuned contenders: name -> (LoRA spec without its rate, first guess: the rate its section chose).
TUNED = {
    "q,v r=4": ({"r": 4, "targets": ["q_proj", "v_proj"]}, 1e-2),
    "q,k,v,o r=2": ({"r": 2, "targets": ATTENTION}, 5.6e-3),
    "all six r=1": ({"r": 1, "targets": ALL_BLOCK_LINEARS}, 5.6e-3),
    "LoRA r=8": ({"r": 8, "targets": ALL_BLOCK_LINEARS}, 5.6e-3),
    "DoRA r=8": ({"r": 8, "targets": ALL_BLOCK_LINEARS, "variant": "dora"}, 5.6e-3),
    "LoRA+ r=8, lambda 4": ({"r": 8, "targets": ALL_BLOCK_LINEARS, "variant": "loraplus", "ratio": 4.0}, 3e-3),
}
# Section 8: LoRA r=64 at the rate it was compared at, and full fine-tuning's runs around it on the
# front (the vertices that bracketed it: 3e-4 and 5.6e-4, with one more each side).
FRONT_LORA = {"r": 64, "lr": 5.6e-3}
FRONT_NAME = f"LoRA r={FRONT_LORA['r']}, lr {lr_text(FRONT_LORA['lr'])}"  # as section 8 names it
FRONT_FULL_LRS = (1.8e-4, 3e-4, 5.6e-4, 1e-3)
# Section 9: each method at its one rate (the defaults), at the smallest and largest batch, every run
# seeing the sequences of --max-iters x --batch-size (7,200 at the defaults) and scored on batches of 12.
BATCHES, EVAL_BATCH = (6, 96), 12
# (section, question: exactly as that section words it, rule, the quantity compared)
QUESTIONS = [
    ("which_weights", "four attention types at r=2 beat two at r=4", "beats", "docs loss"),
    ("which_weights", "all six at r=1 beat attention-only", "beats", "docs loss"),
    ("learn_forget", f"{FRONT_NAME} lies on full's front", "matches",
     "code loss minus full's front at the same docs loss"),
    ("batch_size", "the gap widens from batch 6 to 96 (one rate)", "beats", "change of the docs-loss gap, LoRA - full"),
    ("variants", "DoRA beats LoRA at r=8", "beats", "docs loss"),
    ("loraplus", "r=8: lambda 4 beats one shared rate", "beats", "docs loss"),
]


def lora_spec(spec, alpha):
    return {"method": "lora", "variant": spec.get("variant", "lora"), "alpha": alpha,
            **{k: v for k, v in spec.items() if k != "variant"}}


def losses(records, split):
    """Final target losses seed by seed, on "val" or "test"."""
    key = "final_target_test_loss" if split == "test" else "final_target_loss"
    return [r[key] for r in records]


def differences(runs, split, n):
    """Each question's per-seed difference, positive = as claimed, from the first n seeds on split."""
    def target(name):
        return losses(runs[name][:n], split)

    def gap(b):  # LoRA minus full at batch b
        return [lo - fu for lo, fu in zip(target(f"LoRA, batch {b}"), target(f"full, batch {b}"))]

    tkey, skey = (("final_target_test_loss", "final_source_test_loss") if split == "test"
                  else ("final_target_loss", "final_source_loss"))
    above = []  # LoRA r=64's source loss minus full's front (of the same seed) at LoRA's target loss
    for s in range(n):
        front = pareto_front([(runs[f"full, lr {lr:g}"][s][tkey], runs[f"full, lr {lr:g}"][s][skey])
                              for lr in FRONT_FULL_LRS])
        lora = runs[FRONT_NAME][s]
        at = front_at(front, lora[tkey])
        above.append(float("nan") if at is None else lora[skey] - at)
    return [
        paired(target("q,k,v,o r=2"), target("q,v r=4")),  # the loser minus the winner
        paired(target("all six r=1"), target("q,k,v,o r=2")),
        paired([0.0] * n, above),
        paired(gap(BATCHES[0]), gap(BATCHES[-1])),
        paired(target("DoRA r=8"), target("LoRA r=8")),
        paired(target("LoRA+ r=8, lambda 4"), target("LoRA r=8")),
    ]


def judge(diffs):
    out = []
    for (section, question, rule, _), d in zip(QUESTIONS, diffs):
        c = (verdicts.beats if rule == "beats" else verdicts.matches)(d, "loss", question)
        out.append({**c, "section": section, "difference": d})
    return out


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/settle", test_split=True)
    p.add_argument("--seeds", type=positive_int, default=5, help="fine-tuning seeds per contender")
    args = p.parse_args(argv)
    check_runs(args, ranks=[1, 2, 4, 8, 64], variants=("lora", "dora"))
    sequences = args.max_iters * args.batch_size
    if sequences % BATCHES[-1]:
        p.error(f"--max-iters x --batch-size = {sequences} sequences must be a multiple of {BATCHES[-1]} (the "
                f"largest batch of section 9's comparison), so that every batch sees the same sequences")
    seeds = seed_list(args.seed, args.seeds)
    base, base_key, source, target, device = load_setup(args)
    kwargs = dict(base=base, base_key=base_key, target=target, source=source, **run_kwargs(args, device))

    contenders = {name: ({**kwargs, "spec": lora_spec(spec, args.alpha)}, grid_neighbours(guess))
                  for name, (spec, guess) in TUNED.items()}
    tuned = tune(contenders, seeds, workers=args.workers, max_extra=2, progress=not args.no_progress)

    fixed = {FRONT_NAME: {**kwargs, "spec": {**lora_spec({"r": FRONT_LORA["r"], "targets": ALL_BLOCK_LINEARS},
                                                          args.alpha), "lr": FRONT_LORA["lr"]}}}
    fixed.update({f"full, lr {lr:g}": {**kwargs, "spec": {"method": "full", "lr": lr}} for lr in FRONT_FULL_LRS})
    for b in BATCHES:
        steps = sequences // b
        at_batch = {**kwargs, "steps": steps, "batch_size": b, "eval_interval": steps, "eval_batch_size": EVAL_BATCH}
        fixed[f"full, batch {b}"] = {**at_batch, "spec": {"method": "full", "lr": DEFAULT_LR["full"]}}
        fixed[f"LoRA, batch {b}"] = {**at_batch, "spec": {**lora_spec({"r": 8, "targets": ALL_BLOCK_LINEARS},
                                                                       args.alpha), "lr": DEFAULT_LR["lora"]}}
    plan = [{**entry, "seed": s} for entry in fixed.values() for s in seeds]
    records = run_all(plan, workers=args.workers, progress=not args.no_progress, desc="fixed-rate runs")
    runs = {name: t["records"] for name, t in tuned.items()}
    runs.update({name: records[i * len(seeds):(i + 1) * len(seeds)] for i, name in enumerate(fixed)})

    n_first = min(3, len(seeds))
    summary = {"seeds": seeds, "steps": args.max_iters, "sequences": sequences,
               "tuning": {name: {k: t[k] for k in ("lrs", "losses", "best_lr", "at_grid_edge")}
                          for name, t in tuned.items()},
               "reads": {"3 seeds, validation": judge(differences(runs, "val", n_first)),
                         "3 seeds, test": judge(differences(runs, "test", n_first)),
                         f"all {len(seeds)} seeds, test": judge(differences(runs, "test", len(seeds)))},
               "test_loss": {name: [r["final_target_test_loss"] for r in rs] for name, rs in runs.items()}}
    os.makedirs(args.out, exist_ok=True)
    write_json([r for rs in runs.values() for r in rs], os.path.join(args.out, "records.json"))
    write_json(summary, os.path.join(args.out, "settle.json"))
    plot_settle(summary, os.path.join(args.out, "settle.png"))
    write_report(os.path.join(args.out, "results.md"), "Settling the undecided comparisons",
                 "five seeds, tuned on validation, reported on test", table(summary))
    finish_experiment(args, argv)
    print(table(summary))


def plot_settle(summary, path):
    """Each comparison's difference (positive = as claimed) with its interval, in the three reads."""
    fig, ax = plt.subplots(figsize=(10, 4.8))
    reads = list(summary["reads"])
    for k, read in enumerate(reads):
        for i, c in enumerate(summary["reads"][read]):
            y = i + (k - 1) * 0.22
            ax.errorbar([c["mean"]], [y], xerr=[[c["mean"] - c["low"]], [c["high"] - c["mean"]]], fmt="o",
                        color=("#999999", "#4C72B0", "#C44E52")[k], capsize=3, label=read if i == 0 else None)
    delta = verdicts.DELTAS["loss"]
    ax.axvspan(-delta, delta, color="#dddddd", alpha=0.5, label=f"within ±{delta:g} (too small to count)")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(QUESTIONS)), [f"{q}\n({what})" for _, q, _, what in QUESTIONS], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("difference in nats/byte (the quantity under each label): positive as claimed for 'beats', "
                  "near 0 for 'matches'\nbars: 95% interval (beats), 90% interval (matches)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return finish(fig, "the undecided comparisons: 3 seeds on validation, 3 on test, 5 on test", path)


def table(summary):
    reads = list(summary["reads"])
    lines = ["| section | comparison (quantity) | " + " | ".join(reads) + " |", "| --- | --- |" + " --- |" * len(reads)]
    for i, (section, question, _, what) in enumerate(QUESTIONS):
        cells = [f"{show_difference(summary['reads'][r][i]['difference'])}: {summary['reads'][r][i]['outcome']}"
                 for r in reads]
        lines.append(f"| {section_ref(section)} | {question} ({what}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def numbers(names):
    """'sections 3 and 8 to 11' for experiment names."""
    return numbers_text(sorted({section_number(name) for name in names}))


def report(results):
    """Section of REPRODUCTIONS.md from results/settle."""
    summary = results.json("settle", "settle.json")
    judged = final_read(summary)
    moved = [f"{section_ref(c['section'])}, {c['question']}: {first['outcome']} -> {c['outcome']}"
             for c, first in zip(judged, summary["reads"]["3 seeds, validation"]) if c["outcome"] != first["outcome"]]
    by_split = [f"{c['question']}: {first['outcome']} -> {c['outcome']}"
                for c, first in zip(summary["reads"]["3 seeds, test"], summary["reads"]["3 seeds, validation"])
                if c["outcome"] != first["outcome"]]
    rates = "; ".join(f"{name} {t['best_lr']:g}" + (" (at the grid's edge)" if t["at_grid_edge"] else "")
                      for name, t in summary["tuning"].items())
    n = len(summary["seeds"])
    body = f"""**Claim.** Not a paper's claim: the rules above ask for {verdicts.SEEDS_TO_SETTLE} seeds wherever three
leave a comparison in the grey zone. When this command was written, {len(QUESTIONS)} comparisons of
{numbers(q[0] for q in QUESTIONS)} were there; each is run again here with {n} seeds and a held-out test split: the
validation text (the last 10% of the docs and of the code) is cut in two; each contender's rate is
tuned on the first half (seed {summary['seeds'][0]}, as in every section), and every number below is on
the second half, which no choice made here read. The fixed settings (the default rates, section 8's
rates, lambda 4) were chosen earlier, on the whole held-out text. The comparisons the shared rules
found unsettled later ({numbers(['lr_sweep', 'subspace', 'capacity'])}, judged by them after these runs were
planned, and the sections after this one) are not re-run here; each section names its own.

**Command.** `python -m experiments.settle` (`results/settle/`). Tuned rates (on validation):
{rates}. Section 8's comparison runs LoRA r=64 at 5.6e-3 and full fine-tuning at the rates whose
runs bracket it on full's front ({', '.join(f'{lr:g}' for lr in FRONT_FULL_LRS)}; 600 steps; the front
of these four, seed by seed); section 9's runs each method at its one default rate at batches
{BATCHES[0]} and {BATCHES[-1]} over {summary['sequences']:,} sequences.

![the undecided comparisons](../results/settle/settle.png)

{table(summary).strip()}

Differences in nats/byte (the quantity in brackets), positive as claimed, mean ± 95% CI; `*` a
called difference. The first column reads these runs as the sections read theirs: the first three
seeds, on the text the rates were tuned on (here its first half); the second the same three seeds on
test; the last, the verdict, all {n} seeds on test.

**Verdict: {verdicts.combine([c['outcome'] for c in judged])}** (by comparison: the sections'
verdicts take these reads).
""" + "\n".join(f"- {section_ref(c['section'])}, {c['question']}: {verdicts.show_interval(c)}: "
                f"**{verdicts.show(c)}**." for c in judged)
    body += ("\n- Between this command's own reads, three seeds on validation and all seeds on test: "
             + ("; ".join(moved) + "." if moved else "no outcome moved."))
    body += ("\n- From validation to test alone (the same three seeds): "
             + ("; ".join(by_split) + "." if by_split else "no outcome moved."))
    detail = "; ".join(f"{c['question']}: {c['outcome']}" for c in judged)
    return {"title": "Five seeds on a held-out test split for the undecided comparisons",
            "source": "the rules of this file", "claim": "the six comparisons three seeds left undecided (each read becomes its section's verdict)",
            "verdict": verdicts.combine([c["outcome"] for c in judged]), "detail": detail, "body": body,
            # counted once, in the sections they settle (experiments/lib/settled.py)
            "comparisons": []}


if __name__ == "__main__":
    main()
