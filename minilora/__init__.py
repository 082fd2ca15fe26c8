"""minilora: LoRA from scratch, in plain PyTorch.

    from minilora import LoRAConfig, apply_lora, count_parameters, merge_lora, save_adapter
    config = LoRAConfig(targets=["q_proj", "v_proj"], r=8, alpha=16)   # every setting, validated once
    apply_lora(model, config)                                 # in place; freezes everything else
    # or, the same in one line: apply_lora(model, ["q_proj", "v_proj"], r=8, alpha=16)
    ...train as usual...
    save_adapter(model, "adapter.pt")                         # a few KB: only A, B and the config
    merge_lora(model)                                         # deployment: zero added latency

Settings:   LoRAConfig, AdaLoRAConfig (config.py); what trains: set_trainable (trainable.py)
Layers:     LoRALinear (layer.py), LoRAEmbedding (embedding.py), the fast path (fast_path.py)
Model ops:  apply_lora (inject.py); merge/unmerge/unload/disable/count/summary (model_ops.py)
Files:      save_adapter, load_adapter (adapter_file.py)
Adapters:   add_adapter, set_adapter, add_weighted_adapter (multi_adapter.py)
Serving:    mixed_adapters: one batch, each row its own adapter (mixed_batch.py);
            AdapterStore: a folder of adapter files, at most N loaded, LRU (adapter_store.py)
Variants:   rsLoRA (adapter.py), DoRA (dora.py), PiSSA (pissa.py), LoRA+ (loraplus.py)
QLoRA:      apply_lora(..., quantize="nf4"); quantize_nf4/fp4/int4 (quantize.py); Linear4bit, QLoRALinear (qlora.py)
AdaLoRA:    apply_adalora, orthogonal_regularizer (adalora.py), RankAllocator (rank_allocator.py)
"""
from minilora.adalora import AdaLoRAAdapter, AdaLoRALinear, apply_adalora, orthogonal_regularizer
from minilora.adapter import LoRAAdapter
from minilora.adapter_file import load_adapter, read_adapter_file, save_adapter
from minilora.adapter_store import AdapterStore, remove_adapter
from minilora.config import AdaLoRAConfig, LoRAConfig
from minilora.embedding import LoRAEmbedding
from minilora.fast_path import LoRALinearFunction, lora_linear
from minilora.inject import apply_lora, find_targets
from minilora.layer import LoRALinear
from minilora.lora_layer import LoRALayer
from minilora.loraplus import loraplus_param_groups
from minilora.mixed_batch import mixed_adapters
from minilora.model_ops import (
    active_adapter,
    adapter_names,
    count_parameters,
    disable_lora,
    lora_layers,
    lora_summary,
    merge_lora,
    unload_lora,
    unmerge_lora,
)
from minilora.multi_adapter import add_adapter, add_weighted_adapter, set_adapter
from minilora.qlora import Linear4bit, QLoRALinear, requantization_error
from minilora.quantize import QuantizedWeight, quantize_4bit, quantize_fp4, quantize_int4, quantize_nf4
from minilora.rank_allocator import RankAllocator, budget_schedule
from minilora.trainable import set_trainable

__all__ = [
    "LoRAConfig", "AdaLoRAConfig",
    "LoRAAdapter", "LoRAEmbedding", "LoRALayer", "LoRALinear", "LoRALinearFunction", "lora_linear",
    "apply_lora", "find_targets", "set_trainable",
    "merge_lora", "unmerge_lora", "unload_lora", "disable_lora", "count_parameters", "lora_summary",
    "lora_layers", "adapter_names", "active_adapter",
    "save_adapter", "load_adapter", "read_adapter_file",
    "add_adapter", "set_adapter", "add_weighted_adapter", "mixed_adapters", "AdapterStore", "remove_adapter",
    "loraplus_param_groups",
    "quantize_nf4", "quantize_fp4", "quantize_int4", "quantize_4bit", "QuantizedWeight",
    "Linear4bit", "QLoRALinear", "requantization_error",
    "AdaLoRAAdapter", "AdaLoRALinear", "apply_adalora", "orthogonal_regularizer", "RankAllocator", "budget_schedule",
]
