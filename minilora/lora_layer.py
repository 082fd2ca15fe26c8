"""What every adapted layer shares: the frozen base module, adapters by name, which adapter
is active, and merging it into the base weight.

    layer.base             the original nn.Linear / nn.Embedding, frozen (W0)
    layer.adapters         nn.ModuleDict: adapter name -> LoRAAdapter (A, B, scaling, ...)
    layer.active_adapter   the name forward uses; None = the base layer alone
    layer.merged_adapter   the name folded into base.weight, or None
    layer.lora_A/lora_B/scaling   the active adapter's, so the one-adapter case reads simply
    layer.row_adapters     None, or a mixed batch's adapters gathered per row (mixed_batch.py)

Merging is an explicit call (merge() / merge_lora), never a side effect of .train()/.eval().
Whether an adapter is merged is saved in state_dict() with the weights (get_extra_state), so a
state_dict taken after merging loads as a merged model: delta W is never added twice.
"""
import torch
import torch.nn as nn

from minilora.checks import check_adapter_name
from minilora.dora import merge_dora_, unmerge_dora_


class LoRALayer(nn.Module):
    row_adapters = None  # set by mixed_batch.mixed_adapters: forward then gives each row its own adapter

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)  # W0 (and its bias) stay frozen: only adapters train
        self.adapters = nn.ModuleDict()
        self.active_adapter = None
        self.merged_adapter = None
        self._dora_norm = None  # DoRA only: ||W0 + delta W||_row at merge time, for unmerge()

    # -- the active adapter, read like a single-adapter layer --------------------------

    def get_adapter(self, name=None):
        """The adapter called name (default: the active one); a clear error if there is none."""
        name = self.active_adapter if name is None else name
        if name is None:
            raise RuntimeError(
                f"this layer has no active adapter (its adapters: {list(self.adapters)}); "
                f"activate one with set_adapter(model, name)"
            )
        if name not in self.adapters:
            raise ValueError(f"no adapter named {name!r} on this layer; its adapters: {list(self.adapters)}")
        return self.adapters[name]

    @property
    def lora_A(self):
        return self.get_adapter().lora_A  # (r, in)

    @property
    def lora_B(self):
        return self.get_adapter().lora_B  # (out, r)

    @property
    def scaling(self):
        return self.get_adapter().scaling

    @property
    def merged(self):
        """True while an adapter is folded into base.weight (forward is then the base alone)."""
        return self.merged_adapter is not None

    def _forward_adapter(self):
        """The adapter forward must add, or None when forward is the base layer alone:
        nothing active, the active adapter is not on this layer, or it is already merged."""
        if self.merged or self.active_adapter is None or self.active_adapter not in self.adapters:
            return None
        return self.adapters[self.active_adapter]

    def _check_can_add(self, name, pissa):
        check_adapter_name(name)
        if name in self.adapters:
            raise ValueError(
                f"this layer already has an adapter named {name!r} (LoRA applied twice?); "
                f"its adapters: {list(self.adapters)}. Use another name to add a second adapter"
            )
        if self.merged:
            raise RuntimeError(f"adapter {self.merged_adapter!r} is merged; unmerge before adding adapters")
        # PiSSA rewrites W0 into its residual, which is the right base for the PiSSA adapter only.
        if pissa and len(self.adapters) > 0:
            raise ValueError(f"PiSSA changes the base weight, so it must be a layer's only adapter; "
                             f"this layer already has {list(self.adapters)}")
        if any(a.pissa for a in self.adapters.values()):
            raise ValueError("this layer's base weight holds a PiSSA residual, so it takes no other adapter")

    # -- merging ------------------------------------------------------------------------

    def delta_weight(self, name=None):
        """delta W of adapter name (default: active), in base.weight's layout."""
        raise NotImplementedError  # LoRALinear and LoRAEmbedding say how

    @torch.no_grad()
    def merge(self):
        """Fold the active adapter into the base weight: W0 <- W0 + delta W (for DoRA,
        W0 <- m * (W0 + delta W) / ||W0 + delta W||_row). Forward is then the base layer's own,
        with zero added latency. unmerge() takes it out again."""
        if self.merged:
            raise RuntimeError(f"adapter {self.merged_adapter!r} is already merged; unmerge() it first")
        adapter = self.get_adapter()
        weight = self.base.weight
        delta = self.delta_weight().to(weight.dtype)  # (out, in) for Linear
        if adapter.dora:
            self._dora_norm = merge_dora_(weight, delta, adapter.magnitude)
        else:
            weight.add_(delta)
        self.merged_adapter = self.active_adapter

    @torch.no_grad()
    def unmerge(self):
        """Take the merged adapter out of the base weight again: W0 <- W0 - delta W."""
        if not self.merged:
            raise RuntimeError("no adapter is merged into this layer; nothing to unmerge")
        adapter = self.adapters[self.merged_adapter]
        weight = self.base.weight
        delta = self.delta_weight(self.merged_adapter).to(weight.dtype)
        if adapter.dora:
            if self._dora_norm is None:
                raise RuntimeError("this DoRA layer was merged elsewhere; its pre-merge norm is lost, "
                                   "so it cannot be unmerged")
            unmerge_dora_(weight, delta, adapter.magnitude, self._dora_norm.to(weight.device))
            self._dora_norm = None
        else:
            weight.sub_(delta)
        self.merged_adapter = None

    # -- what state_dict() holds besides the tensors -------------------------------------

    def get_extra_state(self):
        """Saved by state_dict() beside the weights: which adapter is merged into base.weight
        (and, for DoRA, the norm unmerge() needs). A merged layer's base.weight holds W0 + delta W;
        without this, loading it into an unmerged layer would add delta W a second time in forward."""
        return {"merged_adapter": self.merged_adapter, "dora_norm": self._dora_norm}

    def set_extra_state(self, state):
        """Called by load_state_dict (before the weights are copied in): the layer takes the saved
        merged state, so that the loaded base.weight and the adapters mean what they meant."""
        if not isinstance(state, dict) or "merged_adapter" not in state:
            raise ValueError(f"this LoRA layer's saved state is not one minilora writes: {state!r}")
        merged = state["merged_adapter"]
        if merged is not None and merged not in self.adapters:
            raise ValueError(
                f"the state_dict has adapter {merged!r} merged into this layer's base weight, but the layer "
                f"has no adapter {merged!r} (its adapters: {list(self.adapters)}); add that adapter first "
                f"(add_adapter with the same r and alpha) so the loaded weights can be unmerged")
        norm = state.get("dora_norm")
        self.merged_adapter = merged
        self._dora_norm = None if norm is None else norm.to(self.base.weight.device)
