"""Fine-tune a trained GPT on your own text: a LoRA adapter (the default), or every weight (--full).

    python -m nanogpt.finetune --base runs/base/ckpt.pt --corpus my.txt --out runs/my-adapter
    python -m nanogpt.finetune --base runs/base/ckpt.pt --corpus my.txt --lora-r 8 --lora-alpha 16 \\
        --lora-targets all-linear --max-iters 600 --out runs/my-adapter
    python -m nanogpt.finetune --base runs/base/ckpt.pt --corpus my.txt --qlora --out runs/my-qlora
    python -m nanogpt.finetune --base runs/base/ckpt.pt --corpus my.txt --full --out runs/my-full
    python -m nanogpt.finetune --init-from gpt2/ --corpus my.txt --out runs/gpt2-lora --export-hf runs/gpt2-merged
                                  # a real GPT-2 (Hugging Face folder, docs/gpt2.md) and its BPE tokenizer
    torchrun --standalone --nproc_per_node 2 -m nanogpt.finetune --base runs/base/ckpt.pt --corpus my.txt \
        --out runs/my-adapter     # on 2 processes (GPUs, or CPU processes): the same run, see below

OUT gets:
    adapter.pt     the adapter (LoRA only): A, B, the config, and the base's fingerprint (a few
                   hundred KB: minilora.save_adapter); use it with nanogpt.sample --adapter, merge it
                   with nanogpt.export, look inside with nanogpt.inspect_adapter
    history.json   one record per evaluation: train_loss and val_loss on the new text, base_val_loss
                   on the base's own corpus (what fine-tuning makes the model forget), lr, time
    settings.json  the settings of the run, every default filled in
    ckpt.pt        the training state (weights, optimizer, settings, history, random state) for
                   --resume; after --full it is also the fine-tuned model, for nanogpt.sample --ckpt
With --export-hf DIR, DIR gets the fine-tuned model (adapter merged) as a Hugging Face GPT-2 folder
(nanogpt.pretrained.save_gpt2), with the tokenizer files of the --init-from folder.

The run is nanogpt.train's: the same loop (train()), progress bar, checks and atomic writes. A
folder that already holds a run is continued only with --resume (with the settings it was started
with: a flag given again with another value is refused) and replaced only with --overwrite; a
loss that becomes NaN or inf stops the run, keeping the last good checkpoint. Launched by torchrun,
it trains with DistributedDataParallel as nanogpt.train does (nanogpt/distributed.py): --batch-size
is the global batch, each of the N processes trains on its share of it, only the adapters'
gradients are all-reduced, and only rank 0 writes the run's files; the run gives the losses one
process gives, to float rounding.

The defaults are the setup the project's learning rates were tuned on (see DEFAULT_LR): LoRA r=8,
alpha 16, on every linear layer of every block, 600 steps at batch 12, a warm-up of a tenth of
the steps, no weight decay. On other text, models or budgets they are a starting point, not an
optimum.
"""
import argparse
import os
import shutil
import statistics
import sys

import torch

from minilora import apply_lora, count_parameters, save_adapter
from minilora.config import ALL_LINEAR, QUANTIZE_CHOICES
from nanogpt import distributed
from nanogpt.bpe import MERGES, VOCAB, load_tokenizer
from nanogpt.checkpoint import check_plain_gpt_weights, config_from_checkpoint, load_checkpoint
from nanogpt.data import load_corpus
from nanogpt.flags import (DEVICE_HELP, CommandError, choice, fraction, non_negative_float, non_negative_int,
                           positive_float, positive_int, run_main)
from nanogpt.flags import device as device_flag
from nanogpt.flags import seed as seed_flag
from nanogpt.model import GPT
from nanogpt.pretrained import CONFIG, SAFETENSORS, load_init_from, save_gpt2
from nanogpt.run_folder import RunFolder, check_run_folder, check_writable_folder, resolve_settings
from nanogpt.train import configure_optimizer, divergence_warning, restore_training_state, train, write_json
from nanogpt.train_config import TrainConfig

# The peak learning rate of each method, the best grid rate of `python -m experiments.lr_sweep` (lowest
# final loss on the new text, mean of three seeds) on the setup the defaults below describe: the tiny GPT
# pretrained on python-code, fine-tuned on python-docs (results/lr_sweep/lr_sweep.json, section 1 of
# experiments/REPRODUCTIONS.md). LoRA wants about 3x full fine-tuning's rate here. The experiments read
# these too (experiments.lib.common.DEFAULT_LR is this dict): change them here, and only from a new sweep.
DEFAULT_LR = {"full": 1.8e-3, "lora": 5.6e-3}

ADAPTER, SETTINGS = "adapter.pt", "settings.json"
# The settings that define a run and their defaults; None = derived from others (see fill_defaults).
RUN_DEFAULTS = dict(base=None, corpus=None, full=False, lora_r=8, lora_alpha=16.0, lora_targets=ALL_LINEAR,
                    lora_dropout=0.0, quantize=None, max_iters=600, batch_size=12, lr=None, min_lr=None,
                    warmup_iters=None, weight_decay=0.0, grad_clip=1.0, eval_interval=100, eval_iters=20,
                    seed=1337, base_corpus=None, init_from=None, block_size=None)
LORA_FLAGS = ("lora_r", "lora_alpha", "lora_targets", "lora_dropout", "quantize")


def targets_flag(text):
    """'all-linear', or comma-separated layer names ('q_proj,v_proj'), for apply_lora."""
    if text == ALL_LINEAR:
        return text
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"must be {ALL_LINEAR!r} or comma-separated layer names like q_proj,v_proj, "
                                         f"got {text!r}")
    return names


def make_parser():
    p = argparse.ArgumentParser(
        description="Fine-tune a trained GPT on a text: a LoRA adapter by default, every weight with --full.",
        epilog="A folder that already holds a run is continued only with --resume (with its saved settings) and "
               "replaced only with --overwrite. Then: python -m nanogpt.sample --ckpt BASE --adapter OUT/adapter.pt; "
               "python -m nanogpt.export --base BASE --adapter OUT/adapter.pt --out MERGED. On several processes: "
               "torchrun --standalone --nproc_per_node N -m nanogpt.finetune ... (DistributedDataParallel; "
               "--batch-size stays the global batch; see nanogpt/distributed.py).")
    p.add_argument("--base", metavar="CKPT", help="the trained base model's checkpoint, e.g. runs/base/ckpt.pt "
                                                  "from nanogpt.train (required, except with --resume)")
    p.add_argument("--init-from", metavar="DIR",
                   help="instead of --base: a GPT-2 checkpoint in the Hugging Face layout (config.json, "
                        "model.safetensors, vocab.json, merges.txt; see docs/gpt2.md); the text is tokenized with its "
                        "BPE tokenizer and losses are also reported in nats per byte")
    p.add_argument("--block-size", type=positive_int,
                   help="with --init-from: train on a shorter context than GPT-2's 1024 positions (the position "
                        "embedding is cropped, as in nanoGPT; --export-hf then writes n_positions BLOCK_SIZE)")
    p.add_argument("--export-hf", metavar="OUT",
                   help="after training, write the fine-tuned model (adapter merged) to OUT in GPT-2's Hugging Face "
                        "layout (config.json, model.safetensors, and the tokenizer files with --init-from)")
    p.add_argument("--corpus", help="the text to learn: a file path, or python-code, python-docs, shakespeare "
                                    "(required, except with --resume)")
    p.add_argument("--out", required=True, help="folder for adapter.pt, history.json, settings.json and ckpt.pt")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from its checkpoint, with its settings")
    p.add_argument("--overwrite", action="store_true", help="start over in OUT, replacing the run it holds")
    p.add_argument("--full", action="store_const", const=True, default=None,
                   help="full fine-tuning: every weight trains and no adapter is made (default: LoRA)")
    p.add_argument("--lora-r", type=positive_int, help=f"the adapters' rank r (default {RUN_DEFAULTS['lora_r']})")
    p.add_argument("--lora-alpha", type=positive_float,
                   help=f"LoRA's alpha: the update is scaled by alpha / r (default {RUN_DEFAULTS['lora_alpha']:g})")
    p.add_argument("--lora-targets", type=targets_flag,
                   help="the layers to adapt: all-linear (every linear layer but the output head), or names like "
                        "q_proj,v_proj (default all-linear)")
    p.add_argument("--lora-dropout", type=fraction, help="dropout on the adapters' input, in [0, 1) (default 0)")
    p.add_argument("--quantize", type=choice([q for q in QUANTIZE_CHOICES if q]),
                   help="QLoRA: store the adapted layers' base weights in 4 bits: nf4, fp4 or int4 (default: "
                        "full precision)")
    p.add_argument("--qlora", dest="quantize", action="store_const", const="nf4", help="the same as --quantize nf4")
    p.add_argument("--max-iters", type=positive_int, help=f"training steps (default {RUN_DEFAULTS['max_iters']})")
    p.add_argument("--batch-size", type=positive_int,
                   help=f"sequences per optimizer step, over all processes: under torchrun with N processes each "
                        f"takes batch-size / N of them, so N must divide it (default {RUN_DEFAULTS['batch_size']})")
    p.add_argument("--lr", type=positive_float,
                   help=f"peak learning rate (default {DEFAULT_LR['lora']:g} for LoRA, {DEFAULT_LR['full']:g} with "
                        f"--full: the best rates of experiments.lr_sweep on the default setup; see DEFAULT_LR in "
                        f"nanogpt/finetune.py)")
    p.add_argument("--min-lr", type=non_negative_float, help="end of the cosine decay (default lr / 10)")
    p.add_argument("--warmup-iters", type=non_negative_int, help="linear warm-up steps (default max-iters / 10)")
    p.add_argument("--weight-decay", type=non_negative_float, help="AdamW weight decay on matrices (default 0)")
    p.add_argument("--grad-clip", type=non_negative_float,
                   help=f"gradient norm limit, 0 = off (default {RUN_DEFAULTS['grad_clip']:g})")
    p.add_argument("--eval-interval", type=positive_int,
                   help=f"steps between evaluations (default {RUN_DEFAULTS['eval_interval']})")
    p.add_argument("--eval-iters", type=positive_int, help=f"batches per evaluation (default {RUN_DEFAULTS['eval_iters']})")
    p.add_argument("--base-corpus",
                   help="the base model's own text, evaluated as base_val_loss to show what is forgotten: a name or "
                        "path, or none (default: the corpus the base checkpoint records)")
    p.add_argument("--seed", type=seed_flag, help=f"adapter init and batch order (default {RUN_DEFAULTS['seed']})")
    p.add_argument("--device", type=device_flag, default="auto",
                   help=DEVICE_HELP + " (default auto; under torchrun, cuda means cuda:LOCAL_RANK)")
    p.add_argument("--dist-backend", type=distributed.backend_flag, default="auto", help=distributed.BACKEND_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and scripts)")
    return p


def fill_defaults(settings, base_checkpoint):
    """The defaults that depend on other settings (on a fresh run; a resumed run has them all)."""
    method = "full" if settings["full"] else "lora"
    if settings["lr"] is None:
        settings["lr"] = DEFAULT_LR[method]
    if settings["min_lr"] is None:
        settings["min_lr"] = settings["lr"] / 10
    if settings["warmup_iters"] is None:
        settings["warmup_iters"] = max(1, settings["max_iters"] // 10)
    if settings["base_corpus"] is None:
        settings["base_corpus"] = base_checkpoint.get("corpus") or "none"
    return settings


def check_settings(settings, given):
    if (settings["base"] is None and settings["init_from"] is None) or settings["corpus"] is None:
        missing = [flag for flag, name in (("--base (or --init-from)", "base"), ("--corpus", "corpus"))
                   if settings[name] is None and not (name == "base" and settings["init_from"] is not None)]
        raise CommandError(f"the following arguments are required for a new run: {', '.join(missing)}")
    if settings["block_size"] is not None and settings["init_from"] is None:
        raise CommandError("--block-size crops the context of a GPT-2 given with --init-from; a --base checkpoint "
                           "keeps the block size it was trained with")
    if settings["full"]:
        lora_given = [f"--{name.replace('_', '-')}" for name in LORA_FLAGS if given.get(name) is not None]
        if lora_given:
            raise CommandError(f"{', '.join(lora_given)} set up the LoRA adapter; with --full every weight trains "
                               f"and there is no adapter: leave out one or the other")
    if settings["min_lr"] > settings["lr"]:
        raise CommandError(f"--min-lr {settings['min_lr']:g} is above --lr {settings['lr']:g}: the schedule decays "
                           f"from --lr down to --min-lr")


def build_model(config, settings, device, base_weights=None, base_model=None):
    """A GPT of config holding base_weights (a state_dict; None: a resumed run loads its own later),
    or base_model itself (a loaded GPT-2), with the run's adapter added (or every weight trainable,
    for --full), on device. The weights go in before the adapter, so that QLoRA quantizes the base's
    real weights."""
    model = base_model if base_model is not None else GPT(config)
    if base_weights is not None:
        model.load_state_dict(base_weights)
    if settings["full"]:
        return model.to(device).requires_grad_(True)
    targets = settings["lora_targets"]
    try:
        apply_lora(model, targets, r=settings["lora_r"], alpha=settings["lora_alpha"],
                   dropout=settings["lora_dropout"], quantize=settings["quantize"])
    except (ValueError, TypeError) as e:
        raise CommandError(f"--lora-targets / --lora-r: {e}") from None
    return model.to(device)


def load_corpora(settings, block_size, out, saved=None, tokenizer=None):
    """(new text, base corpus or None), checked against the hashes a resumed run recorded; tokenized
    with tokenizer (a real GPT-2's BPE), or as bytes when it is None."""
    corpus = load_corpus(settings["corpus"], block_size, tokenizer=tokenizer)
    base_corpus = None
    if settings["base_corpus"] != "none":
        try:
            base_corpus = load_corpus(settings["base_corpus"], block_size, tokenizer=tokenizer)
        except (OSError, ValueError, RuntimeError) as e:
            raise CommandError(f"the base's own corpus {settings['base_corpus']!r} (for base_val_loss, what is "
                               f"forgotten) cannot be read: {e}. Give it with --base-corpus PATH, or --base-corpus "
                               f"none to skip it") from None
    for name, c in (("corpus", corpus), ("base_corpus", base_corpus)):
        if c is None:
            continue
        before = (saved or {}).get(f"{name}_sha256")
        if before is not None and before != c.sha256:
            raise CommandError(f"--{name.replace('_', '-')} {settings[name]!r} has changed since the run in {out!r} "
                               f"started (SHA-256 {before[:12]}... then, {c.sha256[:12]}... now): resuming would "
                               f"train or evaluate on other bytes. Restore the file, or start a new run")
        settings[f"{name}_sha256"] = c.sha256
    settings["val_bytes_per_token"] = corpus.val_bytes_per_token  # val_loss / this = nats per byte
    return corpus, base_corpus


def check_export_folder(folder, overwrite):
    """--export-hf: writable, and not holding a checkpoint unless --overwrite; checked before any work."""
    check_writable_folder(folder, "--export-hf")
    there = [name for name in (CONFIG, SAFETENSORS) if os.path.exists(os.path.join(folder, name))]
    if there and not overwrite:
        raise CommandError(f"--export-hf {folder!r} already holds {there}; choose another folder, or add --overwrite "
                           f"to replace it")


def main(argv=None):
    args = make_parser().parse_args(argv)
    device = distributed.setup(args.device, args.dist_backend)  # under torchrun: join the others
    out = args.out
    ckpt_path = os.path.join(out, "ckpt.pt")
    given = {name: getattr(args, name) for name in RUN_DEFAULTS}

    # Everything is checked before any work: the folder, the settings, the base, the corpora, the targets.
    check_run_folder(out, resume=args.resume, overwrite=args.overwrite)
    if args.export_hf:
        check_export_folder(args.export_hf, args.overwrite)
    base_model = tokenizer = None
    if args.resume:
        checkpoint = load_checkpoint(ckpt_path)
        saved = dict(checkpoint.get("settings") or {})
        if "lora_r" not in saved:
            raise CommandError(f"{ckpt_path!r} was not written by nanogpt.finetune (its settings have no lora_r); "
                               f"resume it with the command that made it")
        settings = resolve_settings(given, RUN_DEFAULTS, saved, source=repr(out))
        config = config_from_checkpoint(checkpoint, ckpt_path)
        if settings.get("init_from"):
            tokenizer = load_tokenizer(settings["init_from"])
    else:
        saved = None
        settings = resolve_settings(given, RUN_DEFAULTS)
        if settings["base"] is not None and settings["init_from"] is not None:
            raise CommandError("--base and --init-from both give the model to fine-tune: give one of them")
        if settings["base"] is not None:
            checkpoint = load_checkpoint(settings["base"])
            check_plain_gpt_weights(checkpoint["model"], settings["base"])
            config = config_from_checkpoint(checkpoint, settings["base"])
            fill_defaults(settings, checkpoint)
        elif settings["init_from"] is not None:
            base_model, tokenizer = load_init_from(settings["init_from"], settings["block_size"])
            config = base_model.config
            fill_defaults(settings, {})
        check_settings(settings, given)
        if settings["base"] is not None and os.path.abspath(ckpt_path) == os.path.abspath(settings["base"]):
            raise CommandError(f"--out {out!r} holds the base checkpoint {settings['base']!r}: the run would replace it; "
                               f"choose another --out")
    distributed.batch_share(settings["batch_size"], world=distributed.world_size(), what="--batch-size")
    train_config = TrainConfig.from_settings(settings, device=device, progress=not args.no_progress)
    corpus, base_corpus = load_corpora(settings, config.block_size, out, saved, tokenizer)

    torch.manual_seed(settings["seed"])
    base_weights = None if args.resume or base_model is not None else checkpoint["model"]
    model = build_model(config, settings, device, base_weights, base_model)
    optimizer = configure_optimizer(model, settings["lr"], settings["weight_decay"])
    resume = None
    if args.resume:
        resume = restore_training_state(checkpoint, model, optimizer, out)
        print(f"resuming {ckpt_path} at step {resume.step} of {settings['max_iters']}")
    elif distributed.is_main():  # under torchrun, rank 0 writes the files
        write_json(settings, os.path.join(out, SETTINGS))
    trainable, total, percent = count_parameters(model)
    what = "full fine-tuning" if settings["full"] else (
        f"LoRA r={settings['lora_r']} alpha={settings['lora_alpha']:g} on {settings['lora_targets']}"
        + (f", {settings['quantize']} base" if settings["quantize"] else ""))
    processes = f" | {distributed.world_size()} processes" if distributed.is_distributed() else ""
    unit = "bytes" if tokenizer is None else "tokens"
    print(f"{what}: {trainable:,} of {total:,} parameters train ({percent:.2f}%) | {settings['corpus']}: "
          f"{len(corpus.train):,} train {unit}, {len(corpus.val):,} val {unit} | device {device}{processes}")
    eval_data = {"train": corpus.train, "val": corpus.val}
    if base_corpus is not None:
        eval_data["base_val"] = base_corpus.val
    try:
        result = train(model, corpus.train, eval_data, train_config, optimizer=optimizer,
                       folder=RunFolder(out, settings["corpus"], settings, resume))
    except KeyboardInterrupt as e:
        raise KeyboardInterrupt(f"{e}. Continue the run with: python -m nanogpt.finetune --out {out} --resume") from None
    report(model, settings, result, out, args.export_hf)
    distributed.barrier()  # rank 0's adapter is written when main() returns, in every process
    return result


def report(model, settings, result, out, export_hf=None):
    """Write the adapter (LoRA) and the --export-hf folder, and print where things are and what to
    run next: on rank 0 only, under torchrun (the processes' models are identical under DDP)."""
    if not distributed.is_main():
        return
    last, first = result["history"][-1], result["history"][0]
    if settings.get("init_from"):  # BPE tokens: the loss per token, and per byte of text to compare with byte models
        per = settings["val_bytes_per_token"]
        lines = [f"step {last['step']}: loss on the new text {first['val_loss']:.4f} -> {last['val_loss']:.4f} "
                 f"nats/token = {first['val_loss'] / per:.4f} -> {last['val_loss'] / per:.4f} nats/byte "
                 f"({per:.2f} bytes per token)"]
    else:
        lines = [f"step {last['step']}: loss on the new text {first['val_loss']:.4f} -> {last['val_loss']:.4f} nats/byte"]
    if "base_val_loss" in last:
        lines.append(f"on the base's corpus {settings['base_corpus']}: {first['base_val_loss']:.4f} -> "
                     f"{last['base_val_loss']:.4f} (what fine-tuning forgot)")
    if result["step_times"]:
        tokens = settings["batch_size"] * model.config.block_size
        lines.append(f"{tokens / statistics.median(result['step_times']):,.0f} tokens/s (median step)")
    base = f"--init-from {settings['init_from']}" if settings.get("init_from") else f"--ckpt {settings['base']}"
    if settings.get("block_size"):
        base += f" --block-size {settings['block_size']}"  # the adapter fits the cropped base only
    if export_hf:
        save_gpt2(model, export_hf, overwrite=True)  # merged into a copy; the folder was checked before training
        if settings.get("init_from"):
            for name in (VOCAB, MERGES):  # the tokenizer goes with the model
                shutil.copyfile(os.path.join(settings["init_from"], name), os.path.join(export_hf, name))
        lines.append(f"Hugging Face GPT-2 folder (adapter merged): {export_hf}")
    if settings.get("init_from") and not settings["full"]:
        adapter = os.path.join(out, ADAPTER)
        save_adapter(model, adapter)
        lines.append(f"adapter: {adapter} ({os.path.getsize(adapter) / 2**10:,.1f} KiB)\n"
                     f"sample:  python -m nanogpt.sample {base} --adapter {adapter}")
    elif settings["full"] and settings.get("init_from"):
        lines.append(f"the fine-tuned model: {os.path.join(out, 'ckpt.pt')}; as a GPT-2 folder to sample with "
                     f"--init-from: add --export-hf OUT")
    elif settings["full"]:
        lines.append(f"the fine-tuned model: {os.path.join(out, 'ckpt.pt')}\n"
                     f"sample: python -m nanogpt.sample --ckpt {os.path.join(out, 'ckpt.pt')}")
    else:
        adapter = os.path.join(out, ADAPTER)
        save_adapter(model, adapter)
        lines.append(f"adapter: {adapter} ({os.path.getsize(adapter) / 2**10:,.1f} KiB)\n"
                     f"sample:  python -m nanogpt.sample --ckpt {settings['base']} --adapter {adapter}\n"
                     f"merge:   python -m nanogpt.export --base {settings['base']} --adapter {adapter} --out MERGED")
    print("\n".join(lines))
    warning = divergence_warning(result["history"], model.config.vocab_size)
    if warning:
        print(warning, file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
