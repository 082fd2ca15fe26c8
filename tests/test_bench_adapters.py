"""experiments.bench.adapters at toy size: it runs, serves the same tokens both ways, counts bytes exactly."""
import json

import pytest

from experiments.bench import adapters as bench_adapters
from nanogpt.flags import CommandError

TOY = ["--presets", "tiny", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16",
       "--switch-rounds", "2", "--gen-rounds", "1", "--prompt-len", "3", "--new-tokens", "4", "--r", "2",
       "--cache-tokens", "20", "--disk-adapters", "3"]


def test_writes_ratios_and_exact_memory(tmp_path, capsys):
    bench_adapters.main(TOY + ["--n-adapters", "1,3,16", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench_adapters.json").read_text())
    rows = result["presets"]["tiny"]["by_n_adapters"]
    assert sorted(rows, key=int) == ["1", "3", "16"]
    for n, row in rows.items():
        n = int(n)
        assert row["requests"] == 2 * n
        assert row["same_tokens_share"] == 1.0  # mixed and merged-one-at-a-time generate the same tokens
        assert all(v > 0 for v in row["ratios"].values())
        assert len(row["seconds_all"]["set_adapter"]) == 2 and len(row["seconds_all"]["mixed"]) == 1  # --gen-rounds 1
        assert len(row["seconds_all"]["base_batched"]) == 1 and len(row["seconds_all"]["one_at_a_time"]) == 1
        b = row["bytes"]
        # one block, width 32: q, k, v, o (32 -> 32) and up, down (32 <-> 128), r=2, fp32
        per_adapter = 4 * 2 * (4 * (32 + 32) + 2 * (32 + 128))
        assert b["adapters"] == n * per_adapter
        assert b["merged_copies"] == n * b["base"]
        assert b["resident / merged_copies"] == pytest.approx((b["base"] + n * per_adapter) / (n * b["base"]))
    head = result["headline"]
    assert head["n_adapters"] == 16 and head["requests_per_adapter"] == 2
    assert head["speedup_vs_one_at_a_time"] == rows["16"]["ratios"]["mixed tokens/s / one_at_a_time tokens/s"]
    assert head["met"] == (head["speedup_vs_one_at_a_time"] >= 3)
    disk = result["presets"]["tiny"]["from_disk"]
    assert disk["files"] == 3 and len(disk["seconds_per_adapter_rounds"]["cold"]) == 1 and disk["bytes_per_file"] > 0
    cache = result["presets"]["tiny"]["kv_cache"]
    assert cache["same_tokens"] is True and cache["steps_past_block_size"] == 3 + 20 - 16
    assert (tmp_path / "bench_adapters.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "mixed / 1-at-a-time" in out and "KV cache, 20 new tokens" in out and "goal (" in out and "wrote" in out


@pytest.mark.parametrize("flags, message", [
    (["--presets", "huge"], "argument --presets: must be comma-separated values like tiny,small; an item must be one of"),
    (["--n-adapters", "0,4"], "argument --n-adapters: must be comma-separated values like 1,4,16,64; an item must be an integer >= 1"),
    (["--prompt-len", "x"], "argument --prompt-len: must be an integer, got 'x'"),
])
def test_bad_flags_are_refused_at_parse_time(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench_adapters.main(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_prompt_longer_than_the_context_is_refused(tmp_path):
    with pytest.raises(CommandError, match="exceeds"):
        bench_adapters.main(TOY + ["--n-adapters", "1", "--new-tokens", "20", "--out", str(tmp_path)])
