"""Corpora, the train/validation(/test) split, and batches.

Every corpus is a sequence of bytes, read as stored (see tokenizer.py). Two are embedded in every Python install, so
the project runs offline with no download:

  python-code   the standard library's own top-level .py sources (about 4.7 MB of code)
  python-docs   the English prose of the Python docs, from `pydoc_data.topics` (about 0.5 MB)

Also: any text file given by path, and `shakespeare` (tiny-Shakespeare, 1 MB), downloaded once
into a cache folder.
"""
import hashlib
import os
import sysconfig
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass

import torch


SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CORPUS_NAMES = ("python-code", "python-docs", "shakespeare")
VAL_FRACTION = 0.1


def default_cache_dir():
    return os.environ.get("NANOGPT_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "nanogpt"))


def python_code_bytes():
    """The stdlib's top-level .py files, in sorted order, so every run sees the same bytes."""
    stdlib = sysconfig.get_paths()["stdlib"]
    names = sorted(n for n in os.listdir(stdlib) if n.endswith(".py"))
    parts = []
    for name in names:
        with open(os.path.join(stdlib, name), "rb") as f:
            parts.append(f"# file: {name}\n".encode() + f.read() + b"\n")
    return b"".join(parts)


def python_docs_bytes():
    """The prose of the Python docs' topics (what `help("if")` prints), sorted by topic name."""
    from pydoc_data.topics import topics

    return "".join(f"{topics[key].strip()}\n\n" for key in sorted(topics)).encode("utf-8")


def shakespeare_bytes(cache_dir=None):
    """tiny-Shakespeare, downloaded once into cache_dir; offline, a clear error says what to do."""
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, "shakespeare.txt")
    if not os.path.exists(path):
        try:
            with urllib.request.urlopen(SHAKESPEARE_URL, timeout=20) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as e:
            raise RuntimeError(
                f"could not download the shakespeare corpus from {SHAKESPEARE_URL} ({e}). "
                f"Offline? Put the text at {path}, or pass any local text file as the corpus "
                f"(--corpus path/to/input.txt), or use an embedded corpus: python-code, python-docs."
            ) from e
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # a half-written download never looks like a finished one
    with open(path, "rb") as f:
        return f.read()


def load_bytes(name_or_path, cache_dir=None):
    """The bytes of a named corpus, or of a file given by path, exactly as stored.

    The tokens are bytes, so any file can be read as it is: text in any encoding, even binary
    data. Nothing is decoded or replaced, so what the model trains on is the file itself (a file
    that is not valid UTF-8 gets a warning, since samples are shown decoded as UTF-8)."""
    if name_or_path == "python-code":
        return python_code_bytes()
    if name_or_path == "python-docs":
        return python_docs_bytes()
    if name_or_path == "shakespeare":
        return shakespeare_bytes(cache_dir)
    if os.path.isdir(name_or_path):
        raise ValueError(f"corpus {name_or_path!r} is a folder; give one file (its bytes are the corpus), "
                         f"or one of {list(CORPUS_NAMES)}")
    if os.path.isfile(name_or_path):
        try:
            with open(name_or_path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(f"cannot read corpus file {name_or_path!r}: {e.strerror or e}") from None
        if not data:
            raise ValueError(f"corpus file {name_or_path!r} is empty")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as e:
            warnings.warn(f"corpus {name_or_path!r} is not valid UTF-8 (first bad byte at offset {e.start}); "
                          f"training on its raw bytes as they are. Printed samples show such bytes as U+FFFD",
                          stacklevel=2)
        return data
    raise ValueError(
        f"unknown corpus {name_or_path!r}: not one of {list(CORPUS_NAMES)} and not an existing file"
    )


def load_text(name_or_path, cache_dir=None):
    """A corpus as text, for reading it (bytes that are not UTF-8 shown as U+FFFD)."""
    return load_bytes(name_or_path, cache_dir).decode("utf-8", errors="replace")


def shakespeare_text(cache_dir=None):
    return shakespeare_bytes(cache_dir).decode("utf-8", errors="replace")


@dataclass
class Corpus:
    name: str
    train: torch.Tensor  # (N_train,) uint8 byte tokens (int32 BPE ids with a tokenizer)
    val: torch.Tensor  # (N_val,) uint8 byte tokens (int32 BPE ids with a tokenizer)
    sha256: str  # of all the corpus's bytes: what caches are keyed by, and what records name
    # Bytes of text per token in the validation split: a loss in nats per token divided by it is in
    # nats per byte, which compares a BPE model with a byte-level one. 1.0 for byte tokens.
    val_bytes_per_token: float = 1.0
    # With test_split (load_corpus): the held-out tail's second half, kept apart from every choice.
    # val is then its first half: what learning rates and settings are tuned on. None otherwise.
    test: torch.Tensor | None = None


def load_corpus(name_or_path, block_size, cache_dir=None, tokenizer=None, test_split=False):
    """Tokenize a corpus and split it: the first 90% for training, the last 10% for validation.

    A contiguous split (not a random one) keeps validation text unseen: no training window
    overlaps it. Both parts must hold at least one block plus its next-token target.
    test_split: cut the held-out 10% in two contiguous halves: validation (the first 5%, for
    every choice: rates, settings) and test (the last 5%, for the numbers reported). The
    training part is the same either way, so a run trains on the same batches with or without.
    tokenizer: None for byte tokens; or a BPE tokenizer (nanogpt.bpe) for a real GPT-2, which reads
    the text as UTF-8 (bytes that are not become U+FFFD).
    """
    data = load_bytes(name_or_path, cache_dir)
    if tokenizer is None:
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)  # (N,)
        unit = "bytes"
    else:
        tokens = torch.tensor(tokenizer.encode(data.decode("utf-8", errors="replace")), dtype=torch.int32)  # (N,)
        unit = "tokens"
    n_val = int(len(tokens) * VAL_FRACTION)
    train, val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val:]
    need = block_size + 1
    if len(val) < need:
        raise ValueError(
            f"corpus {name_or_path!r} is too short: {len(tokens)} {unit} give a validation split of "
            f"{len(val)} {unit}, but block_size={block_size} needs at least {need} {unit} in each split "
            f"(so at least {need * 10} {unit} in all); use a longer text or a smaller --block-size"
        )
    test = None
    if test_split:
        held_out = len(val)
        val, test = val[: len(val) // 2], val[len(val) // 2:]
        if len(val) < need:
            raise ValueError(
                f"corpus {name_or_path!r} is too short for a test split: its held-out {held_out} {unit} "
                f"give validation and test halves of {len(val)} {unit}, but block_size={block_size} needs at "
                f"least {need} {unit} in each (so at least {need * 20} {unit} in all); use a longer text, a "
                f"smaller --block-size, or no test split")
    per_token = 1.0 if tokenizer is None else sum(tokenizer.token_bytes(i) for i in val.tolist()) / len(val)
    return Corpus(name=name_or_path, train=train, val=val, sha256=hashlib.sha256(data).hexdigest(),
                  val_bytes_per_token=per_token, test=test)


def get_batch(data, batch_size, block_size, generator=None, device="cpu", rows=None):
    """batch_size random windows of data: inputs x and next-byte targets y, both (B, T) int64.

    rows: a slice of the batch to return (one process's share, see nanogpt/distributed.py). The
    whole batch's windows are drawn all the same, so the shares of all the processes put together
    are the batch one process draws."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    if rows is not None:
        ix = ix[rows]  # (B / N,)
    offsets = torch.arange(block_size)  # (T,)
    x = data[ix[:, None] + offsets].long()  # (B, T)
    y = data[ix[:, None] + offsets + 1].long()  # (B, T): the byte after each input byte
    return x.to(device), y.to(device)


def fixed_batches(data, n_batches, batch_size, block_size, seed=1234):
    """The same n_batches every call: evaluation on them is comparable across steps and runs."""
    g = torch.Generator().manual_seed(seed)
    return [get_batch(data, batch_size, block_size, generator=g) for _ in range(n_batches)]
