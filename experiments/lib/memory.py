"""Where training memory goes, measured from the tensors themselves, beside the analytic prediction.

A training step holds four kinds of tensors:

    weights       every parameter, trainable or frozen          4 bytes per fp32 parameter
                  a 4-bit base weight (QLoRA), by its real bytes  4.127 bits per value with
                                                                  double quantization (quantize.py)
    gradients     one per trainable parameter                    4 bytes per trainable parameter
    optimizer     AdamW: exp_avg and exp_avg_sq per trainable    8 bytes per trainable parameter
                  parameter, plus a 4-byte step counter per tensor
    activations   what the forward pass saves for the backward   depends on batch, length, width

Full fine-tuning pays 16 bytes per parameter plus activations; LoRA pays 4 bytes per frozen
parameter plus a little for the adapter, plus activations. So LoRA's saving is large when the
weights dominate and shrinks towards nothing as the activations grow (bigger batches, longer
sequences): LoRA freezes weights, it does not shrink activations.
"""
import torch

from minilora.quantize import packed_nbytes, quantized_weights


def unique_tensors(tensors):
    """Each storage once: a tied weight or a view must not be counted twice."""
    seen, out = set(), []
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def tensor_bytes(tensors):
    return sum(t.untyped_storage().nbytes() for t in unique_tensors(tensors))


def parameter_bytes(model):
    """Every parameter, and the buffers that hold a 4-bit weight (QLoRA's frozen base)."""
    buffers = [b for q in quantized_weights(model) for b in q.buffers()]
    return tensor_bytes(list(model.parameters()) + buffers)


def gradient_bytes(model):
    return tensor_bytes([p.grad for p in model.parameters() if p.grad is not None])


def optimizer_bytes(optimizer):
    states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(states)


def analytic_bytes(model, bytes_per_value=4):
    """The prediction for fp32 AdamW: weights for all parameters, a gradient and two moments per
    trainable parameter, and one scalar step counter per trainable tensor. A 4-bit weight costs
    what the paper's arithmetic says (quantize.packed_nbytes: 4 bits per value, plus its block
    constants)."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    n_total = sum(p.numel() for p in params)
    n_trainable = sum(p.numel() for p in trainable)
    four_bit = sum(packed_nbytes(q.numel(), q.block_size, q.double_quant) for q in quantized_weights(model))
    return {
        "params": bytes_per_value * n_total + four_bit,
        "grads": bytes_per_value * n_trainable,
        "optimizer": 2 * bytes_per_value * n_trainable + 4 * len(trainable),
    }


class SavedActivations:
    """Counts the bytes autograd saves for the backward pass, each storage once.

    Parameters are left out (they are counted as weights), and so is a tensor saved twice (for
    example by two ops that read the same input) or saved as a view of another saved tensor.

        with SavedActivations(model) as saved:
            loss = model(x, y)[1]
        saved.bytes
    """

    def __init__(self, model=None):
        self.param_storages = set()
        if model is not None:
            self.param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages = {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.param_storages:
            self.storages[(ptr, tensor.device)] = storage.nbytes()
        # Detached: the same storage, without the grad_fn (autograd restores it on unpack). Kept as
        # it came, a saved output would hold its own graph alive in a cycle that, without a
        # backward pass to break it, no garbage collection frees (a forward-only count leaked).
        return tensor.detach()

    def __enter__(self):
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)

    @property
    def bytes(self):
        return sum(self.storages.values())


def measure_training_memory(model, optimizer, x, y, autocast_context):
    """Run one training step and measure each part; the model and optimizer are changed by it,
    so pass copies. Returns bytes: params, grads, optimizer, activations, and the analytic
    prediction of the first three."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with SavedActivations(model) as saved, autocast_context:
        _, loss = model(x, y)
    loss.backward()
    grads = gradient_bytes(model)
    optimizer.step()
    return {
        "params": parameter_bytes(model),
        "grads": grads,
        "optimizer": optimizer_bytes(optimizer),
        "activations": saved.bytes,
        "analytic": analytic_bytes(model),
    }


def saved_activation_bytes(model, x, y):
    """Bytes autograd saves for backward in one training forward."""
    with SavedActivations(model) as saved:
        model(x, y)
    return saved.bytes
