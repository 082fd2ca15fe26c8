"""GPT-2's byte-level BPE (nanogpt/bpe.py) on a small vocab.json / merges.txt written here."""
import json

import pytest

from nanogpt.bpe import END_OF_TEXT, PATTERN, bytes_to_unicode, load_tokenizer

BYTE_CHARS = [bytes_to_unicode()[b] for b in range(256)]
# A few merges in rank order, in bytes_to_unicode spelling ("Ġ" is the space byte, "Ċ" the newline).
MERGES = [("h", "e"), ("Ġ", "t"), ("Ġt", "he"), ("t", "h"), ("i", "n"), ("in", "g"), ("Ġ", "a"),
          ("Ġ", "Ġ"), ("ĠĠ", "ĠĠ"), ("Ċ", "Ċ"), ("'", "s"), ("e", "r")]


def write_tokenizer(folder, merges=MERGES, header=True, extra_vocab=()):
    """vocab.json (the 256 bytes, then one token per merge, then <|endoftext|>) and merges.txt."""
    tokens = BYTE_CHARS + [a + b for a, b in merges] + list(extra_vocab) + [END_OF_TEXT]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = (["#version: 0.2"] if header else []) + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab


@pytest.fixture
def tok(tmp_path):
    write_tokenizer(tmp_path / "tok")
    return load_tokenizer(str(tmp_path / "tok"))


STRINGS = ["", " ", "the", " the", "Hello, world!", "I'm sure they'll've done it; isn't it? We'd, you're",
           "  runs   of   spaces  \n\n\n\t\ttabs \r\n", "emoji 😀👍🏽 👨‍👩‍👧 🇫🇷", "中文 日本語 한국어 Ελληνικά русский",
           "control \x00\x01\x07\x1b[31m\x7f \u200b\ufeff", "def f(x):\n    return x ** 2  # square\n",
           "numbers 1234567890 3.14 ½ ²", END_OF_TEXT, f"a{END_OF_TEXT}b {END_OF_TEXT}\n", "\n" * 7, "x" * 500,
           "\u00a0nbsp\u2003em\u3000", "the thing the thinger"]


def test_byte_table_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("a")] == "a" and table[ord("!")] == "!"  # printable ASCII stands for itself
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"  # the GPT-2 spellings of space and newline


def test_pre_tokenisation_splits_as_gpt2_does():
    assert PATTERN.findall("I'm  here's 42x\n\n ok!!") == ["I", "'m", " ", " here", "'s", " 42", "x", "\n\n", " ok", "!!"]
    assert PATTERN.findall("a   b") == ["a", "  ", " b"]  # the last space of a run goes with the next word


def test_merges_apply_by_rank_not_by_position(tmp_path, tok):
    v = tok.encoder
    assert tok.encode(" the") == [v["Ġthe"]]  # Ġ t, then h e, then Ġt he
    assert tok.encode("the") == [v["t"], v["he"]]  # "h e" ranks before "t h": he forms first, and "t he" is no merge
    write_tokenizer(tmp_path / "swapped", merges=[("t", "h"), ("h", "e")])
    swapped = load_tokenizer(str(tmp_path / "swapped"))
    assert swapped.encode("the") == [swapped.encoder["th"], swapped.encoder["e"]]
    assert tok.encode("singing") == [v["s"], v["ing"], v["ing"]]
    assert tok.encode("        ") == [v["ĠĠĠĠ"], v["ĠĠĠĠ"]]


@pytest.mark.parametrize("text", STRINGS)
def test_decode_of_encode_is_the_text(tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_decode_of_encode_on_random_unicode(tok):
    import random

    rng = random.Random(0)
    for _ in range(200):
        text = "".join(chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
                       for _ in range(rng.randint(1, 30)))
        assert tok.decode(tok.encode(text)) == text


def test_end_of_text_is_one_id_and_ordinary_encoding_spells_it(tok):
    eot = tok.encoder[END_OF_TEXT]
    assert tok.eot_id == eot == tok.vocab_size - 1
    assert tok.encode(f"the{END_OF_TEXT} the") == tok.encode("the") + [eot] + tok.encode(" the")
    assert eot not in tok.encode_ordinary(END_OF_TEXT)
    assert tok.decode(tok.encode_ordinary(END_OF_TEXT)) == END_OF_TEXT


def test_cache_holds_each_piece_and_gives_the_uncached_ids(tmp_path, tok):
    ids = tok.encode("the thing the thing")
    assert set(tok.cache) == {"the", " thing", " the"}
    fresh = load_tokenizer(str(tmp_path / "tok"))
    fresh.cache.clear()
    assert fresh.encode("the thing the thing") == ids == tok.encode("the thing the thing")


def test_decode_bytes_and_partial_characters(tok):
    ids = tok.encode("é")  # two bytes, two tokens here
    assert len(ids) == 2 and tok.decode_bytes(ids) == "é".encode()
    assert tok.decode(ids[:1]) == "\ufffd"  # half a character
    assert sum(tok.token_bytes(i) for i in tok.encode("the thing")) == len(b"the thing")


def test_merges_file_without_version_header_reads_the_same(tmp_path, tok):
    write_tokenizer(tmp_path / "plain", header=False)
    plain = load_tokenizer(str(tmp_path / "plain"))
    assert plain.encode(STRINGS[5]) == tok.encode(STRINGS[5])


def test_missing_files_name_the_file_and_where_they_come_from(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no vocab.json.*hub's gpt2 repository"):
        load_tokenizer(str(tmp_path))
    write_tokenizer(tmp_path / "t")
    (tmp_path / "t" / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="has no merges.txt"):
        load_tokenizer(str(tmp_path / "t"))


def test_merges_naming_unknown_tokens_are_refused_with_the_line(tmp_path):
    write_tokenizer(tmp_path / "t")
    with open(tmp_path / "t" / "merges.txt", "a", encoding="utf-8") as f:
        f.write("Ġthe zzz\n")
    with pytest.raises(ValueError, match=r"line 14: the merge 'Ġthe zzz' names \['zzz', 'Ġthezzz'\], not in"):
        load_tokenizer(str(tmp_path / "t"))


def test_malformed_files_are_refused(tmp_path):
    write_tokenizer(tmp_path / "t")
    (tmp_path / "t" / "merges.txt").write_text("#version: 0.2\nh e x\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: 'h e x' is not two tokens"):
        load_tokenizer(str(tmp_path / "t"))
    (tmp_path / "t" / "vocab.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_tokenizer(str(tmp_path / "t"))
    (tmp_path / "t" / "vocab.json").write_text(json.dumps({"a": 0, "b": 2}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"the ids must be 0\.\.1, each once"):
        load_tokenizer(str(tmp_path / "t"))
    (tmp_path / "t" / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}), encoding="utf-8")
    with pytest.raises(ValueError, match="lacks single-byte tokens"):
        load_tokenizer(str(tmp_path / "t"))


def test_bad_ids_and_bad_input_are_clear_errors(tok):
    with pytest.raises(ValueError, match=r"token ids \[99999\] are not in the vocabulary"):
        tok.decode([1, 99999])
    with pytest.raises(TypeError, match="encode takes a str, got bytes"):
        tok.encode(b"the")
    with pytest.raises(ValueError, match=r"lone surrogate '\\ud800' at position 2: it is not valid Unicode"):
        tok.encode("ab\ud800c")
