"""LoRALinear: an nn.Linear with a trainable low-rank update (Hu et al. 2021, arXiv:2106.09685).

A frozen weight W0 (out, in) gets an update of rank at most r, factored as two small matrices:

    h = W0 x + b + delta W x,     delta W = (alpha / r) B A
    A (r, in)   Kaiming-uniform init (a = sqrt(5), as nn.Linear)
    B (out, r)  zeros, so delta W = 0 and the layer starts exactly equal to the base layer

The paper writes x as a column; in code x is a row of shape (..., in), so W0 x is x @ W0.T and
B A x is x @ A.T @ B.T (the shapes are the paper's: B is d x r = (out, r), A is r x k = (r, in)).

Only A and B train: r (in + out) parameters instead of in * out. The scale s = alpha / r
stops the update from growing with r, so alpha need not be retuned when r changes (it
over-corrects: with Adam, high ranks then learn slower; rsLoRA's s = alpha / sqrt(r), see
adapter.py, fixes that). Dropout, if any, acts on the adapter's input only:
h = W0 x + b + s B A dropout(x).

forward() shows the formula, `base(x) + (dropout(x) @ A.T @ B.T) * scaling`, as loralib writes it.
By default (`layer.fused = True`) it computes the same numbers through fast_path.py, with fewer
passes over memory; `layer.fused = False` runs the formula as written. Neither ever forms the
(out, in) product B A while training. For deployment, merge() folds delta W into W0,
after which forward is exactly the base layer's: no added latency. unmerge() takes it out again.

Several named adapters can sit on one layer (see multi_adapter.py); forward uses the active
one, and layer.lora_A / layer.lora_B / layer.scaling are the active adapter's.
"""
import torch.nn as nn

from minilora.adapter import LoRAAdapter
from minilora.checks import check_rank
from minilora.config import as_config
from minilora.dora import dora_linear, init_magnitude_
from minilora.fast_path import lora_linear
from minilora.lora_layer import LoRALayer
from minilora.pissa import pissa_init_
from minilora.trainable import set_trainable


class LoRALinear(LoRALayer):
    """LoRALinear(base, config) with a LoRAConfig, or LoRALinear(base, r=8, alpha=16, ...) with its
    fields as keywords. The adapter, called adapter_name, is active and trains (with the base's bias
    too when config.bias is "lora_only" or "all")."""

    def __init__(self, base, config=None, adapter_name="default", **fields):
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        super().__init__(base)
        self.add_adapter(adapter_name, as_config(config, fields))
        self.active_adapter = adapter_name
        set_trainable(self)

    @property
    def in_features(self):
        return self.base.in_features

    @property
    def out_features(self):
        return self.base.out_features

    def add_adapter(self, name, config=None, **fields):
        """Add adapter `name` with a LoRAConfig (or its fields as keywords), not activated: see
        set_adapter. PiSSA first moves W0's principal part into A, B; DoRA then sets m = ||W0 + delta W||_row."""
        config = as_config(config, fields)
        where = f"nn.Linear({self.in_features} -> {self.out_features})"
        check_rank(config.r, self.in_features, self.out_features, where)  # the shape check; config did the rest
        self._check_can_add(name, config.pissa)
        weight = self.base.weight
        adapter = LoRAAdapter(self.in_features, self.out_features, config, device=weight.device, dtype=weight.dtype)
        if config.pissa:
            pissa_init_(weight, adapter)
        if config.dora:
            init_magnitude_(adapter, weight, adapter.scaling * (adapter.lora_B @ adapter.lora_A))
        self.adapters[name] = adapter
        return adapter

    def delta_weight(self, name=None):
        """delta W = s B A, (out, in): formed only to merge, for DoRA's norm, and for inspection."""
        adapter = self.get_adapter(name)
        return adapter.scaling * (adapter.lora_B @ adapter.lora_A)  # (out, in)

    # The speed trick, switchable: True (the default) computes forward() through fast_path.py,
    # False through the formula as written. Both give the same numbers up to float rounding (the
    # fused path adds in another order); tests/test_lora_layer.py checks outputs and gradients.
    fused = True

    def forward(self, x):
        """h = W0 x + b + (alpha / r) B A dropout(x), for x of shape (..., in)."""
        if self.row_adapters is not None:  # a mixed batch: each row its own adapter (mixed_batch.py)
            return self.row_adapters(x)
        adapter = self._forward_adapter()
        if adapter is None:
            return self.base(x)  # nothing active, or merged: the base layer itself
        if adapter.dora:
            return dora_linear(x, self.base.weight, self.base.bias, adapter, self._dropped(x, adapter))
        if not self.fused:
            # LoRA as the paper writes it, in row-vector form (x is (..., in), A (r, in), B (out, r)):
            return self.base(x) + (adapter.dropout(x) @ adapter.lora_A.T @ adapter.lora_B.T) * adapter.scaling
        # How we made it fast (fast_path.py): the same formula as one autograd Function, scaled in
        # the rank-r space and without a full-size elementwise pass; no more memory.
        return lora_linear(x, self.base.weight, self.base.bias, adapter.lora_A, adapter.lora_B,
                           adapter.scaling, self._dropped(x, adapter))

    def _dropped(self, x, adapter):
        """dropout(x) for the fused paths, or None when dropout is off and the adapter sees x itself."""
        return adapter.dropout(x) if adapter.dropout.p > 0 and self.training else None

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"active_adapter={self.active_adapter!r}, merged={self.merged}")
