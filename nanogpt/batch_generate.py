"""Generate for a batch of requests with prompts of different lengths, each row as if alone.

    new = generate_batch(model, prompts=[[104, 105], [97]], max_new_tokens=[5, 3],
                         temperatures=[0.8, 0.0], seeds=[0, 7])      # [[5 ids], [3 ids]]

GPT.generate takes a rectangle: every row the same length. Requests are ragged, and padding a
short prompt would move its tokens to other positions (GPT-2's positions are learned and
absolute). So the rows advance together, one position per step, and a row still inside its
prompt takes its next prompt token instead of a sampled one ("teacher forcing" its prompt):

    step t:   row i's token t = prompt_i[t]          while t < len(prompt_i)
                              = sampled from row i   after, for max_new_tokens_i tokens
                              = 0 (not used)         once the row is done

Every row's token t sits at position t, so each row computes what it computes alone: the batch
is prefilled up to the shortest prompt, then runs one cached position per step, and past
block_size the window slides and runs in full, as GPT.generate does (model.py).

Sampling is per row: row i divides its logits by its own temperature (0 means greedy: the argmax)
and draws with its own torch.Generator seeded by its own seed, one draw per token it samples. So
a request gets the same tokens whatever else is in its batch (up to the float rounding of batched
products, which moves a draw only when it falls within rounding of a boundary between tokens).
"""
import torch
from torch.nn import functional as F

from nanogpt.model import KVCache


def _next_logits(model, ids, t, caches):
    """The logits (B, V) for position t + 1, given ids[:, :t + 1], as GPT.generate computes them."""
    block = model.config.block_size
    if t + 1 <= block:  # one new position, attending to the cache
        logits, _ = model(ids[:, t:t + 1], caches=caches)
    else:  # past block_size: the window slid, so every position moved; run it in full
        logits, _ = model(ids[:, t + 1 - block:t + 1])
    return logits[:, -1, :].float()


def _pick(logits, temperature, generator):
    """One token id from logits (V,): the argmax for temperature 0, else a draw from softmax(logits / T)."""
    if temperature == 0:
        return int(logits.argmax())
    probs = F.softmax(logits / temperature, dim=-1)  # (V,)
    return int(torch.multinomial(probs, num_samples=1, generator=generator))


@torch.no_grad()
def generate_batch(model, prompts, max_new_tokens, temperatures, seeds):
    """Each row's new token ids (a list per row): prompts[i] (a non-empty list of ids) continued by
    max_new_tokens[i] tokens, sampled at temperatures[i] (0: greedy) with a generator seeded by
    seeds[i]. Runs under whatever adapter setting the model has (mixed_adapters: one per row)."""
    n = len(prompts)
    if not n or not (len(max_new_tokens) == len(temperatures) == len(seeds) == n):
        raise ValueError(f"give one prompt, max_new_tokens, temperature and seed per row; got {n} prompts, "
                         f"{len(max_new_tokens)}, {len(temperatures)} and {len(seeds)}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = model.wte.weight.device
    start = min(len(p) for p in prompts)  # positions every row knows: one prefill
    end = max(len(p) + k for p, k in zip(prompts, max_new_tokens))  # the longest row's last position + 1
    ids = torch.zeros(n, end, dtype=torch.long)  # (n, end): each row's prompt, then its new tokens
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p, dtype=torch.long)
    ids = ids.to(device)
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    caches = [KVCache() for _ in model.blocks]
    if start < end:
        prefill = ids[:, max(0, start - model.config.block_size):start]  # a prompt longer than the block: its window
        logits, _ = model(prefill, caches=caches if start <= model.config.block_size else None)
        logits = logits[:, -1, :].float()  # (n, V): for position `start`
    for t in range(start, end):
        for i in range(n):
            if len(prompts[i]) <= t < len(prompts[i]) + max_new_tokens[i]:  # row i samples token t
                ids[i, t] = _pick(logits[i], temperatures[i], generators[i])
        if t + 1 < end:
            logits = _next_logits(model, ids, t, caches)  # (n, V)
    return [ids[i, len(p):len(p) + k].tolist() for i, (p, k) in enumerate(zip(prompts, max_new_tokens))]
