"""A LoRA training step against a full fine-tuning step on GPT-2's shape and vocabulary, side by side.

    python -m experiments.bench.gpt2_step [--seq-len 256] [--batch-size 1] [--rounds 4] [--r 8] [--out DIR]

One process builds one GPT of gpt2-small's shape (12 layers, 12 heads, 768 dims) with GPT-2's
vocabulary of 50257 tokens and the tanh GELU, random weights (the cost does not depend on them), and
two copies of it: `full` (every weight trains, AdamW) and `lora` (minilora, rank r on q, k, v, o, up,
down of every block, AdamW on the adapters only). Each round times one optimizer step of each
(forward, backward, AdamW) on the same random batch, in an order that alternates between rounds,
after one warm-up round. The ratio full/lora is taken within each round (the machine's speed drifts:
other tenants) and its median reported. With a 50257-token vocabulary the output head alone is
about a third of the forward's multiply-adds, and LoRA does not make it cheaper: it still runs
forward and backward (for the gradient into the blocks), it only skips the head's weight gradient.
"""
import argparse
import copy
import os
import statistics

import torch

from experiments.lib.timing import paired_ratio, timed, train_step
from minilora import apply_lora, count_parameters
from nanogpt.flags import positive_int
from nanogpt.model import GPT, GPTConfig

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def main(argv=None):
    p = argparse.ArgumentParser(description="LoRA vs full fine-tuning step time on GPT-2's shape, vocabulary 50257.")
    p.add_argument("--seq-len", type=positive_int, default=256, help="tokens per sequence, at most 1024 (default 256)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="sequences per step (default 1)")
    p.add_argument("--rounds", type=positive_int, default=4, help="timed rounds after one warm-up round (default 4)")
    p.add_argument("--r", type=positive_int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--out", help="folder for gpt2_step.json (default: print only)")
    args = p.parse_args(argv)
    if args.seq_len > 1024:
        p.error(f"argument --seq-len: must be at most GPT-2's context of 1024, got {args.seq_len}")
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, activation="gelu_new")
    base = GPT(config)
    models = {"full": copy.deepcopy(base).train(), "lora": copy.deepcopy(base).train()}
    del base
    apply_lora(models["lora"], TARGETS, r=args.r, alpha=16.0)
    optimizers = {name: torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-4)
                  for name, m in models.items()}
    x = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len))
    y = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len))
    times = {name: [] for name in models}
    for round_ in range(args.rounds + 1):
        order = list(models) if round_ % 2 == 0 else list(reversed(models))
        last = {name: timed(train_step, models[name], optimizers[name], x, y) for name in order}
        if round_ > 0:  # round 0 warms up (allocations, AdamW state)
            for name, seconds in last.items():
                times[name].append(seconds)
        print(f"round {round_}{' (warm-up)' if round_ == 0 else ''}: " + ", ".join(f"{n} {last[n]:.2f} s" for n in order))
    ratios = [f / l for f, l in zip(times["full"], times["lora"])]  # within each round: the drift cancels
    row = {"seq_len": args.seq_len, "batch_size": args.batch_size, "r": args.r, "rounds": args.rounds,
           "full_step_s": statistics.median(times["full"]), "lora_step_s": statistics.median(times["lora"]),
           "full_over_lora": paired_ratio(times["full"], times["lora"])[0], "ratios": ratios,
           "trainable": {n: count_parameters(m)[0] for n, m in models.items()},
           "load_average_1min": os.getloadavg()[0], "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    print(f"median step: full {row['full_step_s']:.2f} s, LoRA r={args.r} {row['lora_step_s']:.2f} s; full/LoRA "
          f"{row['full_over_lora']:.2f}x (median of per-round ratios {[round(r, 2) for r in ratios]}); trainable "
          f"{row['trainable']['full']:,} vs {row['trainable']['lora']:,}; load average {row['load_average_1min']:.1f} "
          f"on {row['cpu_count']} cores, {row['threads']} threads")
    if args.out:
        from nanogpt.train import write_json

        os.makedirs(args.out, exist_ok=True)
        write_json(row, os.path.join(args.out, "gpt2_step.json"))
    return row


if __name__ == "__main__":
    main()
