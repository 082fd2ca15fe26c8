"""One fine-tuning run, full or LoRA, measured and written as one JSON record.

Every experiment is a list of these runs over one shared setup: a base model pretrained on the
source corpus (what can be forgotten) and fine-tuned on the target corpus (what is learned).
A finished run is cached as CACHE/runs/<key>.json and not recomputed unless forced. The key
holds the corpora by the SHA-256 of their bytes, so an edited corpus file is a new run.
"""
import copy
import json
import math
import os
import statistics
import tempfile
import time
import warnings

import torch

import minilora
from experiments.lib.base_model import settings_key
from experiments.lib.memory import measure_training_memory
from minilora.quantize import QUANT_TYPES
from nanogpt import distributed
from nanogpt.batch_memory import check_batch_fits
from nanogpt.data import fixed_batches, get_batch
from nanogpt.device import autocast
from nanogpt.evaluate import evaluate_shared
from nanogpt.train import NonFiniteLossError, configure_optimizer, train, write_json
from nanogpt.train_config import TrainConfig

METHODS = ("full", "lora")
VARIANTS = ("lora", "rslora", "loraplus", "dora", "pissa", "adalora")
LORAPLUS_RATIO = 16  # Hayou et al. 2024: B's learning rate about 16x A's


def check_spec(spec):
    if spec["method"] not in METHODS:
        raise ValueError(f"unknown method {spec['method']!r}; choose one of {list(METHODS)}")
    if spec["method"] == "lora" and spec.get("variant", "lora") not in VARIANTS:
        raise ValueError(f"unknown LoRA variant {spec['variant']!r}; choose one of {list(VARIANTS)}")
    if spec.get("quantize") not in (None,) + QUANT_TYPES or (spec.get("quantize") and spec["method"] != "lora"):
        raise ValueError(f"quantize {spec.get('quantize')!r}: a LoRA run's base in one of {list(QUANT_TYPES)}")


def prepare_model(base, spec):
    """A copy of the base model, ready to train as the spec says: all weights, or LoRA adapters."""
    model = copy.deepcopy(base)
    if spec["method"] == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    variant = spec.get("variant", "lora")
    if variant == "adalora":  # r is init_r; the allocator prunes to target_r per matrix on average
        return minilora.apply_adalora(model, spec["targets"], init_r=spec["r"], target_r=spec["target_r"],
                                      alpha=spec["alpha"])
    minilora.apply_lora(model, spec["targets"], r=spec["r"], alpha=spec["alpha"],
                        rslora=variant == "rslora", dora=variant == "dora", pissa=variant == "pissa",
                        quantize=spec.get("quantize"))
    return model


def make_optimizer(model, spec, weight_decay):
    if spec.get("variant") == "loraplus":  # spec["ratio"]: B's rate over A's (default: the paper's 16)
        groups = minilora.loraplus_param_groups(model, lr=spec["lr"], ratio=spec.get("ratio", LORAPLUS_RATIO),
                                                weight_decay=weight_decay)
        for g in groups:  # train() schedules each group's lr as its lr_ratio times the schedule
            g["lr_ratio"] = g["lr"] / spec["lr"]
        return torch.optim.AdamW(groups, lr=spec["lr"], betas=(0.9, 0.99))
    return configure_optimizer(model, spec["lr"], weight_decay)


def adalora_hooks(model, spec, steps):
    """AdaLoRA's two additions to the training loop, as train() hooks: the orthogonality
    regulariser added to the loss, and the rank allocator called after every optimizer step.
    spec holds the schedule: t_init, t_final, delta_t, beta1, beta2, gamma."""
    allocator = minilora.RankAllocator(model, total_steps=steps, t_init=spec["t_init"], t_final=spec["t_final"],
                                       delta_t=spec["delta_t"], beta1=spec["beta1"], beta2=spec["beta2"])
    return allocator, {"after_step": allocator.step,
                       "extra_loss": lambda m: minilora.orthogonal_regularizer(m, spec["gamma"])}


def saved_bytes(model, spec):
    """Bytes on disk of what this method must save: the adapter file, or the whole model."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "saved.pt")
        if spec["method"] == "full":
            torch.save(model.state_dict(), path)
        else:
            minilora.save_adapter(model, path)
        return os.path.getsize(path)


def measure_step_memory(model, spec, data, batch_size, seed, device, weight_decay=0.0):
    """Memory by part of one training step, taken on a copy so the real run is not touched."""
    probe = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    x, y = get_batch(data, batch_size, probe.config.block_size, generator=g, device=device)  # (B, T) each
    return measure_training_memory(probe, make_optimizer(probe, spec, weight_decay), x, y, autocast(device))


def test_losses(model, target, source, eval_iters, eval_batch_size, device):
    """{"target", "source"}: the model's mean loss on fixed batches of each corpus's test part (the
    same windows for every run), or None without a test split. Taken only before and after
    training, never during it, so nothing the run or its tuner decides can see it."""
    if target.test is None or source.test is None:
        return None
    block_size = model.config.block_size
    return {name: evaluate_shared(model, fixed_batches(corpus.test, eval_iters, eval_batch_size, block_size), device)
            for name, corpus in (("target", target), ("source", source))}


def reported_loss(record, domain="target", when="final"):
    """The loss a table reports for a run: on the test half when the run held one out (no choice
    read it), else on validation. domain: "target" or "source"; when: "base" or "final"."""
    return record.get(f"{when}_{domain}_test_loss", record[f"{when}_{domain}_loss"])


def reported_on(record):
    """Which text reported_loss reads for this run: "test" or "validation"."""
    return "test" if "final_target_test_loss" in record else "validation"


def read_cached_record(path):
    """The cached record at path, or None when there is none or it cannot be read (a damaged
    cache file is then recomputed, with a warning naming it)."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        if isinstance(record, dict) and "history" in record:
            return record
        problem = "it is not a run record"
    except (OSError, ValueError) as e:
        problem = str(e)
    warnings.warn(f"the cached run record {path!r} cannot be read ({problem}); running it again", stacklevel=3)
    return None


def run_key(base_key, spec, target, source, *, steps, batch_size, seed, device, eval_interval=100,
            eval_iters=20, weight_decay=0.0, final_eval=None, eval_batch_size=None, **_not_in_the_key):
    """The cache key of a run: a hash of everything that decides its record (the corpora by the
    SHA-256 of their bytes). Takes run_finetune's arguments; those that do not change the
    record (cache_dir, force, progress, ...) are ignored."""
    settings = {"base": base_key, "spec": spec, "target": target.sha256, "source": source.sha256, "steps": steps,
                "batch_size": batch_size, "seed": seed, "device": str(device).split(":")[0],
                "eval_interval": eval_interval, "eval_iters": eval_iters, "weight_decay": weight_decay}
    if final_eval is not None:  # older cache keys stay valid when no final evaluation is asked for
        settings["final_eval"] = final_eval[0]
    if eval_batch_size not in (None, batch_size):  # likewise: evaluating at the training batch is the old key
        settings["eval_batch_size"] = eval_batch_size
    if getattr(target, "test", None) is not None:  # validation is then the held-out tail's first half, test its second
        settings["test_split"] = True
    return settings_key(settings)


def run_finetune(base, base_key, spec, target, source, *, steps, batch_size, seed, device, cache_dir,
                 eval_interval=100, eval_iters=20, weight_decay=0.0, force=False, progress=True,
                 keep_adapter=False, final_eval=None, cached_only=False, eval_batch_size=None):
    """Fine-tune a copy of `base` as `spec` says and return its record (from the cache if done).

    spec: {"method": "full"|"lora", "lr": float, and for LoRA "r", "alpha", "targets", "variant"
        (and for LoRA+ optionally "ratio", B's rate over A's; for QLoRA "quantize": "nf4"|"fp4"|"int4",
        a 4-bit base, left out otherwise so that the cache keys of earlier runs stay valid)}; variant
        "adalora" also needs "target_r" and the adalora_hooks schedule keys, and its record gets
        "adalora": the budget b(t) per step, every reallocation, and the final rank per layer.
    target, source: nanogpt.data.Corpus; the run trains on target.train and evaluates on
    target.val (learning) and source.val (forgetting). Loaded with test_split, both corpora also
    hold a test part: the record then adds the base and final losses on it ("base_target_test_loss",
    "final_target_test_loss", and the same for source), which no choice may read (test_losses).
    keep_adapter: also keep the trained adapter file beside the record (LoRA only), its path in
        record["adapter_path"], for experiments that look inside the adapters.
    final_eval: (name, fn) where fn(trained model) -> dict of JSON numbers stored as
        record["final_eval"]; the name is part of the cache key, so change it when fn changes.
    cached_only: return the cached record, or None if this run has not been made (train nothing).
    eval_batch_size: sequences per evaluation batch (None: batch_size), so that runs at different
        batch sizes can be scored on the same validation sample.

    Under torchrun (after nanogpt.distributed.setup()) the run trains with DistributedDataParallel on
    all the processes, batch_size being the global batch (train()); rank 0 writes the record and the
    adapter, and every process returns once they are written. The record then also holds
    "communication": the processes and the bytes all-reduced per step.
    """
    check_spec(spec)
    key = run_key(base_key, spec, target, source, steps=steps, batch_size=batch_size, seed=seed, device=device,
                  eval_interval=eval_interval, eval_iters=eval_iters, weight_decay=weight_decay,
                  final_eval=final_eval, eval_batch_size=eval_batch_size)
    path = os.path.join(cache_dir, "runs", f"{key}.json")
    adapter_path = os.path.join(cache_dir, "runs", f"{key}.adapter.pt")
    want_adapter = keep_adapter and spec["method"] == "lora"
    record = None if force else read_cached_record(path)
    if record is not None and (not want_adapter or os.path.exists(adapter_path)):
        if want_adapter:
            record["adapter_path"] = adapter_path
        return record
    if cached_only:
        return None

    torch.manual_seed(seed)
    model = prepare_model(base, spec)
    block_size = model.config.block_size
    train_config = TrainConfig(max_iters=steps, batch_size=batch_size, lr=spec["lr"], warmup_iters=max(1, steps // 10),
                               weight_decay=weight_decay, eval_interval=eval_interval, eval_iters=eval_iters,
                               eval_batch_size=eval_batch_size, device=device, seed=seed, progress=progress)
    check_batch_fits(model, target.train, train_config, 2, distributed.world_size())  # before the memory probe's step

    memory = measure_step_memory(model, spec, target.train, batch_size, seed, device, weight_decay)
    base_test = test_losses(model, target, source, eval_iters, eval_batch_size or batch_size, device)

    is_cuda = str(device).startswith("cuda")
    if is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    allocator, hooks = (adalora_hooks(model, spec, steps) if spec.get("variant") == "adalora" else (None, {}))
    start = time.perf_counter()
    diverged_at = None
    try:
        result = train(model, target.train, {"target": target.val, "source": source.val}, train_config,
                       optimizer=make_optimizer(model, spec, weight_decay), **hooks)
    except NonFiniteLossError as e:
        # A diverged run is a result (a learning rate too high), kept as such: its final losses are
        # NaN, which the experiments read as "worst", and the record says where it diverged.
        print(f"run diverged: {e}")
        result, diverged_at = e.result, e.step
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished runs are kept in {os.path.join(cache_dir, 'runs')}: the same command "
              f"continues with the first unfinished run")
        raise
    wall_time = time.perf_counter() - start
    if is_cuda:
        memory["cuda_peak"] = torch.cuda.max_memory_allocated()

    trainable, total, _ = minilora.count_parameters(model)
    median_step = statistics.median(result["step_times"]) if result["step_times"] else math.nan
    history = result["history"]
    final = history[-1] if diverged_at is None else {"target_loss": math.nan, "source_loss": math.nan}
    record = {
        "method": spec["method"],
        "variant": spec.get("variant") if spec["method"] == "lora" else None,
        "quantize": spec.get("quantize"),
        "r": spec.get("r"),
        "alpha": spec.get("alpha"),
        "targets": spec.get("targets"),
        "lr": spec["lr"],
        "steps": steps,
        "batch_size": batch_size,
        "block_size": block_size,
        "seed": seed,
        "device": str(device),
        "target_corpus": target.name,
        "source_corpus": source.name,
        "target_sha256": target.sha256,  # which bytes the run saw
        "source_sha256": source.sha256,
        "trainable_params": trainable,
        "total_params": total,
        "train_loss": result["step_losses"],
        "history": [{k: h[k] for k in ("step", "target_loss", "source_loss", "lr", "elapsed_s", "tokens_seen")}
                    for h in history],
        "base_target_loss": history[0]["target_loss"],
        "base_source_loss": history[0]["source_loss"],
        "final_target_loss": final["target_loss"],
        "final_source_loss": final["source_loss"],
        "wall_time_s": wall_time,
        "median_step_s": median_step,
        "tokens_per_s": batch_size * block_size / median_step,
        "saved_bytes": saved_bytes(model, spec),
        "memory": memory,
    }
    if diverged_at is not None:
        record["diverged_at_step"] = diverged_at
    if allocator is not None:
        record["adalora"] = {"budget": [b for _, b in allocator.budgets],
                             "allocations": [{"step": s, "ranks": ranks} for s, ranks in allocator.allocations],
                             "final_ranks": allocator.final_ranks(),  # {layer: kept triplets}
                             # what the kept triplets weigh: k (in + out + 1) per matrix, as save_adapter keeps them
                             "final_params": sum(a.rank * (a.lora_A.shape[1] + a.lora_B.shape[0] + 1)
                                                 for _, a in allocator.adapters)}
    if "communication" in result:  # trained on several processes (torchrun)
        record["communication"] = result["communication"]
    if base_test is not None:
        final_test = (test_losses(model, target, source, eval_iters, eval_batch_size or batch_size, device)
                      if diverged_at is None else {"target": math.nan, "source": math.nan})
        for name in ("target", "source"):
            record[f"base_{name}_test_loss"] = base_test[name]
            record[f"final_{name}_test_loss"] = final_test[name]
    if final_eval is not None:
        record["final_eval"] = final_eval[1](model)
    if eval_batch_size not in (None, batch_size):
        record["eval_batch_size"] = eval_batch_size
    if target.val_bytes_per_token != 1.0:  # BPE tokens (--init-from, a real GPT-2): the losses per byte of text too
        for name, corpus in (("target", target), ("source", source)):
            record[f"{name}_bytes_per_token"] = corpus.val_bytes_per_token
            record[f"final_{name}_nats_per_byte"] = final[f"{name}_loss"] / corpus.val_bytes_per_token
    if distributed.is_main():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if spec["method"] == "lora":  # cheap (the adapter is tiny), and a later experiment may need it
            minilora.save_adapter(model, adapter_path)
        write_json(record, path)
    distributed.barrier()  # under torchrun: the others may read the record back only once it is written
    if want_adapter:
        record["adapter_path"] = adapter_path
    return record
