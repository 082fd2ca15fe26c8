"""DoRA, weight-decomposed low-rank adaptation (Liu et al. 2024, arXiv:2402.09353).

DoRA splits each output row of the adapted weight into a magnitude and a direction, and
learns them separately: the direction through LoRA, the magnitude as a vector m (out,):

    W' = m * (W0 + delta W) / ||W0 + delta W||_row        delta W = s B A
    y  = W' x + b

m starts at ||W0||_row (per output row, the norm over the input dimension, as in PEFT), so
with B = 0 the layer starts equal to the base. As the paper's Sec. 4.3 suggests, the norm
is treated as a constant in backward (detached): gradients flow to m and, through the
numerator, to A and B, and backward needs no extra memory for the norm.

Unlike plain LoRA, DoRA must form W0 + delta W (out x in) each step to take its norm.
"""
import torch

from minilora.fast_path import lora_linear


def weight_norm(weight, delta_weight):
    """||W0 + delta W|| per output row: (out, in) -> (out,)."""
    return torch.linalg.vector_norm(weight + delta_weight, dim=1)  # (out,)


def dora_linear(x, weight, bias, adapter, x_lora=None):
    """y = m * (W0 x + s B A x_lora) / ||W0 + s B A||_row + b, for x of shape (..., in)."""
    delta = adapter.scaling * (adapter.lora_B @ adapter.lora_A)  # (out, in)
    norm = weight_norm(weight, delta).detach()  # (out,): a constant in backward (Sec. 4.3)
    y = lora_linear(x, weight, None, adapter.lora_A, adapter.lora_B, adapter.scaling, x_lora)  # (..., out)
    y = y * (adapter.magnitude / norm).to(y.dtype)  # (..., out): exactly y at init (m / norm = 1)
    return y if bias is None else y + bias.to(y.dtype)


@torch.no_grad()
def init_magnitude_(adapter, weight, delta_weight):
    """m <- ||W0 + delta W||_row (delta W = 0 for a fresh adapter, the principal part for PiSSA)."""
    adapter.magnitude.copy_(weight_norm(weight, delta_weight))


@torch.no_grad()
def merge_dora_(weight, delta_weight, magnitude):
    """weight <- m * (W0 + delta W) / ||W0 + delta W||_row, in place; returns the norm (out,)
    that unmerge_dora_ needs to go back."""
    norm = weight_norm(weight, delta_weight)  # (out,)
    weight.add_(delta_weight).mul_((magnitude / norm).unsqueeze(1).to(weight.dtype))
    return norm


@torch.no_grad()
def unmerge_dora_(weight, delta_weight, magnitude, norm):
    """The inverse of merge_dora_: weight <- weight * ||.||_row / m - delta W, in place."""
    weight.mul_((norm / magnitude).unsqueeze(1).to(weight.dtype)).sub_(delta_weight)
