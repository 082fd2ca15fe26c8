"""nanogpt: a small, readable GPT with byte-level tokens, offline corpora, training and sampling."""
from nanogpt.model import GPT, GPTConfig
from nanogpt.presets import PRESETS, config_from_preset
