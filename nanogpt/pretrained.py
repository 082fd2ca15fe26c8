"""Real GPT-2: load a Hugging Face GPT-2 checkpoint into this GPT, and write one back.

A GPT-2 folder in the Hugging Face layout (the hub's `gpt2` repository, or what `save_pretrained`
writes) holds config.json, the weights (model.safetensors, or the older pytorch_model.bin) and the
tokenizer (vocab.json, merges.txt: nanogpt/bpe.py). The model is the same network as nanogpt's GPT
(Radford et al. 2019); only the names and two storage conventions differ:

    GPT-2 (Hugging Face)          this GPT                           how
    wte, wpe, ln_f                wte, wpe, ln_f                     as is
    h.N.ln_1, h.N.ln_2            blocks.N.ln_1, blocks.N.ln_2       as is
    h.N.attn.c_attn  (C, 3C)      blocks.N.attn.q_proj/k_proj/v_proj split in three, each transposed
    h.N.attn.c_proj  (C, C)       blocks.N.attn.o_proj               transposed
    h.N.mlp.c_fc     (C, 4C)      blocks.N.mlp.up_proj               transposed
    h.N.mlp.c_proj   (4C, C)      blocks.N.mlp.down_proj             transposed
    lm_head (usually absent)      lm_head, tied to wte               nothing to load

"Transposed": GPT-2's layers are `Conv1D`, which computes x @ W + b with W stored (in, out); an
nn.Linear computes x @ W.T + b with W stored (out, in). Two key styles are found in the wild:
`save_pretrained` prefixes every name with `transformer.`; the hub's own gpt2 files have no prefix
and carry two old buffers per layer, `h.N.attn.bias` (the causal mask) and `h.N.attn.masked_bias`,
which are not weights and are skipped. GPT-2 uses the tanh GELU ("gelu_new") and LayerNorm epsilon
1e-5; both come from config.json into GPTConfig.

Loading never holds two copies of the weights: the model is built on the meta device (no memory),
given uninitialised storage once, and each tensor of the file is read and copied in on its own.
Everything about the files (their presence, the config, every key and shape) is checked before
any weight is read, so a bad folder fails at once with a message that names the problem.
"""
import copy
import dataclasses
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from minilora import lora_layers, unload_lora
from nanogpt.bpe import load_tokenizer
from nanogpt.checkpoint import atomic_write
from nanogpt.model import ACTIVATIONS, GPT, GPTConfig

CONFIG, SAFETENSORS, PYTORCH_BIN = "config.json", "model.safetensors", "pytorch_model.bin"
HUB_HINT = ("the files of the Hugging Face hub's gpt2 repository (https://huggingface.co/openai-community/gpt2: "
            "config.json, model.safetensors, vocab.json, merges.txt), downloaded once on a machine with network "
            "access and copied here")
# GPT-2's layers inside h.N whose names change; every `.weight` among them is a transposed Conv1D.
LAYER_NAMES = {"ln_1": "ln_1", "ln_2": "ln_2", "attn.c_proj": "attn.o_proj",
               "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
OLD_BUFFERS = ("attn.bias", "attn.masked_bias")  # the hub files' causal mask: not weights


def _require_file(folder, name, what):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder!r} has no {name} ({what}); a GPT-2 folder in the Hugging Face layout holds "
                                f"{HUB_HINT}")
    return path


def config_from_hf(folder):
    """The GPTConfig that config.json in folder describes; a clear error for anything but GPT-2."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--init-from {folder!r} is not a folder; give the folder that holds {HUB_HINT}")
    path = _require_file(folder, CONFIG, "the model's shape")
    try:
        with open(path, encoding="utf-8") as f:
            hf = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path!r} is not readable JSON: {e}") from None
    if not isinstance(hf, dict) or hf.get("model_type") != "gpt2":
        kind = hf.get("model_type") if isinstance(hf, dict) else type(hf).__name__
        raise ValueError(f"{path!r} describes a model of type {kind!r}, not GPT-2 (model_type 'gpt2'): only GPT-2 "
                         f"checkpoints map onto this GPT")
    # Options of Hugging Face's GPT2 that change the network; this GPT has each at GPT-2's own value only.
    fixed = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
             "add_cross_attention": False, "tie_word_embeddings": True}
    odd = {k: hf[k] for k, v in fixed.items() if k in hf and hf[k] != v}
    n_embd = hf.get("n_embd")
    if hf.get("n_inner") not in (None, 4 * n_embd if isinstance(n_embd, int) else None):
        odd["n_inner"] = hf["n_inner"]
    if odd:
        raise ValueError(f"{path!r} sets {odd}: this GPT implements GPT-2 with {fixed} and n_inner = 4 * n_embd")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{path!r}: activation_function {activation!r} is not one this GPT has; "
                         f"valid: {list(ACTIVATIONS)}")
    missing = [k for k in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd") if k not in hf]
    if missing:
        raise ValueError(f"{path!r} has no {missing}: a GPT-2 config.json gives vocab_size, n_positions, n_layer, "
                         f"n_head and n_embd")
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                     n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=0.0, bias=True, tie_weights=True,
                     activation=activation, layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)))


def expected_shapes(config):
    """GPT-2's weight names (no prefix) and their shapes, for a model of config."""
    C, V, T = config.n_embd, config.vocab_size, config.block_size
    shapes = {"wte.weight": (V, C), "wpe.weight": (T, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(config.n_layer):
        for name, shape in (("ln_1.weight", (C,)), ("ln_1.bias", (C,)), ("ln_2.weight", (C,)), ("ln_2.bias", (C,)),
                            ("attn.c_attn.weight", (C, 3 * C)), ("attn.c_attn.bias", (3 * C,)),
                            ("attn.c_proj.weight", (C, C)), ("attn.c_proj.bias", (C,)),
                            ("mlp.c_fc.weight", (C, 4 * C)), ("mlp.c_fc.bias", (4 * C,)),
                            ("mlp.c_proj.weight", (4 * C, C)), ("mlp.c_proj.bias", (C,))):
            shapes[f"h.{i}.{name}"] = shape
    return shapes


def _is_skipped(name):
    """The hub files' old attention buffers, and the tied head (it is wte)."""
    return name == "lm_head.weight" or (name.startswith("h.") and name.split(".", 2)[-1] in OLD_BUFFERS)


def to_ours(name, tensor, n_embd):
    """One GPT-2 tensor -> [(this GPT's name, tensor)]: renamed, Conv1D weights transposed, c_attn split."""
    if not name.startswith("h."):
        return [(name, tensor)]  # wte, wpe, ln_f
    _, i, rest = name.split(".", 2)  # 'h', '0', 'attn.c_attn.weight'
    layer, kind = rest.rsplit(".", 1)  # 'attn.c_attn', 'weight'
    if layer in CONV1D and kind == "weight":
        tensor = tensor.t()  # (in, out) -> (out, in)
    if layer == "attn.c_attn":  # fused q, k, v side by side: weight (3C, C) after the transpose, bias (3C,)
        q, k, v = tensor.split(n_embd, dim=0)
        return [(f"blocks.{i}.attn.{p}.{kind}", t) for p, t in zip(("q_proj", "k_proj", "v_proj"), (q, k, v))]
    return [(f"blocks.{i}.{LAYER_NAMES[layer]}.{kind}", tensor)]


def _weights_file(folder):
    """(path, {name: shape} with names as stored, get(name) -> tensor): lazily, so only the header is
    read here and each tensor is read when asked for."""
    path = os.path.join(folder, SAFETENSORS)
    if os.path.isfile(path):
        try:  # the safetensors package checks the file: header, types, offsets covering the file exactly
            with safe_open(path, framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            header, data_start = _safetensors_header(path)
        except Exception as e:  # safetensors raises its own error type for a truncated or corrupt file
            raise ValueError(f"{path!r} is not a readable safetensors file (truncated or corrupt: {e}); "
                             f"copy it again from its source") from None
        return path, shapes, lambda name: _read_tensor(path, data_start, header[name])
    path = os.path.join(folder, PYTORCH_BIN)
    if os.path.isfile(path):
        try:  # mmap: tensors are read from the file when used, not all at once
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise ValueError(f"{path!r} is not a readable torch file (truncated or corrupt: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
        if not isinstance(state, dict) or not all(torch.is_tensor(t) for t in state.values()):
            raise ValueError(f"{path!r} does not hold a dict of tensors (a state_dict)")
        return path, {k: tuple(t.shape) for k, t in state.items()}, state.__getitem__
    _require_file(folder, SAFETENSORS, f"the weights; or {PYTORCH_BIN}")  # neither file: raises, naming both


def _safetensors_header(path):
    """The safetensors format: 8 bytes (little-endian length n), n bytes of JSON {name: {dtype, shape,
    data_offsets}}, then the tensors' bytes. Returns (the JSON, where the bytes start)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)), 8 + n


SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def _read_tensor(path, data_start, info):
    """One tensor of a safetensors file, read with plain file reads. (safe_open's get_tensor reads
    through a memory map, whose pages count as the process's resident memory: loading would then
    peak at twice the file.)"""
    start, end = info["data_offsets"]
    buffer = bytearray(end - start)
    with open(path, "rb") as f:
        f.seek(data_start + start)
        f.readinto(buffer)
    dtype = SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
        raise ValueError(f"{path!r}: a tensor of type {info['dtype']}; GPT-2's weights are one of {list(SAFETENSORS_DTYPES)}")
    return torch.frombuffer(buffer, dtype=dtype).reshape(info["shape"])


def check_weights(path, shapes, config):
    """{GPT-2 name: stored name} for the weights to load, once every key and shape has been checked."""
    prefixed = any(k.startswith("transformer.") for k in shapes)
    names = {(k[len("transformer."):] if prefixed and k.startswith("transformer.") else k): k for k in shapes}
    expected = expected_shapes(config)
    missing = [k for k in expected if k not in names]
    unexpected = [names[k] for k in names if k not in expected and not _is_skipped(k)]
    if missing or unexpected:
        raise ValueError(f"{path!r} does not hold the GPT-2 that config.json describes ({config.n_layer} layers): "
                         f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''} ({len(missing)}); "
                         f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''} ({len(unexpected)})")
    wrong = [f"{names[k]} {shapes[names[k]]} (config.json says {shape})" for k, shape in expected.items()
             if shapes[names[k]] != shape]
    if wrong:
        raise ValueError(f"{path!r} has tensors whose shapes do not match config.json: {', '.join(wrong[:4])}"
                         f"{' ...' if len(wrong) > 4 else ''}")
    return {k: names[k] for k in expected}


@torch.no_grad()
def load_gpt2(path, device=None, dtype=None):
    """A GPT holding the GPT-2 checkpoint in folder path (Hugging Face layout), in eval mode.
    device: where the weights go (default cpu); dtype: their type (default float32)."""
    config = config_from_hf(path)
    weights_path, shapes, get = _weights_file(path)
    names = check_weights(weights_path, shapes, config)
    with torch.device("meta"):
        model = GPT(config)  # no memory and no random init: every weight is read from the file below
    model = model.to(dtype or torch.float32).to_empty(device=device or "cpu")
    model.lm_head.weight = model.wte.weight  # to_empty gives each module new storage: tie again
    ours = model.state_dict()  # name -> tensor sharing the parameter's storage
    filled = set()
    for name, stored in names.items():
        tensor = get(stored)  # one tensor of the file in memory at a time
        if not tensor.is_floating_point() or not tensor.isfinite().all():
            raise ValueError(f"{weights_path!r}: {stored} is {'not floating point' if not tensor.is_floating_point() else 'not finite (NaN or inf)'}")
        for our_name, t in to_ours(name, tensor, config.n_embd):
            ours[our_name].copy_(t)
            filled.add(our_name)
        del tensor
    assert filled == set(ours) - {"lm_head.weight"}, sorted(set(ours) - filled)
    return model.eval()


def crop_block_size(model, block_size):
    """Shorten model's context to block_size positions (as nanoGPT does), in place: keep the first
    block_size rows of the position embedding. A fine-tuning run on a CPU rarely needs GPT-2's 1024."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not 1 <= block_size <= model.config.block_size:
        raise ValueError(f"block_size must be an integer in 1..{model.config.block_size} (the model's context), "
                         f"got {block_size!r}")
    model.wpe.weight = torch.nn.Parameter(model.wpe.weight[:block_size].detach().clone())  # (block_size, C)
    model.config = dataclasses.replace(model.config, block_size=block_size)
    return model


def load_init_from(folder, block_size=None):
    """(the GPT-2 in folder, its BPE tokenizer), checked to belong together: what --init-from loads.
    block_size: a shorter context (crop_block_size), or None for the checkpoint's own."""
    config, tokenizer = config_from_hf(folder), load_tokenizer(folder)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"--init-from {folder!r}: vocab.json has {tokenizer.vocab_size} tokens but config.json's "
                         f"vocab_size is {config.vocab_size}: the files are not from the same model")
    if block_size is not None and block_size > config.block_size:
        raise ValueError(f"--block-size {block_size} is longer than the context of the GPT-2 in {folder!r} "
                         f"({config.block_size} positions): choose at most {config.block_size}")
    model = load_gpt2(folder)
    return (model if block_size is None else crop_block_size(model, block_size)), tokenizer


def gpt2_state_dict(model):
    """model's weights under GPT-2's names (with save_pretrained's `transformer.` prefix), q/k/v fused
    back into c_attn and Linear weights transposed back to Conv1D's (in, out)."""
    sd = model.state_dict()
    out = {}
    for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
        out[f"transformer.{name}"] = sd[name]
    for i in range(model.config.n_layer):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        for kind in ("weight", "bias"):
            q, k, v = (sd[f"{b}attn.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj"))
            fused = torch.cat([q, k, v], dim=0)  # (3C, C) or (3C,)
            out[f"{h}attn.c_attn.{kind}"] = fused.t() if kind == "weight" else fused  # weight (C, 3C)
            for theirs, mine in LAYER_NAMES.items():
                t = sd[f"{b}{mine}.{kind}"]
                out[f"{h}{theirs}.{kind}"] = t.t() if theirs in CONV1D and kind == "weight" else t
    return {k: v.detach().contiguous() for k, v in out.items()}


def hf_config(config):
    """config.json's contents for a GPTConfig (the fields GPT2LMHeadModel reads)."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
            "activation_function": config.activation, "layer_norm_epsilon": config.layer_norm_eps,
            "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
            "initializer_range": 0.02, "scale_attn_weights": True, "tie_word_embeddings": True,
            "bos_token_id": config.vocab_size - 1, "eos_token_id": config.vocab_size - 1}


@torch.no_grad()
def save_gpt2(model, path, overwrite=False):
    """Write model to folder path as a GPT-2 checkpoint in the Hugging Face layout (config.json,
    model.safetensors), which transformers' GPT2LMHeadModel.from_pretrained reads. A model with LoRA
    layers is written with its adapters merged, from a copy: the model in memory is unchanged.
    Returns the paths written."""
    config = model.config
    if not (config.bias and config.tie_weights):
        raise ValueError(f"GPT-2's layout has biases and a head tied to wte; this model has bias={config.bias}, "
                         f"tie_weights={config.tie_weights}, which it cannot hold")
    paths = [os.path.join(path, CONFIG), os.path.join(path, SAFETENSORS)]
    if not overwrite and any(os.path.exists(p) for p in paths):
        raise FileExistsError(f"{path!r} already holds a checkpoint ({[p for p in paths if os.path.exists(p)]}); "
                              f"choose another folder, or pass overwrite=True (--overwrite) to replace it")
    if lora_layers(model):
        model = unload_lora(copy.deepcopy(model))  # W0 + delta W as plain Linear layers, in a copy
    tensors = gpt2_state_dict(model)
    tensors = {k: v.cpu() for k, v in tensors.items()}
    os.makedirs(path, exist_ok=True)
    atomic_write(paths[1], lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps({**hf_config(config), "torch_dtype": str(next(iter(tensors.values())).dtype).split(".")[-1]},
                      indent=2)
    atomic_write(paths[0], lambda tmp: _write_text(tmp, text + "\n"))
    return paths


def _write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
