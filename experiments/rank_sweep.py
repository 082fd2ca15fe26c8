"""Sweep the LoRA rank, with full fine-tuning as the reference line.

    python -m experiments.rank_sweep                          # ranks 1..64, CPU, tiny, offline
    python -m experiments.rank_sweep --ranks 1,4,16 --device cuda --preset small

Writes OUT/records.json, OUT/final_loss_vs_rank.png, OUT/params_memory_vs_rank.png,
OUT/loss_curves.png and OUT/results.md.
"""
import os

from experiments.common import check_runs, load_setup, make_parser, parse_ranks, parse_targets, run_kwargs
from experiments.finetune import run_finetune
from experiments.plots import plot_loss_curves, plot_rank_sweep, write_markdown
from nanogpt.train import write_json


def main(argv=None):
    p = make_parser(__doc__.splitlines()[0], default_out="results/rank_sweep")
    p.add_argument("--ranks", type=parse_ranks, default=[1, 2, 4, 8, 16, 32, 64], help="comma-separated, e.g. 1,2,4")
    p.add_argument("--no-full", action="store_true", help="skip the full fine-tuning reference")
    args = p.parse_args(argv)
    check_runs(args, ranks=args.ranks)
    base, base_key, source, target, device = load_setup(args)
    kwargs = run_kwargs(args, device)
    targets = parse_targets(args.targets)
    full = None
    if not args.no_full:
        print("fine-tuning: full (reference)")
        full = run_finetune(base, base_key, {"method": "full", "lr": args.full_lr}, target, source, **kwargs)
    lora = []
    for r in args.ranks:
        print(f"fine-tuning: LoRA r={r}")
        spec = {"method": "lora", "variant": "lora", "r": r, "alpha": args.alpha, "targets": targets,
                "lr": args.lora_lr}
        lora.append(run_finetune(base, base_key, spec, target, source, **kwargs))
    records = ([full] if full else []) + lora
    write_json(records, os.path.join(args.out, "records.json"))
    title = (f"rank sweep: {args.preset} GPT, {source.name} -> {target.name}, {args.max_iters} steps, "
             f"alpha {args.alpha:g}, {device}")
    plot_rank_sweep(lora, full, os.path.join(args.out, "final_loss_vs_rank.png"),
                    os.path.join(args.out, "params_memory_vs_rank.png"), title)
    plot_loss_curves(records, os.path.join(args.out, "loss_curves.png"), title)
    table = write_markdown(os.path.join(args.out, "results.md"), "Rank sweep", title, records)
    print(table)
    print(f"wrote {args.out}/records.json, final_loss_vs_rank.png, params_memory_vs_rank.png, loss_curves.png, results.md")


if __name__ == "__main__":
    main()
