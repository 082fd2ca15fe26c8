"""The flags and the setup every experiment shares: base model, corpora, device, seed, budget.

The defaults are the embedded offline setup: pretrain the `tiny` GPT on `python-code`, then
fine-tune on `python-docs` (English prose), so there is something to learn (prose) and
something to forget (code). Flag names match `nanogpt.train` where they mean the same thing.
"""
import argparse
import os
import sys
import time

import torch

from experiments import runs
from experiments.base_model import get_base_model, pretrain_settings, settings_key
from experiments.finetune import METHODS
from experiments.runs import default_workers
from nanogpt.data import load_corpus
from nanogpt.device import DEVICE_CHOICES, resolve_device
from nanogpt.presets import PRESETS, config_from_preset
from nanogpt.train import write_json

# Each method at its own learning rate: the best grid rate (lowest final docs loss, mean of three
# seeds) of `python -m experiments.lr_sweep` on the default setup, for full fine-tuning and for
# LoRA r=8 (results/lr_sweep/lr_sweep.json, section 1 of experiments/REPRODUCTIONS.md). LoRA
# wants a higher rate than full fine-tuning, as "LoRA Without Regret" (Schulman et al. 2025)
# reports, though here by about 3x rather than its 10x. Other contenders are tuned per
# experiment around these (experiments/tuning.py).
DEFAULT_LR = {"full": 1.8e-3, "lora": 5.6e-3}
ALL_BLOCK_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def positive_ints(text, flag):
    """'1,2,4' -> [1, 2, 4]; anything else is a clear error naming the flag."""
    message = f"{flag} must be comma-separated positive integers like 1,2,4; got {text!r}"
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(message)
    return values


def parse_ranks(text):
    return positive_ints(text, "--ranks")


def parse_batch_sizes(text):
    return positive_ints(text, "--memory-batches")


def parse_methods(text):
    """'full,lora' -> ['full', 'lora']; an unknown method is a clear error."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise argparse.ArgumentTypeError(f"unknown method {m!r}; choose one of {list(METHODS)}")
    return methods


def make_parser(description, default_out):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--source", default="python-code", help="corpus the base model is pretrained on")
    p.add_argument("--target", default="python-docs", help="corpus the fine-tuning learns")
    p.add_argument("--preset", default="tiny", help=f"model size: {', '.join(PRESETS)}")
    p.add_argument("--device", default="cpu", help=f"one of {list(DEVICE_CHOICES)}")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--max-iters", type=int, default=600, help="fine-tuning steps per run")
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--eval-interval", type=int, default=100)
    p.add_argument("--eval-iters", type=int, default=20, help="fixed batches per evaluation")
    p.add_argument("--pretrain-iters", type=int, default=2000, help="steps for the base model (cached)")
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument("--pretrain-batch-size", type=int, default=12,
                   help="batch for the base model; separate from --batch-size, so a batch sweep shares one base")
    p.add_argument("--full-lr", type=float, default=DEFAULT_LR["full"])
    p.add_argument("--lora-lr", type=float, default=DEFAULT_LR["lora"])
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha, fixed across ranks as in the paper")
    p.add_argument("--targets", default=",".join(ALL_BLOCK_LINEARS),
                   help="comma-separated module names to adapt, or all-linear")
    p.add_argument("--out", default=default_out)
    p.add_argument("--cache", default="runs/cache", help="base checkpoints and finished run records")
    p.add_argument("--force", action="store_true", help="recompute runs even if cached")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--workers", type=int, default=None,
                   help="fine-tuning runs trained side by side, one thread each (default: one per CPU core; "
                        "1 on a GPU); a speed trick only: the records are the same")
    # model-size overrides, as in nanogpt.train
    p.add_argument("--n-layer", type=int)
    p.add_argument("--n-head", type=int)
    p.add_argument("--n-embd", type=int)
    p.add_argument("--block-size", type=int)
    return p


def parse_targets(text):
    return text if text == "all-linear" else [t.strip() for t in text.split(",") if t.strip()]


def load_setup(args):
    """Base model (pretrained or from the cache), its key, and the two corpora."""
    args.started = time.time()
    device = resolve_device(args.device)
    config = config_from_preset(args.preset, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                                block_size=args.block_size)
    source = load_corpus(args.source, config.block_size)
    target = load_corpus(args.target, config.block_size)
    base, _ = get_base_model(source, config, max_iters=args.pretrain_iters, batch_size=args.pretrain_batch_size,
                             lr=args.pretrain_lr, seed=args.seed, device=device, cache_dir=args.cache,
                             force=False, progress=not args.no_progress)
    base_key = settings_key(pretrain_settings(source, config, args.pretrain_iters, args.pretrain_batch_size,
                                              args.pretrain_lr, args.seed, device))
    os.makedirs(args.out, exist_ok=True)
    if args.workers is None:
        args.workers = default_workers(device)
    args.setup_s = time.time() - args.started
    runs.COUNTS.update(planned=0, trained=0)
    return base, base_key, source, target, device


def finish_experiment(args, argv=None):
    """OUT/run_info.json: how this experiment ran (command, wall time, how many of its runs were
    trained now rather than read from the cache), for the run-time table of REPRODUCTIONS.md."""
    info = {"command": " ".join(sys.argv[1:] if argv is None else argv), "wall_time_s": time.time() - args.started,
            "setup_s": args.setup_s, "runs_planned": runs.COUNTS["planned"], "runs_trained": runs.COUNTS["trained"],
            "workers": args.workers, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "device": str(resolve_device(args.device)), "date": time.strftime("%Y-%m-%d")}
    write_json(info, os.path.join(args.out, "run_info.json"))
    return info


def run_kwargs(args, device):
    """The run_finetune keyword arguments that come straight from the flags."""
    return dict(steps=args.max_iters, batch_size=args.batch_size, seed=args.seed, device=device,
                cache_dir=args.cache, eval_interval=args.eval_interval, eval_iters=args.eval_iters,
                force=args.force, progress=not args.no_progress)
