"""QLoRA (Dettmers et al. 2023, arXiv:2305.14314): LoRA on a frozen base stored in 4 bits.

    h = dequantize(W0_4bit) x + b + s B A x             s = alpha / r, as in LoRALinear

    Linear4bit    the frozen base: an nn.Linear whose weight is a QuantizedWeight (quantize.py)
    QLoRALinear   a LoRALinear on a Linear4bit: A and B in full precision, trainable

apply_lora(model, targets, r, alpha, quantize="nf4") builds them (inject.py); "fp4" and "int4"
store the base in the other 4-bit data types, for comparison.

Memory. W0 is held as 4-bit codes plus block constants: about 4.127 bits per value instead of
32 (quantize.py). Forward dequantizes W0 into the compute dtype just in time for its product
and lets it go. Backward needs W0 again, for the input's gradient dL/dx = g W0 + s (g B) A,
and dequantizes it a second time instead of keeping forward's copy: keeping it would hold a
full-precision W0 for every layer from forward to backward, which is exactly the memory QLoRA
exists to save. The price is a second dequantization per layer per step (bench_lora measures
it). The fast path (fast_path.py) does both, with the same products as for LoRA.

Gradients go to A and B (and to the input, so that backward reaches earlier layers): W0 is a
buffer, not a parameter, so nothing can train it by accident.

Merging. A full-precision weight can absorb delta W = s B A exactly (merge()); a 4-bit one
cannot. Merging into 4 bits would mean requantizing W0_hat + delta W, where W0_hat already sits
exactly on a level of its block: every entry of delta W smaller than half the gap to the next
level (0.04 to 0.14 of the block's absmax for NF4) rounds back to where it was, and the larger
ones jump a whole level. The smaller the update next to those gaps, the more of it is lost;
requantization_error() measures how much, and experiments/qlora.py prints it, with the loss of
the merged model, for trained adapters.
So merge() refuses, and unload_lora(model) gives a plain full-precision nn.Linear holding
dequantize(W0_4bit) + delta W, which computes exactly what the QLoRA layer computed.

Not combined with quantization: DoRA (it needs ||W0 + delta W|| of the full-precision weight
every step, and its merge scales W0) and PiSSA (it rewrites W0 into a residual, which would
then be quantized: a method of its own, QPiSSA). apply_lora refuses both with quantize.
"""
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import skip_init

from minilora.config import as_config, check_not_dora_pissa
from minilora.layer import LoRALinear
from minilora.lora_layer import LoRALayer
from minilora.quantize import QuantizedWeight, unpack_4bit
from minilora.trainable import set_trainable


class Linear4bit(nn.Module):
    """A frozen nn.Linear with its weight in 4 bits: y = x dequantize(W0)^T + b.

    weight is a QuantizedWeight (not a parameter); bias is the original layer's, in full
    precision. Build one from an nn.Linear: Linear4bit(linear, "nf4")."""

    def __init__(self, linear, quant_type="nf4", block_size=64, double_quant=True):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Linear4bit quantizes an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = QuantizedWeight(linear.weight, quant_type, block_size, double_quant)  # (out, in) in 4 bits
        self.bias = linear.bias  # (out,) or None: the same parameter, frozen by the LoRA layer

    @property
    def quant_type(self):
        return self.weight.quant_type

    def forward(self, x):
        return F.linear(x, self.weight.dequantize(x.dtype), self.bias)  # (..., out)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class QLoRALinear(LoRALinear):
    """LoRALinear on a Linear4bit base. Forward is LoRALinear's: the fast path receives the 4-bit
    weight and dequantizes it (fast_path.py); with `fused = False`, the formula as written runs
    on Linear4bit's forward (which keeps the dequantized W0 for backward: a reference, for tests).

    base: a Linear4bit, or an nn.Linear, quantized here as config.quantize, quant_block_size and
    double_quant say (config.quantize=None here means "nf4": a QLoRALinear's base is always 4-bit).
    config: a LoRAConfig, or its fields as keywords (QLoRALinear(linear, r=8, alpha=16))."""

    def __init__(self, base, config=None, adapter_name="default", **fields):
        config = as_config(config, fields)
        if config.quantize is None:
            config = dataclasses.replace(config, quantize="nf4")
        if isinstance(base, nn.Linear):
            base = Linear4bit(base, config.quantize, config.quant_block_size, config.double_quant)
        if not isinstance(base, Linear4bit):
            raise TypeError(f"QLoRALinear wraps an nn.Linear or a Linear4bit, got {type(base).__name__}")
        LoRALayer.__init__(self, base)  # not LoRALinear's __init__, which accepts an nn.Linear only
        self.add_adapter(adapter_name, config)
        self.active_adapter = adapter_name
        set_trainable(self)

    def add_adapter(self, name, config=None, **fields):
        """Add adapter `name` (not activated); A and B in the base's original dtype."""
        config = as_config(config, fields)
        check_not_dora_pissa(config.dora, config.pissa, self.base.quant_type)
        return super().add_adapter(name, config)

    def merge(self):
        raise RuntimeError(
            f"cannot merge into a {self.base.quant_type!r} base: requantizing W0 + delta W would round most "
            f"of delta W away (qlora.py says why; requantization_error(layer) measures it). "
            f"unload_lora(model) gives a full-precision model holding dequantize(W0) + delta W")

    @torch.no_grad()
    def dequantized_linear(self):
        """A plain, frozen nn.Linear holding dequantize(W0) + delta W of the active adapter (W0's
        dequantized values alone if no adapter is active), in W0's original dtype, sharing the bias.
        It computes what this layer computes, in full precision: what unload_lora puts back."""
        weight = self.base.weight.dequantize()  # (out, in)
        if self._forward_adapter() is not None:
            weight += self.delta_weight().to(weight.dtype)
        linear = skip_init(nn.Linear, self.in_features, self.out_features, bias=False, device=weight.device,
                           dtype=weight.dtype)  # skip_init: no random init (and no draw from the RNG)
        linear.weight = nn.Parameter(weight, requires_grad=False)
        linear.bias = self.base.bias
        return linear

    def extra_repr(self):
        return f"{self.base.quant_type}, " + super().extra_repr()


def check_quantize_target(name, module, config):
    """With config.quantize, a target must be an nn.Linear (quantized now) or a QLoRALinear already
    in that data type (it gets another adapter); without, anything LoRA wraps will do (an existing
    QLoRALinear keeps its 4-bit base, and takes no DoRA or PiSSA adapter)."""
    quantize = config.quantize
    if isinstance(module, QLoRALinear) and (config.dora or config.pissa):
        try:
            check_not_dora_pissa(config.dora, config.pissa, module.base.quant_type)
        except ValueError as e:
            raise ValueError(f"{name!r}: {e}") from None
    if quantize is None:
        return
    if isinstance(module, QLoRALinear):
        if module.base.quant_type != quantize:
            raise ValueError(f"{name!r} already has a {module.base.quant_type!r} base; quantize={quantize!r} "
                             f"cannot change it (use quantize={module.base.quant_type!r} or None)")
        return
    if isinstance(module, LoRALayer):
        raise ValueError(f"{name!r} already holds adapters on a full-precision base; quantize={quantize!r} "
                         f"applies to plain nn.Linear layers: quantize before adding adapters")
    if not isinstance(module, nn.Linear):
        raise ValueError(f"quantize={quantize!r} applies to nn.Linear layers only; {name!r} is a "
                         f"{type(module).__name__}: leave it out of the targets, or use quantize=None")


@torch.no_grad()
def requantization_error(layer):
    """What merging the active adapter back into 4 bits would keep of it, for one QLoRALinear.

    W0_hat = dequantize(W0_4bit), delta W = s B A, merged = dequantize(quantize(W0_hat + delta W))
    with the layer's data type, block size and double quantization. Returns floats:
        lost      ||merged - (W0_hat + delta W)||_F / ||delta W||_F: the error the requantization
                  makes, as a share of the adapter (0: delta W kept exactly)
        kept      <merged - W0_hat, delta W> / ||delta W||_F^2: the share of delta W the merged
                  weight still carries along delta W's own direction (1: all of it)
        unchanged the share of W0's entries whose 4-bit code did not move at all
    """
    quantized = layer.base.weight
    w0_hat = quantized.dequantize(torch.float32)  # (out, in)
    delta = layer.delta_weight().float()  # (out, in)
    if not delta.any():
        raise ValueError("the active adapter's delta W is zero (B = 0: not trained yet?), so there is "
                         "nothing a merge could lose")
    requantized = QuantizedWeight(w0_hat + delta, quantized.quant_type, quantized.block_size,
                                  quantized.double_quant)
    merged = requantized.dequantize(torch.float32)
    delta_sq = delta.pow(2).sum()
    return {
        "lost": ((merged - w0_hat - delta).norm() / delta_sq.sqrt()).item(),
        "kept": (((merged - w0_hat) * delta).sum() / delta_sq).item(),
        "unchanged": (unpack_4bit(requantized.codes) == unpack_4bit(quantized.codes))[: quantized.numel()]
        .float().mean().item(),
    }


@torch.no_grad()
def merge_into_4bit_(layer):
    """Replace a QLoRALinear's base by quantize(dequantize(W0_4bit) + delta W) and deactivate its
    adapter, in place: the model a merge into 4 bits would give, to measure what it loses
    (experiments/qlora.py). Returns the layer."""
    quantized = layer.base.weight
    merged = quantized.dequantize(torch.float32) + layer.delta_weight().float()
    layer.base.weight = QuantizedWeight(merged.to(quantized.dtype), quantized.quant_type, quantized.block_size,
                                        quantized.double_quant)
    layer.active_adapter = None
    return layer
