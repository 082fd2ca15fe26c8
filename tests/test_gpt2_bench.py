"""The real-GPT-2 benchmarks' checks and records (their timings are never asserted)."""
import json

import pytest

from experiments.bench import gpt2_load, gpt2_step, gpt2_tokenizer
from nanogpt.model import GPTConfig
from tests.test_bpe import write_tokenizer


def test_tokenizer_bench_writes_its_record(tmp_path, capsys):
    write_tokenizer(tmp_path / "tok")
    rows = gpt2_tokenizer.main(["--tokenizer", str(tmp_path / "tok"), "--rounds", "1", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "gpt2_tokenizer.json").read_text())
    assert [r["corpus"] for r in record["rows"]] == ["python-docs", "python-code"] == [r["corpus"] for r in rows]
    assert all(r["cold_mb_per_s"] > 0 and r["tokens"] > 0 and r["bytes_per_token"] >= 1 for r in rows)
    assert "MB/s cold cache" in capsys.readouterr().out


def test_benches_check_their_flags_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpt2_step.main(["--seq-len", "2048"])
    assert "--seq-len: must be at most GPT-2's context of 1024, got 2048" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpt2_load.main(["--shapes", "gpt2-xl"])
    assert "must be one of ['gpt2', 'gpt2-medium']" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="has no vocab.json"):
        gpt2_tokenizer.main(["--tokenizer", str(tmp_path)])


def test_step_bench_times_both_steps_and_writes_its_record(tmp_path, monkeypatch, capsys):
    # GPT-2's vocabulary and context, but a one-layer, 16-wide model: the bench's code path, in a second.
    small = lambda **shape: GPTConfig(**{**shape, "n_layer": 1, "n_head": 2, "n_embd": 16})  # noqa: E731
    monkeypatch.setattr(gpt2_step, "GPTConfig", small)
    row = gpt2_step.main(["--seq-len", "8", "--rounds", "3", "--r", "2", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpt2_step.json").read_text()) == row
    assert len(row["ratios"]) == 3 and row["full_over_lora"] == sorted(row["ratios"])[1]
    lora_params = 4 * 2 * (16 + 16) + 2 * 2 * (16 + 64)  # q, k, v, o: r (16 + 16) each; up, down: r (16 + 64)
    assert row["trainable"]["lora"] == lora_params and row["trainable"]["full"] > 50257 * 16
    assert "full/LoRA" in capsys.readouterr().out
