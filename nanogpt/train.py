"""Training: AdamW, warm-up then cosine decay, gradient clipping, periodic evaluation.

`train()` is the loop; it trains whatever parameters of the model have requires_grad=True, so
fine-tuning experiments call it with a model whose trainable parameters they chose (all of them,
or only adapters). It knows nothing about LoRA.

Command line (pretrain the tiny model on the standard library's code, about two minutes on a CPU):
    python -m nanogpt.train --corpus python-code --preset tiny --max-iters 3000 --out runs/base
"""
import argparse
import json
import math
import os
import time

import torch
from tqdm import tqdm

from nanogpt.checkpoint import load_checkpoint, save_checkpoint
from nanogpt.data import fixed_batches, get_batch, load_corpus
from nanogpt.device import DEVICE_CHOICES, autocast, resolve_device
from nanogpt.model import GPT, GPTConfig
from nanogpt.presets import PRESETS, config_from_preset


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


@torch.no_grad()
def evaluate(model, batches, device):
    """Mean loss over fixed batches, in eval mode (no dropout); the model's mode is restored."""
    was_training = model.training
    model.eval()
    losses = []
    for x, y in batches:
        with autocast(device):
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.item())
    model.train(was_training)
    return sum(losses) / len(losses)


def write_json(obj, path):
    """JSON to a temporary file, then rename: readers never see half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def train(
    model,
    train_data,
    eval_data,
    *,
    max_iters,
    batch_size=12,
    lr=1e-3,
    min_lr=None,
    warmup_iters=100,
    weight_decay=0.1,
    grad_clip=1.0,
    eval_interval=250,
    eval_iters=20,
    device="cpu",
    seed=1337,
    optimizer=None,
    start_step=0,
    history=None,
    elapsed_offset=0.0,
    out_dir=None,
    corpus_name=None,
    progress=True,
    extra_loss=None,
    after_step=None,
):
    """Train model on random windows of train_data; return what happened.

    eval_data: {name: 1-D token tensor}; each evaluation records `{name}_loss` for each, on
        eval_iters fixed batches (the CLI passes {"train": ..., "val": ...}).
    optimizer: None builds AdamW over the trainable parameters (configure_optimizer); pass one
        to choose parameter groups yourself (LoRA+ does). Its groups' "lr" is scheduled; a group
        with "lr_ratio" gets that multiple of the schedule.
    out_dir: if given, ckpt.pt and history.json are written there at every evaluation.
    extra_loss: optional fn(model) -> scalar tensor added to the loss before backward (a
        regulariser, e.g. AdaLoRA's); the recorded losses are the model's alone.
    after_step: optional fn(step) called after each optimizer step, while that step's gradients
        are still in .grad (e.g. AdaLoRA's rank allocator).
    Batches are drawn from a generator seeded by (seed, step), so a resumed run sees exactly the
    batches the uninterrupted run would have seen.

    Returns {"history": [...], "step_losses": [...], "step_times": [...], "optimizer": ...}.
    """
    min_lr = lr / 10 if min_lr is None else min_lr
    block_size = model.config.block_size
    model.to(device)
    model.train()
    if optimizer is None:
        optimizer = configure_optimizer(model, lr, weight_decay)
    eval_batches = {name: fixed_batches(data, eval_iters, batch_size, block_size) for name, data in eval_data.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    history = list(history or [])
    step_losses, step_times = [], []
    tokens_per_step = batch_size * block_size
    start_time = time.perf_counter()

    def record(step):
        entry = {"step": step}
        for name, batches in eval_batches.items():
            entry[f"{name}_loss"] = evaluate(model, batches, device)
        entry["lr"] = learning_rate(step, max_iters, lr, min_lr, warmup_iters)
        entry["elapsed_s"] = elapsed_offset + time.perf_counter() - start_time
        entry["tokens_seen"] = step * tokens_per_step
        history.append(entry)
        if out_dir is not None:
            os.makedirs(out_dir, exist_ok=True)
            save_checkpoint(os.path.join(out_dir, "ckpt.pt"), model, optimizer, step, corpus_name,
                            elapsed_s=entry["elapsed_s"])
            write_json(history, os.path.join(out_dir, "history.json"))
        return entry

    bar = tqdm(range(start_step, max_iters), desc="train", disable=not progress, dynamic_ncols=True)
    if start_step == 0 or not history:
        record(start_step)
    for step in bar:
        t0 = time.perf_counter()
        step_lr = learning_rate(step, max_iters, lr, min_lr, warmup_iters)
        for group in optimizer.param_groups:
            group["lr"] = step_lr * group.get("lr_ratio", 1.0)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        x, y = get_batch(train_data, batch_size, block_size, generator=g, device=device)  # (B, T) each
        with autocast(device):
            _, loss = model(x, y)
        objective = loss if extra_loss is None else loss + extra_loss(model)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
        optimizer.step()
        if after_step is not None:
            after_step(step)
        loss_value = loss.item()  # .item() waits for the device, so the step time below is real
        step_times.append(time.perf_counter() - t0)
        step_losses.append(loss_value)
        bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tokens_per_step / step_times[-1]:.0f}", refresh=False)
        done = step + 1
        if done % eval_interval == 0 or done == max_iters:
            entry = record(done)
            bar.write(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items()))
    return {"history": history, "step_losses": step_losses, "step_times": step_times, "optimizer": optimizer}


def main(argv=None):
    p = argparse.ArgumentParser(description="Train the GPT on a byte-level corpus.")
    p.add_argument("--corpus", default="python-code", help="python-code, python-docs, shakespeare, or a text file path")
    p.add_argument("--preset", default="tiny", help=f"model size: {', '.join(PRESETS)}")
    p.add_argument("--max-iters", type=int, default=3000)
    p.add_argument("--out", default="runs/base", help="folder for ckpt.pt and history.json")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt up to --max-iters")
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=None, help="end of the cosine decay (default lr/10)")
    p.add_argument("--warmup-iters", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--eval-iters", type=int, default=20)
    p.add_argument("--device", default="auto", help=f"one of {list(DEVICE_CHOICES)}")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--n-layer", type=int)
    p.add_argument("--n-head", type=int)
    p.add_argument("--n-embd", type=int)
    p.add_argument("--block-size", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    ckpt_path = os.path.join(args.out, "ckpt.pt")
    history, start_step, elapsed = [], 0, 0.0
    if args.resume:
        checkpoint = load_checkpoint(ckpt_path)
        config = GPTConfig(**checkpoint["config"])
        corpus_name = checkpoint["corpus"] or args.corpus
        start_step, elapsed = checkpoint["step"], checkpoint.get("elapsed_s", 0.0)
        history_path = os.path.join(args.out, "history.json")
        if os.path.exists(history_path):
            with open(history_path) as f:
                history = [h for h in json.load(f) if h["step"] <= start_step]
    else:
        config = config_from_preset(args.preset, n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                                    block_size=args.block_size, dropout=args.dropout)
        corpus_name = args.corpus
    corpus = load_corpus(corpus_name, config.block_size)
    torch.manual_seed(args.seed)
    model = GPT(config).to(device)
    optimizer = configure_optimizer(model, args.lr, args.weight_decay)
    if args.resume:
        model.load_state_dict(checkpoint["model"])
        if checkpoint.get("optimizer"):
            optimizer.load_state_dict(checkpoint["optimizer"])
        print(f"resuming {ckpt_path} at step {start_step}")
    print(f"{model.num_parameters():,} parameters | corpus {corpus_name}: {len(corpus.train):,} train bytes, "
          f"{len(corpus.val):,} val bytes | device {device}")
    result = train(
        model, corpus.train, {"train": corpus.train, "val": corpus.val},
        max_iters=args.max_iters, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
        warmup_iters=args.warmup_iters, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        eval_interval=args.eval_interval, eval_iters=args.eval_iters, device=device, seed=args.seed,
        optimizer=optimizer, start_step=start_step, history=history, elapsed_offset=elapsed,
        out_dir=args.out, corpus_name=corpus_name, progress=not args.no_progress,
    )
    last = result["history"][-1]
    times = sorted(result["step_times"]) or [float("nan")]
    median = times[len(times) // 2]
    print(f"done: step {last['step']}, train loss {last['train_loss']:.4f}, val loss {last['val_loss']:.4f} "
          f"nats/byte, {last['elapsed_s']:.0f} s, {args.batch_size * config.block_size / median:,.0f} tokens/s "
          f"(median step) -> {ckpt_path}")


if __name__ == "__main__":
    main()
