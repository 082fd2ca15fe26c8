"""Will the batch fit in memory? train() asks first, so an absurd batch is refused at once.

A training step keeps, for the backward pass, what every layer's forward saved: its inputs,
attention scores, GELU inputs, the logits' softmax, for every sequence of the batch. That memory
grows with the batch and is needed all at once, so a batch whose saved activations alone exceed the
machine's memory cannot train; without this check such a run first spends minutes drawing and
stacking its batches and then dies out of memory (or swaps for hours).

The activations are measured, not guessed: autograd's saved_tensors_hooks sees every tensor the
forward saves, and a forward of two sequences minus a forward of one leaves one sequence's share
(the weights the matmuls save are the same in both and cancel). That works for any model, LoRA
adapters and quantized bases included. The probe runs in eval mode, so it draws no dropout masks
(the run's random numbers are untouched) and leaves those masks out: the estimate is a lower bound,
and the check refuses only batches that cannot fit, never one that might.

The limit is the machine's memory in all: RAM on the CPU, the GPU's memory on CUDA, the recommended
maximum on MPS. Under torchrun each process checks its own share of the batch.
"""
import os

import torch

from nanogpt.data import get_batch
from nanogpt.device import autocast

TOKEN_BYTES = 8  # a batch's inputs and targets are int64


def saved_bytes(model, x, y, device):
    """Bytes of the tensors autograd saves for the backward pass in one forward of (x, y)."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()  # a view and its base share a storage: counted once
        storages[(storage.data_ptr(), str(t.device))] = storage.nbytes()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(device):
        model(x, y)
    return sum(storages.values())


def activation_bytes_per_row(model, data, device):
    """What one sequence of the batch adds to a training step's saved activations, measured."""
    block_size = model.config.block_size
    g = torch.Generator().manual_seed(0)  # its own generator: the global random state is not touched
    x, y = get_batch(data, 2, block_size, generator=g, device=device)  # (2, T)
    was_training = model.training
    model.eval()
    try:
        one, two = saved_bytes(model, x[:1], y[:1], device), saved_bytes(model, x, y, device)
    finally:
        model.train(was_training)
    return max(0, two - one)


def machine_memory(device):
    """(bytes, what they are) for device, or (None, what) where this machine does not say."""
    device = str(device)
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory, f"the memory of GPU {device}"
    if device.startswith("mps"):
        limit = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
        return (limit() if limit else None), "the recommended maximum for MPS"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM in all"
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return None, "this machine's RAM"


def size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024


def check_batch_fits(model, train_data, config, eval_sets, world=1):
    """Refuse, before any training, a batch that cannot fit: ValueError naming the batch, what it
    needs at least, the machine's memory, and the largest batch that could fit.

    Counted: the saved activations of this process's rows of config.batch_size, and the fixed
    evaluation batches train() keeps for the whole run (eval_sets x eval_iters x eval batch x T
    inputs and targets)."""
    limit, where = machine_memory(config.device)
    if limit is None:
        return
    block_size = model.config.block_size
    per_row = activation_bytes_per_row(model, train_data, config.device)
    rows = config.batch_size // world
    eval_per_row = eval_sets * config.eval_iters * block_size * 2 * TOKEN_BYTES  # one sequence in every eval batch
    eval_bytes = config.eval_rows * eval_per_row
    need = rows * per_row + eval_bytes
    if need <= limit:
        return
    share = f" ({rows:,} rows in each of {world} processes)" if world > 1 else ""
    message = (f"train(): batch_size {config.batch_size:,}{share} cannot fit in memory: its activations for the "
               f"backward pass alone take at least {size(rows * per_row)} ({size(per_row)} per sequence of "
               f"{block_size} tokens, measured on this model), and the fixed evaluation batches {size(eval_bytes)} "
               f"({eval_sets} sets x eval_iters {config.eval_iters} x {config.eval_rows:,} sequences); together at "
               f"least {size(need)}, but {where} is {size(limit)}. ")
    if config.eval_batch_size is None:  # the evaluation batches are batch_size sequences too
        largest = limit // (per_row / world + eval_per_row)
    else:
        largest = (limit - eval_bytes) // max(1, per_row / world)
    largest = int(largest) // world * world
    if largest >= world:
        message += f"The largest batch_size that could fit: {largest:,} (give less: the estimate is a lower bound)."
    elif config.eval_batch_size is not None and eval_bytes > limit:
        message += (f"The evaluation batches alone do not fit: lower eval_batch_size (now {config.eval_batch_size:,}) "
                    f"or eval_iters.")
    else:
        message += "Not even one sequence per process fits: use a smaller model or block_size."
    raise ValueError(message)
