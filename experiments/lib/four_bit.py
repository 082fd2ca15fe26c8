"""The QLoRA experiment's measures of 4-bit storage (Dettmers et al. 2023): the quantization error
of a weight in each 4-bit data type, the bits per value read from the stored tensors, the base with
its weights in 4 bits, and what a trained QLoRA adapter becomes on the full-precision base,
unloaded, or merged back into 4 bits (qlora_final_eval). Used by experiments/qlora.py."""
import copy
import os
import statistics
import tempfile

import minilora
from minilora.qlora import merge_into_4bit_, requantization_error
from minilora.quantize import QUANT_TYPES, quantize_4bit
from nanogpt.train import evaluate

FINAL_EVAL = "qlora-v1"  # the name of qlora_final_eval in the run cache: change it when the function changes


def quantization_error(weight, quant_type, double_quant=True):
    """{"mse", "relative"} of one weight in one data type: mean((W - W_hat)^2) and
    ||W - W_hat||_F / ||W||_F, with blocks of 64 as QLoRA stores it."""
    weight = weight.detach().float()
    error = quantize_4bit(weight, quant_type, 64, double_quant).dequantize() - weight
    return {"mse": error.pow(2).mean().item(), "relative": (error.norm() / weight.norm()).item()}


def quantization_errors(weights):
    """{weight name: {quant_type: {"mse", "relative", "mse_no_dq", "relative_no_dq"}}}."""
    table = {}
    for name, weight in weights.items():
        table[name] = {}
        for q in QUANT_TYPES:
            plain = quantization_error(weight, q, double_quant=False)
            table[name][q] = {**quantization_error(weight, q), "mse_no_dq": plain["mse"],
                              "relative_no_dq": plain["relative"]}
    return table


def bits_per_value(weights, double_quant):
    """Bits per value of NF4 over the given weights, from the bytes the tensors hold."""
    stored = [quantize_4bit(w, "nf4", 64, double_quant) for w in weights]
    return 8 * sum(q.nbytes for q in stored) / sum(q.numel() for q in stored)


def quantized_copy(base, targets, quant_type, double_quant=True):
    """The base model with the targets' weights in 4 bits, and no adapter active: the quantized base."""
    model = minilora.apply_lora(copy.deepcopy(base), targets, r=1, alpha=1, quantize=quant_type,
                                double_quant=double_quant)
    for _, layer in minilora.lora_layers(model):
        layer.active_adapter = None  # forward is Linear4bit's: dequantize(W0) x + b
    return model


def qlora_final_eval(base, eval_batches, device, model):
    """The losses of what can be made of a trained QLoRA model's adapter (run_finetune's
    final_eval, bound to base, eval_batches and device with functools.partial, which, unlike a
    closure, can be sent to the worker processes): on the full-precision base (save_adapter, then
    load_adapter onto a copy of the base), unloaded to full precision, and merged back into 4 bits;
    and requantization_error averaged over the layers."""
    def losses(m):
        return {name: evaluate(m, batches, device) for name, batches in eval_batches.items()}

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "adapter.pt")
        minilora.save_adapter(model, path)
        on_full_precision = minilora.load_adapter(copy.deepcopy(base), path)
    merged = copy.deepcopy(model)
    for _, layer in minilora.lora_layers(merged):
        merge_into_4bit_(layer)
    errors = [requantization_error(layer) for _, layer in minilora.lora_layers(model)]
    return {
        "on_full_precision_base": losses(on_full_precision),
        "unloaded": losses(minilora.unload_lora(copy.deepcopy(model))),
        "merged_into_4bit": losses(merged),
        "requantization": {k: statistics.fmean(e[k] for e in errors) for k in errors[0]},
    }
