"""LoRAEmbedding: a token embedding with a low-rank update, the embedding version of LoRALinear.

An embedding is a linear map of one-hot token vectors, W0 (num_embeddings, dim) read by rows,
so the update is the LoRALinear one with in = num_embeddings, out = dim:

    h = W0[idx] + s (B A)^T[idx] = W0[idx] + s A^T[idx] B^T
    A (r, num_embeddings)   zeros
    B (dim, r)              normal(0, 1)

One factor must start at zero so that delta W = 0 and the layer starts exactly equal to the
base. LoRALinear zeros B; for embeddings we follow PEFT and zero A instead, with B normal.
There is no adapter dropout: the input is token ids, not features.
"""
import torch.nn as nn
import torch.nn.functional as F

from minilora.adapter import LoRAAdapter
from minilora.checks import check_rank
from minilora.config import as_config
from minilora.lora_layer import LoRALayer
from minilora.trainable import set_trainable


class LoRAEmbedding(LoRALayer):
    """LoRAEmbedding(base, config) with a LoRAConfig, or LoRAEmbedding(base, r=8, alpha=16) with its
    fields as keywords; the adapter, called adapter_name, is active and trains."""

    def __init__(self, base, config=None, adapter_name="default", **fields):
        if not isinstance(base, nn.Embedding):
            raise TypeError(f"LoRAEmbedding wraps an nn.Embedding, got {type(base).__name__}")
        if base.max_norm is not None:
            raise ValueError("LoRAEmbedding does not support nn.Embedding(max_norm=...): "
                             "it renormalises W0 in place")
        super().__init__(base)
        self.add_adapter(adapter_name, as_config(config, fields))
        self.active_adapter = adapter_name
        set_trainable(self)

    def add_adapter(self, name, config=None, **fields):
        """Add adapter `name` with a LoRAConfig (or its fields as keywords), not activated.
        dropout, dora and pissa are for nn.Linear only."""
        config = as_config(config, fields)
        num, dim = self.base.num_embeddings, self.base.embedding_dim
        if config.dropout:
            raise ValueError(f"dropout={config.dropout!r} on an nn.Embedding: adapter dropout acts on a "
                             f"layer's input, and an embedding's input is token ids; use dropout=0.0 "
                             f"or leave embeddings out of the targets")
        if config.dora or config.pissa:
            raise ValueError(f"{'DoRA' if config.dora else 'PiSSA'} is implemented for nn.Linear only, "
                             f"not nn.Embedding({num}, {dim})")
        check_rank(config.r, num, dim, f"nn.Embedding({num}, {dim})")
        self._check_can_add(name, config.pissa)
        weight = self.base.weight
        adapter = LoRAAdapter(num, dim, config, device=weight.device, dtype=weight.dtype)
        nn.init.zeros_(adapter.lora_A)  # (r, num_embeddings)
        nn.init.normal_(adapter.lora_B)  # (dim, r)
        self.adapters[name] = adapter
        return adapter

    def delta_weight(self, name=None):
        """delta W in the embedding's layout: s (B A)^T, (num_embeddings, dim)."""
        adapter = self.get_adapter(name)
        return adapter.scaling * (adapter.lora_B @ adapter.lora_A).t()  # (num_embeddings, dim)

    def forward(self, idx):
        if self.row_adapters is not None:  # a mixed batch: each row its own adapter (mixed_batch.py)
            return self.row_adapters(idx)
        h = self.base(idx)  # (..., dim)
        adapter = self._forward_adapter()
        if adapter is None:
            return h
        rows = F.embedding(idx, adapter.lora_A.t(), padding_idx=self.base.padding_idx)  # (..., r)
        return h + (rows * adapter.scaling) @ adapter.lora_B.t()  # (..., dim): scale in rank-r space

    def extra_repr(self):
        return (f"num_embeddings={self.base.num_embeddings}, embedding_dim={self.base.embedding_dim}, "
                f"active_adapter={self.active_adapter!r}, merged={self.merged}")
