"""Sample text from a checkpoint; the same seed gives the same text.

    python -m nanogpt.sample --ckpt runs/base/ckpt.pt --prompt "def " --max-new-tokens 200 --seed 0
    python -m nanogpt.sample --ckpt runs/base/ckpt.pt --adapter runs/my-adapter/adapter.pt
    python -m nanogpt.sample --ckpt runs/base/ckpt.pt --adapter a.pt --adapter b.pt --adapter-weights 0.7,0.3
    python -m nanogpt.sample --init-from gpt2/ --prompt "The meaning of life is"   # a real GPT-2 (docs/gpt2.md)
"""
import argparse
import sys

import torch

from nanogpt.adapters import add_adapter_flags, apply_adapter_files, check_adapter_flags
from nanogpt.checkpoint import load_model
from nanogpt.flags import DEVICE_HELP, device, non_negative_int, positive_float, positive_int, run_main, seed
from nanogpt.pretrained import load_init_from
from nanogpt.tokenizer import decode, encode


def sample_text(model, prompt, max_new_tokens=200, temperature=0.8, top_k=None, seed=0, device="cpu",
                tokenizer=None):
    """prompt + max_new_tokens sampled tokens, decoded; deterministic for a given seed and device.
    tokenizer: None for byte tokens, or a real GPT-2's BPE tokenizer (nanogpt.bpe)."""
    if not prompt:
        raise ValueError("the prompt must not be empty: the model needs at least one byte to continue")
    ids = encode(prompt).long() if tokenizer is None else torch.tensor(tokenizer.encode(prompt), dtype=torch.long)
    if len(ids) > model.config.block_size:
        raise ValueError(f"the prompt is {len(ids)} {'bytes' if tokenizer is None else 'tokens'} long, longer than the "
                         f"model's context of {model.config.block_size}: shorten it")
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = ids[None, :].to(device)  # (1, T)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    return decode(out[0]) if tokenizer is None else tokenizer.decode(out[0])


def main(argv=None):
    p = argparse.ArgumentParser(description="Sample from a trained GPT checkpoint.")
    p.add_argument("--ckpt", default=None,
                   help="the model's checkpoint, from nanogpt.train, nanogpt.export or nanogpt.finetune --full "
                        "(default runs/base/ckpt.pt)")
    p.add_argument("--init-from", metavar="DIR",
                   help="instead of --ckpt: a GPT-2 in the Hugging Face layout (config.json, model.safetensors, "
                        "vocab.json, merges.txt; see docs/gpt2.md), with its BPE tokenizer")
    p.add_argument("--block-size", type=positive_int,
                   help="with --init-from: crop the context to this many positions, as the fine-tuning run that "
                        "made --adapter did with its --block-size (its adapter fits only that base)")
    p.add_argument("--prompt", default="def ", help="the text to continue (default 'def ')")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=200, help="tokens (bytes, for a byte-level model) to generate (default 200)")
    p.add_argument("--temperature", type=positive_float, default=0.8, help="> 0; lower is more predictable (default 0.8)")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample among the k likeliest tokens only (default: all)")
    p.add_argument("--seed", type=seed, default=0, help="the same seed gives the same text (default 0)")
    p.add_argument("--device", type=device, default="cpu", help=DEVICE_HELP + " (default cpu)")
    add_adapter_flags(p, "sample with (unmerged, on top of --ckpt)")
    args = p.parse_args(argv)
    check_adapter_flags(p, args)
    if not args.prompt:
        p.error("argument --prompt: must not be empty: the model needs at least one byte to continue")
    tokenizer = None
    if args.init_from and args.ckpt:
        p.error("--ckpt and --init-from both give the model: give one of them")
    if args.block_size is not None and not args.init_from:
        p.error("--block-size crops the context of a GPT-2 given with --init-from; a --ckpt model keeps its own")
    if args.init_from:
        model, tokenizer = load_init_from(args.init_from, args.block_size)
        model.to(args.device)
    else:
        model, _ = load_model(args.ckpt or "runs/base/ckpt.pt", map_location=args.device)
    if args.adapter:
        print(f"sampling with {apply_adapter_files(model, args.adapter, args.adapter_weights)}", file=sys.stderr)
    print(sample_text(model, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed, args.device,
                      tokenizer))


if __name__ == "__main__":
    run_main(main)
