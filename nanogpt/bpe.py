"""GPT-2's tokenizer: byte-level BPE (Radford et al. 2019; openai/gpt-2's encoder.py), from scratch.

    tok = load_tokenizer("gpt2/")          # a folder with vocab.json and merges.txt
    ids = tok.encode("Hello world")        # [15496, 995] with GPT-2's files
    tok.decode(ids) == "Hello world"       # decode(encode(s)) == s for every string

Three steps turn a text into token ids:
  1. Split the text into pieces with a regular expression (PATTERN): contractions, runs of letters,
     runs of digits, runs of other symbols, each with at most one leading space, and whitespace.
     BPE never merges across two pieces, so " the" is one token but "the." is two.
  2. Write each piece's UTF-8 bytes as printable characters (bytes_to_unicode): vocab.json's
     tokens are strings of these characters, so every byte sequence has a spelling, and a text in
     any language, or any control character, encodes without an "unknown" token.
  3. Merge: start from single characters, and repeatedly join the adjacent pair whose merge comes
     first in merges.txt (the lowest rank), until no adjacent pair is in merges.txt. Each resulting
     string is a token of vocab.json.
Decoding joins the tokens' strings and maps the characters back to bytes. The special token
<|endoftext|> (id 50256 in GPT-2) separates documents; in a text it is encoded as that one id.
"""
import json
import os

import regex

# GPT-2's pre-tokenisation pattern; regex (not re) for \p{L} (any letter) and \p{N} (any digit).
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
END_OF_TEXT = "<|endoftext|>"
VOCAB, MERGES = "vocab.json", "merges.txt"
NO_MERGE = float("inf")  # the rank of a pair that merges.txt does not list


def bytes_to_unicode():
    """{byte: a printable character}: the printable Latin-1 bytes stand for themselves, and the
    others (control characters, space, ...) are moved to characters from U+0100 on, in order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, shift = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


class Tokenizer:
    """GPT-2's byte-level BPE from its two files' contents: encoder {token string: id} and merges,
    a list of pairs (a, b) in rank order."""

    def __init__(self, encoder, merges):
        self.encoder = encoder  # token string -> id
        self.decoder = {i: s for s, i in encoder.items()}  # id -> token string
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}  # (a, b) -> rank: lower merges first
        self.byte_encoder = bytes_to_unicode()  # byte -> character
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.eot_id = encoder.get(END_OF_TEXT)
        self.cache = {}  # piece of text -> its ids: text repeats its words, so most pieces are looked up once

    @property
    def vocab_size(self):
        return len(self.encoder)

    def bpe(self, token):
        """One piece (in bytes_to_unicode characters) -> its BPE tokens (strings), merging by rank."""
        ranks = self.ranks
        word = list(token)  # start from single characters
        while len(word) > 1:
            pairs = zip(word, word[1:])  # adjacent pairs
            first = min(pairs, key=lambda pair: ranks.get(pair, NO_MERGE))  # the earliest merge in merges.txt
            if first not in ranks:
                break  # no pair left that merges.txt knows
            a, b = first
            merged, i = [], 0
            while i < len(word):  # join every occurrence of (a, b), left to right, in one pass
                if word[i] == a and i < len(word) - 1 and word[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode_ordinary(self, text):
        """text -> ids, with <|endoftext|> read as plain characters."""
        ids = []
        for piece in PATTERN.findall(text):
            cached = self.cache.get(piece)
            if cached is None:
                chars = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
                cached = [self.encoder[t] for t in self.bpe(chars)]
                if len(self.cache) < 100_000:  # bounded: a long text of unique pieces cannot fill memory
                    self.cache[piece] = cached
            ids.extend(cached)
        return ids

    def encode(self, text):
        """str -> list of ids; each <|endoftext|> in text becomes its one id (as GPT-2's reference
        tokenizer does), the text between them is encoded by encode_ordinary."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        try:
            if self.eot_id is None or END_OF_TEXT not in text:
                return self.encode_ordinary(text)
            ids = []
            for i, part in enumerate(text.split(END_OF_TEXT)):
                if i:
                    ids.append(self.eot_id)
                ids.extend(self.encode_ordinary(part))
            return ids
        except UnicodeEncodeError:  # a lone surrogate: a Python str that is not valid Unicode text
            at = next(i for i, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF)
            raise ValueError(f"the text has a lone surrogate {text[at]!r} at position {at}: it is not valid Unicode "
                             f"text and has no UTF-8 bytes to encode") from None

    def decode_bytes(self, ids):
        """ids -> the bytes they stand for (a sample may stop in the middle of a character)."""
        bad = [i for i in ids if i not in self.decoder]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are not in the vocabulary (ids 0..{len(self.decoder) - 1})")
        return bytes(self.byte_decoder[c] for c in "".join(self.decoder[i] for i in ids))

    def decode(self, ids):
        """list of ids (or a 1-D tensor) -> str; bytes that do not form UTF-8 become U+FFFD."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, i):
        """How many bytes of text token i stands for (for losses in nats per byte)."""
        return len(self.decoder[i])


def _read(folder, name):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder!r} has no {name}: GPT-2's tokenizer is two files, vocab.json and "
                                f"merges.txt, from the Hugging Face hub's gpt2 repository "
                                f"(https://huggingface.co/openai-community/gpt2), downloaded once elsewhere")
    with open(path, encoding="utf-8") as f:
        return path, f.read()


def load_tokenizer(path):
    """The Tokenizer in folder path (vocab.json and merges.txt), checked: a merge must join two
    tokens of the vocabulary into a third."""
    vocab_path, text = _read(path, VOCAB)
    try:
        encoder = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{vocab_path!r} is not valid JSON: {e}") from None
    if not isinstance(encoder, dict) or not all(isinstance(k, str) and type(v) is int for k, v in encoder.items()):
        raise ValueError(f"{vocab_path!r} must be a JSON object {{token: id}} with integer ids")
    if sorted(encoder.values()) != list(range(len(encoder))):
        raise ValueError(f"{vocab_path!r}: the ids must be 0..{len(encoder) - 1}, each once")
    byte_chars = set(bytes_to_unicode().values())
    if not byte_chars <= set(encoder):
        raise ValueError(f"{vocab_path!r} lacks single-byte tokens (e.g. {sorted(byte_chars - set(encoder))[:5]}): a "
                         f"byte-level BPE vocabulary has all 256, so that every text can be encoded")
    merges_path, text = _read(path, MERGES)
    merges = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue  # blank lines, and the "#version: 0.2" header
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{merges_path!r} line {number}: {line!r} is not two tokens separated by one space")
        unknown = [t for t in (parts[0], parts[1], parts[0] + parts[1]) if t not in encoder]
        if unknown:
            raise ValueError(f"{merges_path!r} line {number}: the merge {line!r} names {unknown}, not in "
                             f"{vocab_path!r}: the two files are not from the same tokenizer")
        merges.append((parts[0], parts[1]))
    return Tokenizer(encoder, merges)
