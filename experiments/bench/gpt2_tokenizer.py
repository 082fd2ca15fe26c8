"""How fast nanogpt.bpe encodes: MB of UTF-8 text per second, on one core (pure Python).

    python -m experiments.bench.gpt2_tokenizer --tokenizer DIR [--rounds 3] [--out DIR]

DIR holds GPT-2's vocab.json and merges.txt. Two texts that come with Python: the English prose of
the Python docs (python-docs, 0.5 MB) and the standard library's code (python-code, 4.7 MB). For each,
`cold` is a fresh tokenizer (an empty cache: every distinct piece is merged once), `warm` the same
tokenizer encoding the text again (every piece from the cache). The median of --rounds rounds.
"""
import argparse
import statistics
import time

from nanogpt.bpe import load_tokenizer
from nanogpt.data import load_bytes
from experiments.lib.bench_record import finish_rows
from nanogpt.flags import positive_int


def measure(folder, corpus, rounds):
    text = load_bytes(corpus).decode("utf-8", errors="replace")
    mb = len(text.encode("utf-8")) / 1e6
    cold, warm = [], []
    for _ in range(rounds):
        tok = load_tokenizer(folder)
        start = time.perf_counter()
        ids = tok.encode(text)
        cold.append(mb / (time.perf_counter() - start))
        start = time.perf_counter()
        tok.encode(text)
        warm.append(mb / (time.perf_counter() - start))
    return {"corpus": corpus, "mb": round(mb, 3), "tokens": len(ids), "bytes_per_token": round(mb * 1e6 / len(ids), 3),
            "cold_mb_per_s": round(statistics.median(cold), 2), "warm_mb_per_s": round(statistics.median(warm), 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description="Encoding speed of nanogpt.bpe (MB/s, one core).")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="a folder with GPT-2's vocab.json and merges.txt")
    p.add_argument("--rounds", type=positive_int, default=3, help="rounds per text; the median is reported (default 3)")
    p.add_argument("--out", help="folder for gpt2_tokenizer.json (default: print only)")
    args = p.parse_args(argv)
    load_tokenizer(args.tokenizer)  # a bad folder fails here, before any timing
    rows = []
    for corpus in ("python-docs", "python-code"):
        row = measure(args.tokenizer, corpus, args.rounds)
        rows.append(row)
        print(f"{corpus}: {row['mb']} MB, {row['tokens']:,} tokens ({row['bytes_per_token']} bytes/token): "
              f"{row['cold_mb_per_s']} MB/s cold cache, {row['warm_mb_per_s']} MB/s warm")
    return finish_rows(rows, args.out, "gpt2_tokenizer.json")


if __name__ == "__main__":
    main()
