"""LoRA+ (Hayou et al. 2024, arXiv:2402.12354): give B a larger learning rate than A.

With B = 0 at init and A random, A and B play asymmetric roles; the paper shows that for
wide models the update is only efficient if lr_B / lr_A is large, and recommends a ratio
of about 16. Nothing else changes: this builds optimizer parameter groups.

    opt = torch.optim.AdamW(loraplus_param_groups(model, lr=2e-4, ratio=16))
"""
import numbers


def loraplus_param_groups(model, lr, ratio=16.0, weight_decay=0.0):
    """Parameter groups for any torch optimizer, over the trainable parameters only:
        "lora_A": every lora_A, lr = lr, weight_decay
        "lora_B": every lora_B, lr = ratio * lr, weight_decay
        "other":  the rest (biases, DoRA magnitudes), lr = lr, no weight decay (only if any)"""
    for what, value in (("lr", lr), ("ratio", ratio)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"{what} must be a number > 0, got {value!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    groups = {"lora_A": [], "lora_B": [], "other": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            leaf = name.split(".")[-1]
            groups[leaf if leaf in ("lora_A", "lora_B") else "other"].append(p)
    if not groups["lora_A"] and not groups["lora_B"]:
        raise ValueError("the model has no trainable lora_A / lora_B parameters; call apply_lora first")
    param_groups = [
        dict(name="lora_A", params=groups["lora_A"], lr=lr, weight_decay=weight_decay),
        dict(name="lora_B", params=groups["lora_B"], lr=lr * ratio, weight_decay=weight_decay),
    ]
    if groups["other"]:
        param_groups.append(dict(name="other", params=groups["other"], lr=lr, weight_decay=0.0))
    return param_groups
