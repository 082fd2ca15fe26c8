"""Checks on user-given hyperparameters, each raising an error that names the bad value.

LoRA's knobs fail silently when wrong (a rank larger than the layer, a negative alpha that
flips the update's sign), so every public entry point validates its input here first.
"""
import math
import numbers

import torch


def check_rank(r, in_features, out_features, where, what="r"):
    """r must be an integer in 1..min(in_features, out_features): delta W = B A has rank <= r,
    and a rank above min(in, out) only adds parameters that cannot add rank. (A LoRAConfig has
    checked that r is an integer >= 1; this is the check that needs the layer's shape.)"""
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {r!r} ({type(r).__name__})")
    largest = min(in_features, out_features)
    if not 1 <= r <= largest:
        raise ValueError(
            f"{what}={r} is not a valid rank for {where} ({in_features} -> {out_features}); "
            f"valid ranks are 1..{largest} (at most min(in_features, out_features))"
        )
    return int(r)


def check_alpha(alpha):
    """alpha must be a finite number > 0: scaling = alpha / r multiplies the update."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a number > 0, got {alpha!r} ({type(alpha).__name__})")
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    return float(alpha)


def check_dropout(p):
    """The adapter's dropout probability must be in [0, 1)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"dropout must be a number in [0, 1), got {p!r} ({type(p).__name__})")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p!r}")
    return float(p)


def check_choice(what, value, choices):
    """value must be one of choices (a small list of strings)."""
    if value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}, got {value!r}")
    return value


def check_adapter_name(name):
    """Adapter names key an nn.ModuleDict, so they must be non-empty and contain no '.'."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(
            f"adapter name must be a non-empty string without '.', got {name!r} "
            f"(e.g. 'default', 'french')"
        )
    return name


def check_finite_tensors(tensors, where):
    """Every floating tensor in {name: tensor} must be finite: a NaN or inf in an adapter turns
    every output of the layer into NaN, silently."""
    bad = [name for name, t in tensors.items()
           if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{where} holds NaN or inf values in {bad[:3]}{' ...' if len(bad) > 3 else ''} "
                         f"({len(bad)} tensor(s)); it comes from a diverged run or is damaged")


def check_weights(weights, n):
    """n finite real numbers, one per adapter, for add_weighted_adapter."""
    if (not isinstance(weights, (list, tuple)) or len(weights) != n
            or not all(isinstance(w, numbers.Real) and not isinstance(w, bool) for w in weights)):
        raise ValueError(f"weights must be a list of {n} numbers, one per adapter, got {weights!r}")
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:
        raise ValueError(f"weights must be finite numbers, got {weights!r}: a NaN or inf weight makes the "
                         f"combined adapter NaN or inf")
    return [float(w) for w in weights]
