"""The settings of a training run, in one object checked once (as GPTConfig is for the model).

    config = TrainConfig(max_iters=3000, batch_size=12, lr=1e-3, device="cpu")
    result = train(model, corpus.train, {"val": corpus.val}, config)

What is not a setting stays an argument of train(): the model, the data, the optimizer, the
hooks, and the run's folder (nanogpt/run_folder.py: RunFolder, Resume). A bad value is refused
here, when the config is made, before any work, naming the field and what it must be:

    ValueError: TrainConfig.batch_size must be an integer >= 1, got 0

Whether a batch fits the machine depends on the model too, so train() checks that itself, first
(nanogpt/batch_memory.py).
"""
import math
from dataclasses import dataclass, fields
from typing import Optional

from nanogpt.device import DEVICE_CHOICES
from nanogpt.flags import SEED_LIMIT


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)  # True is an int to Python, not to us


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# field -> (what it must be, the test that it is); min_lr and eval_batch_size may be None (see the class)
RULES = {
    "max_iters": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "batch_size": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "lr": ("a finite number >= 0", lambda v: _is_number(v) and v >= 0),
    "min_lr": ("None (lr / 10) or a finite number >= 0", lambda v: v is None or (_is_number(v) and v >= 0)),
    "warmup_iters": ("an integer >= 0", lambda v: _is_int(v) and v >= 0),
    "weight_decay": ("a finite number >= 0", lambda v: _is_number(v) and v >= 0),
    "grad_clip": ("a finite number >= 0 (0 = no clipping)", lambda v: _is_number(v) and v >= 0),
    "eval_interval": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "eval_iters": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "eval_batch_size": ("None (batch_size) or an integer >= 1", lambda v: v is None or (_is_int(v) and v >= 1)),
    "seed": (f"an integer in 0..{SEED_LIMIT - 1}", lambda v: _is_int(v) and 0 <= v < SEED_LIMIT),
    "progress": ("True or False", lambda v: isinstance(v, bool)),
}


@dataclass
class TrainConfig:
    max_iters: int  # optimizer steps; a resumed run continues up to this step
    batch_size: int = 12  # sequences per step, over all processes under torchrun (the global batch)
    lr: float = 1e-3  # peak learning rate, reached after warmup_iters
    min_lr: Optional[float] = None  # where the cosine decay ends at max_iters; None: lr / 10
    warmup_iters: int = 100  # linear warm-up from 0 to lr
    weight_decay: float = 0.1  # AdamW's, on matrices only (configure_optimizer)
    grad_clip: float = 1.0  # largest gradient norm; 0 = no clipping
    eval_interval: int = 250  # steps between evaluations (and checkpoints)
    eval_iters: int = 20  # fixed batches per evaluation
    eval_batch_size: Optional[int] = None  # sequences per evaluation batch; None: batch_size
    device: str = "cpu"  # cpu, cuda, cuda:N or mps, already resolved (nanogpt.device.resolve_device)
    seed: int = 1337  # the training batches are drawn from a generator seeded by (seed, step)
    progress: bool = True  # show a progress bar

    def __post_init__(self):
        for name, (need, ok) in RULES.items():
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"TrainConfig.{name} must be {need}, got {value!r}")
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ValueError(f"TrainConfig.min_lr {self.min_lr!r} is above lr {self.lr!r}: the schedule decays from "
                             f"lr down to min_lr; give a min_lr at most lr (or None for lr / 10)")
        device = str(self.device)  # a torch.device is welcome too
        if device.split(":")[0] not in DEVICE_CHOICES or device == "auto":
            raise ValueError(f"TrainConfig.device must be one of {[d for d in DEVICE_CHOICES if d != 'auto']} "
                             f"(cuda:N for one GPU), got {self.device!r}; for 'auto' pass "
                             f"nanogpt.device.resolve_device('auto')")

    @property
    def final_lr(self):
        """Where the cosine decay ends: min_lr, or lr / 10 when it is None (as in nanoGPT)."""
        return self.lr / 10 if self.min_lr is None else self.min_lr

    @property
    def eval_rows(self):
        """Sequences per evaluation batch: eval_batch_size, or batch_size when it is None."""
        return self.batch_size if self.eval_batch_size is None else self.eval_batch_size

    @classmethod
    def from_settings(cls, settings, **more):
        """The fields found in a command's settings dict (nanogpt.train's, nanogpt.finetune's), plus
        `more` (device, progress) that the dict does not hold: TrainConfig.from_settings(s, device="cpu")."""
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings}, **more)
