"""AdaLoRA's adapter: delta W in SVD form, P diag(lambda) Q (Zhang et al. 2023, arXiv:2303.10512, Sec. 3.1).

LoRA's update B A has one fixed rank r. AdaLoRA writes the update as a sum of r rank-1 triplets,
a left vector, a singular value and a right vector each, so that a triplet can be switched off by
zeroing its singular value and the rank can move to the matrices that need it (rank_allocator.py
decides which):

    h = W0 x + b + s P diag(lambda) Q x  =  W0 x + b + s sum_i lambda_i p_i (q_i . x)
    P       (out, r)   left singular vectors p_i    lora_B (PEFT's name)   normal(0, 0.02)
    lambda  (r,)       singular values lambda_i     lora_E                 zeros
    Q       (r, in)    right singular vectors q_i   lora_A                 normal(0, 0.02)
    s       alpha / r with r the initial rank init_r, for good: pruning leaves the scale alone

lambda = 0 makes delta W = 0, so the adapted layer starts exactly equal to the base layer. P and Q
start random, not zero: dL/dlambda_i is s p_i^T (dL/dh) (q_i . x), so with P or Q zero no lambda
could ever move (LoRA zeroes B instead, for the same "start at the base" reason). The init is the
paper's reference code's (and PEFT's): normal(0, 0.02) for P and Q.

Nothing forces P and Q to stay orthogonal, so P diag(lambda) Q is an SVD only approximately; the
orthogonality regulariser pulls it towards one, so that dropping a triplet drops one direction:

    R(P, Q) = ||P^T P - I||_F^2 + ||Q Q^T - I||_F^2      loss = task loss + gamma * sum_k R(P_k, Q_k)

The rank of delta W is the number of nonzero lambda_i (adapter.rank); save_adapter writes those
triplets only. Forward never forms the (out, in) matrix P diag(lambda) Q: diag(lambda) Q is folded
into one (r, in) matrix and the layer runs LoRA's fast path with A = diag(lambda) Q, B = P.
"""
import math
import numbers

import torch
import torch.nn as nn

from minilora.adapter import LoRAAdapter
from minilora.checks import check_adapter_name, check_rank
from minilora.config import AdaLoRAConfig, as_config, config_or_targets
from minilora.fast_path import lora_linear
from minilora.inject import _check_not_tied, find_targets
from minilora.lora_layer import LoRALayer
from minilora.model_ops import active_adapter, lora_layers
from minilora.trainable import set_trainable


class AdaLoRAAdapter(LoRAAdapter):
    """One AdaLoRA adapter: lora_B = P (out, r), lora_E = lambda (r,), lora_A = Q (r, in), with
    r = config.init_r; config.target_r is the rank this matrix gets on average once the allocator has
    pruned. config: an AdaLoRAConfig (config.py)."""

    def __init__(self, in_features, out_features, config, device=None, dtype=None):
        super().__init__(in_features, out_features, config, device=device, dtype=dtype)
        self.target_r = config.target_r
        self.lora_E = nn.Parameter(torch.zeros(config.init_r, device=device, dtype=dtype))  # lambda, (r,)

    def reset_parameters(self):
        """P, Q normal(0, 0.02) and lambda = 0, as the paper's code: delta W = 0 at the start."""
        nn.init.normal_(self.lora_A, mean=0.0, std=0.02)  # Q (r, in)
        nn.init.normal_(self.lora_B, mean=0.0, std=0.02)  # P (out, r)
        if "lora_E" in self._parameters:  # LoRAAdapter.__init__ calls this before lambda exists
            nn.init.zeros_(self.lora_E)

    @property
    def rank(self):
        """The triplets in use: how many lambda_i are nonzero (the rank of delta W, generically)."""
        return int(torch.count_nonzero(self.lora_E))

    def surviving_triplets(self):
        """{"lora_A": Q[kept] (k, in), "lora_E": lambda[kept] (k,), "lora_B": P[:, kept] (out, k)}
        for the k triplets with lambda_i != 0: all that delta W is made of."""
        kept = torch.nonzero(self.lora_E).flatten()  # (k,)
        return {"lora_A": self.lora_A[kept], "lora_E": self.lora_E[kept], "lora_B": self.lora_B[:, kept]}

    @torch.no_grad()
    def load_triplets_(self, lora_A, lora_E, lora_B):
        """The inverse of surviving_triplets: k triplets into the first k slots, lambda = 0 in the
        other r - k (their P and Q stay as they are; with lambda = 0 they add nothing)."""
        k = lora_E.shape[0]
        self.lora_A[:k].copy_(lora_A)
        self.lora_B[:, :k].copy_(lora_B)
        self.lora_E.zero_()
        self.lora_E[:k].copy_(lora_E)

    def extra_repr(self):
        return (f"init_r={self.r}, target_r={self.target_r}, rank={self.rank}, alpha={self.alpha:g}, "
                f"scaling={self.scaling:g}, dropout={self.dropout.p}")


class AdaLoRALinear(LoRALayer):
    """An nn.Linear plus s P diag(lambda) Q: the LoRALayer machinery (named adapters, merging)
    with AdaLoRA adapters. It holds AdaLoRA adapters only.
    config: an AdaLoRAConfig, or its fields as keywords (AdaLoRALinear(linear, init_r=12, target_r=8))."""

    def __init__(self, base, config=None, adapter_name="default", **fields):
        if not isinstance(base, nn.Linear):
            raise TypeError(f"AdaLoRALinear wraps an nn.Linear, got {type(base).__name__}")
        super().__init__(base)
        self.add_adapter(adapter_name, as_config(config, fields, AdaLoRAConfig))
        self.active_adapter = adapter_name
        set_trainable(self)

    @property
    def in_features(self):
        return self.base.in_features

    @property
    def out_features(self):
        return self.base.out_features

    def add_adapter(self, name, config=None, **fields):
        """Add AdaLoRA adapter `name` with an AdaLoRAConfig (or its fields as keywords), not activated."""
        config = as_config(config, fields, AdaLoRAConfig)
        where = f"nn.Linear({self.in_features} -> {self.out_features})"
        check_rank(config.init_r, self.in_features, self.out_features, where, what="init_r")
        LoRALayer._check_can_add(self, name, pissa=False)
        weight = self.base.weight
        adapter = AdaLoRAAdapter(self.in_features, self.out_features, config, device=weight.device,
                                 dtype=weight.dtype)
        self.adapters[name] = adapter
        return adapter

    def _check_can_add(self, name, pissa):
        # apply_lora asks this before adding a LoRA adapter to an existing LoRA layer.
        raise ValueError(f"this layer holds AdaLoRA adapter(s) {list(self.adapters)}: it takes no LoRA adapter "
                         f"beside them; adapt another layer, or unload_lora(model) first")

    def delta_weight(self, name=None):
        """delta W = s P diag(lambda) Q, (out, in): formed only to merge and for inspection."""
        adapter = self.get_adapter(name)
        return adapter.scaling * ((adapter.lora_B * adapter.lora_E) @ adapter.lora_A)  # (out, in)

    fused = True  # as LoRALinear.fused: True runs fast_path.py, False the formula; same numbers

    def forward(self, x):
        """h = W0 x + b + s P diag(lambda) Q dropout(x), for x of shape (..., in)."""
        if self.row_adapters is not None:  # a mixed batch: each row its own adapter (mixed_batch.py)
            return self.row_adapters(x)
        adapter = self._forward_adapter()
        if adapter is None:
            return self.base(x)  # nothing active, or merged
        if self.fused:
            x_lora = adapter.dropout(x) if adapter.dropout.p > 0 and self.training else None
            lambda_Q = adapter.lora_E.unsqueeze(1) * adapter.lora_A  # (r, in): diag(lambda) Q
            return lora_linear(x, self.base.weight, self.base.bias, lambda_Q, adapter.lora_B, adapter.scaling, x_lora)
        # The formula as written, in row-vector form: (x Q^T) (..., r), times lambda, then P^T.
        x_Q = adapter.dropout(x) @ adapter.lora_A.T  # (..., r)
        return self.base(x) + (x_Q * adapter.lora_E) @ adapter.lora_B.T * adapter.scaling

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"active_adapter={self.active_adapter!r}, merged={self.merged}")


def apply_adalora(model, config=None, *, adapter_name="default", **fields):
    """Add an AdaLoRA adapter (delta W = (alpha / init_r) P diag(lambda) Q, init_r triplets) to each
    nn.Linear that config.targets selects (as apply_lora: names, a regular expression, or
    "all-linear"), in place; then freeze everything but the active adapter's P, lambda, Q (and the
    biases its config.bias names).

        apply_adalora(model, AdaLoRAConfig(targets=["q_proj"], init_r=12, target_r=8, alpha=16))
        apply_adalora(model, ["q_proj"], init_r=12, target_r=8, alpha=16)       # the same

    target_r is the average rank per matrix the RankAllocator prunes to (rank_allocator.py): the
    total budget is target_r times the number of adapted matrices, spread by importance. Train
    with the allocator and the regulariser (orthogonal_regularizer). Returns model."""
    config = config_or_targets(config, fields, AdaLoRAConfig)
    check_adapter_name(adapter_name)
    found = find_targets(model, config.targets)
    _check_not_tied(model, found)
    for name, module in found:  # validate everything before changing anything
        if isinstance(module, LoRALayer) or not isinstance(module, nn.Linear):
            what = "already a LoRA layer" if isinstance(module, LoRALayer) else f"a {type(module).__name__}"
            raise ValueError(f"AdaLoRA adapts plain nn.Linear layers; {name!r} is {what}")
        check_rank(config.init_r, module.in_features, module.out_features, repr(name), what="init_r")
    active = active_adapter(model)
    for name, module in found:
        model.set_submodule(name, AdaLoRALinear(module, config, adapter_name))
    for _, layer in lora_layers(model):  # one active adapter across the model
        layer.active_adapter = adapter_name if active is None else active
    return set_trainable(model)


def adalora_adapters(model):
    """[(layer name, adapter)] for every layer whose active adapter is an AdaLoRA one, in module order."""
    found = [(name, layer.adapters[layer.active_adapter]) for name, layer in lora_layers(model)
             if layer.active_adapter in layer.adapters]
    return [(name, adapter) for name, adapter in found if isinstance(adapter, AdaLoRAAdapter)]


def orthogonal_regularizer(model, gamma):
    """gamma * sum over the model's active AdaLoRA adapters of ||P^T P - I||_F^2 + ||Q Q^T - I||_F^2
    (the paper's R(P, Q), Sec. 3.1): add it to the loss. A scalar tensor; 0 for orthonormal P, Q."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0 (the weight of the orthogonality regulariser), "
                         f"got {gamma!r}")
    adapters = adalora_adapters(model)
    if not adapters:
        raise ValueError("orthogonal_regularizer: the model has no active AdaLoRA adapter; call apply_adalora first")
    total = 0.0
    for _, adapter in adapters:
        P, Q = adapter.lora_B, adapter.lora_A  # (out, r), (r, in)
        eye = torch.eye(adapter.r, device=P.device, dtype=P.dtype)  # (r, r)
        total = total + (P.T @ P - eye).square().sum() + (Q @ Q.T - eye).square().sum()
    return gamma * total
