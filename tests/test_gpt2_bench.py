"""The real-GPT-2 benchmarks' checks and records (their timings are never asserted)."""
import json

import pytest

from experiments.bench import gpt2_load, gpt2_step, gpt2_tokenizer
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
