"""Checkpoints: written atomically, read without ever running code.

A checkpoint is a dict of tensors and plain Python values only (the config as a dict, not a
dataclass), so `torch.load(weights_only=True)` can read it: a file from a stranger cannot
execute anything when loaded.
"""
import os
from dataclasses import asdict

import torch

from nanogpt.model import GPT, GPTConfig


def atomic_save(obj, path):
    """torch.save to a temporary file, then rename: an interrupted save never leaves a broken file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path, model, optimizer=None, step=0, corpus=None, **extra):
    checkpoint = {
        "config": asdict(model.config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "corpus": corpus,
        **extra,
    }
    atomic_save(checkpoint, path)


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint dict; a missing or unreadable file is a clear error naming the path."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no checkpoint at {path!r}; train one first: python -m nanogpt.train --out DIR "
            f"writes DIR/ckpt.pt"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        raise ValueError(f"{path!r} is not a readable checkpoint (corrupt or not a torch file): {e}") from e
    missing = [k for k in ("config", "model") if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise ValueError(f"{path!r} is not a nanogpt checkpoint: it has no {missing} entries")
    return checkpoint


def load_model(path, map_location="cpu"):
    """(GPT with the checkpoint's weights, the checkpoint dict)."""
    checkpoint = load_checkpoint(path, map_location)
    model = GPT(GPTConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return model.to(map_location), checkpoint
