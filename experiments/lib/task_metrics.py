"""What a fine-tuned model does with prompts: exact match under greedy decoding, and the diversity
of its free samples (distinct-n).

Exact match: the prompt is continued greedily (the most likely byte each time) until the first
newline; the example counts when that line is the answer, byte for byte. Diversity (Li et al.
2016, as Biderman et al. 2024 use it for "LoRA forgets less"): sample K free continuations at
temperature 1 and count the distinct byte n-grams among all the n-grams they hold.
"""
import math

import torch

from nanogpt.batch_generate import generate_batch
from nanogpt.tokenizer import decode

NEWLINE = 10  # the byte that ends a line


def first_line(ids):
    """The text of a list of byte ids up to (not including) its first newline."""
    return decode(ids[:ids.index(NEWLINE)] if NEWLINE in ids else ids)


def greedy_lines(model, prompts, max_new_tokens, batch_size=256):
    """The first line each prompt (a str) is continued with, decoding greedily for at most
    max_new_tokens[i] bytes. The prompts of a batch are ragged; generate_batch runs each row as if
    alone (its tokens keep their positions), so batching changes nothing but the speed."""
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = [list(p.encode()) for p in prompts[i:i + batch_size]]
        new = generate_batch(model, chunk, max_new_tokens[i:i + batch_size], [0.0] * len(chunk), [0] * len(chunk))
        out += [first_line(ids) for ids in new]
    return out


def exact_match(pairs, generate):
    """The share of (prompt, answer) pairs whose generated line is the answer, exactly.

    generate(prompts, max_new_tokens) -> the first generated line of each prompt (greedy_lines,
    bound to a model). The model sees "\\n" + prompt + "\\n", as every prompt line stands in the
    training text, and gets len(answer) + 1 bytes: the answer and its newline, no more is needed.
    Returns (share, the generated lines)."""
    lines = generate([f"\n{p}\n" for p, _ in pairs], [len(a.encode()) + 1 for _, a in pairs])
    hits = sum(line == answer for line, (_, answer) in zip(lines, pairs))
    return hits / len(pairs), lines


def sample_texts(model, k, max_new_tokens, seed=0, start="\n"):
    """k free continuations of `start` at temperature 1, row i drawn with seed + i (the same draws
    for every model, so models differ only by what they learned)."""
    prompt = list(start.encode())
    new = generate_batch(model, [prompt] * k, [max_new_tokens] * k, [1.0] * k, [seed + i for i in range(k)])
    return [decode(ids) for ids in new]


def distinct_n(texts, n):
    """Distinct-n over bytes: the unique byte n-grams among all of them, pooled over the texts
    (n-grams do not cross from one text to the next). Bytes, not words: the model's tokens, and
    the base model's samples are so garbled that almost every word pair in them is new (word
    distinct-2 near 1 leaves no room to fall). NaN when the texts hold no n-gram."""
    grams = [b[i:i + n] for b in (t.encode() for t in texts) for i in range(len(b) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def is_finite(model):
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


@torch.no_grad()
def task_eval(model, val, test, k, max_new_tokens, n_shown=5):
    """run_finetune's final_eval: {"val_exact", "test_exact" (shares of each set's pairs),
    "distinct_2", "distinct_3" (of k samples of max_new_tokens bytes from "\\n"), "samples" (the first
    n_shown of them), "shown" (the first n_shown test prompts' answers and generated lines)}. A diverged model gets NaNs."""
    if not is_finite(model):
        return {"val_exact": math.nan, "test_exact": math.nan, "distinct_2": math.nan, "distinct_3": math.nan,
                "samples": [], "shown": []}
    was_training = model.training
    model.eval()
    generate = lambda prompts, lengths: greedy_lines(model, prompts, lengths)  # noqa: E731
    val_exact, _ = exact_match(val, generate)
    test_exact, lines = exact_match(test, generate)
    samples = sample_texts(model, k, max_new_tokens)
    model.train(was_training)
    return {"val_exact": val_exact, "test_exact": test_exact, "distinct_2": distinct_n(samples, 2),
            "distinct_3": distinct_n(samples, 3), "samples": samples[:n_shown],
            "shown": [{"prompt": p, "answer": a, "generated": g} for (p, a), g in zip(test[:n_shown], lines)]}
