"""The flags and the setup every experiment shares: base model, corpora, device, seed, budget.

The defaults are the embedded offline setup: pretrain the `tiny` GPT on `python-code`, then
fine-tune on `python-docs` (English prose), so there is something to learn (prose) and
something to forget (code). Flag names match `nanogpt.train` where they mean the same thing.
"""
import argparse
import dataclasses
import hashlib
import json
import copy
import math
import atexit
import os
import shutil
import sys
import tempfile
import time

import torch

import minilora
from experiments.lib import runs
from experiments.lib.base_model import get_base_model, pretrain_settings, settings_key
from experiments.lib.finetune import METHODS
from experiments.lib.runs import default_workers
from experiments.lib.tuning import LR_GRID
from nanogpt import distributed
from nanogpt.data import load_corpus
from nanogpt.finetune import DEFAULT_LR  # noqa: F401 (experiments import it from here)
from nanogpt.flags import (DEVICE_HELP, CommandError, choice, comma_list, device, finite_float, fraction,  # noqa: F401
                           non_negative_float, non_negative_int, positive_float, positive_int, seed)
from nanogpt.model import GPT
from nanogpt.presets import PRESETS, config_from_preset
from nanogpt.pretrained import CONFIG, PYTORCH_BIN, SAFETENSORS, config_from_hf, load_init_from
from nanogpt.run_folder import check_writable_folder
from nanogpt.train import write_json

# DEFAULT_LR = {"full": 1.8e-3, "lora": 5.6e-3}, imported above from nanogpt/finetune.py, whose
# defaults are this setup too (python -m nanogpt.finetune); change the numbers there. Each method at
# its own learning rate: the best grid rate (lowest final docs loss, mean of three seeds) of
# `python -m experiments.lr_sweep` on the default setup, for full fine-tuning and for LoRA r=8
# (results/lr_sweep/lr_sweep.json, section 1 of experiments/REPRODUCTIONS.md). LoRA wants a higher
# rate than full fine-tuning, as "LoRA Without Regret" (Schulman et al. 2025) reports, though here
# by about 3x rather than its 10x. Other contenders are tuned per experiment around these
# (experiments/lib/tuning.py).
ALL_BLOCK_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def positive_ints(text, flag):
    """'1,2,4' -> [1, 2, 4]; anything else is a clear error naming the flag."""
    message = f"{flag} must be comma-separated positive integers like 1,2,4; got {text!r}"
    try:
        return comma_list(positive_int, "1,2,4")(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(message) from None


def parse_ranks(text):
    return positive_ints(text, "--ranks")


def parse_batch_sizes(text):
    return positive_ints(text, "--memory-batches")


def parse_lrs(text, flag="--lrs", at_least=3):
    """'1e-4,1e-3,1e-2' -> [0.0001, 0.001, 0.01]; anything else is a clear error naming the flag.
    A sweep needs at least three rates to find a minimum; other uses may ask for fewer."""
    message = f"{flag} must be comma-separated positive numbers like 1e-4,1e-3,1e-2; got {text!r}"
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if len(values) < at_least or any(not 0 < v < math.inf for v in values):
        raise argparse.ArgumentTypeError(message + (" (at least three, to find a minimum)" if at_least == 3 else ""))
    return sorted(values)


def parse_methods(text):
    """'full,lora' -> ['full', 'lora']; an unknown method, or none, is a clear error."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise argparse.ArgumentTypeError(f"unknown method {m!r}; choose one of {list(METHODS)}")
    if not methods:
        raise argparse.ArgumentTypeError(f"give at least one method of {list(METHODS)}, comma-separated")
    return methods


def make_parser(description, default_out, test_split=False):
    """The shared flags. test_split: the experiment tunes on the held-out text's first half and
    reports on its second (nanogpt.data.load_corpus), as every experiment written since the
    split exists does; the older ones (False) still tune and report on the same validation text."""
    p = argparse.ArgumentParser(description=description)
    p.set_defaults(test_split=test_split)
    p.add_argument("--source", default="python-code", help="corpus the base model is pretrained on")
    p.add_argument("--target", default="python-docs", help="corpus the fine-tuning learns")
    p.add_argument("--preset", type=choice(PRESETS), default="tiny", help=f"model size: {', '.join(PRESETS)}")
    p.add_argument("--device", type=device, default="cpu", help=DEVICE_HELP)
    p.add_argument("--dist-backend", type=distributed.backend_flag, default="auto", help=distributed.BACKEND_HELP)
    p.add_argument("--seed", type=seed, default=1337)
    p.add_argument("--max-iters", type=positive_int, default=600, help="fine-tuning steps per run")
    p.add_argument("--batch-size", type=positive_int, default=12,
                   help="sequences per fine-tuning step, over all processes under torchrun (each takes its share)")
    p.add_argument("--eval-interval", type=positive_int, default=100)
    p.add_argument("--eval-iters", type=positive_int, default=20, help="fixed batches per evaluation")
    p.add_argument("--pretrain-iters", type=positive_int, default=2000, help="steps for the base model (cached)")
    p.add_argument("--pretrain-lr", type=positive_float, default=1e-3)
    p.add_argument("--pretrain-batch-size", type=positive_int, default=12,
                   help="batch for the base model; separate from --batch-size, so a batch sweep shares one base")
    p.add_argument("--full-lr", type=positive_float, default=DEFAULT_LR["full"])
    p.add_argument("--lora-lr", type=positive_float, default=DEFAULT_LR["lora"])
    p.add_argument("--alpha", type=positive_float, default=16.0, help="LoRA alpha, fixed across ranks as in the paper")
    p.add_argument("--targets", default=",".join(ALL_BLOCK_LINEARS),
                   help="comma-separated module names to adapt, or all-linear")
    p.add_argument("--out", default=default_out)
    p.add_argument("--cache", default="runs/cache", help="base checkpoints and finished run records")
    p.add_argument("--force", action="store_true",
                   help="recompute runs even if cached (and rebuild a cached base model that cannot be read)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="fine-tuning runs trained side by side, one thread each (default: one per CPU core; "
                        "1 on a GPU); a speed trick only: the records are the same")
    # model-size overrides, as in nanogpt.train
    p.add_argument("--init-from", metavar="DIR",
                   help="fine-tune a real GPT-2 (a Hugging Face folder: config.json, model.safetensors, vocab.json, "
                        "merges.txt; docs/gpt2.md) instead of pretraining --preset on --source; the corpora are "
                        "tokenized with its BPE, losses are per token, and records add them per byte of text")
    p.add_argument("--n-layer", type=positive_int)
    p.add_argument("--n-head", type=positive_int)
    p.add_argument("--n-embd", type=positive_int)
    p.add_argument("--block-size", type=positive_int)
    return p


def parse_targets(text):
    """'q_proj,v_proj' -> ['q_proj', 'v_proj']; 'all-linear' stays as it is."""
    return text if text == "all-linear" else [t.strip() for t in text.split(",") if t.strip()]


def stop(message):
    """End an experiment before any work with one line, as a bad flag does: no traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def model_config(args):
    if getattr(args, "init_from", None):  # a real GPT-2: its config.json gives the shape; --block-size crops it
        config = config_from_hf(args.init_from)
        if args.n_layer or args.n_head or args.n_embd:
            raise ValueError("--n-layer, --n-head and --n-embd shape a model pretrained here; with --init-from the "
                             "GPT-2's config.json gives them (only --block-size applies: a shorter context)")
        if args.block_size is not None and args.block_size > config.block_size:
            raise ValueError(f"--block-size {args.block_size} is longer than the GPT-2's context ({config.block_size})")
        return dataclasses.replace(config, block_size=args.block_size or config.block_size)
    return config_from_preset(args.preset, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                              block_size=args.block_size)


def check_runs(args, ranks=(), planned=None, variants=("lora",), lr_on_grid=False):
    """Check every run an experiment plans, before the base model is pretrained: a bad rank,
    target, alpha, --out or --cache then stops the command at once instead of after minutes.

    ranks: the LoRA ranks it trains on --targets. planned: for ranks that depend on the layer
    sizes, a function of the (untrained) model returning more [(targets, r)] pairs. variants:
    those it trains ("dora" and "pissa" add their own checks). lr_on_grid: the experiment tunes
    its rates starting at --lora-lr, which must then be a rate of the tuning grid.
    Each planned adapter is applied, exactly as the run will apply it, to a copy of the model on
    the meta device (no memory, no arithmetic). A problem ends the command with one line (stop)
    naming the run and what is wrong."""
    try:
        config = model_config(args)
    except (ValueError, OSError) as e:
        if getattr(args, "init_from", None):
            stop(f"--init-from: {e}")
        stop(f"the model flags (--preset, --n-layer, --n-head, --n-embd, --block-size) do not fit together: {e}")
    try:
        check_writable_folder(args.out, "--out")
        check_writable_folder(args.cache, "--cache")
    except CommandError as e:
        stop(str(e))
    if lr_on_grid and not any(math.isclose(args.lora_lr, g, rel_tol=1e-9) for g in LR_GRID):
        stop(f"--lora-lr {args.lora_lr:g} is where this experiment starts tuning each rate, so it must be a rate of "
             f"the tuning grid: one of {[f'{g:g}' for g in LR_GRID]}")
    with torch.device("meta"):
        model = GPT(config)
    targets = parse_targets(args.targets)
    pairs = [(targets, r) for r in ranks] + (list(planned(model)) if planned is not None else [])
    for t, r in pairs or [(targets, 1)]:  # with no rank planned, the targets must still exist
        for variant in variants:
            try:
                minilora.apply_lora(copy.deepcopy(model), t, r=r, alpha=args.alpha, dora=variant == "dora",
                                    pissa=variant == "pissa", rslora=variant == "rslora")
            except (ValueError, TypeError) as e:
                where = t if isinstance(t, str) else ",".join(t)
                stop(f"a planned run cannot be made (LoRA{'' if variant == 'lora' else ' ' + variant} r={r} on "
                     f"{where!r}): {e}")


def load_setup(args):
    """Base model (pretrained or from the cache), its key, and the two corpora.

    Everything is checked first (check_runs, the corpora), so a bad flag or file stops the
    command before the base model is pretrained.

    Launched by torchrun, this is where the processes join (nanogpt.distributed.setup): each run
    then trains on all of them, --cache is shared (rank 0 writes it), and the processes other
    than rank 0 write their copies of the experiment's outputs to a temporary folder, removed at
    exit, so that --out holds rank 0's alone."""
    args.started = time.time()
    args.device = distributed.setup(args.device, args.dist_backend)
    if not distributed.is_main():
        args.out = tempfile.mkdtemp(prefix=f"rank{distributed.rank()}-")
        atexit.register(shutil.rmtree, args.out, True)
    for flag, batch in (("--batch-size", args.batch_size), ("--pretrain-batch-size", args.pretrain_batch_size)):
        try:
            distributed.batch_share(batch, world=distributed.world_size(), what=flag)
        except ValueError as e:
            stop(str(e))
    check_runs(args)
    device = args.device
    config = model_config(args)
    if getattr(args, "init_from", None):
        return load_pretrained_setup(args, device)
    try:
        source = load_corpus(args.source, config.block_size, test_split=args.test_split)
        target = load_corpus(args.target, config.block_size, test_split=args.test_split)
    except (ValueError, RuntimeError) as e:
        stop(f"{e} (--source {args.source!r}, --target {args.target!r})")
    try:
        base, _ = get_base_model(source, config, max_iters=args.pretrain_iters, batch_size=args.pretrain_batch_size,
                                 lr=args.pretrain_lr, seed=args.seed, device=device, cache_dir=args.cache,
                                 force=False, rebuild_broken=args.force, progress=not args.no_progress)
    except CommandError as e:
        stop(str(e))
    base_key = settings_key(pretrain_settings(source, config, args.pretrain_iters, args.pretrain_batch_size,
                                              args.pretrain_lr, args.seed, device))
    if args.workers is None:
        args.workers = default_workers(device)
    args.setup_s = time.time() - args.started
    runs.reset_counts()
    return base, base_key, source, target, device


def load_pretrained_setup(args, device):
    """load_setup with --init-from: the base is the GPT-2 in that folder (nothing to pretrain), and
    both corpora are tokenized with its BPE tokenizer. Its cache key is the hash of its files."""
    try:
        base, tokenizer = load_init_from(args.init_from, args.block_size)
        source = load_corpus(args.source, base.config.block_size, tokenizer=tokenizer, test_split=args.test_split)
        target = load_corpus(args.target, base.config.block_size, tokenizer=tokenizer, test_split=args.test_split)
    except (ValueError, RuntimeError, OSError) as e:
        stop(f"{e} (--init-from {args.init_from!r}, --source {args.source!r}, --target {args.target!r})")
    digest = hashlib.sha256()
    for name in sorted(os.listdir(args.init_from)):
        if name in (CONFIG, SAFETENSORS, PYTORCH_BIN, "vocab.json", "merges.txt"):
            with open(os.path.join(args.init_from, name), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
    print(f"base: GPT-2 from {args.init_from} ({base.num_parameters():,} parameters, vocabulary "
          f"{tokenizer.vocab_size}); bytes per token: {source.val_bytes_per_token:.2f} in {source.name}, "
          f"{target.val_bytes_per_token:.2f} in {target.name}. Losses are in nats per BPE token wherever a table "
          f"or plot says nats/byte (written for byte-level models); per byte of text: final_target_nats_per_byte "
          f"and final_source_nats_per_byte in records.json")
    if args.workers is None:
        args.workers = default_workers(device)
    args.setup_s = time.time() - args.started
    runs.reset_counts()
    # the files and the context: cached runs are keyed by it
    return base.to(device), f"gpt2-{digest.hexdigest()[:16]}-T{base.config.block_size}", source, target, device


def finish_experiment(args, argv=None):
    """OUT/run_info.json: how this experiment ran (command, wall time, how many of its runs were
    trained now rather than read from the cache), for the run-time table of REPRODUCTIONS.md."""
    info = {"command": " ".join(sys.argv[1:] if argv is None else argv), "wall_time_s": time.time() - args.started,
            "setup_s": args.setup_s, "runs_planned": runs.COUNTS["planned"], "runs_trained": runs.COUNTS["trained"],
            "sequences_planned": runs.COUNTS["sequences_planned"],
            "workers": args.workers, "processes": distributed.world_size(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "device": str(args.device), "date": time.strftime("%Y-%m-%d")}
    path = os.path.join(args.out, "run_info.json")
    if info["runs_trained"] == 0 and os.path.exists(path):  # all from the cache: keep how long training took
        try:
            with open(path) as f:
                previous = json.load(f)
            last = previous.get("last_training_run") or (previous if previous.get("runs_trained") else None)
            if last:  # the distinct runs are counted now (older records counted a re-planned run again)
                last = {**last, "runs_planned": info["runs_planned"], "sequences_planned": info["sequences_planned"]}
            info["last_training_run"] = last
        except (OSError, ValueError):
            pass
    write_json(info, path)
    return info


def run_kwargs(args, device):
    """The run_finetune keyword arguments that come straight from the flags."""
    return dict(steps=args.max_iters, batch_size=args.batch_size, seed=args.seed, device=device,
                cache_dir=args.cache, eval_interval=args.eval_interval, eval_iters=args.eval_iters,
                force=args.force, progress=not args.no_progress)
