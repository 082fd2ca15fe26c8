"""Several named adapters on one frozen base: add, switch, combine, without reloading the base.

    apply_lora(model, ["q_proj", "v_proj"], r=8, alpha=16)          # adapter "default", active
    add_adapter(model, "french", ["q_proj", "v_proj"], r=8, alpha=16)  # added, not active
    set_adapter(model, "french")                                       # french active (and trainable)
    add_weighted_adapter(model, ["default", "french"], [0.5, 0.5], "mix")

Switching changes only which (A, B) forward uses, so switching back gives the same outputs
bit for bit. Biases trained with bias="lora_only"/"all" belong to the base and are shared; which
of them train is the active adapter's config.bias (trainable.py), so it switches with the adapter.
"""
import torch

from minilora.checks import check_adapter_name, check_rank, check_weights
from minilora.config import LoRAConfig
from minilora.inject import apply_lora
from minilora.model_ops import _require_lora_layers, adapter_names
from minilora.trainable import train_active_adapter


def add_adapter(model, name, config=None, **fields):
    """Add another adapter called name: apply_lora(model, config, adapter_name=name), with a
    LoRAConfig or the shorthand add_adapter(model, name, targets, r=8, alpha=16). It is not
    activated: the active adapter stays active, and what trains stays as its config says, until
    set_adapter(model, name). Returns model."""
    return apply_lora(model, config, adapter_name=name, **fields)


def set_adapter(model, name):
    """Make adapter name the active one on every layer: forward uses it, and its A, B (and m)
    become the trainable ones while the other adapters freeze; of the biases, those its config.bias
    names train, no others. Other parameters keep their setting. Layers without it compute their
    base function."""
    layers = _require_lora_layers(model, "set_adapter")
    names = adapter_names(model)
    if name not in names:
        raise ValueError(f"no adapter named {name!r}; the model's adapters: {names}")
    merged = [n for n, layer in layers if layer.merged]
    if merged:
        raise RuntimeError(f"an adapter is merged into the base weights (e.g. {merged[0]!r}); "
                           f"call unmerge_lora(model) before switching adapters")
    for _, layer in layers:
        layer.active_adapter = name
    train_active_adapter(model)


@torch.no_grad()
def add_weighted_adapter(model, adapters, weights, name):
    """A new adapter `name` whose delta W is sum_i w_i delta W_i, exactly, on every layer that
    holds the given adapters. Concatenating ranks makes it exact, with no SVD truncation:

        A = cat_i(A_i)              (sum r_i, in)
        B = cat_i(w_i s_i B_i)      (out, sum r_i)
        s = 1                       (r = alpha = sum r_i)
        => s B A = sum_i w_i s_i B_i A_i

    The new adapter is added inactive; set_adapter(model, name) to use it. Not for DoRA
    (its magnitude normalisation is not additive) nor PiSSA adapters."""
    names = adapter_names(model)
    check_adapter_name(name)
    if name in names:
        raise ValueError(f"an adapter named {name!r} already exists; the model's adapters: {names}")
    if not isinstance(adapters, (list, tuple)) or not adapters:
        raise TypeError(f"adapters must be a non-empty list of adapter names, got {adapters!r}")
    unknown = [a for a in adapters if a not in names]
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; the model's adapters: {names}")
    weights = check_weights(weights, len(adapters))
    layers = [(n, layer) for n, layer in _require_lora_layers(model, "add_weighted_adapter")
              if any(a in layer.adapters for a in adapters)]
    for n, layer in layers:  # validate everything before adding anything
        missing = [a for a in adapters if a not in layer.adapters]
        if missing:
            raise ValueError(f"{n!r} lacks adapter(s) {missing}: combined adapters must sit on the same layers")
        for a in adapters:
            if hasattr(layer.adapters[a], "lora_E"):
                raise ValueError(f"adapter {a!r} is an AdaLoRA adapter (P diag(lambda) Q); combine plain LoRA adapters")
            if layer.adapters[a].dora or layer.adapters[a].pissa:
                raise ValueError(f"adapter {a!r} uses {'DoRA' if layer.adapters[a].dora else 'PiSSA'}, "
                                 f"whose delta W does not combine linearly; combine plain LoRA adapters")
        first = layer.adapters[adapters[0]]
        rank = sum(layer.adapters[a].r for a in adapters)
        check_rank(rank, first.lora_A.shape[1], first.lora_B.shape[0],
                   where=f"{n!r} (the combined rank is the sum of the adapters' ranks)")
    for _, layer in layers:
        parts = [layer.adapters[a] for a in adapters]
        rank = sum(p.r for p in parts)
        lora_A = torch.cat([p.lora_A for p in parts], dim=0)  # (sum r_i, in)
        lora_B = torch.cat([w * p.scaling * p.lora_B for w, p in zip(weights, parts)], dim=1)  # (out, sum r_i)
        combined = layer.add_adapter(name, LoRAConfig(r=rank, alpha=rank))  # scaling = alpha / r = 1
        combined.lora_A.copy_(lora_A)
        combined.lora_B.copy_(lora_B)
        combined.requires_grad_(False)  # inactive until set_adapter
    return model

