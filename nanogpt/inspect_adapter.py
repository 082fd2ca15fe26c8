"""What is in an adapter file, and which base model it fits.

    python -m nanogpt.inspect_adapter runs/my-adapter/adapter.pt
    python -m nanogpt.inspect_adapter runs/my-adapter/adapter.pt --base runs/base/ckpt.pt
    python -m nanogpt.inspect_adapter runs/my-adapter/adapter.pt --json

Prints the adapter's config (kind, r, alpha, scaling, dropout, biases, base storage), its target
layers with their shapes and ranks, the parameter count, the file's size, and the base it was
trained on (its id and config, from the fingerprint save_adapter stores: minilora/base_fingerprint.py).
With --base CKPT it loads the adapter onto that checkpoint's model, which checks everything a
load checks (targets, shapes, the base's weights), and says whether it fits and, if not, why
(exit code 1 when it does not).
"""
import argparse
import copy
import json
import os
import re
import sys

from minilora import load_adapter, read_adapter_file
from minilora.base_fingerprint import short_id
from nanogpt.checkpoint import load_model
from nanogpt.flags import run_main


def kind(obj):
    config = obj["config"]
    if obj["kind"] == "adalora":
        return f"AdaLoRA (init_r {config['init_r']}, target_r {config['target_r']})"
    variants = [name for key, name in (("rslora", "rsLoRA"), ("dora", "DoRA"), ("pissa", "PiSSA")) if config.get(key)]
    return "LoRA" + (" + " + " + ".join(variants) if variants else "")


def layer_rows(obj):
    """[(layer, A shape, B shape, rank, parameters)] for each target, in file order."""
    rows = []
    for target in obj["config"]["targets"]:
        parts = {k.rsplit(".", 1)[1]: t for k, t in obj["tensors"].items() if k.rsplit(".", 1)[0] == target}
        rank = obj["ranks"][target] if obj["kind"] == "adalora" else obj["config"]["r"]
        rows.append((target, tuple(parts["lora_A"].shape), tuple(parts["lora_B"].shape), rank,
                     sum(t.numel() for t in parts.values())))
    return rows


def summarize(path):
    """The adapter file at path as a dict of plain values (what --json prints)."""
    obj = read_adapter_file(path)
    config, tensors, biases = obj["config"], obj["tensors"], obj["biases"]
    rows = layer_rows(obj)
    r = config["init_r"] if obj["kind"] == "adalora" else config["r"]
    scaling = config["alpha"] / (r ** 0.5 if config["rslora"] else r)
    base = obj["base"]
    storage = {k: config[k] for k in ("quantize", "quant_block_size", "double_quant")} if config["quantize"] else None
    return {
        "file": path, "bytes": os.path.getsize(path), "adapter_name": obj["adapter_name"], "kind": kind(obj),
        "r": r, "alpha": config["alpha"], "scaling": scaling, "dropout": config["dropout"],
        "bias": config["bias"], "base_storage": storage or "full precision",
        "parameters": sum(t.numel() for t in tensors.values()) + sum(b.numel() for b in biases.values()),
        "trained_biases": sorted(biases),
        "targets": [{"layer": n, "lora_A": a, "lora_B": b, "rank": r, "parameters": p} for n, a, b, r, p in rows],
        "base": None if not base else {"id": short_id(base), "config": base.get("config"),
                                       "tensors_recorded": len(base.get("tensors", {}))},
    }


def fit(path, ckpt):
    """(True, "") if the adapter loads onto the checkpoint's model, else (False, the reasons)."""
    model, _ = load_model(ckpt)
    try:
        load_adapter(copy.deepcopy(model), path)
    except (ValueError, RuntimeError) as e:
        return False, str(e)
    return True, ""


def target_pattern(targets):
    """['blocks.0.attn.q_proj', 'blocks.1.attn.q_proj', ...] -> 'attn.q_proj in blocks 0-1', shortly."""
    groups = {}
    for t in targets:
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", t)
        key, block = (m.group(2), int(m.group(1))) if m else (t, None)
        groups.setdefault(key, []).append(block)
    parts = []
    for key, blocks in groups.items():
        blocks = [b for b in blocks if b is not None]
        if not blocks:
            parts.append(key)
        else:
            parts.append(f"{key} (block {blocks[0]})" if len(blocks) == 1 else
                         f"{key} (blocks {min(blocks)}-{max(blocks)})")
    return ", ".join(parts)


def storage(quantize):
    """'full precision', or '4-bit nf4, blocks of 64, double quantization' for a QLoRA base."""
    if not isinstance(quantize, dict):
        return "full precision"
    return (f"4-bit {quantize['quantize']}, blocks of {quantize['quant_block_size']}"
            + (", double quantization" if quantize["double_quant"] else "") + " (QLoRA)")


def report(info):
    lines = [f"adapter file  {info['file']}  ({info['bytes'] / 2**10:,.1f} KiB)",
             f"adapter       {info['adapter_name']!r}: {info['kind']}, r {info['r']}, alpha {info['alpha']:g}, "
             f"scaling {info['scaling']:.4g}, dropout {info['dropout']:g}, biases trained: {info['bias']}",
             f"base storage  {storage(info['base_storage'])}",
             f"parameters    {info['parameters']:,} in {len(info['targets'])} layers"
             + (f" and {len(info['trained_biases'])} biases" if info["trained_biases"] else ""),
             f"targets       {target_pattern([t['layer'] for t in info['targets']])}"]
    base = info["base"]
    if base is None:
        lines.append("base          not recorded (a file written before adapters recorded their base)")
    else:
        config = ", ".join(f"{k} {v}" for k, v in (base["config"] or {}).items())
        lines.append(f"base          id {base['id']} ({base['tensors_recorded']} tensors recorded)"
                     + (f"; config: {config}" if config else ""))
    lines.append("")
    width = max(len(t["layer"]) for t in info["targets"])
    lines.append(f"  {'layer':<{width}}  {'lora_A':>12}  {'lora_B':>12}  {'rank':>4}  {'parameters':>10}")
    for t in info["targets"]:
        lines.append(f"  {t['layer']:<{width}}  {str(t['lora_A']):>12}  {str(t['lora_B']):>12}  {t['rank']:>4}  "
                     f"{t['parameters']:>10,}")
    return "\n".join(lines)


def make_parser():
    p = argparse.ArgumentParser(description="Show what an adapter file holds and which base model it fits.")
    p.add_argument("adapter", help="the adapter file (adapter.pt from nanogpt.finetune or minilora.save_adapter)")
    p.add_argument("--base", metavar="CKPT", default=None,
                   help="a base checkpoint (e.g. runs/base/ckpt.pt): load the adapter onto it and say whether "
                        "it fits (targets, shapes, and the base's weights, by the fingerprint in the file)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of text")
    return p


def main(argv=None):
    p = make_parser()
    args = p.parse_args(argv)
    info = summarize(args.adapter)
    if args.base is not None:
        fits, why = fit(args.adapter, args.base)
        info["fits"] = {"base": args.base, "fits": fits, "why_not": why}
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(report(info))
        if args.base is not None:
            print(f"\nfits {args.base}: " + ("yes" if fits else f"no\n{why}"))
    return info


if __name__ == "__main__":
    # With --base, the exit code says whether the adapter fits: 0 yes, 1 no.
    run_main(lambda: sys.exit(0 if main().get("fits", {}).get("fits", True) else 1))
