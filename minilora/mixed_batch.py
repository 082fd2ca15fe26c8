"""Mixed-adapter batches: one forward pass in which each row of the batch uses its own adapter,
as S-LoRA (Sheng et al. 2023) and Punica (Chen et al. 2023) serve many adapters over one base.

    with mixed_adapters(model, ["french", "legal", None, "french"]):   # one adapter name per row
        logits, _ = model(idx)                                          # idx (4, T)
        out = model.generate(idx, 50)                                   # generation too

Row i gets what the model computes for it alone with set_adapter(model, names[i]) (None: the
base model, no adapter). For every adapted linear layer, with x_i (T, in) row i's input:

    y_i = W0 x_i + b + s_i B_i A_i x_i

The base product W0 x is one GEMM over the whole batch, exactly as with a single adapter; only
the adapter part differs from row to row, and it stays unmerged. At each forward, each layer
gathers its rows' factors (Punica's "gather": row i takes its adapter's A and B):

    A_rows  (n_rows, r_max, in)     row i: A_i, zero-padded from r_i up to the batch's largest rank
    B_rows  (n_rows, out, r_max)    row i: B_i, zero-padded the same way
    s_rows  (n_rows, 1, 1)          row i: s_i

and adds the adapter part with two batched products, accumulated into the base output:

    y  = x W0^T + b                              (n_rows, T, out)   the base layer, all rows at once
    y += ((x A_rows^T) s_rows) B_rows^T          (n_rows, T, r_max), then onto (n_rows, T, out)

The scale multiplies the small (n_rows, T, r_max) tensor, not the full-size output (as in
fast_path.py). Rows never mix: row i of each batched product reads row i's input and row i's
factors only. The zero padding adds exact zeros, and a row whose adapter a layer does not hold
(or None) gets s = 0 and zero factors there: that layer is its base layer, as with set_adapter.

A batch whose rows all use one adapter needs no gathering: mixed_adapters then activates that
adapter on every layer, so forward takes the ordinary (fast) path, and restores the previous
active adapter on exit.

Variants: AdaLoRA's factors are A = diag(lambda) Q, B = P (adalora.py). DoRA scales each row by
its own m / ||W0 + delta W||_row and adds the bias after (dora.py); a row without a DoRA adapter
is scaled by 1. An embedding (LoRAEmbedding) gathers, for each token, the column of its row's A
that the token id picks, as its own forward does.

How the names reach every layer: mixed_adapters sets each LoRA layer's `row_adapters` (None
otherwise) to a RowAdapters for that layer, and the layer's forward hands its input over to it.
It is a setting of this model's layers for the duration of the `with`, not a global.

The adapters' tensors are looked up on entry and their values read at every forward, so
gradients reach each row's adapter (several adapters can train in one batch), and an adapter
changed in place inside the `with` is seen (one added or replaced there is not). Merged layers
are refused (merging serves one adapter; unmerge first), and so is adapter dropout in training
mode (each adapter would need its own mask).

Cost: the two batched products are thin (rank r_max) and the gather copies each row's factors
(at every forward with gradients; without them, once per `with` while the adapters do not change,
so generation with the KV cache gathers once, not at every step), so on a CPU the mixed batch runs
somewhat slower than the base model on the same batch; what it saves is the merge per adapter and
the many small batches of serving one adapter at a time (experiments/bench/adapters.py measures both).
"""
import contextlib

import torch
import torch.nn.functional as F

from minilora.dora import weight_norm
from minilora.embedding import LoRAEmbedding
from minilora.model_ops import _require_lora_layers, adapter_names


def _pad_rank(t, r_max, dim):
    """Zero-pad the rank dimension dim of t up to r_max (exact: the padding adds zeros)."""
    missing = r_max - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


class RowAdapters:
    """One layer's part in a mixed batch: which adapter each row uses there. The layer's forward
    calls it (see layer.row_adapters) instead of its single-adapter path.

    On entry it looks up, once, the adapters the rows use on this layer (its "slots", their
    tensors) and each row's slot; a last slot of zeros serves the rows whose adapter this layer
    lacks. At each forward gather() reads the slots' current values and stacks each row's."""

    def __init__(self, layer, names):
        self.layer = layer
        names = [n if n in layer.adapters else None for n in names]  # None: the base layer for that row
        used = list(dict.fromkeys(n for n in names if n is not None))
        adapters = [layer.adapters[n] for n in used]
        self.n_rows = len(names)
        self.row_slot = [len(used) if n is None else used.index(n) for n in names]
        # Each slot's tensors: A (r, in), AdaLoRA's lambda (r,) or None, B (out, r), DoRA's m (out,) or None
        self.slots = [(a.lora_A, getattr(a, "lora_E", None), a.lora_B, a.magnitude, a.scaling) for a in adapters]
        self.r_max = max((a.r for a in adapters), default=1)
        like = next(iter(layer.adapters.values())).lora_A  # the adapters' device and dtype
        n_in, n_out = _in_out(layer)
        self.zeros = None if None not in names else (like.new_zeros(self.r_max, n_in), like.new_zeros(n_out, self.r_max))
        scales = [0.0 if n is None else layer.adapters[n].scaling for n in names]
        self.s_rows = torch.tensor(scales, device=like.device, dtype=like.dtype).view(-1, 1, 1)  # (n_rows, 1, 1)
        self.dora = any(m is not None for _, _, _, m, _ in self.slots)
        self._kept = None  # (the tensors' versions, what gather() returned then): see gather()

    def gather(self):
        """(A_rows (n_rows, r_max, in), B_rows (n_rows, out, r_max), DoRA's row scale (n_rows, 1, out)
        or None): each row's adapter's factors, read now, zero-padded to the largest rank.

        Without gradients (inference), the result is kept and reused while no tensor it was read
        from has changed (their version counters, which every in-place change bumps): generation
        gathers once for the prefill and reuses it at every step of one token."""
        if torch.is_grad_enabled():
            return self._gather()
        versions = tuple(t._version for slot in self.slots for t in slot[:4] if t is not None)
        versions += (getattr(self.layer.base.weight, "_version", 0),) if self.dora else ()  # DoRA's norm reads W0
        if self._kept is None or self._kept[0] != versions:
            self._kept = (versions, self._gather())
        return self._kept[1]

    def _gather(self):
        As, Bs = [], []
        for A, E, B, _, _ in self.slots:
            if E is not None:  # AdaLoRA: delta W = s P diag(lambda) Q, so A = diag(lambda) Q, B = P
                A = E.unsqueeze(1) * A  # (r, in)
            As.append(_pad_rank(A, self.r_max, 0))  # (r_max, in)
            Bs.append(_pad_rank(B, self.r_max, 1))  # (out, r_max)
        if self.zeros is not None:
            As.append(self.zeros[0])
            Bs.append(self.zeros[1])
        A_rows = torch.stack([As[i] for i in self.row_slot])  # (n_rows, r_max, in): row i gets its slot's A
        B_rows = torch.stack([Bs[i] for i in self.row_slot])  # (n_rows, out, r_max)
        if not self.dora:
            return A_rows, B_rows, None
        # DoRA: y = (m / ||W0 + s B A||_row) (W0 x + s B A x) + b (dora.py); 1 for the other slots
        ones = Bs[0].new_ones(Bs[0].shape[0])
        scale = []
        for A, _, B, m, s in self.slots:
            if m is None:
                scale.append(ones)
                continue
            with torch.no_grad():  # the norm is a constant in backward, as in dora.py
                norm = weight_norm(self.layer.base.weight, s * (B @ A))  # (out,)
            scale.append(m / norm)
        scale.append(ones)  # the zero slot, if any
        return A_rows, B_rows, torch.stack([scale[i] for i in self.row_slot]).unsqueeze(1)  # (n_rows, 1, out)

    def _check_rows(self, x):
        if x.dim() < 2 or x.shape[0] != self.n_rows:
            raise ValueError(f"this mixed batch was set up for {self.n_rows} rows (one adapter name per row), "
                             f"but a layer got input of shape {tuple(x.shape)}: the batch dimension must "
                             f"be {self.n_rows}")

    def __call__(self, x):
        """x (n_rows, ..., in) -> (n_rows, ..., out); token ids (n_rows, ...) for an embedding."""
        self._check_rows(x)
        A_rows, B_rows, row_scale = self.gather()
        if isinstance(self.layer, LoRAEmbedding):
            return self._embedding(x, A_rows, B_rows)
        base = self.layer.base
        x3 = x.reshape(self.n_rows, -1, x.shape[-1])  # (n_rows, T, in)
        if row_scale is None:
            y = base(x3)  # (n_rows, T, out): x W0^T + b, one GEMM for every row
        else:
            y = F.linear(x3, base.weight.to(x3.dtype))  # (n_rows, T, out): DoRA adds the bias after its scale
        dtype = y.dtype  # the base's compute dtype (bf16 under autocast)
        sxA = torch.bmm(x3.to(dtype), A_rows.to(dtype).transpose(1, 2)) * self.s_rows.to(dtype)  # (n_rows, T, r_max)
        y = y.baddbmm_(sxA, B_rows.to(dtype).transpose(1, 2))  # (n_rows, T, out): += s B A x, row by row
        if row_scale is not None:
            y = y * row_scale.to(dtype)  # (n_rows, T, out)
            if base.bias is not None:
                y = y + base.bias.to(dtype)
        return y.view(*x.shape[:-1], y.shape[-1])  # (n_rows, ..., out)

    def _embedding(self, idx, A_rows, B_rows):
        """h = W0[idx] + s B A[:, idx], row by row: A's columns picked by each row's token ids."""
        ids = idx.reshape(self.n_rows, -1)  # (n_rows, T)
        h = self.layer.base(ids)  # (n_rows, T, dim)
        rows = torch.arange(self.n_rows, device=ids.device).unsqueeze(1)  # (n_rows, 1)
        sA_cols = A_rows.transpose(1, 2)[rows, ids] * self.s_rows  # (n_rows, T, r_max): row i's A at row i's ids
        h = h.baddbmm_(sA_cols.to(h.dtype), B_rows.to(h.dtype).transpose(1, 2))  # (n_rows, T, dim)
        return h.view(*idx.shape, h.shape[-1])


def _in_out(layer):
    base = layer.base
    if isinstance(layer, LoRAEmbedding):
        return base.num_embeddings, base.embedding_dim
    return base.in_features, base.out_features


def _check_names(model, names):
    if not isinstance(names, (list, tuple)) or not names:
        raise TypeError(f"names must be a non-empty list with one adapter name (or None, for the base model) "
                        f"per row of the batch, got {names!r}")
    known = adapter_names(model)
    unknown = sorted({n for n in names if n is not None and n not in known}, key=str)
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown} in names; the model's adapters: {known} "
                         f"(None runs a row on the base model)")
    return list(names)


@contextlib.contextmanager
def mixed_adapters(model, names):
    """Inside the `with`, row i of every batch runs with adapter names[i] (None: the base model),
    all rows in one forward pass, the adapters unmerged (see the module docstring). Every batch
    must have len(names) rows. On exit the model is as before."""
    named_layers = _require_lora_layers(model, "mixed_adapters")
    layers = [layer for _, layer in named_layers]
    names = _check_names(model, names)
    merged = [n for n, layer in named_layers if layer.merged]
    if merged:
        raise RuntimeError(f"an adapter is merged into the base weights (e.g. {merged[0]!r}); a mixed batch "
                           f"needs the base unmerged: call unmerge_lora(model) first")
    if any(layer.row_adapters is not None for layer in layers):
        raise RuntimeError("the model is already inside a mixed_adapters block; one mixed batch at a time")
    if model.training:
        dropping = sorted({n for layer in layers for n in set(names) if n in layer.adapters
                           and layer.adapters[n].dropout.p > 0})
        if dropping:
            raise RuntimeError(f"adapter(s) {dropping} have dropout and the model is in training mode, but a "
                               f"mixed batch applies no adapter dropout: call model.eval() first, or train "
                               f"adapters with dropout=0")
    if len(set(names)) == 1:  # one adapter for every row: nothing to gather, the ordinary path
        previous = [layer.active_adapter for layer in layers]
        for layer in layers:
            layer.active_adapter = names[0]
        try:
            yield model
        finally:
            for layer, name in zip(layers, previous):
                layer.active_adapter = name
        return
    try:
        for layer in layers:
            layer.row_adapters = RowAdapters(layer, names)
        yield model
    finally:
        for layer in layers:
            layer.row_adapters = None
