"""Model sizes by name, plus overrides: `config_from_preset("tiny", n_layer=2)`."""
from nanogpt.model import GPTConfig

PRESETS = {
    # A laptop CPU: the base model trains in about two minutes on 2 cores (0.8M parameters).
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    # A GPU: about nanoGPT's Shakespeare-char size (10.7M parameters).
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    # GPT-2's shapes (Radford et al. 2019) with byte tokens (vocabulary 256, not 50257), so the
    # parameters are GPT-2's less most of its embedding: 86M, 304M and 710M. For measuring costs
    # (experiments/scale.py) at random initialisation: no pretrained GPT-2 weights are loaded.
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
}


def config_from_preset(name, **overrides):
    """A GPTConfig from a preset name; overrides whose value is None are ignored."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    settings = dict(PRESETS[name])
    settings.update({k: v for k, v in overrides.items() if v is not None})
    valid = set(GPTConfig.__dataclass_fields__)
    unknown = sorted(set(settings) - valid)
    if unknown:
        raise ValueError(f"unknown GPTConfig field(s) {unknown}; valid fields: {sorted(valid)}")
    return GPTConfig(**settings)
