"""Sample text from a checkpoint; the same seed gives the same text.

    python -m nanogpt.sample --ckpt runs/base/ckpt.pt --prompt "def " --max-new-tokens 200 --seed 0
    python -m nanogpt.sample --ckpt runs/base/ckpt.pt --adapter runs/my-adapter/adapter.pt
    python -m nanogpt.sample --ckpt runs/base/ckpt.pt --adapter a.pt --adapter b.pt --adapter-weights 0.7,0.3
"""
import argparse
import sys

import torch

from nanogpt.adapters import add_adapter_flags, apply_adapter_files, check_adapter_flags
from nanogpt.checkpoint import load_model
from nanogpt.flags import DEVICE_HELP, device, non_negative_int, positive_float, positive_int, run_main, seed
from nanogpt.tokenizer import decode, encode


def sample_text(model, prompt, max_new_tokens=200, temperature=0.8, top_k=None, seed=0, device="cpu"):
    """prompt + max_new_tokens sampled bytes, decoded; deterministic for a given seed and device."""
    if not prompt:
        raise ValueError("the prompt must not be empty: the model needs at least one byte to continue")
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = encode(prompt).long()[None, :].to(device)  # (1, T)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    return decode(out[0])


def main(argv=None):
    p = argparse.ArgumentParser(description="Sample from a trained GPT checkpoint.")
    p.add_argument("--ckpt", default="runs/base/ckpt.pt",
                   help="the model's checkpoint, from nanogpt.train, nanogpt.export or nanogpt.finetune --full "
                        "(default runs/base/ckpt.pt)")
    p.add_argument("--prompt", default="def ", help="the text to continue (default 'def ')")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=200, help="bytes to generate (default 200)")
    p.add_argument("--temperature", type=positive_float, default=0.8, help="> 0; lower is more predictable (default 0.8)")
    p.add_argument("--top-k", type=positive_int, default=None, help="sample among the k likeliest bytes only (default: all)")
    p.add_argument("--seed", type=seed, default=0, help="the same seed gives the same text (default 0)")
    p.add_argument("--device", type=device, default="cpu", help=DEVICE_HELP + " (default cpu)")
    add_adapter_flags(p, "sample with (unmerged, on top of --ckpt)")
    args = p.parse_args(argv)
    check_adapter_flags(p, args)
    if not args.prompt:
        p.error("argument --prompt: must not be empty: the model needs at least one byte to continue")
    model, _ = load_model(args.ckpt, map_location=args.device)
    if args.adapter:
        print(f"sampling with {apply_adapter_files(model, args.adapter, args.adapter_weights)}", file=sys.stderr)
    print(sample_text(model, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.seed, args.device))


if __name__ == "__main__":
    run_main(main)
