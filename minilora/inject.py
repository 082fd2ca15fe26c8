r"""Injection by name: apply_lora(model, config) wraps the layers config.targets picks, in place.

targets picks layers by their names in model.named_modules():
    ["q_proj", "v_proj"]   a list: each item is a full dotted name ("blocks.0.attn.q_proj")
                           or its last component(s) ("q_proj", "attn.q_proj")
    r".*\.(q|v)_proj"      one string: a regular expression, matched against full names
    "all-linear"           every nn.Linear except the output head `lm_head` (as PEFT)

config.quantize="nf4" (or "fp4", "int4") stores each chosen nn.Linear's W0 in 4 bits under the adapter:
QLoRA (qlora.py).

Everything is validated before anything changes, so a bad call leaves the model as it was.
"""
import re

import torch.nn as nn

from minilora.checks import check_adapter_name, check_rank
from minilora.config import ALL_LINEAR, AdaLoRAConfig, config_or_targets
from minilora.embedding import LoRAEmbedding
from minilora.layer import LoRALinear
from minilora.lora_layer import LoRALayer
from minilora.model_ops import active_adapter, lora_layers
from minilora.qlora import Linear4bit, QLoRALinear, check_quantize_target
from minilora.trainable import set_trainable

OUTPUT_HEAD = "lm_head"  # left out of "all-linear": adapting the head is rarely wanted (PEFT does the same)


def _candidates(model):
    """(name, module) for every module in model except the root and the insides of LoRA layers
    (their base and adapters are not targets of their own)."""
    found, lora_names = [], []
    for name, module in model.named_modules():
        if name == "" or any(name.startswith(n + ".") for n in lora_names):
            continue
        if isinstance(module, LoRALayer):
            lora_names.append(name)
        found.append((name, module))
    return found


def _base(module):
    return module.base if isinstance(module, LoRALayer) else module


def _is_linear(module):
    return isinstance(_base(module), (nn.Linear, Linear4bit))


def _is_supported(module):
    return isinstance(module, (nn.Linear, nn.Embedding, LoRALayer))


def _layer_listing(model):
    """The model's adaptable layers, for error messages: short names, and one full name."""
    cands = [(n, m) for n, m in _candidates(model) if _is_supported(m)]
    parts = []
    for kind, pick in (("nn.Linear", _is_linear), ("nn.Embedding", lambda m: not _is_linear(m))):
        names = [n for n, m in cands if pick(m)]
        if names:
            short = sorted({n.split(".")[-1] for n in names})
            parts.append(f"the model's {kind} layers: {short} ({len(names)} in all, full names like {names[0]!r})")
    return "; ".join(parts) if parts else "the model has no nn.Linear or nn.Embedding layers"


def _check_supported(model, hits, target):
    for name, module in hits:
        if not _is_supported(module):
            raise ValueError(f"target {target!r} matches {name!r}, which is a {type(module).__name__}, "
                             f"not an nn.Linear or nn.Embedding; {_layer_listing(model)}")


def find_targets(model, targets):
    """The [(name, module)] that targets selects, in module order; a clear error if a target
    matches nothing or matches a module LoRA cannot wrap."""
    cands = _candidates(model)
    if isinstance(targets, str):
        if targets == ALL_LINEAR:
            found = [(n, m) for n, m in cands
                     if isinstance(m, (nn.Linear, LoRALinear)) and n.split(".")[-1] != OUTPUT_HEAD]
            if not found:
                raise ValueError(f"targets {ALL_LINEAR!r} matches no nn.Linear; {_layer_listing(model)}")
            return found
        try:
            pattern = re.compile(targets)
        except re.error as e:
            raise ValueError(f"targets {targets!r} is not a valid regular expression ({e})") from None
        found = [(n, m) for n, m in cands if pattern.fullmatch(n)]
        if not found:
            raise ValueError(
                f"targets {targets!r} matches no module: a single string is a regular expression "
                f"matched against full names (e.g. r'.*\\.q_proj'); to pick layers by short name pass "
                f"a list such as ['q_proj', 'v_proj']; {_layer_listing(model)}")
        _check_supported(model, found, targets)
        return found
    if isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) and t for t in targets):
        chosen = set()
        for target in targets:
            hits = [(n, m) for n, m in cands if n == target or n.endswith("." + target)]
            if not hits:
                raise ValueError(f"target {target!r} matches no module; {_layer_listing(model)}")
            _check_supported(model, hits, target)
            chosen.update(n for n, _ in hits)
        return [(n, m) for n, m in cands if n in chosen]
    raise TypeError(f"targets must be a non-empty list of layer names (e.g. ['q_proj', 'v_proj']), "
                    f"a regular expression string, or {ALL_LINEAR!r}; got {targets!r}")


def _check_not_tied(model, found):
    """An adapter on a weight shared with another module (lm_head.weight is wte.weight in a tied
    GPT) would change both modules when merged, so refuse it."""
    owners = {}  # id(parameter) -> names of the modules holding it
    for name, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    for name, module in found:
        # (a 4-bit W0 is no parameter: it was quantized from a copy, so it is shared with nothing)
        others = [o for o in owners.get(id(_base(module).weight), []) if o not in (name, name + ".base")]
        if others:
            raise ValueError(
                f"{name!r}.weight is the same tensor as {others[0]!r}.weight (tied weights): merging an "
                f"adapter into it would change {others[0]!r} too. Leave {name!r} out of the targets, or "
                f"untie first, e.g. model.{name}.weight = nn.Parameter(model.{name}.weight.detach().clone())")


def _dims(module):
    base = _base(module)
    if _is_linear(module):
        return base.in_features, base.out_features
    return base.num_embeddings, base.embedding_dim


def apply_lora(model, config=None, *, adapter_name="default", **fields):
    """Add a LoRA adapter (A, B; delta W = (alpha / r) B A) to each layer config.targets selects, in place.

        apply_lora(model, LoRAConfig(targets=["q_proj", "v_proj"], r=8, alpha=16))
        apply_lora(model, ["q_proj", "v_proj"], r=8, alpha=16)      # the same: the keyword shorthand

    config: a LoRAConfig (config.py says what each field means), or the targets, with the other
    fields as keywords. Each chosen nn.Linear becomes a LoRALinear (a QLoRALinear with
    config.quantize), each nn.Embedding a LoRAEmbedding; a layer that is already a LoRA layer gets
    another adapter. The first adapter added to a model becomes active; later ones are added
    inactive (see set_adapter). Then every parameter is frozen except the active adapter's, and
    the biases its config.bias names (trainable.py). Applying the same adapter name twice is an
    error. Returns model.

    A layer that already has a 4-bit base keeps it and takes another adapter (not DoRA or PiSSA)."""
    config = config_or_targets(config, fields)
    if isinstance(config, AdaLoRAConfig):
        raise TypeError("an AdaLoRAConfig is for apply_adalora(model, config), not apply_lora")
    if config.targets is None:
        raise TypeError(f"targets must be a non-empty list of layer names (e.g. ['q_proj', 'v_proj']), "
                        f"a regular expression string, or {ALL_LINEAR!r}; got None")
    check_adapter_name(adapter_name)
    found = find_targets(model, config.targets)
    _check_not_tied(model, found)
    for name, module in found:  # validate everything before changing anything
        check_rank(config.r, *_dims(module), where=repr(name))
        check_quantize_target(name, module, config)
        if not _is_linear(module) and (config.dropout or config.dora or config.pissa):
            raise ValueError(f"{name!r} is an nn.Embedding: dropout, dora and pissa apply to nn.Linear layers "
                             f"only (got dropout={config.dropout}, dora={config.dora}, pissa={config.pissa}); "
                             f"leave embeddings out of the targets or turn those off")
        if isinstance(module, LoRALayer):
            try:
                module._check_can_add(adapter_name, config.pissa)
            except (ValueError, RuntimeError) as e:
                raise type(e)(f"{name!r}: {e}") from None

    active = active_adapter(model)
    for name, module in found:
        if isinstance(module, LoRALayer):
            module.add_adapter(adapter_name, config)
        elif isinstance(module, nn.Linear) and config.quantize is not None:
            model.set_submodule(name, QLoRALinear(module, config, adapter_name))
        elif isinstance(module, nn.Linear):
            model.set_submodule(name, LoRALinear(module, config, adapter_name))
        else:
            model.set_submodule(name, LoRAEmbedding(module, config, adapter_name))
    for _, layer in lora_layers(model):  # one active adapter across the model
        layer.active_adapter = adapter_name if active is None else active
    return set_trainable(model)
