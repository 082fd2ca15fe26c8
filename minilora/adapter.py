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

from minilora.checks import check_alpha, check_dropout


class LoRAAdapter(nn.Module):
    def __init__(self, in_features, out_features, r, alpha, dropout=0.0, rslora=False,
                 dora=False, pissa=False, bias="none", device=None, dtype=None):
        super().__init__()
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be a positive integer, got {r!r}")
        self.r = r
        self.alpha = check_alpha(alpha)
        self.rslora = bool(rslora)
        self.pissa = bool(pissa)
        self.bias_mode = bias  # which biases train with this adapter ("none"...); for save_adapter
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(out_features, r, device=device, dtype=dtype))
        # DoRA's magnitude m is set by the layer, which knows W0 (see dora.py); None = plain LoRA.
        self.magnitude = None
        if dora:
            self.magnitude = nn.Parameter(torch.ones(out_features, device=device, dtype=dtype))
        self.dropout = nn.Dropout(check_dropout(dropout))
        self.reset_parameters()

    def reset_parameters(self):
        """A as nn.Linear initialises its weight (Kaiming-uniform, a=sqrt(5)), B = 0, so that
        delta W = B A = 0 and the adapted layer starts exactly equal to the base layer."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    @property
    def scaling(self):
        """alpha / r (LoRA), or alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023: keeps the update's
        size stable as r grows, so large ranks actually learn faster instead of slower)."""
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    @property
    def dora(self):
        return self.magnitude is not None

    def config(self):
        """The hyperparameters as plain types (what save_adapter writes)."""
        return dict(r=self.r, alpha=self.alpha, dropout=self.dropout.p, rslora=self.rslora,
                    dora=self.dora, pissa=self.pissa, bias=self.bias_mode)

    def extra_repr(self):
        return (f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}, dropout={self.dropout.p}"
                + (", rslora" if self.rslora else "") + (", dora" if self.dora else "")
                + (", pissa" if self.pissa else ""))
