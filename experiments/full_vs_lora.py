"""Full fine-tuning against LoRA: loss on both corpora, memory by part, step time, file size.

    python -m experiments.full_vs_lora                      # CPU, tiny model, offline
    python -m experiments.full_vs_lora --device cuda --preset small

Writes OUT/records.json, OUT/loss_curves.png, OUT/costs.png, OUT/memory_vs_batch.png (one
measured step per batch size: where LoRA's memory saving goes as activations grow), OUT/results.md
and OUT/run_info.json (its wall time: the second part of the quickstart, after rank_sweep, whose
runs it finds in the cache).
"""
import os

from experiments.lib.common import (check_runs, finish_experiment, load_setup, make_parser,
                                    parse_batch_sizes, parse_methods, parse_targets, positive_int, run_kwargs)
from experiments.lib.finetune import measure_step_memory, prepare_model
from experiments.lib.plots import plot_costs, plot_loss_curves, plot_memory_vs_batch, write_markdown
from experiments.lib.runs import run_all
from nanogpt.train import write_json


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/full_vs_lora", test_split=True)
    p.add_argument("--r", type=positive_int, default=8, help="LoRA rank")
    p.add_argument("--memory-batches", type=parse_batch_sizes, default=[1, 4, 16, 64],
                   help="batch sizes for memory_vs_batch.png, e.g. 1,4,16,64")
    p.add_argument("--methods", type=parse_methods, default=["full", "lora"], help="comma-separated: full, lora")
    args = p.parse_args(argv)
    check_runs(args, ranks=[args.r] if "lora" in args.methods else [])
    base, base_key, source, target, device = load_setup(args)
    specs = {
        "full": {"method": "full", "lr": args.full_lr},
        "lora": {"method": "lora", "variant": "lora", "r": args.r, "alpha": args.alpha,
                 "targets": parse_targets(args.targets), "lr": args.lora_lr},
    }
    # One run after the other in this process (each with every thread), as this command always ran
    # them; run_all reads back the runs rank_sweep already made and counts them for run_info.json.
    args.workers = 1
    plan = [dict(base=base, base_key=base_key, spec=specs[m], target=target, source=source, **run_kwargs(args, device))
            for m in args.methods]
    records = run_all(plan, workers=args.workers, progress=not args.no_progress, desc="full vs LoRA")
    write_json(records, os.path.join(args.out, "records.json"))
    title = f"{args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, batch {args.batch_size}, {device}"
    plot_loss_curves(records, os.path.join(args.out, "loss_curves.png"), title)
    plot_costs(records, os.path.join(args.out, "costs.png"), title)
    if set(args.methods) == {"full", "lora"}:
        rows = []  # one measured step per method and batch size: cheap next to the runs
        for b in args.memory_batches:
            row = {"batch_size": b}
            for m in ("full", "lora"):
                row[m] = measure_step_memory(prepare_model(base, specs[m]), specs[m], target.train, b, args.seed, device)
            rows.append(row)
        write_json(rows, os.path.join(args.out, "memory_vs_batch.json"))
        plot_memory_vs_batch(rows, os.path.join(args.out, "memory_vs_batch.png"), title)
    table = write_markdown(os.path.join(args.out, "results.md"), "Full fine-tuning vs LoRA", title, records)
    finish_experiment(args, argv)
    print(table)
    print(f"wrote {args.out}/records.json, loss_curves.png, costs.png, memory_vs_batch.png, results.md, run_info.json")


if __name__ == "__main__":
    main()
