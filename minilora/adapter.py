"""One adapter: the trainable pair (A, B), its scaling, and its dropout.

A layer holds one LoRAAdapter per adapter name (see lora_layer.py); the math is in
LoRALinear's docstring. Here only the parameters and the hyperparameters that define them.

    lora_A   (r, in_features)    the down projection, A in the paper
    lora_B   (out_features, r)   the up projection, B in the paper
    scaling  alpha / r           (Hu et al. 2021), or alpha / sqrt(r) with rsLoRA
    magnitude (out_features,)    DoRA only: the learned per-row magnitude m (see dora.py)
"""
import math

import torch
import torch.nn as nn


class LoRAAdapter(nn.Module):
    """config: a LoRAConfig (config.py), already validated: r, alpha, dropout, rslora, dora are
    read from it as they are. It stays on the adapter (adapter.config): which biases train while
    this adapter is active (config.bias, see trainable.py) and what save_adapter writes."""

    def __init__(self, in_features, out_features, config, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.r = config.r
        self.alpha = config.alpha
        self.lora_A = nn.Parameter(torch.empty(config.r, in_features, device=device, dtype=dtype))  # (r, in)
        self.lora_B = nn.Parameter(torch.empty(out_features, config.r, device=device, dtype=dtype))  # (out, r)
        # DoRA's magnitude m is set by the layer, which knows W0 (see dora.py); None = plain LoRA.
        self.magnitude = None
        if config.dora:
            self.magnitude = nn.Parameter(torch.ones(out_features, device=device, dtype=dtype))
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self):
        """A as nn.Linear initialises its weight (Kaiming-uniform, a=sqrt(5)), B = 0, so that
        delta W = B A = 0 and the adapted layer starts exactly equal to the base layer."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    @property
    def scaling(self):
        """alpha / r (LoRA), or alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023). With alpha / r the
        update's scale falls as r grows; the rsLoRA paper argues alpha / sqrt(r) keeps learning
        stable across ranks. It does not make large ranks learn faster at a shared learning rate:
        in this project's rank sweep, at LoRA's tuned rate, rsLoRA r=64 ended worse than r=32
        (validation loss 1.582 against 1.476, experiments/REPRODUCTIONS.md): the rate needs retuning."""
        return self.alpha / (math.sqrt(self.r) if self.config.rslora else self.r)

    @property
    def rslora(self):
        return self.config.rslora

    @property
    def pissa(self):
        return self.config.pissa

    @property
    def dora(self):
        return self.magnitude is not None

    def extra_repr(self):
        return (f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}, dropout={self.dropout.p}"
                + (", rslora" if self.rslora else "") + (", dora" if self.dora else "")
                + (", pissa" if self.pissa else ""))
