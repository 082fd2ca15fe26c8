"""Whole-model operations on a model that holds LoRA layers.

    lora_layers(model)       [(name, layer)] for every LoRALinear / LoRAEmbedding
    merge_lora(model)        fold each active adapter into its base weight (deployment speed)
    unmerge_lora(model)      take it out again
    unload_lora(model)       merge, then put the plain nn.Linear / nn.Embedding modules back
                             (a 4-bit base comes back in full precision: qlora.py)
    disable_lora(model)      a context manager: the base model inside, adapters back after
    count_parameters(model)  (trainable, total, percent): percent of all parameters, adapters included
    lora_summary(model)      a printable table of where adapters sit and what they add
"""
import contextlib
from typing import NamedTuple

from minilora.lora_layer import LoRALayer
from minilora.qlora import QLoRALinear
from minilora.quantize import quantized_weights


def lora_layers(model):
    """[(name, layer)] for every LoRA layer in model, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALayer)]


def _require_lora_layers(model, what):
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{what}: the model has no LoRA layers; call apply_lora(model, targets, r, alpha) first")
    return layers


def adapter_names(model):
    """Every adapter name in the model, in order of first appearance."""
    names = []
    for _, layer in lora_layers(model):
        names += [n for n in layer.adapters if n not in names]
    return names


def active_adapter(model):
    """The name of the model's active adapter, or None (no adapters, or inside disable_lora)."""
    names = {layer.active_adapter for _, layer in lora_layers(model)}
    if len(names) > 1:
        raise RuntimeError(f"the model's layers disagree on the active adapter ({sorted(map(str, names))}); "
                           f"call set_adapter(model, name)")
    return names.pop() if names else None


def merge_lora(model):
    """Fold every layer's active adapter into its base weight, in place: W0 <- W0 + delta W.
    Forward then costs exactly what the base model costs. Returns model."""
    layers = _require_lora_layers(model, "merge_lora")
    quantized = [name for name, layer in layers if isinstance(layer, QLoRALinear)]
    if quantized:
        raise RuntimeError(f"{len(quantized)} layers (e.g. {quantized[0]!r}) have a 4-bit base, which cannot absorb "
                           f"delta W without losing most of it (qlora.py); unload_lora(model) gives a "
                           f"full-precision model with the adapter merged")
    merged = [name for name, layer in layers if layer.merged]
    if merged:
        raise RuntimeError(f"the model is already merged ({len(merged)} layers, e.g. {merged[0]!r}); "
                           f"merging twice would add delta W twice. Call unmerge_lora(model) first")
    todo = [layer for _, layer in layers if layer.active_adapter in layer.adapters]
    if not todo:
        raise RuntimeError(f"no active adapter to merge (adapters: {adapter_names(model)}); call set_adapter first")
    for layer in todo:
        layer.merge()
    return model


def unmerge_lora(model):
    """Take merged adapters out of the base weights again: W0 <- W0 - delta W. Returns model."""
    layers = _require_lora_layers(model, "unmerge_lora")
    merged = [layer for _, layer in layers if layer.merged]
    if not merged:
        raise RuntimeError("nothing to unmerge: no adapter is merged into the model")
    for layer in merged:
        layer.unmerge()
    return model


def unload_lora(model):
    """Merge each active adapter and replace every LoRA layer by its base module, in place:
    the result is a plain model (nn.Linear / nn.Embedding again) for deployment. Inactive
    adapters are dropped. The base parameters stay frozen (requires_grad=False). Returns model.

    A 4-bit base (QLoRA) comes back as a full-precision nn.Linear holding dequantize(W0) + delta W:
    4 bits cannot hold delta W (qlora.py says why), and this computes what the QLoRA layer did."""
    for name, layer in lora_layers(model):
        if isinstance(layer, QLoRALinear):
            plain = layer.dequantized_linear()
        else:
            if not layer.merged and layer._forward_adapter() is not None:
                layer.merge()
            plain = layer.base
        if name == "":  # the model itself was a LoRA layer
            return plain
        model.set_submodule(name, plain)
    return model


@contextlib.contextmanager
def disable_lora(model):
    """Inside the `with`, the model computes its base function: no adapter is active and merged
    layers are unmerged. On exit (also on an exception) the active adapter is restored and the
    layers that were merged are merged again (equal to before up to float rounding).

    With PiSSA the base weight holds the residual W0 - s B A, so "base" is that residual."""
    layers = [layer for _, layer in lora_layers(model)]
    was_active = [layer.active_adapter for layer in layers]
    was_merged = [layer for layer in layers if layer.merged]
    for layer in was_merged:
        layer.unmerge()
    for layer in layers:
        layer.active_adapter = None
    try:
        yield model
    finally:
        for layer, name in zip(layers, was_active):
            layer.active_adapter = name
        for layer in was_merged:
            layer.merge()


class ParameterCount(NamedTuple):
    trainable: int
    total: int
    percent: float  # 100 * trainable / total


def count_parameters(model):
    """(trainable, total, percent) over the model's parameters, each tensor counted once:
    model.parameters() yields a tied weight (lm_head.weight is wte.weight) a single time.

    The trainable share is trainable / total, and total counts every parameter of the model as
    it is now: after apply_lora, the frozen base *and* the adapters (as PEFT's
    print_trainable_parameters counts). On the tiny GPT at r=8: 73,728 of 908,032 = 8.1%; the
    same adapters measured against the base model alone (834,304) would be 8.8%. A 4-bit W0
    (QLoRA) is a buffer, not a parameter, but its values count in the total."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params) + sum(q.numel() for q in quantized_weights(model))
    return ParameterCount(trainable, total, 100.0 * trainable / total if total else 0.0)


def lora_summary(model):
    """A table, one row per (layer, adapter): where adapters sit, their r, alpha and scaling,
    how many parameters each adds, which is active and which is merged; then the counts, with
    the trainable share as count_parameters defines it (of all parameters, adapters included)."""
    rows = [("module", "base", "adapter", "r", "alpha", "scaling", "params", "state")]
    for name, layer in lora_layers(model):
        base = layer.base
        shape = (f"{type(base).__name__}({base.in_features}->{base.out_features})" if hasattr(base, "in_features")
                 else f"Embedding({base.num_embeddings}, {base.embedding_dim})")
        for aname, adapter in layer.adapters.items():
            added = sum(p.numel() for p in adapter.parameters())
            state = "active" if aname == layer.active_adapter else ""
            if aname == layer.merged_adapter:
                state += " merged"
            variant = "+dora" if adapter.dora else "+pissa" if adapter.pissa else ""
            rank = str(adapter.r)
            if hasattr(adapter, "lora_E"):  # AdaLoRA (adalora.py): the triplets in use, of init_r
                variant, rank = "+adalora", f"{adapter.rank} of {adapter.r}"
            rows.append((name, shape, aname + variant, rank, f"{adapter.alpha:g}",
                         f"{adapter.scaling:.4g}", f"{added:,}", state.strip()))
    if len(rows) == 1:
        return "no LoRA layers in this model"
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    counts = count_parameters(model)
    lines.append(f"active adapter: {active_adapter(model)!r}   trainable parameters: "
                 f"{counts.trainable:,} of {counts.total:,} ({counts.percent:.3f}% of all, adapters included)")
    return "\n".join(lines)
