"""Training: AdamW, warm-up then cosine decay, gradient clipping, periodic evaluation.

`train()` is the loop; it trains whatever parameters of the model have requires_grad=True, so
fine-tuning experiments call it with a model whose trainable parameters they chose (all of them,
or only adapters). It knows nothing about LoRA. The run's settings come in one TrainConfig
(nanogpt/train_config.py), checked when it is made:

    result = train(model, corpus.train, {"val": corpus.val}, TrainConfig(max_iters=3000, lr=1e-3))

Command line (pretrain the tiny model on the standard library's code, about two minutes on a CPU):
    python -m nanogpt.train --corpus python-code --preset tiny --max-iters 3000 --out runs/base
The same on several processes (GPUs, or CPU processes), with the same result (nanogpt/distributed.py):
    torchrun --standalone --nproc_per_node 4 -m nanogpt.train --preset small --device cuda --out runs/base
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
from tqdm import tqdm

from nanogpt import distributed
from nanogpt.batch_memory import check_batch_fits
from nanogpt.checkpoint import (atomic_write, check_plain_gpt_weights, config_from_checkpoint, load_checkpoint,
                                save_checkpoint)
from nanogpt.data import fixed_batches, get_batch, load_corpus
from nanogpt.device import autocast
from nanogpt.evaluate import evaluate, evaluate_shared  # noqa: F401 (evaluate: nanogpt.train.evaluate, as before)
from nanogpt.flags import (DEVICE_HELP, CommandError, choice, fraction, non_negative_float, non_negative_int,
                           positive_float, positive_int, run_main)
from nanogpt.flags import device as device_flag
from nanogpt.flags import seed as seed_flag
from nanogpt.model import GPT
from nanogpt.presets import PRESETS, config_from_preset
from nanogpt.run_folder import Resume, RunFolder, check_run_folder, resolve_settings, resume_history
from nanogpt.train_config import TrainConfig


def configure_optimizer(model, lr, weight_decay=0.1, betas=(0.9, 0.99), extra_groups=None):
    """AdamW over the trainable parameters: weight decay on matrices (dim >= 2) only, never on
    biases, LayerNorm gains or other vectors, whose decay only hurts (as in nanoGPT and GPT-2)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (every requires_grad is False)")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def learning_rate(step, max_iters, lr, min_lr, warmup_iters):
    """Linear warm-up from 0 to lr over warmup_iters, then cosine decay to min_lr at max_iters."""
    if step < warmup_iters:
        return lr * (step + 1) / warmup_iters
    if step >= max_iters:
        return min_lr
    progress = (step - warmup_iters) / max(1, max_iters - warmup_iters)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def write_json(obj, path):
    """JSON, atomically (atomic_write): readers never see half a file."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
    atomic_write(path, write)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf: training stopped, and nothing after the last good checkpoint was
    saved. .step is where it happened; .result is what train() had recorded up to there (its
    history, step losses and times), for callers that keep a diverged run as a result."""

    def __init__(self, message, step, result):
        super().__init__(message)
        self.step = step
        self.result = result


def train(model, train_data, eval_data, config, *, optimizer=None, extra_loss=None, after_step=None, folder=None):
    """Train model on random windows of train_data, as config (a TrainConfig) says; return what happened.

    eval_data: {name: 1-D token tensor}; each evaluation records `{name}_loss` for each, on
        config.eval_iters fixed batches of config.eval_rows sequences (the CLI passes
        {"train": ..., "val": ...}).
    optimizer: None builds AdamW over the trainable parameters (configure_optimizer); pass one
        to choose parameter groups yourself (LoRA+ does). Its groups' "lr" is scheduled; a group
        with "lr_ratio" gets that multiple of the schedule.
    extra_loss: optional fn(model) -> scalar tensor added to the loss before backward (a
        regulariser, e.g. AdaLoRA's); the recorded losses are the model's alone.
    after_step: optional fn(step) called after each optimizer step, while that step's gradients
        are still in .grad (e.g. AdaLoRA's rank allocator).
    folder: a RunFolder (nanogpt/run_folder.py), or None to write nothing. If given, ckpt.pt and
        history.json are written in folder.path at every evaluation; the checkpoint also holds
        folder.settings (what defines the run, for --resume), the history so far, and the
        random-number state. folder.resume (a Resume, from restore_training_state) continues a run
        from its checkpoint's step, history and elapsed time.

    config.batch_size is the global batch. Launched by torchrun (after nanogpt.distributed.setup()),
    train() trains with DistributedDataParallel: each of the N processes takes batch_size / N rows
    of the batch one process would draw, gradients are averaged over the processes, only rank 0
    writes files and shows the progress bar, and the result is the same as one process's, up to
    float rounding (see nanogpt/distributed.py). N must divide batch_size.
    Batches are drawn from a generator seeded by (seed, step), so a resumed run sees exactly the
    batches the uninterrupted run would have seen.

    Before any work, a batch that cannot fit in memory is refused (nanogpt/batch_memory.py). A loss
    that becomes NaN or inf stops training with NonFiniteLossError naming the step; no checkpoint
    is written after the last good evaluation, so the folder keeps the last good one.

    Returns {"history": [...], "step_losses": [...], "step_times": [...], "optimizer": ...}; under
    torchrun also "communication" (CommStats.summary: bytes all-reduced per step, ...). The step
    losses are the global batch's (the mean over the processes).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train(): config must be a TrainConfig (nanogpt.train_config), got {config!r}")
    if folder is not None and not isinstance(folder, RunFolder):
        raise TypeError(f"train(): folder must be a RunFolder (nanogpt.run_folder) or None, got {folder!r}")
    max_iters, batch_size, device, seed = config.max_iters, config.batch_size, config.device, config.seed
    lr, min_lr, warmup_iters = config.lr, config.final_lr, config.warmup_iters
    out_dir = folder.path if folder is not None else None
    resume = folder.resume if folder is not None and folder.resume is not None else Resume(0, [], 0.0)
    start_step, elapsed_offset = resume.step, resume.elapsed_s
    rank, world = distributed.rank(), distributed.world_size()
    rows = distributed.batch_share(batch_size, rank, world, what="train(): batch_size") if world > 1 else None
    main_process = rank == 0  # the one that writes files and shows progress
    block_size = model.config.block_size
    model.to(device)
    check_batch_fits(model, train_data, config, len(eval_data), world)  # before any work
    model.train()
    if optimizer is None:
        optimizer = configure_optimizer(model, lr, config.weight_decay)
    # The forward and backward go through DDP under torchrun (gradients averaged over the
    # processes); evaluation, checkpoints and the hooks use the model itself. Wrapping waits for
    # every process (it broadcasts rank 0's weights), so all have checked their run folder before
    # rank 0 writes the first checkpoint below.
    trained, comm = distributed.wrap(model, device) if distributed.is_distributed() else (model, None)
    eval_batches = {name: fixed_batches(data, config.eval_iters, config.eval_rows, block_size)
                    for name, data in eval_data.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    history = list(resume.history or [])
    step_losses, step_times = [], []
    tokens_per_step = batch_size * block_size
    start_time = time.perf_counter()
    ckpt_path = os.path.join(out_dir, "ckpt.pt") if out_dir is not None else None
    saved_step = start_step if start_step > 0 else None  # the step the checkpoint on disk holds

    def result():
        out = {"history": history, "step_losses": step_losses, "step_times": step_times, "optimizer": optimizer}
        if comm is not None:
            out["communication"] = comm.summary()
        return out

    def kept():
        if ckpt_path is None:
            return ""
        if saved_step is None:
            return f" No checkpoint was written to {ckpt_path}."
        return f" The last good checkpoint, step {saved_step}, is kept in {ckpt_path}."

    def record(step):
        nonlocal saved_step
        entry = {"step": step}
        for name, batches in eval_batches.items():
            entry[f"{name}_loss"] = evaluate_shared(model, batches, device)
        bad = {k: v for k, v in entry.items() if k != "step" and not math.isfinite(v)}
        if bad:
            raise NonFiniteLossError(f"the evaluation at step {step} gave {bad}: the model's weights are no "
                                     f"longer finite, so training stopped.{kept()} Train again with a lower "
                                     f"learning rate", step, result())
        entry["lr"] = learning_rate(step, max_iters, lr, min_lr, warmup_iters)
        entry["elapsed_s"] = elapsed_offset + time.perf_counter() - start_time
        entry["tokens_seen"] = step * tokens_per_step
        history.append(entry)
        if out_dir is not None and main_process:
            os.makedirs(out_dir, exist_ok=True)
            rng = {"rng_state": torch.get_rng_state()}
            if str(device).startswith("cuda"):
                rng["cuda_rng_state"] = torch.cuda.get_rng_state(device)
            # The checkpoint first, with the history inside it: a kill before history.json is
            # written loses nothing, since --resume reads the history from the checkpoint.
            save_checkpoint(ckpt_path, model, optimizer, step, folder.corpus_name, elapsed_s=entry["elapsed_s"],
                            settings=folder.settings, history=history, **rng)
            saved_step = step
            write_json(history, os.path.join(out_dir, "history.json"))
        return entry

    bar = tqdm(range(start_step, max_iters), desc="train", disable=not config.progress or not main_process,
               dynamic_ncols=True)
    if start_step == 0 or not history:
        record(start_step)
    step = start_step
    try:
        for step in bar:
            t0 = time.perf_counter()
            step_lr = learning_rate(step, max_iters, lr, min_lr, warmup_iters)
            for group in optimizer.param_groups:
                group["lr"] = step_lr * group.get("lr_ratio", 1.0)
            g = torch.Generator().manual_seed(seed * 1_000_003 + step)
            x, y = get_batch(train_data, batch_size, block_size, generator=g, device=device, rows=rows)  # (B/N, T)
            if world > 1:  # dropout masks: different in each process, and the same again on --resume
                torch.manual_seed(((seed * 1_000_003 + step) * 65_537 + rank) % 2**63)
            with autocast(device):
                _, loss = trained(x, y)
            objective = loss if extra_loss is None else loss + extra_loss(model)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            if after_step is not None:
                after_step(step)
            # the global batch's loss, the same number in every process (so all stop together if
            # it is not finite); .item() waits for the device, so the step time below is real
            loss_value = distributed.mean_over_processes(loss).item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"the training loss became {loss_value} at step {step + 1} of {max_iters} (learning rate "
                    f"{step_lr:.3g}), so training stopped.{kept()} Train again with a lower learning rate, a "
                    f"longer warm-up, or gradient clipping on", step + 1, result())
            step_times.append(time.perf_counter() - t0)
            step_losses.append(loss_value)
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_step / step_times[-1]:.0f}", refresh=False)
            done = step + 1
            if done % config.eval_interval == 0 or done == max_iters:
                entry = record(done)
                if main_process:
                    bar.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in entry.items()))
    except KeyboardInterrupt:
        where = f"; {ckpt_path} holds step {saved_step}" if ckpt_path and saved_step is not None else ""
        raise KeyboardInterrupt(f"training stopped during step {step + 1}{where}") from None
    finally:
        bar.close()
    distributed.barrier()  # rank 0's files are written when train() returns, in every process
    return result()


def divergence_warning(history, vocab_size):
    """A warning when the last evaluation's training loss is worse than guessing and than where the
    run started: a run can blow up without ever reaching NaN (the loss stays finite but huge), and
    its exit code 0 must not pass for success. A uniform guess over the vocabulary scores
    ln(vocab_size) (5.55 nats/byte); a fresh model can start a little above it on a hard text, so
    the loss must also have risen above its first evaluation. The training loss, unlike the
    validation loss of an overfitted run, only does both by diverging. None otherwise."""
    if not history:
        return None
    loss, start = history[-1].get("train_loss"), history[0].get("train_loss")
    guess = math.log(vocab_size)
    if not isinstance(loss, float) or loss <= guess or (isinstance(start, float) and loss <= start):
        return None
    return (f"warning: at step {history[-1]['step']} the training loss is {loss:.4g} nats/byte, above a uniform "
            f"guess over the {vocab_size} byte values (ln {vocab_size} = {guess:.2f}) and above where it started: "
            f"the run diverged. Try a lower --lr")


def restore_training_state(checkpoint, model, optimizer, folder):
    """For --resume: load a checkpoint's weights, optimizer state and random-number state into
    model and optimizer. Returns a Resume (step, history, elapsed_s) for train()'s RunFolder."""
    if isinstance(checkpoint.get("step"), bool) or not isinstance(checkpoint.get("step"), int) or checkpoint["step"] < 0:
        raise ValueError(f"the checkpoint in {folder!r} has no valid step ({checkpoint.get('step')!r}): it cannot be resumed")
    model.load_state_dict(checkpoint["model"])
    if checkpoint.get("optimizer"):
        optimizer.load_state_dict(checkpoint["optimizer"])
    if "rng_state" in checkpoint:  # dropout masks continue as in the uninterrupted run
        torch.set_rng_state(checkpoint["rng_state"])
    if "cuda_rng_state" in checkpoint and torch.cuda.is_available():
        torch.cuda.set_rng_state(checkpoint["cuda_rng_state"])
    return Resume(checkpoint["step"], resume_history(checkpoint, folder), checkpoint.get("elapsed_s", 0.0))


# The flags that define a run, and their defaults. The parser's defaults are None ("not given"),
# so that --resume can tell a flag given again from a default (see run_folder.resolve_settings).
RUN_DEFAULTS = dict(corpus="python-code", preset="tiny", n_layer=None, n_head=None, n_embd=None, block_size=None,
                    dropout=None, max_iters=3000, batch_size=12, lr=1e-3, min_lr=None, warmup_iters=100,
                    weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20, seed=1337)
MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "dropout")


def make_parser():
    d = RUN_DEFAULTS
    p = argparse.ArgumentParser(
        description="Train the GPT on a byte-level corpus.",
        epilog="A folder that already holds a run is continued only with --resume (which reuses the run's "
               "saved settings) and replaced only with --overwrite. On several processes: torchrun "
               "--standalone --nproc_per_node N -m nanogpt.train ... (DistributedDataParallel; --batch-size "
               "stays the global batch, so the run is the same on any N; see nanogpt/distributed.py).")
    p.add_argument("--corpus", help=f"python-code, python-docs, shakespeare, or a file path (default {d['corpus']})")
    p.add_argument("--preset", type=choice(PRESETS), help=f"model size: {', '.join(PRESETS)} (default {d['preset']})")
    p.add_argument("--max-iters", type=positive_int, help=f"training steps (default {d['max_iters']})")
    p.add_argument("--out", default="runs/base", help="folder for ckpt.pt and history.json (default runs/base)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its checkpoint, with its settings")
    p.add_argument("--overwrite", action="store_true", help="start over in OUT, replacing the run it holds")
    p.add_argument("--batch-size", type=positive_int,
                   help=f"sequences per optimizer step, over all processes: under torchrun with N processes each "
                        f"takes batch-size / N of them, so N must divide it (default {d['batch_size']})")
    p.add_argument("--lr", type=positive_float, help=f"peak learning rate (default {d['lr']:g})")
    p.add_argument("--min-lr", type=non_negative_float, help="end of the cosine decay (default lr/10)")
    p.add_argument("--warmup-iters", type=non_negative_int, help=f"default {d['warmup_iters']}")
    p.add_argument("--weight-decay", type=non_negative_float, help=f"default {d['weight_decay']:g}")
    p.add_argument("--grad-clip", type=non_negative_float, help=f"gradient norm limit, 0 = off (default {d['grad_clip']:g})")
    p.add_argument("--eval-interval", type=positive_int, help=f"steps between evaluations (default {d['eval_interval']})")
    p.add_argument("--eval-iters", type=positive_int, help=f"batches per evaluation (default {d['eval_iters']})")
    p.add_argument("--device", type=device_flag, default="auto",
                   help=DEVICE_HELP + " (default auto; under torchrun, cuda means cuda:LOCAL_RANK)")
    p.add_argument("--dist-backend", type=distributed.backend_flag, default="auto", help=distributed.BACKEND_HELP)
    p.add_argument("--seed", type=seed_flag, help=f"default {d['seed']}")
    p.add_argument("--n-layer", type=positive_int)
    p.add_argument("--n-head", type=positive_int)
    p.add_argument("--n-embd", type=positive_int)
    p.add_argument("--block-size", type=positive_int)
    p.add_argument("--dropout", type=fraction)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None):
    args = make_parser().parse_args(argv)
    device = distributed.setup(args.device, args.dist_backend)  # under torchrun: join the others
    out = args.out
    ckpt_path = os.path.join(out, "ckpt.pt")
    given = {name: getattr(args, name) for name in RUN_DEFAULTS}

    # Everything is checked before any work: the folder, the settings, the model, the corpus.
    check_run_folder(out, resume=args.resume, overwrite=args.overwrite)
    checkpoint, saved_sha256 = None, None
    if args.resume:
        checkpoint = load_checkpoint(ckpt_path)
        check_plain_gpt_weights(checkpoint["model"], ckpt_path)
        config = config_from_checkpoint(checkpoint, ckpt_path)
        saved = dict(checkpoint.get("settings") or {})
        saved.update({name: getattr(config, name) for name in MODEL_FLAGS})  # the model is the checkpoint's
        if "corpus" not in saved and checkpoint.get("corpus"):
            saved["corpus"] = checkpoint["corpus"]
        settings = resolve_settings(given, RUN_DEFAULTS, saved, source=repr(out))
        saved_sha256 = saved.get("corpus_sha256")
    else:
        settings = resolve_settings(given, RUN_DEFAULTS)
        config = config_from_preset(settings["preset"], **{name: settings[name] for name in MODEL_FLAGS})
        settings.update({name: getattr(config, name) for name in MODEL_FLAGS})
    if settings["min_lr"] is None:
        settings["min_lr"] = settings["lr"] / 10
    if settings["min_lr"] > settings["lr"]:
        raise CommandError(f"--min-lr {settings['min_lr']:g} is above --lr {settings['lr']:g}: the schedule decays "
                           f"from --lr down to --min-lr; give a --min-lr at most --lr")
    distributed.batch_share(settings["batch_size"], world=distributed.world_size(), what="--batch-size")
    train_config = TrainConfig.from_settings(settings, device=device, progress=not args.no_progress)
    corpus = load_corpus(settings["corpus"], config.block_size)
    if saved_sha256 is not None and saved_sha256 != corpus.sha256:
        raise CommandError(
            f"the corpus {settings['corpus']!r} has changed since the run in {out!r} started (SHA-256 "
            f"{saved_sha256[:12]}... then, {corpus.sha256[:12]}... now): resuming would train on "
            f"other bytes. Restore the file, or start a new run on it (another --out, or --overwrite)")
    settings["corpus_sha256"] = corpus.sha256

    torch.manual_seed(settings["seed"])
    model = GPT(config).to(device)
    optimizer = configure_optimizer(model, settings["lr"], settings["weight_decay"])
    resume = None
    if checkpoint is not None:
        resume = restore_training_state(checkpoint, model, optimizer, out)
        print(f"resuming {ckpt_path} at step {resume.step} of {settings['max_iters']}")
    processes = f" | {distributed.world_size()} processes" if distributed.is_distributed() else ""
    print(f"{model.num_parameters():,} parameters | corpus {settings['corpus']}: {len(corpus.train):,} train bytes, "
          f"{len(corpus.val):,} val bytes | device {device}{processes}")
    try:
        result = train(model, corpus.train, {"train": corpus.train, "val": corpus.val}, train_config,
                       optimizer=optimizer, folder=RunFolder(out, settings["corpus"], settings, resume))
    except KeyboardInterrupt as e:
        raise KeyboardInterrupt(f"{e}. Continue the run with: python -m nanogpt.train --out {out} --resume") from None
    last = result["history"][-1]
    if not result["step_times"]:
        print(f"nothing to do: the run in {out} is at step {last['step']} of {settings['max_iters']}")
        return
    median = statistics.median(result["step_times"])
    print(f"done: step {last['step']}, train loss {last['train_loss']:.4f}, val loss {last['val_loss']:.4f} "
          f"nats/byte, {last['elapsed_s']:.0f} s, {settings['batch_size'] * config.block_size / median:,.0f} tokens/s "
          f"(median step) -> {ckpt_path}")
    warning = divergence_warning(result["history"], config.vocab_size)
    if warning and distributed.is_main():  # stderr is not silenced on the other processes
        print(warning, file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
