"""The variants of one model whose training costs are measured side by side (experiments/scale.py,
experiments/bench/peak_memory.py, experiments/bench/lora.py):
    full      full fine-tuning
    lora      LoRA r=8 on q, k, v, o, up and down of every block
    lora-qv   LoRA r=4 on q_proj and v_proj: the LoRA paper's GPT-3 setting
    floor     every weight frozen, no adapter, only the LayerNorms train: the least any adapter
              method can cost (backward still flows through every block, as it must for LoRA)
    qlora     lora on a base stored in 4-bit NF4, when minilora.apply_lora accepts quantize=
"""
import dataclasses

import torch.nn as nn

import minilora
from experiments.lib.common import ALL_BLOCK_LINEARS, DEFAULT_LR
from nanogpt.train import configure_optimizer

VARIANTS = {  # name -> what the cost model calls it: method, rank, targets
    "full": dict(method="full", r=None, targets=None),
    "lora": dict(method="lora", r=8, targets=ALL_BLOCK_LINEARS),
    "lora-qv": dict(method="lora", r=4, targets=["q_proj", "v_proj"]),
    "floor": dict(method="floor", r=None, targets=None),
    "qlora": dict(method="qlora", r=8, targets=ALL_BLOCK_LINEARS),
}
ALPHA = 16.0


def make_floor(model):
    """The floor, in place: every weight frozen, no adapter, only the LayerNorm parameters train."""
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.requires_grad_(True)
    return model


def qlora_available():
    """Does this minilora's LoRAConfig have a quantize field (QLoRA)? Checked once, at startup."""
    return "quantize" in {field.name for field in dataclasses.fields(minilora.LoRAConfig)}


def make_variant(model, name):
    """Turn model into variant `name`, in place, and return it."""
    spec = VARIANTS[name]
    if spec["method"] == "full":
        return model.requires_grad_(True)
    if spec["method"] == "floor":
        return make_floor(model)
    quantize = {"quantize": "nf4"} if spec["method"] == "qlora" else {}
    return minilora.apply_lora(model, spec["targets"], r=spec["r"], alpha=ALPHA, **quantize)


def make_optimizer(model, name):
    """AdamW over the trainable parameters at the method's default rate (the rate changes no cost)."""
    lr = DEFAULT_LR["full"] if name == "full" else DEFAULT_LR["lora"]
    return configure_optimizer(model, lr, weight_decay=0.0)
