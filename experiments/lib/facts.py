"""Random key-value facts: a dataset whose information content is known exactly, and its metric.

A fact is a line "key:value\n" with a random key ("qzkb") and a random value ("0429"). Nothing
about a value can be guessed from its key, so the only way to predict it is to have stored it:
each value carries value_len * log2(10) bits (13.3 for 4 digits), and the bits a model gains over a
uniform guess among the digits measure what it memorized. That makes a model's capacity (bits per
trainable parameter) measurable, as in Allen-Zhu & Li 2024 ("Physics of Language Models 3.3",
about 2 bits per parameter) and Schulman et al. 2025 ("LoRA Without Regret").
"""
import hashlib
import math
import random
import string

import torch
import torch.nn.functional as F

from nanogpt.data import Corpus
from nanogpt.tokenizer import encode

DIGIT_BITS = math.log2(10)  # information in one uniformly random digit


def make_facts(n, seed, key_len=4, value_len=4):
    """n facts [(key, value)]: unique random lowercase keys, random digit values; same seed, same facts.

    Values are drawn independently (not forced unique), so each one carries exactly
    value_len * log2(10) bits whatever n is.
    """
    if n > 26 ** key_len:
        raise ValueError(f"cannot make {n} unique keys of {key_len} letters")
    rng = random.Random(seed)
    keys, seen = [], set()
    while len(keys) < n:
        key = "".join(rng.choices(string.ascii_lowercase, k=key_len))
        if key not in seen:
            seen.add(key)
            keys.append(key)
    return [(key, "".join(rng.choices(string.digits, k=value_len))) for key in keys]


def facts_corpus(facts, block_size, seed, copies=8):
    """A Corpus whose train text is the facts as lines "key:value\\n", in `copies` different shuffles.

    Shuffling each copy makes the line order unpredictable, so the next key after a line cannot be
    memorized and all the model can store is key -> value. More copies are added if needed so the
    text is longer than one training window. val is the same text: memorization is evaluated on
    what was trained. The name and sha256 hold hashes of the text, so the run cache never mixes datasets.
    """
    rng = random.Random(seed)
    lines = [f"{key}:{value}\n" for key, value in facts]
    one_copy = sum(len(line) for line in lines)
    copies = max(copies, math.ceil((block_size + 2) / one_copy))  # at least one window plus its target
    parts = []
    for _ in range(copies):
        rng.shuffle(lines)
        parts.extend(lines)
    text = "".join(parts)
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    tokens = encode(text)  # (copies * one_copy,) uint8
    return Corpus(name=f"facts-n{len(facts)}-seed{seed}-{digest}", train=tokens, val=tokens,
                  sha256=hashlib.sha256(text.encode()).hexdigest())


@torch.no_grad()
def recall(model, facts, device, batch_size=512):
    """How well `model` knows each fact's value, given "\\n" + key + ":" (teacher-forced).

    model: called as model(idx) -> (logits (B, T, 256), loss), like nanogpt.GPT.
    Returns plain floats:
      value_loss     mean cross-entropy of the value bytes, nats per byte (over all 256 bytes, so a
                     model that only knows "a digit comes next" scores ln(10) = 2.303)
      recall         fraction of facts whose every value byte is the argmax given the true bytes
                     before it; that is exactly greedy decoding producing the right value
      bits           information memorized: N * value_len * log2(10) minus the values' total
                     cross-entropy in bits, clipped at 0 (gain over a uniform guess among digits)
      bits_possible  N * value_len * log2(10), what perfect memorization would score
    """
    was_training = model.training
    model.eval()
    value_len = len(facts[0][1])
    total_nats, exact = 0.0, 0
    for i in range(0, len(facts), batch_size):
        chunk = facts[i:i + batch_size]
        seq = torch.stack([encode(f"\n{key}:{value}") for key, value in chunk]).long().to(device)  # (B, L)
        logits, _ = model(seq[:, :-1])  # (B, L-1, V): position t predicts byte t+1
        logits = logits[:, -value_len:].float()  # (B, value_len, V): the predictions of the value bytes
        targets = seq[:, -value_len:]  # (B, value_len)
        nats = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, value_len)
        total_nats += nats.sum().item()
        exact += (logits.argmax(-1) == targets).all(dim=1).sum().item()
    model.train(was_training)
    n_bytes = len(facts) * value_len
    bits_possible = n_bytes * DIGIT_BITS
    return {"value_loss": total_nats / n_bytes, "recall": exact / len(facts),
            "bits": max(0.0, bits_possible - total_nats / math.log(2)), "bits_possible": bits_possible}
