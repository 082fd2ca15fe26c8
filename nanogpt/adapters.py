"""Adapter files on the command line: one or several, loaded onto a GPT and combined by weights.

    apply_adapter_files(model, ["a.pt"])                       # the adapter as trained
    apply_adapter_files(model, ["a.pt", "b.pt"], [0.7, 0.3])   # delta W = 0.7 delta W_a + 0.3 delta W_b

nanogpt.sample and nanogpt.export use it. Each file is checked against the model (shapes, and the
fingerprint of the base it was trained on: minilora/base_fingerprint.py) before anything changes.
An adapter trained on a 4-bit base (QLoRA) gets its base quantized as in training, so the model
computes what it computed then. Several adapters (or one with a weight) are combined exactly by
minilora.add_weighted_adapter: sum_i w_i delta W_i, with plain LoRA adapters only (not DoRA,
PiSSA or AdaLoRA, whose updates do not add up linearly in that form).
"""
import argparse
import math

from minilora import add_weighted_adapter, load_adapter, set_adapter

COMBINED = "combined"


def adapter_weights(text):
    """'0.7,0.3' -> [0.7, 0.3]: an argparse type for --adapter-weights (finite numbers)."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated finite numbers like 0.7,0.3 (one per --adapter), "
                                         f"got {text!r}")
    return values


def add_adapter_flags(parser, what, required=False):
    """--adapter (repeatable) and --adapter-weights, with their help, for a command that `what`s."""
    parser.add_argument("--adapter", action="append", default=[], metavar="PATH", required=required,
                        help=f"an adapter file (adapter.pt, from nanogpt.finetune or minilora.save_adapter) to {what}; "
                             f"repeat to combine several" + ("" if required else " (default: none, the base model alone)"))
    parser.add_argument("--adapter-weights", type=adapter_weights, default=None, metavar="W1,W2",
                        help="one weight per --adapter: the update used is sum_i w_i delta W_i (default: 1/n each, "
                             "their average; a single adapter with no weight is used as trained)")


def check_adapter_flags(parser, args):
    """After parsing: --adapter-weights needs one weight per --adapter."""
    if args.adapter_weights is not None and len(args.adapter_weights) != len(args.adapter):
        parser.error(f"argument --adapter-weights: got {len(args.adapter_weights)} weights for "
                     f"{len(args.adapter)} --adapter files; give one weight per adapter")


def apply_adapter_files(model, paths, weights=None):
    """Load the adapter files onto model (a plain GPT) and make them its active adapter, in place:
    one file with no weight as trained; otherwise sum_i w_i delta W_i (weights default to 1/n
    each). Returns a one-line description of what is active."""
    if not paths:
        return "no adapter: the base model"
    if weights is not None and len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weights for {len(paths)} adapter files; give one weight per adapter")
    if len(paths) == 1 and weights is None:
        load_adapter(model, paths[0], adapter_name="adapter1", quantize_as_trained=True)
        set_adapter(model, "adapter1")
        return f"adapter {paths[0]}"
    names = [f"adapter{i + 1}" for i in range(len(paths))]
    for name, path in zip(names, paths):
        load_adapter(model, path, adapter_name=name, quantize_as_trained=True)
    weights = [1.0 / len(paths)] * len(paths) if weights is None else list(weights)
    add_weighted_adapter(model, names, weights, COMBINED)
    set_adapter(model, COMBINED)
    return "adapters " + " + ".join(f"{w:g} x {p}" for w, p in zip(weights, paths))
