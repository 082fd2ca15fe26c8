"""Exact match on a task the base model nearly knows: is a rank of 1 or 2 as good as 64?

    python -m experiments.exact_match                          # CPU, tiny model, offline
    python -m experiments.exact_match --device cuda --preset small

Claim (Hu et al. 2021, LoRA, Sec. 7.2 / Table 6): adapting W_q and W_v at a very small rank (1 or
2) is competitive with a large one (64) on tasks scored by accuracy: the update a pretrained model
needs has a low intrinsic rank. Biderman et al. 2024 ("LoRA Learns Less and Forgets Less"): LoRA
keeps the model's generations more diverse than full fine-tuning does.

The task (experiments/lib/format_task.py): name the type of the literal a real line of the standard
library assigns, "self._pos = (0, 0)" -> "tuple", scored by exact match under greedy decoding
(experiments/lib/task_metrics.py). Contenders: LoRA on q_proj, v_proj at r = 1, 2, 8, 64
(alpha 16) and full fine-tuning; each at its own rate, chosen on VALIDATION exact match (seed 1),
then 3 seeds at that rate. Everything reported is on TEST prompts and test text, disjoint from
validation by line. Diversity: distinct-2 and -3 over bytes of free samples from "\\n".
Writes OUT/records.json, OUT/exact_match.json, OUT/exact_match.png, OUT/results.md.
"""
import functools
import os

from experiments.lib.common import (check_runs, finish_experiment, load_setup, make_parser, parse_ranks, positive_int,
                                    run_kwargs, stop)
from experiments.lib.exact_match_report import plot_exact_match, results_table, section
from experiments.lib.format_task import majority_share, make_task, task_corpus
from experiments.lib.plots import write_report
from experiments.lib.runs import run_all
from experiments.lib.seeds import paired, seed_list, spread
from experiments.lib.task_metrics import task_eval
from experiments.lib.tuning import grid_neighbours, tune
from nanogpt.data import python_code_bytes
from nanogpt.train import write_json

FINAL_EVAL = "literal-types-v1"  # part of the run cache key: change it when task_metrics.task_eval changes
TIE = 1e-4  # tuning: validation loss (~1 nat) breaks ties of exact match, never outweighs one prompt (1/N)
SHOWN = 5  # test prompts (and free samples) kept in each record, to show what a model does


def exact_score(record):
    """What a rate is chosen by (lowest best): validation exact match first, validation loss on
    ties (both validation numbers: the test prompts never choose). A diverged run: NaN (worst)."""
    return -record["final_eval"]["val_exact"] + TIE * record["final_target_loss"]


def contender_name(spec):
    return "full" if spec["method"] == "full" else f"r={spec['r']}"


def row_of(name, result, first_seed_records):
    """One contender's numbers: its tuning (by rate) and its seeds at the chosen rate (test only)."""
    runs = result["records"]
    evals = [x["final_eval"] for x in runs]
    return {"name": name, "method": runs[0]["method"], "r": runs[0]["r"], "lr": result["best_lr"],
            "trainable_params": runs[0]["trainable_params"],
            "tuning": {"lrs": result["lrs"], "at_grid_edge": result["at_grid_edge"],
                       "val_exact": [x["final_eval"]["val_exact"] for x in first_seed_records],
                       "val_loss": [x["final_target_loss"] for x in first_seed_records]},
            "test_exact": spread([e["test_exact"] for e in evals]),
            "distinct_2": spread([e["distinct_2"] for e in evals]),
            "distinct_3": spread([e["distinct_3"] for e in evals]),
            "target_test_loss": spread([x["final_target_test_loss"] for x in runs]),
            "source_test_loss": spread([x["final_source_test_loss"] for x in runs]),
            "shown": evals[0]["shown"], "samples": evals[0]["samples"]}


def differences(rows):
    """Seed by seed: each rank minus the top rank (64 by default) and minus full fine-tuning in test
    exact match; each rank minus full in distinct-2 and distinct-3 (positive: LoRA more diverse)."""
    by = {row["name"]: row for row in rows}
    lora = [row for row in rows if row["method"] == "lora"]
    top = by[f"r={max(row['r'] for row in lora)}"] if lora else None
    out = {}
    for row in lora:
        d = {"exact_vs_top": paired(top["test_exact"]["values"], row["test_exact"]["values"])}
        if "full" in by:
            d["exact_vs_full"] = paired(by["full"]["test_exact"]["values"], row["test_exact"]["values"])
            for n in ("distinct_2", "distinct_3"):
                d[f"{n}_vs_full"] = paired(by["full"][n]["values"], row[n]["values"])
        out[row["name"]] = d
    return out


def make_exact_parser():
    p = make_parser(__doc__.splitlines()[0], default_out="results/exact_match", test_split=True)
    p.add_argument("--ranks", type=parse_ranks, default=[1, 2, 8, 64], help="LoRA ranks on --targets, e.g. 1,2,8,64")
    p.add_argument("--seeds", type=positive_int, default=3, help="fine-tuning seeds per contender")
    p.add_argument("--max-len", type=positive_int, default=50, help="longest example line, in bytes")
    p.add_argument("--samples", type=positive_int, default=128, help="free samples per model, for distinct-n")
    p.add_argument("--max-extra", type=int, choices=range(0, 3), default=1,
                   help="rates the tuner may add past the edge of the first three (0-2)")
    p.set_defaults(targets="q_proj,v_proj", max_iters=300, eval_interval=150)
    return p


def main(argv=None):
    args = make_exact_parser().parse_args(argv)
    if args.target != "python-docs":
        stop(f"--target {args.target!r}: this experiment's target is its own task (the types of literals in the "
             f"standard library's assignments); leave --target out")
    seeds = seed_list(args.seed, args.seeds)
    check_runs(args, ranks=args.ranks, lr_on_grid=True)
    base, base_key, source, _, device = load_setup(args)  # the task replaces the prose target
    block = base.config.block_size
    try:
        task = make_task(python_code_bytes(), block, args.max_len)
        corpus = task_corpus(task, block)
    except ValueError as e:
        stop(f"{e} (--max-len {args.max_len}, --block-size {block})")
    k, new_bytes = args.samples, block - 1
    evaluate = functools.partial(task_eval, val=task.val, test=task.test, k=k, max_new_tokens=new_bytes,
                                 n_shown=SHOWN)  # picklable, for the worker processes
    kwargs = {**run_kwargs(args, device), "final_eval": (f"{FINAL_EVAL}-k{k}-n{new_bytes}", evaluate)}
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    specs = [{"method": "full"}] + [{"method": "lora", "variant": "lora", "r": r, "alpha": args.alpha,
                                     "targets": targets} for r in args.ranks]
    contenders = {contender_name(spec): (dict(base=base, base_key=base_key, spec=spec, target=corpus, source=source,
                                              **kwargs),
                                         grid_neighbours(args.full_lr if spec["method"] == "full" else args.lora_lr))
                  for spec in specs}
    tuned = tune(contenders, seeds, workers=args.workers, max_extra=args.max_extra, progress=not args.no_progress,
                 score=exact_score)
    rows, records = [], []
    for name, result in tuned.items():  # the first seed at every rate tried: all in the cache now
        entry = contenders[name][0]
        firsts = run_all([{**entry, "spec": {**entry["spec"], "lr": lr}, "seed": seeds[0], "force": False}
                          for lr in result["lrs"]], progress=False)
        rows.append(row_of(name, result, firsts))
        records += result["records"]
    base_eval = task_eval(base, task.val, task.test, k, new_bytes, n_shown=SHOWN)
    summary = {"seeds": seeds, "max_iters": args.max_iters, "targets": targets, "alpha": args.alpha,
               "max_len": args.max_len, "samples": k, "sample_bytes": new_bytes,
               "sizes": {"train": len(task.train), "val": len(task.val), "test": len(task.test)},
               "majority": majority_share(task), "answers": sorted({a for _, a in task.train}),
               "examples": task.test[:SHOWN], "base": {**base_eval, "target_test_loss": records[0]["base_target_test_loss"],
                                                       "source_test_loss": records[0]["base_source_test_loss"]},
               "rows": rows, "differences": differences(rows)}
    write_json(records, os.path.join(args.out, "records.json"))
    write_json(summary, os.path.join(args.out, "exact_match.json"))
    title = (f"exact match: {args.preset} GPT ({source.name} base), the type of a literal, {args.max_iters} steps, "
             f"LoRA on {','.join(targets)}, alpha {args.alpha:g}, each at its tuned rate, {len(seeds)} seeds, {device}")
    plot_exact_match(summary, os.path.join(args.out, "exact_match.png"), title)
    table = write_report(os.path.join(args.out, "results.md"), "Exact match", title, results_table(summary))
    finish_experiment(args, argv)
    print(table)
    print(f"wrote {args.out}/records.json, exact_match.json, exact_match.png, results.md")


def report(results):
    """Section of REPRODUCTIONS.md from results/exact_match."""
    return section(results.json("exact_match", "exact_match.json"))


if __name__ == "__main__":
    main()
