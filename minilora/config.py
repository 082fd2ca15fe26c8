"""LoRAConfig: every setting of one adapter in one object, validated once, where it is made.

    config = LoRAConfig(targets=["q_proj", "v_proj"], r=8, alpha=16)
    apply_lora(model, config)                                  # the same model as:
    apply_lora(model, ["q_proj", "v_proj"], r=8, alpha=16)     # the keyword shorthand

The one object travels from the call to each layer, each adapter (adapter.config) and the adapter
file (save_adapter stores config.to_dict(); load_adapter rebuilds it with from_dict). Nothing on
the way checks r, alpha or dropout again; only what needs a layer's shape (r <= min(in, out)) is
checked there, once, where the shape is known.

    targets      which layers: a list of names, a regular expression, or "all-linear" (inject.py);
                 None for a layer built on its own (LoRALinear(base, r=8))
    r, alpha     delta W = (alpha / r) B A (Hu et al. 2021)
    dropout      on the adapter's input, nn.Linear only
    bias         which biases train while this adapter is the active one: "none", "lora_only" (the
                 adapted layers' own) or "all" (every bias in the model)
    rslora       scaling alpha / sqrt(r) instead of alpha / r (adapter.py)
    dora, pissa  learned magnitudes (dora.py); A, B from W0's top-r SVD (pissa.py)
    quantize     None, or "nf4" / "fp4" / "int4": W0 stored in 4 bits, blocks of quant_block_size,
                 double_quant: the block constants in 8 bits (QLoRA, qlora.py)

QLoRA's three settings are fields of LoRAConfig, not a subclass: they are options of the same
apply_lora call (as dora is), and a subclass would make apply_lora pick a class from keywords.
AdaLoRA is another adapter with its own call (apply_adalora), so AdaLoRAConfig is a subclass that
adds its two ranks.

frozen: one config is shared by every layer and adapter it built, so changing it afterwards would
make it lie about them; dataclasses.replace(config, r=16) makes a new one (and validates it).
"""
import dataclasses
import numbers
import re
from dataclasses import dataclass, field

from minilora.checks import check_alpha, check_choice, check_dropout
from minilora.quantize import QUANT_TYPES, check_block_size

ALL_LINEAR = "all-linear"
BIAS_CHOICES = ("none", "lora_only", "all")
QUANTIZE_CHOICES = (None,) + QUANT_TYPES


def check_targets(targets):
    """targets: None, "all-linear", a regular expression, or a non-empty list of layer names.
    Returns them as stored (a list becomes a tuple: the config is frozen)."""
    if targets is None or targets == ALL_LINEAR:
        return targets
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as e:
            raise ValueError(f"targets {targets!r} is not a valid regular expression ({e})") from None
        return targets
    if isinstance(targets, (list, tuple)) and not targets:
        raise ValueError(f"targets must be a non-empty list of layer names (e.g. ['q_proj', 'v_proj']), "
                         f"got {targets!r}: an empty list adapts nothing")
    if isinstance(targets, (list, tuple)) and all(isinstance(t, str) and t for t in targets):
        return tuple(targets)
    raise TypeError(f"targets must be a non-empty list of layer names (e.g. ['q_proj', 'v_proj']), "
                    f"a regular expression string, or {ALL_LINEAR!r}; got {targets!r}")


def check_positive_int(what, value):
    """An integer >= 1 (a rank), by what's name in the error."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{what}={value} is not a valid rank: {what} must be an integer >= 1")
    return int(value)


def check_flag(what, value):
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return value


def check_not_dora_pissa(dora, pissa, quantize):
    """DoRA and PiSSA need the full-precision W0, so neither goes on a 4-bit base (qlora.py)."""
    if dora or pissa:
        raise ValueError(
            f"{'dora' if dora else 'pissa'}=True cannot be combined with a {quantize!r} base: DoRA needs the "
            f"full-precision W0 every step and PiSSA rewrites W0 before quantization (qlora.py); "
            f"use quantize=None for {'DoRA' if dora else 'PiSSA'}, or a plain adapter on the 4-bit base")


@dataclass(frozen=True)
class LoRAConfig:
    """The settings of one LoRA adapter (the module docstring says what each does). Defaults as
    LoRALinear had them: r=8, alpha=16 (PEFT's LoraConfig: r=8, lora_alpha=8)."""
    targets: object = None  # list of names | regular expression | "all-linear" | None
    r: int = 8
    alpha: float = 16.0  # scaling = alpha / r
    dropout: float = 0.0
    bias: str = "none"  # "none" | "lora_only" | "all"
    rslora: bool = False
    dora: bool = False
    pissa: bool = False
    quantize: str = None  # None | "nf4" | "fp4" | "int4"
    quant_block_size: int = 64
    double_quant: bool = True

    def __post_init__(self):
        """Every field checked here, once; an error names the field and the bad value."""
        checked = dict(
            targets=check_targets(self.targets),
            r=check_positive_int("r", self.r),
            alpha=check_alpha(self.alpha),
            dropout=check_dropout(self.dropout),
            bias=check_choice("bias", self.bias, BIAS_CHOICES),
            rslora=check_flag("rslora", self.rslora),
            dora=check_flag("dora", self.dora),
            pissa=check_flag("pissa", self.pissa),
            quantize=check_choice("quantize", self.quantize, QUANTIZE_CHOICES),
            quant_block_size=check_block_size(self.quant_block_size),
            double_quant=check_flag("double_quant", self.double_quant),
        )
        if self.quantize is not None:
            check_not_dora_pissa(self.dora, self.pissa, self.quantize)
        for name, value in checked.items():  # normalised: alpha=16 and alpha=16.0 are one config
            object.__setattr__(self, name, value)

    def to_dict(self):
        """The fields as plain types (what an adapter file stores): targets as a list."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        if isinstance(d["targets"], tuple):
            d["targets"] = list(d["targets"])
        return d

    @classmethod
    def from_dict(cls, d, where="config"):
        """The inverse of to_dict; a clear error naming any unknown or missing key."""
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        if not isinstance(d, dict):
            raise ValueError(f"{where} must be a dict of {cls.__name__}'s fields {names}, got {d!r}")
        unknown = sorted(k for k in d if k not in names)
        missing = [k for k in names if k not in d]
        if unknown or missing:
            raise ValueError(f"{where} does not fit {cls.__name__}: unknown keys {unknown}, missing keys "
                             f"{missing} ({cls.__name__}'s fields: {names})")
        return cls(**d)


@dataclass(frozen=True)
class AdaLoRAConfig(LoRAConfig):
    """AdaLoRA (adalora.py): each matrix starts with init_r triplets; the allocator prunes them to
    target_r per matrix on average. r is init_r (set here, not given): the adapter's size and its
    scaling alpha / init_r, which pruning leaves alone. No rslora, dora, pissa or quantize."""
    r: int = field(default=None, init=False)
    init_r: int = 12
    target_r: int = 8

    def __post_init__(self):
        init_r = check_positive_int("init_r", self.init_r)
        target_r = check_positive_int("target_r", self.target_r)
        if target_r > init_r:
            raise ValueError(f"target_r={target_r} must be in 1..init_r={init_r}: AdaLoRA starts at init_r "
                             f"triplets per matrix and prunes down to target_r per matrix on average")
        on = [name for name in ("rslora", "dora", "pissa") if getattr(self, name) is True]
        if on or self.quantize is not None:
            raise ValueError(f"AdaLoRA takes no {on[0] + '=True' if on else f'quantize={self.quantize!r}'}: "
                             f"its adapter is P diag(lambda) Q on a full-precision base (adalora.py)")
        for name, value in (("init_r", init_r), ("target_r", target_r), ("r", init_r)):
            object.__setattr__(self, name, value)
        super().__post_init__()


def as_config(config, fields, cls=LoRAConfig):
    """The config a call works with: config itself, or cls(**fields) from the keyword shorthand
    (apply_lora(model, targets, r=8, alpha=16)). Not both: replace(config, r=16) changes one."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(k for k in fields if k not in names)
    if unknown:
        raise TypeError(f"unknown setting(s) {unknown}; {cls.__name__}'s fields are {names}")
    if config is None:
        return cls(**fields)
    if not isinstance(config, cls):
        raise TypeError(f"config must be an instance of {cls.__name__}, got {config!r} ({type(config).__name__}); "
                        f"or give the settings by keyword, e.g. r=8, alpha=16")
    if fields:
        raise TypeError(f"give a {cls.__name__} or its settings as keywords, not both (got a config and "
                        f"{sorted(fields)}); dataclasses.replace(config, ...) makes a changed copy")
    return config


def config_or_targets(config, fields, cls=LoRAConfig):
    """apply_lora's (and apply_adalora's) second argument: a config, or the targets of one built from
    the keywords: the shorthand apply_lora(model, ["q_proj", "v_proj"], r=8, alpha=16)."""
    if config is not None and not isinstance(config, LoRAConfig):
        if "targets" in fields:
            raise TypeError(f"targets given twice: {config!r} and targets={fields['targets']!r}")
        config, fields = None, dict(fields, targets=config)
    return as_config(config, fields, cls)
