"""Adapters as tiny files: only the adapter's tensors and its config, not the base model.

The file is a torch.save'd dict of tensors and plain types only, so it loads with
torch.load(weights_only=True):

    {"format": "minilora-adapter", "version": 2,
     "kind":         "lora" or "adalora": which config class "config" is (LoRAConfig, AdaLoRAConfig)
     "adapter_name": the name it had when saved (load_adapter's default name)
     "config":       config.to_dict(): every LoRAConfig field (config.py), with "targets" the full names
                     of the layers that hold it, and "quantize", "quant_block_size", "double_quant" the
                     4-bit storage of their base when it was trained on one (QLoRA), else quantize None
     "base":         the fingerprint of the base model it was trained on (base_fingerprint.py), or None;
                     load_adapter refuses an adapter made for another base
     "tensors": {"<layer>.lora_A": (r, in), "<layer>.lora_B": (out, r), "<layer>.magnitude": (out,)},
     "biases":  {"<module>.bias": tensor}}       only when biases trained (config.bias != "none")

Loading rebuilds the config with LoRAConfig.from_dict, which names any unknown or missing key.
load_adapter puts the adapter on whatever base it is given; with quantize_as_trained=True it first
stores a plain base's target layers in 4 bits as in training (QLoRA), so that the model computes what
it computed then.

An AdaLoRA adapter (adalora.py) keeps only its triplets with lambda_i != 0, so the file shrinks with
the rank: "<layer>.lora_A" Q (k, in), "<layer>.lora_E" lambda (k,), "<layer>.lora_B" P (out, k),
and the file adds "ranks": {layer: k}.

Version 1 files (written before LoRAConfig: "adapter_name", "base", "ranks", "adalora" inside
"config", and "quantize" a dict) are read as version 2: read_adapter_file converts them.

Bias names are the module's name plus ".bias", the same whether or not the module is wrapped.
"""
import dataclasses
import os
import re
import tempfile

import torch
import torch.nn as nn

from minilora.adalora import AdaLoRAAdapter, apply_adalora
from minilora.base_fingerprint import base_fingerprint, base_mismatch
from minilora.checks import check_finite_tensors
from minilora.config import AdaLoRAConfig, LoRAConfig
from minilora.inject import apply_lora
from minilora.lora_layer import LoRALayer
from minilora.model_ops import active_adapter, lora_layers
from minilora.qlora import Linear4bit

FORMAT = "minilora-adapter"
VERSION = 2
CONFIG_CLASSES = {"lora": LoRAConfig, "adalora": AdaLoRAConfig}  # the file's "kind" -> its config class
MUST_MATCH = ("r", "alpha", "rslora", "dora", "pissa")  # change what the tensors mean
V1_CONFIG_KEYS = ("adapter_name", "targets", "r", "alpha", "dropout", "rslora", "dora", "pissa", "bias")


def _atomic_save(obj, path):
    """torch.save to a temporary file in path's folder, then os.replace: a crash mid-write never
    leaves a half-written file under path."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save the adapter to {path!r}: it is a folder; give a file path "
                                f"such as {os.path.join(path, 'adapter.pt')!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _biases(model):
    """{module name + ".bias": bias parameter} for every bias, LoRA layers named as their base."""
    found = {}
    for name, module in model.named_modules():
        owner = name[: -len(".base")] if name.endswith(".base") else name
        bias = dict(module.named_parameters(recurse=False)).get("bias")
        if bias is not None:
            found[f"{owner}.bias" if owner else "bias"] = bias
    return found


def _saved_biases(model, layer_names, mode):
    biases = _biases(model)
    if mode == "all":
        return biases
    if mode == "lora_only":
        return {k: v for k, v in biases.items() if k[: -len(".bias")] in layer_names}
    return {}


def _storage(layer):
    """How a layer's base is stored, as LoRAConfig fields: 4-bit type, block size, double quantization."""
    if not isinstance(layer.base, Linear4bit):
        return {"quantize": None}
    weight = layer.base.weight
    return {"quantize": weight.quant_type, "quant_block_size": weight.block_size, "double_quant": weight.double_quant}


def _settings(config):
    """What must agree across the layers of one adapter: its config less targets and base storage."""
    return dataclasses.replace(config, targets=None, quantize=None, quant_block_size=64, double_quant=True)


def save_adapter(model, path, adapter_name=None):
    """Write adapter adapter_name (default: the active one) to path, atomically: its A, B
    (and DoRA m) for every layer that holds it, its config, trained biases if any, the
    fingerprint of the base model, and the base's 4-bit storage for QLoRA."""
    name = active_adapter(model) if adapter_name is None else adapter_name
    layers = [(n, layer) for n, layer in lora_layers(model) if name is not None and name in layer.adapters]
    if not layers:
        raise ValueError(f"no adapter named {name!r} in the model; its adapters: "
                         f"{sorted({a for _, layer in lora_layers(model) for a in layer.adapters})}")
    configs = [layer.adapters[name].config for _, layer in layers]
    if any(_settings(c) != _settings(configs[0]) for c in configs):
        raise ValueError(f"adapter {name!r} has different hyperparameters on different layers; "
                         f"save_adapter needs one config")
    storage = [_storage(layer) for _, layer in layers]
    if any(q != storage[0] for q in storage):
        raise ValueError(f"adapter {name!r} sits on layers with different base storage ({storage[0]} and "
                         f"{next(q for q in storage if q != storage[0])}); save_adapter needs one")
    config = dataclasses.replace(configs[0], targets=[n for n, _ in layers], **storage[0])
    kind = "adalora" if isinstance(config, AdaLoRAConfig) else "lora"
    tensors = {}
    for n, layer in layers:
        adapter = layer.adapters[name]
        parts = (adapter.surviving_triplets() if isinstance(adapter, AdaLoRAAdapter) else
                 {"lora_A": adapter.lora_A, "lora_B": adapter.lora_B, "magnitude": adapter.magnitude})
        for key, p in parts.items():
            if p is not None:
                tensors[f"{n}.{key}"] = p.detach().cpu().clone()  # clone: save just this tensor's data
    biases = {k: v.detach().cpu().clone()
              for k, v in _saved_biases(model, config.targets, config.bias).items()}
    obj = dict(format=FORMAT, version=VERSION, kind=kind, adapter_name=name, config=config.to_dict(),
               base=base_fingerprint(model, skip=set(biases)), tensors=tensors, biases=biases)
    if kind == "adalora":
        obj["ranks"] = {n: layer.adapters[name].rank for n, layer in layers}
    _atomic_save(obj, path)


def _from_version_1(obj, path):
    """A version 1 file's dict in version 2's layout: the same adapter, its config as LoRAConfig's fields."""
    old = obj.get("config")
    missing = [k for k in V1_CONFIG_KEYS if not isinstance(old, dict) or k not in old]
    if missing:
        raise ValueError(f"adapter file {path!r} (version 1) is incomplete (config keys missing: {missing})")
    config = dict(old)
    name, base, ranks = config.pop("adapter_name"), config.pop("base", None), config.pop("ranks", None)
    adalora = config.pop("adalora", False)
    storage = config.pop("quantize", None) or {"quantize": None}  # version 1: a dict, or None
    config = {"quant_block_size": 64, "double_quant": True, **config, **storage}
    if adalora:
        config["init_r"] = config.pop("r")  # version 1's "r" of an AdaLoRA adapter is init_r
    new = dict(obj, version=VERSION, kind="adalora" if adalora else "lora", adapter_name=name, config=config,
               base=base)
    if adalora:
        new["ranks"] = ranks
    return new


def file_config(obj, where="the adapter file"):
    """The LoRAConfig (AdaLoRAConfig for AdaLoRA) an adapter file's dict holds, rebuilt: a clear error
    naming any unknown or missing key."""
    if obj.get("kind") not in CONFIG_CLASSES:
        raise ValueError(f"{where} has kind {obj.get('kind')!r}; known kinds: {list(CONFIG_CLASSES)}")
    cls = CONFIG_CLASSES[obj["kind"]]
    try:
        return cls.from_dict(obj.get("config"), where=f"{where}'s config")
    except TypeError as e:  # a field of the wrong type
        raise ValueError(f"{where}'s config is damaged: {e}") from None


def read_adapter_file(path):
    """The dict in an adapter file (a version 1 file converted to version 2's layout), checked to be
    one, its config rebuilt once to check it; clear errors for missing, corrupt or damaged files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"adapter file not found: {path!r}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read adapter file {path!r}: it is corrupt or not written by save_adapter "
                         f"({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a minilora adapter file (no format={FORMAT!r} entry)")
    if obj.get("version") == 1:
        obj = _from_version_1(obj, path)
    if obj.get("version") != VERSION:
        raise ValueError(f"adapter file {path!r} has version {obj.get('version')!r}; this code reads versions 1 "
                         f"and {VERSION}: it was written by a newer minilora, so load it with that")
    config = file_config(obj, f"adapter file {path!r}")
    if not isinstance(obj.get("tensors"), dict) or not isinstance(obj.get("biases"), dict):
        raise ValueError(f"adapter file {path!r} is incomplete (no tensors or biases entry)")
    if not isinstance(obj.get("adapter_name"), str) or (isinstance(config, AdaLoRAConfig)
                                                        and not isinstance(obj.get("ranks"), dict)):
        raise ValueError(f"adapter file {path!r} is incomplete (no adapter_name, or an AdaLoRA file without ranks)")
    if not isinstance(config.targets, tuple):
        raise ValueError(f"adapter file {path!r} is damaged: targets must be a list of layer names, "
                         f"got {config.targets!r}")
    not_tensors = [k for part in ("tensors", "biases") for k, v in obj[part].items() if not torch.is_tensor(v)]
    if not_tensors:
        raise ValueError(f"adapter file {path!r} is damaged: {not_tensors[:3]} should be tensors")
    return obj


def _expected_shapes(module, r, dora, adalora_rank=None):
    base = module.base if isinstance(module, LoRALayer) else module
    if isinstance(base, (nn.Linear, Linear4bit)):  # a 4-bit base takes the same A and B
        n_in, n_out = base.in_features, base.out_features
    else:
        n_in, n_out = base.num_embeddings, base.embedding_dim
    if adalora_rank is not None:  # AdaLoRA: the k surviving triplets
        k = adalora_rank
        return {"lora_A": (k, n_in), "lora_E": (k,), "lora_B": (n_out, k)}
    shapes = {"lora_A": (r, n_in), "lora_B": (n_out, r)}
    if dora:
        shapes["magnitude"] = (n_out,)
    return shapes


def load_adapter(model, path, adapter_name=None, check_base=True, quantize_as_trained=False):
    """Load an adapter file into model, in place, as adapter adapter_name (default: the name
    in the file). If the model has no adapter of that name yet, it is first added with the
    file's config, as apply_lora would (so a fresh base model works; for PiSSA this recomputes
    the residual from the original W0). If it has one, its config must match the file's.
    Every mismatch (r, alpha, variants, targets, shapes, the base model it was made for) is
    listed in one error, raised before anything changes.
    check_base=False loads an adapter onto another base than its own, knowingly.
    quantize_as_trained=True: for an adapter trained on a 4-bit base (QLoRA), plain target layers
    are quantized as they were in training (the file's "quantize"); otherwise the adapter runs on
    the base as given (full precision, or the 4-bit layers the model already has). Returns model."""
    obj = read_adapter_file(path)
    config, tensors, biases = file_config(obj), obj["tensors"], obj["biases"]
    targets, adalora = list(config.targets), isinstance(config, AdaLoRAConfig)
    name = obj["adapter_name"] if adapter_name is None else adapter_name
    modules = dict(model.named_modules())
    existing = [(n, layer) for n, layer in lora_layers(model) if name in layer.adapters]
    problems = []
    absent = [t for t in targets if t not in modules]
    if absent:
        problems.append(f"targets the model does not have: {absent}")
    if existing:
        held = [n for n, _ in existing]
        only_file = [t for t in targets if t not in held]
        only_model = [t for t in held if t not in targets]
        if only_file or only_model:
            problems.append(f"other targets: only in the file {only_file}, only in the model {only_model}")
        model_config = existing[0][1].adapters[name].config
        problems += [f"{k}: file {getattr(config, k)!r}, model {getattr(model_config, k)!r}"
                     for k in MUST_MATCH if getattr(config, k) != getattr(model_config, k)]
        if adalora != isinstance(model_config, AdaLoRAConfig):
            problems.append(f"adalora: file {adalora!r}, model {not adalora!r}")
    ranks = obj["ranks"] if adalora else {}
    expected = {}
    for t in targets:
        module = modules.get(t)
        if module is not None and not isinstance(module, (nn.Linear, nn.Embedding, LoRALayer)):
            problems.append(f"{t!r} is a {type(module).__name__}, not an nn.Linear or nn.Embedding")
        elif adalora and not (isinstance(ranks.get(t), int) and 0 <= ranks[t] <= config.r):
            problems.append(f"{t!r}: rank {ranks.get(t)!r} in the file; an AdaLoRA layer keeps "
                            f"0..{config.r} triplets")
        elif module is not None:
            expected.update({f"{t}.{k}": s for k, s in
                             _expected_shapes(module, config.r, config.dora, ranks.get(t)).items()})
    for key, shape in expected.items():
        if key not in tensors:
            problems.append(f"{key}: missing from the file")
        elif tuple(tensors[key].shape) != shape:
            problems.append(f"{key}: shape {tuple(tensors[key].shape)} in the file, the model needs {shape}")
    unexpected = sorted(k for k in tensors if k not in expected and k.rsplit(".", 1)[0] not in absent)
    if unexpected:
        problems.append(f"tensors in the file the config does not explain: {unexpected}")
    model_biases = _biases(model)
    for key, value in biases.items():
        if key not in model_biases:
            problems.append(f"bias {key!r}: not in the model")
        elif tuple(value.shape) != tuple(model_biases[key].shape):
            problems.append(f"bias {key!r}: shape {tuple(value.shape)} in the file, "
                            f"the model has {tuple(model_biases[key].shape)}")
    mismatch = base_mismatch(model, obj.get("base"), skip=set(biases)) if check_base else None
    if mismatch:
        problems.append(mismatch + "; load it onto the base it was trained on, or pass check_base=False to load "
                                   "it anyway")
    if problems:
        raise ValueError(f"adapter file {path!r} does not fit the model:\n  - " + "\n  - ".join(problems))
    check_finite_tensors({**tensors, **biases}, f"adapter file {path!r}")
    merged = [n for n, layer in lora_layers(model) if layer.merged]
    if merged:
        raise RuntimeError(f"the model has a merged adapter (e.g. {merged[0]!r}); unmerge_lora(model) first")

    if not existing:
        exact = "|".join(re.escape(t) for t in targets)  # exactly these layers
        if adalora:
            apply_adalora(model, dataclasses.replace(config, targets=exact), adapter_name=name)
        else:  # on the base as given, unless asked to store it in 4 bits as in training
            quantize = config.quantize if quantize_as_trained else None
            apply_lora(model, dataclasses.replace(config, targets=exact, quantize=quantize), adapter_name=name)
    with torch.no_grad():
        for t in targets:
            adapter = model.get_submodule(t).adapters[name]
            if isinstance(adapter, AdaLoRAAdapter):
                adapter.load_triplets_(*(tensors[f"{t}.{k}"] for k in ("lora_A", "lora_E", "lora_B")))
                continue
            adapter.lora_A.copy_(tensors[f"{t}.lora_A"])
            adapter.lora_B.copy_(tensors[f"{t}.lora_B"])
            if adapter.dora:
                adapter.magnitude.copy_(tensors[f"{t}.magnitude"])
        model_biases = _biases(model)  # names are stable across wrapping
        for key, value in biases.items():
            model_biases[key].copy_(value)
    return model
