"""Byte-level tokens: a text's UTF-8 bytes are its tokens (vocabulary 256).

Lossless for every text in every language, and no vocabulary file: any checkpoint reads any corpus.
The price is longer sequences than a learned BPE vocabulary would give.
"""
import torch

VOCAB_SIZE = 256


def encode(text):
    """str -> (N,) uint8 tensor of its UTF-8 bytes."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)


def decode(tokens):
    """A sequence of byte values (tensor or list) -> str. Bytes that do not form valid UTF-8
    (a sample can stop mid-character) become U+FFFD instead of raising."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.tolist()
    return bytes(tokens).decode("utf-8", errors="replace")
