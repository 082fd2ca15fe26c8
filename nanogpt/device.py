"""Choosing a device, and the autocast context that goes with it."""
import contextlib

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name="auto"):
    """'auto' picks cuda, then mps, then cpu; an explicit device that is not there is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    base = str(name).split(":")[0]
    if base not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}; choose one of {list(DEVICE_CHOICES)}")
    if base == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} was requested but no CUDA GPU is available here "
            f"(torch {torch.__version__}, cuda build: {torch.version.cuda}); use --device cpu or auto"
        )
    if base == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} was requested but MPS is not available; use --device cpu or auto")
    return str(name)


def autocast(device):
    """bf16 autocast on CUDA (faster matmuls, same exponent range as fp32); plain fp32 elsewhere."""
    if str(device).startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
