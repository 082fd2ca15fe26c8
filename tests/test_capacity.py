"""Experiment 4 (capacity): the facts dataset, its recall metric, and the run end to end at toy size."""
import json
import math

import pytest
import torch
from torch import nn

from experiments import capacity
from experiments.facts import DIGIT_BITS, facts_corpus, make_facts, recall
from nanogpt.tokenizer import decode
from tests.test_experiments import TOY, is_png


def test_make_facts_is_seeded_unique_and_well_formed():
    facts = make_facts(200, seed=3)
    assert facts == make_facts(200, seed=3)
    assert facts != make_facts(200, seed=4)
    assert len(facts) == 200 and len({k for k, _ in facts}) == 200
    for key, value in facts:
        assert len(key) == 4 and key.isascii() and key.isalpha() and key.islower()
        assert len(value) == 4 and value.isdigit()
    assert len({v for _, v in facts}) > 150  # values are random, not one repeated value


def test_facts_corpus_holds_every_fact_in_shuffled_copies():
    facts = make_facts(50, seed=0)
    corpus = facts_corpus(facts, block_size=64, seed=0, copies=3)
    lines = decode(corpus.train).split("\n")[:-1]
    assert sorted(lines) == sorted([f"{k}:{v}" for k, v in facts] * 3)
    copies = [lines[i * 50:(i + 1) * 50] for i in range(3)]
    assert copies[0] != copies[1] != copies[2]  # each copy in its own order
    assert torch.equal(corpus.train, corpus.val)
    assert corpus.name.startswith("facts-n50-seed0-")
    assert facts_corpus(facts, 64, seed=1, copies=3).name != corpus.name  # the cache tells datasets apart
    small = facts_corpus(make_facts(2, seed=0), block_size=64, seed=0, copies=1)
    assert len(small.train) > 64 + 1  # repeated until one window and its target fit


class TableModel(nn.Module):
    """A stand-in for the GPT, called the same way (idx (B, T) -> logits (B, T, 256), loss).

    known facts: logit 100 on the true next byte of "\\n" + key + ":" + value; any other prefix
    gets the `fallback` logits (zeros: uniform over all 256 bytes)."""

    def __init__(self, facts, fallback=None):
        super().__init__()
        self.next_byte = {}
        for key, value in facts:
            seq = f"\n{key}:{value}".encode()
            for t in range(len(seq) - 1):
                self.next_byte[seq[:t + 1]] = seq[t + 1]
        self.fallback = torch.zeros(256) if fallback is None else fallback

    def forward(self, idx, targets=None):
        B, T = idx.shape
        logits = self.fallback.repeat(B, T, 1)  # (B, T, 256)
        for b in range(B):
            for t in range(T):
                nxt = self.next_byte.get(bytes(idx[b, :t + 1].tolist()))
                if nxt is not None:
                    logits[b, t] = 0.0
                    logits[b, t, nxt] = 100.0
        return logits, None


def test_recall_scores_a_perfect_and_a_uniform_model_exactly():
    facts = make_facts(40, seed=1)
    possible = 40 * 4 * DIGIT_BITS
    perfect = recall(TableModel(facts), facts, "cpu", batch_size=16)  # batches of 16, 16, 8
    assert perfect["recall"] == 1.0
    assert perfect["value_loss"] < 1e-30
    assert perfect["bits"] == pytest.approx(possible) and perfect["bits_possible"] == pytest.approx(possible)

    uniform = recall(TableModel([]), facts, "cpu")  # all 256 logits equal
    assert uniform["value_loss"] == pytest.approx(math.log(256))
    assert uniform["recall"] == 0.0  # argmax of a tie is byte 0, never a digit
    assert uniform["bits"] == 0.0  # 8 bits per byte is worse than a digit guess: clipped at 0


def test_recall_counts_bits_over_a_digit_guess_and_partial_knowledge():
    facts = make_facts(40, seed=1)
    digits_only = torch.full((256,), -1e9)
    digits_only[list(b"0123456789")] = 0.0  # knows "a digit comes next", nothing more
    guess = recall(TableModel([], digits_only), facts, "cpu")
    assert guess["value_loss"] == pytest.approx(math.log(10))
    assert guess["bits"] == pytest.approx(0.0, abs=1e-3)  # float32 rounding over 160 bytes
    half = recall(TableModel(facts[:20], digits_only), facts, "cpu")  # knows half the facts
    assert half["recall"] == 0.5
    assert half["value_loss"] == pytest.approx(math.log(10) / 2)
    assert half["bits"] == pytest.approx(20 * 4 * DIGIT_BITS)


def test_capacity_end_to_end(tmp_path, corpora):
    out = tmp_path / "cap"
    capacity.main([*TOY, *corpora, "--n-facts", "8,16", "--ranks", "1", "--out", str(out)])
    records = json.loads((out / "records.json").read_text())
    assert [(r["n_facts"], r["method"], r["r"]) for r in records] == [
        (8, "full", None), (8, "lora", 1), (16, "full", None), (16, "lora", 1)]
    assert all(set(r["final_eval"]) == {"value_loss", "recall", "bits", "bits_possible"} for r in records)
    assert records[0]["target_corpus"].startswith("facts-n8-")
    result = json.loads((out / "capacity.json").read_text())
    assert [(row["n_facts"], row["method"]) for row in result["rows"]] == [
        (8, "full"), (8, "lora-r1"), (16, "full"), (16, "lora-r1")]
    for row in result["rows"]:
        assert row["bits_per_param"] == pytest.approx(row["bits"] / row["trainable_params"])
        assert row["bits_possible"] == pytest.approx(row["n_facts"] * 4 * DIGIT_BITS)
    assert [e["method"] for e in result["capacity"]] == ["full", "lora-r1"]
    for name in ("capacity.png", "bits_per_param.png"):
        assert is_png(out / name)
    assert "| 16 | LoRA r=1 |" in (out / "results.md").read_text()
