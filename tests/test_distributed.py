"""Training on several processes (nanogpt/distributed.py): 2 CPU processes under torchrun train
exactly as one process does, LoRA all-reduces its adapters' gradients alone, and a failure ends
the launch instead of hanging it.

One torchrun launch (tests/ddp_worker.py, 2 processes, gloo) serves every test here; the test
process trains the same runs on one process to compare. The launch is bounded: `--standalone`
takes a free port from the system (so parallel test runs never collide), the process groups
time out after 60 s, and the whole launch is killed, with its process group, after LIMIT_S.
"""
import json
import os
import signal
import subprocess
import sys
import types

import pytest
import torch

from minilora import apply_lora, load_adapter, merge_lora
from nanogpt import distributed
from nanogpt.data import get_batch, load_corpus
from nanogpt.finetune import main as finetune_main
from nanogpt.flags import CommandError
from nanogpt.model import GPT
from nanogpt.train import main as train_main
from nanogpt.train import make_parser

sys.path.insert(0, os.path.dirname(__file__))
import ddp_worker  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT_S = 240  # the launch takes about 10 s on an idle 2-core machine; this is a hang


def torchrun(nproc, args, limit_s=LIMIT_S):
    """(exit code, output) of `torchrun --standalone --nproc_per_node nproc args`; on a
    hang, the launcher and its workers (one process group) are killed and the test fails."""
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                          str(nproc), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = p.communicate(timeout=limit_s)
    except BaseException as e:  # a hang, or the test run interrupted: no process is left behind
        os.killpg(p.pid, signal.SIGKILL)
        output, _ = p.communicate()
        if isinstance(e, subprocess.TimeoutExpired):
            pytest.fail(f"torchrun did not finish in {limit_s} s (killed):\n{output[-4000:]}")
        raise
    return p.returncode, output


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    code, output = torchrun(2, [os.path.join("tests", "ddp_worker.py"), str(out)])
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    text = out / "toy.txt"  # written by the launch
    corpus = load_corpus(str(text), ddp_worker.TOY.block_size) if text.exists() else None
    return types.SimpleNamespace(out=out, code=code, output=output, results=results, corpus=corpus)


def stage(launch, name):
    """The results of one stage of the launch; its output if the stage did not finish."""
    if name not in launch.results:
        pytest.fail(f"the 2-process launch did not finish stage {name!r} (exit code {launch.code}):\n"
                    f"{launch.output[-4000:]}")
    return launch.results[name]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_processes_at_batch_b_train_as_one_process_at_batch_2b(launch, method):
    two = stage(launch, method)  # 2 processes, global batch 4: 2 rows each
    one, _ = ddp_worker.toy_run(method, 4, launch.corpus)  # 1 process, batch 4, same seed
    assert len(two["step_losses"]) == ddp_worker.STEPS == 20
    assert two["rows_per_step"] == [2]  # each process trained on its half of the batch
    assert two["step_losses"] == pytest.approx(one["step_losses"], abs=1e-5, rel=0)
    assert [h["val_loss"] for h in two["history"]] == pytest.approx([h["val_loss"] for h in one["history"]],
                                                                     abs=1e-5, rel=0)
    # The comparison can fail: one process's share alone (batch 2) trains to other losses.
    half, _ = ddp_worker.toy_run(method, 2, launch.corpus)
    assert max(abs(a - b) for a, b in zip(two["step_losses"], half["step_losses"])) > 1e-3
    # Averaged gradients, then the same AdamW step: the weights are identical in both processes.
    assert two["checksums"][0] == two["checksums"][1]


def test_lora_all_reduces_only_the_adapters_gradients(launch):
    full, lora = stage(launch, "full"), stage(launch, "lora")
    model = GPT(ddp_worker.TOY)
    assert full["communication"]["allreduce_bytes_per_step"] == 4 * model.num_parameters() == full["trainable_bytes"]
    apply_lora(model, ddp_worker.TARGETS, r=4, alpha=8)
    adapters = [p for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_A" in n or "lora_B" in n for n, p in model.named_parameters() if p.requires_grad)
    # DDP's buckets held exactly the adapters' 24 tensors (A and B of 12 layers), nothing frozen
    assert lora["communication"]["synced_tensors"] == len(adapters) == 24 == lora["trainable_tensors"]
    assert lora["communication"]["allreduce_bytes_per_step"] == 4 * sum(p.numel() for p in adapters)
    assert lora["communication"]["world_size"] == 2


def test_adapter_trained_on_two_processes_saves_loads_and_merges_as_on_one(launch):
    stage(launch, "lora")
    _, one = ddp_worker.toy_run("lora", 4, launch.corpus)
    torch.manual_seed(0)
    loaded = load_adapter(GPT(ddp_worker.TOY), str(launch.out / "adapter.pt"))
    theirs = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    mine = {n: p for n, p in one.named_parameters() if "lora_" in n}
    assert theirs.keys() == mine.keys()
    for name in mine:
        assert torch.allclose(theirs[name], mine[name], atol=1e-5, rtol=0), name
    x = torch.randint(0, 256, (2, ddp_worker.TOY.block_size))
    loaded.eval(), one.eval()
    with torch.no_grad():
        before = loaded(x)[0]
        merge_lora(loaded), merge_lora(one)
        assert torch.allclose(loaded(x)[0], before, atol=1e-5)
        assert torch.allclose(loaded(x)[0], one(x)[0], atol=1e-4)


def test_experiment_runs_train_on_two_processes_as_on_one(launch, tmp_path):
    two = stage(launch, "experiments")
    one = ddp_worker.experiment_runs(launch.corpus, str(tmp_path / "cache"), workers=1)
    for a, b in zip(two, one):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5, rel=0)
        assert a["final_target_loss"] == pytest.approx(b["final_target_loss"], abs=1e-5, rel=0)
        assert a["communication"]["world_size"] == 2 and "communication" not in b
    runs = sorted(os.listdir(launch.out / "cache" / "runs"))  # rank 0 wrote each record once
    assert [n.endswith(".json") for n in runs].count(True) == 2 and len(runs) == 3  # + the LoRA adapter


def test_train_command_under_torchrun_writes_once_what_one_process_writes(launch, tmp_path):
    assert stage(launch, "cli") == "done"
    folder = launch.out / "cli"
    assert sorted(os.listdir(folder)) == ["ckpt.pt", "history.json"]  # no temporaries left by a second writer
    two = json.loads((folder / "history.json").read_text())
    train_main(["--corpus", str(launch.out / "toy.txt"), "--n-layer", "1", "--n-embd", "32", "--n-head", "2",
                "--block-size", "16", "--batch-size", "4", "--max-iters", "4", "--eval-interval", "2",
                "--eval-iters", "2", "--warmup-iters", "1", "--device", "cpu", "--out", str(tmp_path / "one"),
                "--no-progress"])
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    assert [h["step"] for h in two] == [h["step"] for h in one] == [0, 2, 4]
    for key in ("train_loss", "val_loss"):
        assert [h[key] for h in two] == pytest.approx([h[key] for h in one], abs=1e-5, rel=0)


def test_finetune_command_under_torchrun_trains_as_one_process_and_writes_once(launch, tmp_path):
    stage(launch, "cli")  # the base model: the train command's run in the launch
    base, text = str(launch.out / "cli" / "ckpt.pt"), str(launch.out / "toy.txt")
    code, output = torchrun(2, ["-m", "nanogpt.finetune", *ddp_worker.finetune_args(base, text, str(tmp_path / "two"))])
    assert code == 0, output[-4000:]
    assert "| 2 processes" in output  # the processes joined one group (without it each trains alone)
    assert sorted(os.listdir(tmp_path / "two")) == ["adapter.pt", "ckpt.pt", "history.json", "settings.json"]
    finetune_main(ddp_worker.finetune_args(base, text, str(tmp_path / "one")))
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    assert [h["step"] for h in two] == [h["step"] for h in one] == [0, 2, 4]
    for key in ("train_loss", "val_loss"):
        assert [h[key] for h in two] == pytest.approx([h[key] for h in one], abs=1e-5, rel=0)
    assert two[-1]["val_loss"] != two[0]["val_loss"]  # the adapter trained
    theirs = torch.load(tmp_path / "two" / "adapter.pt", weights_only=True)["tensors"]
    mine = torch.load(tmp_path / "one" / "adapter.pt", weights_only=True)["tensors"]
    assert theirs.keys() == mine.keys() and len(mine) == 12  # A and B of the 1-layer base's 6 linears
    for name in mine:
        assert torch.allclose(theirs[name], mine[name], atol=1e-5, rtol=0), name


def test_finetune_command_refuses_a_batch_its_processes_cannot_split_before_training(launch, tmp_path):
    stage(launch, "cli")
    base, text = str(launch.out / "cli" / "ckpt.pt"), str(launch.out / "toy.txt")
    args = ddp_worker.finetune_args(base, text, str(tmp_path / "odd")) + ["--batch-size", "3"]
    code, output = torchrun(2, ["-m", "nanogpt.finetune", *args])
    assert code != 0
    assert "--batch-size 3 is the global batch, and it cannot be split evenly over 2 processes" in output
    assert not (tmp_path / "odd" / "settings.json").exists()  # refused before rank 0 wrote anything


def test_a_batch_the_processes_cannot_split_is_a_clear_error(launch):
    message = stage(launch, "odd_batch")
    assert "batch_size 3 is the global batch" in message and "over 2 processes" in message
    assert "multiple of 2 (e.g. 2 or 4)" in message


def test_a_rank_that_dies_ends_the_launch_with_an_error(launch):
    stage(launch, "cli")  # the stages before the death finished
    assert "after_death" not in launch.results  # rank 0 did not train on alone
    assert launch.code != 0
    assert "exitcode" in launch.output and ": 7" in launch.output  # torchrun names the failed rank's exit code
    # (and it ended: torchrun() kills a launch still running after LIMIT_S and fails the test)


# -- one process: the pieces, without a launch --------------------------------------------------

def test_shares_of_the_global_batch_put_together_are_one_process_batch():
    data = torch.arange(1000, dtype=torch.uint8)
    whole = get_batch(data, 6, 8, generator=torch.Generator().manual_seed(3))
    for world in (1, 2, 3, 6):
        parts = [get_batch(data, 6, 8, generator=torch.Generator().manual_seed(3),
                           rows=distributed.batch_share(6, k, world)) for k in range(world)]
        assert torch.equal(torch.cat([x for x, _ in parts]), whole[0])
        assert torch.equal(torch.cat([y for _, y in parts]), whole[1])
    with pytest.raises(ValueError, match=r"--batch-size 12 is the global batch, and it cannot be split evenly over 5 "
                                         r"processes: give a multiple of 5 \(e.g. 10 or 15\)"):
        distributed.batch_share(12, 0, 5, what="--batch-size")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without GPUs")
def test_nccl_without_gpus_is_refused_when_the_flag_is_parsed(capsys):
    with pytest.raises(SystemExit):
        make_parser().parse_args(["--dist-backend", "nccl"])
    err = capsys.readouterr().err
    assert "argument --dist-backend: nccl needs CUDA GPUs" in err and "no CUDA GPU" in err and "Use gloo" in err
    with pytest.raises(CommandError, match="nccl all-reduces CUDA tensors, but the device is 'cpu'"):
        distributed.choose_backend("cpu", "nccl")
    assert distributed.choose_backend("cpu", "auto") == "gloo"


def test_without_torchrun_nothing_changes(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.setup("cpu", "auto") == "cpu"
    assert not distributed.is_distributed() and distributed.world_size() == 1 and distributed.is_main()
    assert "over all processes" in make_parser().format_help()  # --batch-size says it is the global batch


# -- experiments/bench/ddp.py, checked at small sizes without a launch ----------------------------

def test_bench_worker_measures_one_process_steps(tmp_path):
    from experiments.bench import ddp as bench_ddp
    path = tmp_path / "m.json"
    bench_ddp.main(["--worker", str(path), "--presets", "tiny", "--methods", "lora", "--steps", "2", "--warmup", "1",
                    "--batch-size", "2"])
    m = json.loads(path.read_text())
    assert len(m["step_s"]) == 2 and m["communication"] is None  # one process: nothing all-reduced
    # r (in + out) per adapted matrix: q, k, v, o (128 -> 128) and up, down (128 <-> 512), 4 blocks
    assert m["trainable_params"] == 4 * 8 * (4 * 256 + 2 * 640) and m["base_params"] == 834_304
    assert bench_ddp.counted_bytes(8)["tiny"] == {"full": 4 * 834_304, "lora": 4 * m["trainable_params"]}


def test_bench_summary_divides_lora_bytes_by_full_bytes_and_pairs_rounds():
    from experiments.bench import ddp as bench_ddp
    counts = {("tiny", m): {"trainable_params": n, "total_params": n, "base_params": 1000,
                            "communication": {"allreduce_bytes_per_step": 4 * n, "buckets_per_step": 1.0}}
              for m, n in (("full", 1000), ("lora", 50))}
    times = {("tiny", "lora", "1 process, 2 threads"): [1.0, 4.0, 5.0],
             ("tiny", "lora", "2 processes, 1 thread each"): [2.0, 2.0, 6.0]}
    summary = bench_ddp.summarise(times, counts)
    lora = next(c for c in summary["communication"] if c["method"] == "lora")
    assert lora["bytes_over_full_finetuning"] == 0.05 == lora["trainable_fraction_of_base"]
    [ratio] = summary["step_time_ratios"]
    assert ratio["ratio"] == "2 processes, 1 thread each / 1 process, 2 threads"
    assert ratio["median"] == pytest.approx(1.2)  # of the per-round ratios 2, 0.5, 1.2; not 2 / 4, the medians
    assert "| tiny | lora | 50 (5.00%) | 200 (0.00 MiB) | 0.0500 |" in bench_ddp.table(summary)


def test_bench_refuses_a_batch_two_processes_cannot_split(tmp_path):
    from experiments.bench import ddp as bench_ddp
    with pytest.raises(CommandError, match="--batch-size 3 is the global batch"):
        bench_ddp.main(["--presets", "tiny", "--batch-size", "3", "--out", str(tmp_path)])
