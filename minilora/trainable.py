"""Which parameters train: the active adapter's, and the biases its config names.

    set_trainable(model)   freeze everything, then unfreeze the active adapter's A, B (and DoRA m)
                           and, by the active adapter's config.bias (train_active_adapter):
                               "none"       no bias
                               "lora_only"  the biases of the layers that hold the active adapter
                               "all"        every bias in the model

The active adapter decides, always: apply_lora, add_adapter, set_adapter and a LoRA layer built on
its own all end here, so adding an inactive adapter never changes what trains, and switching
adapters switches the bias setting with them. set_adapter only switches adapters and biases
(train_active_adapter); apply_lora and add_adapter freeze everything else first (set_trainable).
"""
from minilora.lora_layer import LoRALayer


def set_trainable(model):
    """Freeze every parameter of model (a model or a single LoRA layer), then train the active
    adapter's and the biases its config.bias names (train_active_adapter). Returns model."""
    model.requires_grad_(False)
    return train_active_adapter(model)


def train_active_adapter(model):
    """Of the adapters, only the active one trains; of the biases, exactly those the active adapter's
    config.bias names. Other parameters keep their setting (so set_adapter, which calls this, leaves
    a module you unfroze yourself trainable). Returns model."""
    layers = [m for m in model.modules() if isinstance(m, LoRALayer)]
    active = {layer.active_adapter for layer in layers}
    if len(active) > 1:
        raise RuntimeError(f"the model's layers disagree on the active adapter ({sorted(map(str, active))}); "
                           f"call set_adapter(model, name)")
    biases, all_biases = set(), False  # the biases that train: their ids
    for layer in layers:
        for name, adapter in layer.adapters.items():
            adapter.requires_grad_(name == layer.active_adapter)
        if layer.active_adapter not in layer.adapters:
            continue  # this layer computes its base function
        bias = layer.adapters[layer.active_adapter].config.bias
        base_bias = getattr(layer.base, "bias", None)  # nn.Embedding has no bias
        if bias in ("lora_only", "all") and base_bias is not None:
            biases.add(id(base_bias))
        all_biases = all_biases or bias == "all"
    for name, p in model.named_parameters():
        if name.split(".")[-1] == "bias":
            p.requires_grad_(all_biases or id(p) in biases)
    return model
