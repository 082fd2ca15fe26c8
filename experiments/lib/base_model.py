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

from nanogpt import distributed
from nanogpt.checkpoint import load_checkpoint, load_model
from nanogpt.data import load_corpus
from nanogpt.flags import CommandError
from nanogpt.model import GPT
from nanogpt.run_folder import RunFolder, clean_stale_temporaries
from nanogpt.train import configure_optimizer, restore_training_state, train, write_json
from nanogpt.train_config import TrainConfig


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
                   rebuild_broken=False, progress=True):
    """(base GPT on `device`, path of its checkpoint), pretraining it first if not cached.
    corpus: a nanogpt.data.Corpus (its bytes decide the cache key), or a corpus name or path.

    force: pretrain again even if cached. An interrupted pretraining (a checkpoint without the
    finished marker) continues from its checkpoint. A cached model that cannot be read (a damaged
    file, non-finite weights) is an error naming the folder, unless rebuild_broken: then it is
    pretrained again (the experiments' --force)."""
    if isinstance(corpus, str):
        corpus = load_corpus(corpus, config.block_size)
    settings = pretrain_settings(corpus, config, max_iters, batch_size, lr, seed, device)
    out_dir = os.path.join(cache_dir, f"base-{settings_key(settings)}")
    ckpt = os.path.join(out_dir, "ckpt.pt")
    done_marker = os.path.join(out_dir, "settings.json")  # written last: only a finished run has it
    if os.path.isdir(out_dir):
        clean_stale_temporaries(out_dir)
    distributed.check_same(os.path.exists(done_marker), f"whether the base model in {out_dir!r} is finished")
    if not force and os.path.exists(done_marker):
        try:
            model, _ = load_model(ckpt, map_location=device)
            return model, ckpt
        except (ValueError, OSError) as e:
            if not rebuild_broken:
                raise CommandError(f"the cached base model in {out_dir!r} cannot be used: {e}. Run again with "
                                   f"--force to pretrain it again, or delete that folder") from None
            print(f"the cached base model in {out_dir} cannot be used ({e}); pretraining it again")
    torch.manual_seed(seed)
    model = GPT(config)
    optimizer = configure_optimizer(model, lr, 0.1)
    resume = None  # a new run from step 0, unless an interrupted one is found
    resumable = _interrupted_run(ckpt, settings) if not force and not os.path.exists(done_marker) else None
    if resumable is not None:
        resume = restore_training_state(resumable, model, optimizer, out_dir)
        print(f"continuing the interrupted pretraining in {out_dir} from step {resume.step} of {max_iters}")
    else:
        print(f"pretraining the base model on {corpus.name} ({max_iters} steps) -> {out_dir}")
    train_config = TrainConfig(max_iters=max_iters, batch_size=batch_size, lr=lr,
                               eval_interval=max(1, max_iters // 4), device=device, seed=seed, progress=progress)
    train(model, corpus.train, {"train": corpus.train, "val": corpus.val}, train_config, optimizer=optimizer,
          folder=RunFolder(out_dir, corpus.name, settings, resume))
    if distributed.is_main():  # under torchrun, rank 0 writes; the others read it once it is written
        write_json({**settings, "corpus_name": corpus.name}, done_marker)
    distributed.barrier()
    model, _ = load_model(ckpt, map_location=device)
    return model, ckpt


def _interrupted_run(ckpt, settings):
    """The checkpoint of an unfinished pretraining with exactly these settings, or None."""
    if not os.path.exists(ckpt):
        return None
    try:
        checkpoint = load_checkpoint(ckpt)
    except (ValueError, OSError):
        return None
    return checkpoint if checkpoint.get("settings") == settings else None
