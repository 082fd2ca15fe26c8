"""A small GPT in plain PyTorch, readable in one sitting.

The shape of GPT-2 (Radford et al. 2019), as in karpathy/nanoGPT, with one change that matters
for LoRA: attention has separate q/k/v/o projections and the MLP has named up/down projections,
so an adapter can target each weight matrix by name (`q_proj`, `v_proj`, ...), the convention of
most open models.

Notation in the shape comments:
    B batch size, T sequence length, C embedding size (n_embd),
    nh number of heads, hs head size (C // nh), V vocabulary size.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


# The MLP's nonlinearity by name, as F.gelu's `approximate` argument.
ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh"}


@dataclass
class GPTConfig:
    vocab_size: int = 256  # byte-level tokens: every text, every checkpoint
    block_size: int = 64  # the longest context the model sees
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # bias in Linear and LayerNorm layers, as in GPT-2
    tie_weights: bool = True  # lm_head shares its weight with the token embedding
    # GPT-2's checkpoints use the tanh approximation of GELU ("gelu_new"); the presets trained here
    # use the exact one. The two differ by about 1e-4 in the logits of a trained-size model.
    activation: str = "gelu"  # "gelu" (exact, erf) or "gelu_new" (tanh approximation, GPT-2's)
    layer_norm_eps: float = 1e-5  # GPT-2's layer_norm_epsilon, and torch's default

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"valid n_head values for n_embd={self.n_embd}: "
                f"{[h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0 and h <= 64]}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {self.activation!r}")
        eps = self.layer_norm_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < 1):
            raise ValueError(f"layer_norm_eps must be a number in (0, 1), e.g. 1e-5, got {eps!r}")


class KVCache:
    """One attention layer's keys and values of the positions seen so far, for generation: each
    new position then computes its own q, k, v only and attends to the cached k, v (transformers
    calls them `past_key_values`). Empty until the prompt is fed."""

    def __init__(self):
        self.k = None  # (B, nh, T_past, hs)
        self.v = None  # (B, nh, T_past, hs)

    def __len__(self):
        return 0 if self.k is None else self.k.size(2)  # T_past: positions cached

    def append(self, k, v):
        """k, v (B, nh, T, hs) of the new positions -> all keys and values (B, nh, T_past + T, hs)."""
        self.k = k if self.k is None else torch.cat((self.k, k), dim=2)
        self.v = v if self.v is None else torch.cat((self.v, v), dim=2)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.q_proj = nn.Linear(C, C, bias=config.bias)
        self.k_proj = nn.Linear(C, C, bias=config.bias)
        self.v_proj = nn.Linear(C, C, bias=config.bias)
        self.o_proj = nn.Linear(C, C, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache=None):
        """x (B, T, C) -> (B, T, C). With a KVCache, x holds the T positions after the cached ones."""
        B, T, C = x.size()
        nh, hs = self.n_head, C // self.n_head
        q = self.q_proj(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v_proj(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        past, mask = 0, None
        if cache is not None:
            past = len(cache)
            k, v = cache.append(k, v)  # (B, nh, past + T, hs): the cached positions' k, v, then these
        if past > 0 and T > 1:  # (one new position sees every key: no mask)
            # new position t sits at past + t and sees keys 0 .. past + t: the causal mask, shifted by past
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)  # (T, past + T)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=past == 0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.resid_dropout(self.o_proj(y))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.up_proj = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.down_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = ACTIVATIONS[config.activation]

    def forward(self, x):
        h = F.gelu(self.up_proj(x), approximate=self.approximate)  # (B, T, 4C)
        return self.dropout(self.down_proj(h))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)  # (B, T, C)
        x = x + self.mlp(self.ln_2(x))  # (B, T, C)
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embedding
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # position embedding
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # Weight tying (Press & Wolf 2017): the output layer reuses the embedding matrix.
            self.lm_head.weight = self.wte.weight

        # GPT-2 init: N(0, 0.02) everywhere, and the projections that write into the residual
        # stream scaled by 1/sqrt(2 * n_layer), so the stream's variance does not grow with depth.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self):
        """Parameters counted once (a tied weight is one parameter)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, caches=None):
        """idx (B, T) token ids -> logits (B, T, V), and the loss if targets (B, T) are given.
        caches: one KVCache per block (generation): idx then continues the cached positions."""
        B, T = idx.size()
        past = 0 if caches is None else len(caches[0])  # positions already in the cache
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence length {past + T} is longer than block_size {self.config.block_size}; "
                f"crop the input to at most {self.config.block_size} tokens"
            )
        pos = torch.arange(past, past + T, device=idx.device)  # (T,): the positions after the cached ones
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])  # (B, T, C)
        x = self.ln_f(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            # Mean cross-entropy in nats per token (per byte, with byte-level tokens).
            loss = F.cross_entropy(logits.view(B * T, -1).float(), targets.view(B * T))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None, use_cache=True):
        """Append max_new_tokens sampled tokens to idx (B, T) and return the result (B, T + n).

        use_cache=True: the prompt runs once (prefill), filling each block's KVCache, then each step
        feeds only the newest position. Past block_size the window slides: every kept token moves to
        a new position, so each cached k, v (built on its old position embedding) is stale, and the
        window runs again in full, as use_cache=False does at every step. Same tokens either way."""
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        caches = None
        for _ in range(max_new_tokens):
            if use_cache and idx.size(1) <= self.config.block_size:
                if caches is None:  # prefill: the whole prompt once
                    caches = [KVCache() for _ in self.blocks]
                    logits, _ = self(idx, caches=caches)  # (B, T, V)
                else:  # one step: the newest token only, at position T - 1, attending to the cache
                    logits, _ = self(idx[:, -1:], caches=caches)  # (B, 1, V)
            else:
                idx_cond = idx[:, -self.config.block_size:]  # (B, <= block_size): crop the context
                logits, _ = self(idx_cond)  # (B, T, V)
            logits = logits[:, -1, :].float() / temperature  # (B, V): only the last position
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))  # (B, k)
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)  # (B, V)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)  # (B, T + 1)
        return idx
