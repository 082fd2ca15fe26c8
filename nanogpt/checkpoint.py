"""Checkpoints: written atomically, read without ever running code.

A checkpoint is a dict of tensors and plain Python values only (the config as a dict, not a
dataclass), so `torch.load(weights_only=True)` can read it: a file from a stranger cannot
execute anything when loaded.
"""
import os
from dataclasses import asdict

import torch

from nanogpt.model import GPT, GPTConfig


def atomic_write(path, write):
    """write(tmp) to a temporary file beside path, then rename it to path: an interrupted write
    never leaves a broken file under path. The temporary is removed if writing fails; one left by a
    killed process is named PATH.tmpPID, and nanogpt.run_folder.clean_stale_temporaries removes it."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write to {path!r}: it is a folder; give a file path inside it")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save(obj, path):
    """torch.save, atomically (atomic_write)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(path, model, optimizer=None, step=0, corpus=None, **extra):
    """Write model (its config and weights), optimizer state, step and corpus name to path,
    atomically; extra entries (train() adds the run's settings, history and RNG state) go in as
    they are, and must be tensors or plain Python values."""
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
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder, not a checkpoint file; a run's checkpoint is "
                                f"{os.path.join(path, 'ckpt.pt')!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no checkpoint at {path!r}; train one first: python -m nanogpt.train --out DIR "
            f"writes DIR/ckpt.pt"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a truncated or foreign file
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]  # torch's first sentence
        raise ValueError(f"{path!r} is not a readable checkpoint (corrupt or not a torch file): {reason}") from e
    missing = [k for k in ("config", "model") if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get(k), dict)]
    if missing:
        raise ValueError(f"{path!r} is not a nanogpt checkpoint: it has no {missing} entries")
    return checkpoint


def config_from_checkpoint(checkpoint, path):
    """The GPTConfig a checkpoint was made with; a clear error for keys this code does not know."""
    config = checkpoint["config"]
    known = set(GPTConfig.__dataclass_fields__)
    unknown = sorted(set(config) - known) if isinstance(config, dict) else None
    if unknown is None or unknown:
        raise ValueError(f"{path!r} has a model config this version of nanogpt cannot build "
                         f"(unknown keys: {unknown}; known: {sorted(known)}): it was written by another "
                         f"version or another program")
    return GPTConfig(**config)


def lora_keys(state_dict):
    """The keys that only a model with LoRA layers has (minilora wraps a layer as .base + .adapters)."""
    return [k for k in state_dict if ".adapters." in k or k.endswith("._extra_state") or ".base." in k]


def check_plain_gpt_weights(state_dict, path):
    """A plain GPT loads only a plain GPT's weights; name the other kinds of file clearly."""
    lora = lora_keys(state_dict)
    if lora:
        raise ValueError(
            f"{path!r} holds a model with LoRA layers (e.g. {lora[0]!r}), which a plain GPT cannot load. "
            f"Before saving, either fold the adapter into the weights with minilora.unload_lora(model) and "
            f"save that plain model, or save only the adapter with minilora.save_adapter(model, path) and "
            f"load it onto the base model with minilora.load_adapter(model, path)")
    bad = [k for k, t in state_dict.items() if torch.is_tensor(t) and t.is_floating_point() and not t.isfinite().all()]
    if bad:
        raise ValueError(f"{path!r} holds non-finite weights (NaN or inf) in {bad[:3]}{' ...' if len(bad) > 3 else ''}: "
                         f"it comes from a run that diverged; use an earlier checkpoint or train again with a "
                         f"lower learning rate")


def load_model(path, map_location="cpu"):
    """(GPT with the checkpoint's weights, the checkpoint dict)."""
    checkpoint = load_checkpoint(path, map_location)
    model = GPT(config_from_checkpoint(checkpoint, path))
    check_plain_gpt_weights(checkpoint["model"], path)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:  # missing / unexpected keys, wrong shapes
        raise ValueError(f"{path!r} does not hold the weights of the GPT its config describes: {e}") from None
    return model.to(map_location), checkpoint
