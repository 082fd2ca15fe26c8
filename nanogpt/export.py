"""Fold an adapter into its base and write a plain checkpoint, which needs no adapter code to use.

    python -m nanogpt.export --base runs/base/ckpt.pt --adapter runs/my-adapter/adapter.pt --out runs/merged
    python -m nanogpt.sample --ckpt runs/merged/ckpt.pt

Every adapted layer becomes a plain nn.Linear holding W0 + delta W (minilora.unload_lora), so the
merged model runs at exactly the base model's cost. Any adapter minilora saves exports:
LoRA and rsLoRA (delta W = s B A), DoRA (m (W0 + delta W) / ||W0 + delta W||_row), PiSSA (the
residual plus its principal part), AdaLoRA (s P diag(lambda) Q), and QLoRA: its base is first
quantized as in training, and unloading gives dequantize(W0_4bit) + delta W in full precision,
which is what the QLoRA model computed. Several --adapter files merge as their weighted sum.

OUT/ckpt.pt is nanogpt's usual checkpoint (config, weights, the base's step and corpus) plus
"exported_from" (the base, the adapters, their weights). The command checks its own work: the
merged model's logits against the unmerged model's on a batch of random tokens, printed as
the largest difference (float rounding, about 1e-6 of the logits).
"""
import argparse
import os

import torch

from minilora import lora_layers, unload_lora
from nanogpt.adapters import add_adapter_flags, apply_adapter_files, check_adapter_flags
from nanogpt.checkpoint import load_model, save_checkpoint
from nanogpt.flags import run_main
from nanogpt.run_folder import check_writable_folder


@torch.no_grad()
def logits_on_random_tokens(model, seed=0, rows=4):
    config = model.config
    idx = torch.randint(0, config.vocab_size, (rows, config.block_size), generator=torch.Generator().manual_seed(seed))
    return model(idx.to(next(model.parameters()).device))[0].float()  # (rows, T, V)


def export(base, adapters, out, weights=None, overwrite=False):
    """Merge the adapter files into the checkpoint base and write out/ckpt.pt. Returns
    (path, the largest |logit| difference between the merged and the unmerged model)."""
    path = os.path.join(out, "ckpt.pt")
    if os.path.abspath(path) == os.path.abspath(base):
        raise ValueError(f"--out {out!r} would replace the base checkpoint {base!r} itself; choose another folder")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path!r} already exists; add --overwrite to replace it, or choose another --out")
    if not adapters:
        raise ValueError("give at least one --adapter to merge into the base")
    check_writable_folder(out, "--out")
    model, checkpoint = load_model(base)
    model.eval()
    what = apply_adapter_files(model, adapters, weights)
    unmerged = logits_on_random_tokens(model)
    model = unload_lora(model)
    assert not lora_layers(model)  # a plain GPT again
    difference = (logits_on_random_tokens(model) - unmerged).abs().max().item()
    exported_from = {"base": base, "adapters": list(adapters), "weights": None if weights is None else list(weights),
                     "merged": what, "max_logit_difference": difference}
    save_checkpoint(path, model, None, checkpoint.get("step", 0), checkpoint.get("corpus"), exported_from=exported_from)
    return path, difference


def make_parser():
    p = argparse.ArgumentParser(
        description="Merge adapter(s) into a base checkpoint and write a plain checkpoint (no adapter code needed).",
        epilog="Example: python -m nanogpt.export --base runs/base/ckpt.pt --adapter runs/my-adapter/adapter.pt "
               "--out runs/merged, then python -m nanogpt.sample --ckpt runs/merged/ckpt.pt")
    p.add_argument("--base", required=True, metavar="CKPT",
                   help="the base model's checkpoint the adapter was trained on (e.g. runs/base/ckpt.pt)")
    add_adapter_flags(p, "merge into the base", required=True)
    p.add_argument("--out", required=True, help="folder for the merged checkpoint, OUT/ckpt.pt")
    p.add_argument("--overwrite", action="store_true", help="replace OUT/ckpt.pt if it exists (default: refuse)")
    return p


def main(argv=None):
    p = make_parser()
    args = p.parse_args(argv)
    check_adapter_flags(p, args)
    path, difference = export(args.base, args.adapter, args.out, args.adapter_weights, args.overwrite)
    print(f"merged {', '.join(args.adapter)} into {args.base} -> {path}; largest logit difference from the "
          f"unmerged model on random tokens: {difference:.2e}")
    return path


if __name__ == "__main__":
    run_main(main)
