"""The pretrained base model every fine-tuning experiment starts from, made once and reused.

The checkpoint lives in CACHE/base-<key>/ckpt.pt, where <key> is a hash of everything that
decides its weights (the corpus's bytes, by their SHA-256, not its name; preset and overrides,
steps, batch, learning rate, seed, device type). A sweep, or a second experiment with the same
settings, never pretrains twice, and an edited corpus file never reuses an old model.
"""
import hashlib
import json
import os

import torch

from nanogpt.checkpoint import load_model
from nanogpt.data import load_corpus
from nanogpt.model import GPT
from nanogpt.train import train, write_json


def settings_key(settings):
    """A short stable hash of a JSON-able dict."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def pretrain_settings(corpus, config, max_iters, batch_size, lr, seed, device):
    """What decides the base model's weights; corpus is a nanogpt.data.Corpus, keyed by content."""
    return {
        "corpus_sha256": corpus.sha256, "config": config.__dict__, "max_iters": max_iters, "batch_size": batch_size,
        "lr": lr, "seed": seed, "device": str(device).split(":")[0],
    }


def get_base_model(corpus, config, *, max_iters, batch_size, lr, seed, device, cache_dir, force=False,
                   progress=True):
    """(base GPT on `device`, path of its checkpoint), pretraining it first if not cached.
    corpus: a nanogpt.data.Corpus (its bytes decide the cache key), or a corpus name or path."""
    if isinstance(corpus, str):
        corpus = load_corpus(corpus, config.block_size)
    settings = pretrain_settings(corpus, config, max_iters, batch_size, lr, seed, device)
    out_dir = os.path.join(cache_dir, f"base-{settings_key(settings)}")
    ckpt = os.path.join(out_dir, "ckpt.pt")
    done_marker = os.path.join(out_dir, "settings.json")  # written last: only a finished run has it
    if force or not os.path.exists(done_marker):
        print(f"pretraining the base model on {corpus.name} ({max_iters} steps) -> {out_dir}")
        torch.manual_seed(seed)
        model = GPT(config)
        train(model, corpus.train, {"train": corpus.train, "val": corpus.val}, max_iters=max_iters,
              batch_size=batch_size, lr=lr, eval_interval=max(1, max_iters // 4), device=device, seed=seed,
              out_dir=out_dir, corpus_name=corpus.name, progress=progress)
        write_json({**settings, "corpus_name": corpus.name}, done_marker)
    model, _ = load_model(ckpt, map_location=device)
    return model, ckpt
