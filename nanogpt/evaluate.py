"""Evaluation: the mean loss over fixed batches, on one process or shared out under torchrun.

The batches are fixed (nanogpt.data.fixed_batches: the same windows every call), so the numbers
are comparable across the steps of a run and across runs. The model is evaluated in eval mode (no
dropout) and given back in the mode it was in.
"""
import torch

from nanogpt import distributed
from nanogpt.device import autocast


@torch.no_grad()
def evaluate(model, batches, device):
    """Mean loss over fixed batches, in eval mode (no dropout); the model's mode is restored."""
    return _loss_sum(model, batches, device) / len(batches)


@torch.no_grad()
def _loss_sum(model, batches, device):
    was_training = model.training
    model.eval()
    losses = []
    for x, y in batches:
        with autocast(device):
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.item())
    model.train(was_training)
    return sum(losses)


def evaluate_shared(model, batches, device):
    """evaluate(), with the batches shared out among the processes of a torchrun launch: process
    k of N evaluates batches k, k+N, ..., and the sums are added up, so every process gets the
    mean over all the batches and none is evaluated twice. On one process: evaluate()."""
    if not distributed.is_distributed():
        return evaluate(model, batches, device)
    mine = batches[distributed.rank()::distributed.world_size()]
    return distributed.sum_over_processes(_loss_sum(model, mine, device)) / len(batches)
