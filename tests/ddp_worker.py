"""What tests/test_distributed.py runs under torchrun: 2 CPU processes (gloo), one launch.

    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT

Each stage trains the toy GPT with nanogpt.train.train() under DistributedDataParallel and rank 0
writes what it saw to OUT/results.json (after every stage, so a later failure keeps the earlier
ones); the test compares it with one process training at the same seed. The "cli" stage runs
the command nanogpt.train itself (the test then fine-tunes its model with torchrun -m
nanogpt.finetune). The last stage kills rank 1 in the middle of training, to check that the
launch then ends with an error instead of hanging.
"""
import json
import os
import sys

import torch

from experiments.lib.base_model import get_base_model
from experiments.lib.runs import run_all
from minilora import apply_lora, save_adapter
from nanogpt import distributed
from nanogpt.data import load_corpus
from nanogpt.model import GPT, GPTConfig
from nanogpt.train import train
from nanogpt.train_config import TrainConfig

TOY = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)
STEPS = 20
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
TEXT = ("def f(x):\n    return x * 2\n\nclass A:\n    pass\n" * 60
        + "The quick brown fox jumps over the lazy dog.\n" * 60)


def toy_corpus(folder):
    path = os.path.join(folder, "toy.txt")
    if distributed.is_main() and not os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            f.write(TEXT)
        os.replace(path + ".tmp", path)
    distributed.barrier()
    return load_corpus(path, TOY.block_size)


SPECS = {"full": {"method": "full", "lr": 3e-3},  # rates high enough that the weights move a lot
         "lora": {"method": "lora", "variant": "lora", "r": 4, "alpha": 8, "targets": TARGETS, "lr": 1e-2}}


def toy_run(method, batch_size, corpus, steps=STEPS, rows_seen=None, **kwargs):
    """(train()'s result, the trained model): full fine-tuning or LoRA r=4 on all six linears
    of a toy GPT made from seed 0. rows_seen: a list that gets the rows of each training forward."""
    torch.manual_seed(0)
    model = GPT(TOY)
    if method == "lora":
        apply_lora(model, TARGETS, r=4, alpha=8)
    if rows_seen is not None:
        model.wte.register_forward_hook(lambda m, args, out: rows_seen.append(len(args[0])) if m.training else None)
    config = TrainConfig(max_iters=steps, batch_size=batch_size, lr=SPECS[method]["lr"], warmup_iters=2,
                         eval_interval=10, eval_iters=3, seed=7, progress=False)
    result = train(model, corpus.train, {"val": corpus.val}, config, **kwargs)
    return result, model


def experiment_runs(corpus, cache, workers):
    """The experiments' path: a base model pretrained and cached, then a full and a LoRA run
    through runs.run_all and finetune.run_finetune (workers > 1 is ignored under torchrun)."""
    base, _ = get_base_model(corpus, TOY, max_iters=6, batch_size=4, lr=3e-3, seed=1, device="cpu",
                             cache_dir=cache, progress=False)
    plan = [dict(base=base, base_key="toy", spec=SPECS[m], target=corpus, source=corpus, steps=6, batch_size=4,
                 seed=1, device="cpu", cache_dir=cache, eval_interval=3, eval_iters=2, progress=False)
            for m in ("full", "lora")]
    return run_all(plan, workers=workers, progress=False)


def finetune_args(base, text, out):
    """The flags of a short LoRA fine-tuning of the "cli" stage's model with nanogpt.finetune."""
    return ["--base", base, "--corpus", text, "--lora-r", "4", "--lora-alpha", "8", "--max-iters", "4",
            "--batch-size", "4", "--eval-interval", "2", "--eval-iters", "2", "--warmup-iters", "1",
            "--base-corpus", "none", "--device", "cpu", "--out", out, "--no-progress"]


def checksum_everywhere(model):
    """[each process's sum of |w| over all parameters]: identical weights give identical numbers."""
    mine = sum(p.detach().double().abs().sum().item() for p in model.parameters())
    values = [None] * distributed.world_size()
    torch.distributed.all_gather_object(values, mine)
    return values


def main(out):
    distributed.setup("cpu", "gloo", timeout_s=60)
    results = {"world_size": distributed.world_size()}

    def save():
        if distributed.is_main():
            with open(os.path.join(out, "results.json.tmp"), "w") as f:
                json.dump(results, f)
            os.replace(os.path.join(out, "results.json.tmp"), os.path.join(out, "results.json"))

    corpus = toy_corpus(out)
    for method in ("full", "lora"):
        rows = []
        result, model = toy_run(method, 4, corpus, rows_seen=rows)  # global batch 4: 2 rows per process
        trainable = [p for p in model.parameters() if p.requires_grad]
        results[method] = {
            "step_losses": result["step_losses"],
            "history": result["history"],
            "communication": result["communication"],
            "trainable_tensors": len(trainable),
            "trainable_bytes": sum(p.numel() * p.element_size() for p in trainable),
            "checksums": checksum_everywhere(model),
            "rows_per_step": sorted(set(rows)),
        }
        if method == "lora" and distributed.is_main():
            save_adapter(model, os.path.join(out, "adapter.pt"))
        save()

    records = experiment_runs(corpus, os.path.join(out, "cache"), workers=2)
    results["experiments"] = [{k: r[k] for k in ("train_loss", "final_target_loss", "communication")}
                              for r in records]
    save()

    try:  # a global batch that 2 processes cannot split
        toy_run("full", 3, corpus, steps=1)
        results["odd_batch"] = "no error"
    except ValueError as e:
        results["odd_batch"] = str(e)
    save()

    from nanogpt.train import main as train_main  # the command itself, as torchrun -m nanogpt.train runs it
    train_main(["--corpus", os.path.join(out, "toy.txt"), "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
                "--block-size", "16", "--batch-size", "4", "--max-iters", "4", "--eval-interval", "2",
                "--eval-iters", "2", "--warmup-iters", "1", "--device", "cpu", "--out", os.path.join(out, "cli"),
                "--no-progress"])
    results["cli"] = "done"
    save()

    def die(step):  # rank 1 dies in the middle of training; rank 0 is then waiting on it
        if step == 2 and distributed.rank() == 1:
            os._exit(7)
    toy_run("full", 4, corpus, steps=10, after_step=die)
    results["after_death"] = "rank 0 trained on alone"  # must not happen
    save()


if __name__ == "__main__":
    main(sys.argv[1])
