"""Which base model an adapter belongs to: a fingerprint of the base's weights, kept in the adapter file.

An adapter is a change to one particular set of weights. Loaded onto another base of the same
shape (another pretraining run, another seed), it loads without complaint and computes nonsense.
So save_adapter records the base it was trained on, and load_adapter checks it:

    fingerprint = {"tensors": {name: digest}, "config": model.config as a dict, or None}

What is hashed: every floating-point parameter and buffer outside the model's LoRA layers (the
weights LoRA never changes: embeddings, LayerNorms, layers without an adapter), each by its
name, shape and values (as float32 bytes; SHA-256, the first 16 hex digits). Left out are the
LoRA layers' own base weights, which merging, PiSSA's residual and QLoRA's 4-bit storage change,
and the biases the adapter file itself carries (trained with bias="lora_only" or "all"). So a model
with adapters, merged or not, quantized or not, has the fingerprint of the plain base it came
from.

A check compares the tensors both sides have: the file's names that the model holds outside its
own LoRA layers. One differing digest means another base. Nothing in common (or a file written
before fingerprints existed) means nothing to check.
"""
import ctypes
import hashlib
from dataclasses import asdict, is_dataclass

import torch

from minilora.model_ops import lora_layers

DIGEST_CHARS = 16  # of SHA-256's 64 hex digits: ample to tell bases apart


def tensor_digest(t):
    """SHA-256 of a tensor's shape and its values as float32 (first DIGEST_CHARS hex digits)."""
    values = t.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(repr(tuple(values.shape)).encode())
    h.update(ctypes.string_at(values.data_ptr(), values.nbytes))  # the values' bytes, read from memory
    return h.hexdigest()[:DIGEST_CHARS]


def base_tensors(model, skip=()):
    """{name: tensor} for the floating-point parameters and buffers outside model's LoRA layers,
    minus the names in skip; a tied weight once, under its first name."""
    inside = [name + "." for name, _ in lora_layers(model)]
    seen, found = set(), {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point() or name in skip or any(name.startswith(p) for p in inside):
            continue
        if id(t) not in seen:
            seen.add(id(t))
            found[name] = t
    return found


def model_config(model):
    """model.config as a dict of plain values (a dataclass, as nanogpt's GPTConfig, or a dict), or None."""
    config = getattr(model, "config", None)
    if is_dataclass(config) and not isinstance(config, type):
        config = asdict(config)
    if not isinstance(config, dict):
        return None
    return {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str, type(None)))}


def base_fingerprint(model, skip=()):
    """The fingerprint of model's base (see the module docstring); skip: tensor names to leave out."""
    return {"tensors": {name: tensor_digest(t) for name, t in base_tensors(model, skip).items()},
            "config": model_config(model)}


def short_id(fingerprint):
    """One 12-digit id for a whole fingerprint, for people to read and compare."""
    h = hashlib.sha256()
    for name, digest in sorted(fingerprint["tensors"].items()):
        h.update(f"{name}={digest};".encode())
    return h.hexdigest()[:12]


def base_mismatch(model, fingerprint, skip=()):
    """None if model's base matches fingerprint (or nothing can be compared), else a sentence
    naming the tensors whose values differ."""
    if not fingerprint or not fingerprint.get("tensors"):
        return None
    here = base_tensors(model, skip)
    common = [name for name in fingerprint["tensors"] if name in here]
    differ = [name for name in common if tensor_digest(here[name]) != fingerprint["tensors"][name]]
    if not differ:
        return None
    theirs = {"tensors": {name: fingerprint["tensors"][name] for name in common}}
    ours = {"tensors": {name: tensor_digest(here[name]) for name in common}}
    return (f"it was made for another base model: {len(differ)} of the {len(common)} base tensors it records "
            f"differ from this model's (e.g. {differ[:3]}; base id {short_id(theirs)} in the file, "
            f"{short_id(ours)} here)")
