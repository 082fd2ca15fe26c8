"""Training on several processes: torchrun starts them, DistributedDataParallel keeps them in step.

    torchrun --standalone --nproc_per_node 2 -m nanogpt.train --batch-size 12 ...     # 2 processes here
    python -m nanogpt.train --batch-size 12 ...                                        # 1 process: as always

What happens when a command is launched by torchrun (nothing here does anything otherwise):

  setup()      torchrun starts N copies of the command and gives each its RANK (0..N-1), LOCAL_RANK
               (its number on its machine) and WORLD_SIZE (N) in the environment. setup() joins them
               into one process group: gloo on CPUs, NCCL on GPUs (process k on GPU cuda:LOCAL_RANK).
  the batch    --batch-size is the GLOBAL batch: the sequences of one optimizer step, over all the
               processes. Each step every process draws the same global batch that one process would
               draw (the generator seeded by (seed, step)) and keeps its own rows: rank k of N takes
               rows [k B/N, (k+1) B/N) (batch_share). So N processes train on exactly the batches of
               one process, and a run gives the same losses, to float rounding, on any N.
  gradients    wrap() puts the model in DistributedDataParallel (DDP): after backward, each gradient
               is the mean of the N processes' gradients. Each process's loss is the mean over its
               B/N rows, so that mean is the gradient of the global batch's mean loss, as on one
               process. Clipping and AdamW then run on the same numbers in every process, so the
               weights stay identical without ever being sent again.
  LoRA         DDP synchronises only parameters with requires_grad=True: the frozen base takes no
               part, and each step all-reduces the adapters' gradients alone, a few percent of the
               model's bytes. wrap() counts those bytes (CommStats), the number experiments/bench/ddp.py reports.
  writing      only rank 0 writes checkpoints, records and plots and shows progress bars; the other
               processes' standard output is discarded (their errors still show). Evaluation is
               split: each process evaluates its share of the fixed batches, and the sum is
               all-reduced, so every process gets the same number and no batch is evaluated twice.

What is not bit for bit the same as one process: sums taken in another order (about 1e-6 in a
loss after 20 steps, tests/test_distributed.py), and dropout, whose masks come from a generator seeded per (seed, step, rank) so that the
processes draw different masks: the same distribution, not the same numbers.

A failure ends every process: a process that raises exits, torchrun sees it and stops the others
(a collective also fails at once when its peer's connection closes), and a process left waiting
on a stuck peer gives up after TIMEOUT_S.
"""
import atexit
import datetime
import os
import sys

import torch
import torch.distributed as dist

from nanogpt.flags import CommandError

BACKENDS = ("auto", "gloo", "nccl")
BACKEND_HELP = ("process-group backend under torchrun: auto (nccl on GPUs, gloo on CPUs), gloo, or nccl "
                "(default auto; ignored without torchrun)")
TIMEOUT_S = 600  # a collective that waits longer than this on a peer fails instead of hanging


def launched_by_torchrun():
    """True in a process that torchrun (or any launcher setting its variables) started."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def is_distributed():
    """True once setup() has joined this process to a process group."""
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if is_distributed() else 0


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main():
    """The process that writes files and prints: rank 0, or the only one."""
    return rank() == 0


def backend_flag(text):
    """An argparse type for --dist-backend: a backend this machine has."""
    import argparse

    if text not in BACKENDS:
        raise argparse.ArgumentTypeError(f"must be one of {list(BACKENDS)}, got {text!r}")
    if text == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise argparse.ArgumentTypeError(
            f"nccl needs CUDA GPUs and a torch built with NCCL; this machine has "
            f"{'no CUDA GPU' if not torch.cuda.is_available() else 'a torch without NCCL'} (torch "
            f"{torch.__version__}). Use gloo (CPUs) or auto")
    return text


def choose_backend(device, backend="auto"):
    """The backend for device: auto picks nccl for CUDA devices and gloo otherwise."""
    on_cuda = str(device).startswith("cuda")
    if backend == "auto":
        backend = "nccl" if on_cuda else "gloo"
    if backend == "nccl" and not on_cuda:
        raise CommandError(f"--dist-backend nccl all-reduces CUDA tensors, but the device is {device!r}: use "
                           f"--device cuda with nccl, or --dist-backend gloo (or auto) on {device!r}")
    if backend == "nccl" and not dist.is_nccl_available():
        raise CommandError(f"--dist-backend nccl: this torch ({torch.__version__}) was built without NCCL; use gloo")
    if backend == "gloo" and not dist.is_gloo_available():
        raise CommandError(f"--dist-backend gloo: this torch ({torch.__version__}) was built without gloo")
    return backend


def _device_for_this_process(device, local_rank, world):
    """cuda -> cuda:LOCAL_RANK, one GPU per process; cpu and mps stay as they are."""
    if not str(device).startswith("cuda"):
        return device
    if ":" in str(device) and world > 1:
        raise CommandError(f"--device {device!r} names one GPU, but under torchrun each of the {world} processes "
                           f"takes its own (cuda:LOCAL_RANK): give --device cuda")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise CommandError(f"the process with LOCAL_RANK {local_rank} has no GPU: this machine has {count}. "
                           f"Launch at most {count} processes per machine (--nproc_per_node {count})")
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}"


def setup(device, backend="auto", timeout_s=TIMEOUT_S, quiet_others=True):
    """Join the process group if torchrun launched this process; return the device it trains on.

    Without torchrun: returns device as it is, and nothing changes. Under torchrun: checks the
    backend against the device (nccl needs GPUs), takes GPU cuda:LOCAL_RANK on CUDA, joins the
    group (every process waits here for the others), and arranges to leave it at exit. With
    quiet_others, processes other than rank 0 print nothing (their stdout goes to /dev/null)."""
    if not launched_by_torchrun():
        return device
    if is_distributed():  # a second command in the same process (tests): already joined
        return _device_for_this_process(device, int(os.environ["LOCAL_RANK"]), world_size())
    backend = choose_backend(device, backend)
    world, local_rank = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    device = _device_for_this_process(device, local_rank, world)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    atexit.register(teardown)
    if quiet_others and rank() != 0:
        sys.stdout = open(os.devnull, "w")
    return device


def teardown():
    """Leave the process group (at exit; safe to call twice)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier():
    """Wait until every process gets here (e.g. until rank 0 has written a file others read)."""
    if is_distributed():
        dist.barrier()


def batch_share(batch_size, rank=0, world=1, what="batch_size"):
    """The rows of the global batch that process `rank` of `world` trains on: a slice.

    The global batch must split evenly, so that every process's loss is a mean over as many rows
    and the mean of those means is the global batch's mean loss. what: the name the error gives
    the batch size (a flag, for commands)."""
    if batch_size % world != 0:
        fits = [b for b in (batch_size - batch_size % world, batch_size - batch_size % world + world) if b > 0]
        raise ValueError(f"{what} {batch_size} is the global batch, and it cannot be split evenly over {world} "
                         f"processes: give a multiple of {world} (e.g. {' or '.join(map(str, fits))}), or "
                         f"launch a number of processes that divides {batch_size}")
    per_process = batch_size // world
    return slice(rank * per_process, (rank + 1) * per_process)


def sum_over_processes(value):
    """A Python number summed over all the processes (in float64); the number itself on one."""
    if not is_distributed():
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item()


def mean_over_processes(tensor):
    """The mean over processes of a scalar tensor (each process's mean loss -> the global batch's)."""
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total / world_size()


def check_same(value, what):
    """Stop with a clear error if the processes disagree about value (any picklable object):
    the processes must take the same path, or one would wait forever in a collective."""
    if not is_distributed():
        return
    values = [None] * world_size()
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise RuntimeError(f"the {world_size()} processes disagree about {what}: {values}. Under torchrun they must "
                           f"all see the same files (on several machines: a shared folder)")


class CommStats:
    """What DDP all-reduced: every bucket of gradients it sent, counted in bytes, with the ids of
    the parameters whose gradients were in it."""

    def __init__(self):
        self.bytes = 0  # all buckets, all steps
        self.buckets = 0
        self.steps = 0  # backward passes: each ends with its last bucket
        self.param_ids = set()

    def summary(self):
        """Per step: every step all-reduces the same gradients, so the division is exact."""
        steps = max(1, self.steps)
        return {"world_size": world_size(), "allreduce_bytes_per_step": self.bytes // steps,
                "buckets_per_step": self.buckets / steps, "synced_tensors": len(self.param_ids)}


def _counting_allreduce(stats, bucket):
    """DDP's own averaging all-reduce (allreduce_hook: divide by N, then sum), counting what it sends."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    buffer = bucket.buffer()  # the bucket's gradients, flattened into one tensor
    stats.bytes += buffer.numel() * buffer.element_size()
    stats.buckets += 1
    stats.steps += bucket.is_last()
    stats.param_ids.update(id(p) for p in bucket.parameters())
    return allreduce_hook(None, bucket)


def wrap(model, device):
    """(model in DistributedDataParallel, its CommStats). Call with the model on device.

    DDP first broadcasts rank 0's parameters and buffers to the others (once), so every process
    starts from the same weights. Buffers are not synchronised again at each forward
    (forward_sync_buffers=False): our models' buffers never change while training (no BatchNorm),
    and a QLoRA base keeps its 4-bit weights in buffers, which would otherwise be sent every step."""
    from torch.nn.parallel import DistributedDataParallel

    cuda = str(device).startswith("cuda")
    ddp = DistributedDataParallel(model, device_ids=[torch.device(device).index] if cuda else None,
                                  forward_sync_buffers=False)
    stats = CommStats()
    ddp.register_comm_hook(stats, _counting_allreduce)
    return ddp, stats
