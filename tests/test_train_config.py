"""train()'s settings as one TrainConfig: each bad value refused when the config is made, naming the
field; a batch that cannot fit refused before any work, saying what it needs; the same numbers as
train() gave before it took a config. (nanogpt/'s functions at most 8 parameters: test_architecture.py.)"""
import json
from pathlib import Path

import pytest
import torch

import nanogpt.batch_memory as batch_memory
import nanogpt.train as train_module
from nanogpt.checkpoint import load_checkpoint
from nanogpt.data import Corpus
from nanogpt.model import GPT, GPTConfig
from nanogpt.run_folder import Resume, RunFolder
from nanogpt.train import restore_training_state, train
from nanogpt.train_config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
BEFORE = ROOT / "tests" / "data" / "train_history_before_trainconfig.json"
TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n" * 60
DATA = torch.tensor(list(TEXT.encode()), dtype=torch.uint8)  # (N,) byte tokens
TOY = GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.1)


def toy_model(seed=0):
    torch.manual_seed(seed)
    return GPT(TOY)


def without_times(history):
    return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in history]


# -- the settings, checked once --------------------------------------------------------------------

@pytest.mark.parametrize("name, value, need", [
    ("max_iters", -1, "an integer >= 0"),
    ("max_iters", 2.5, "an integer >= 0"),
    ("batch_size", 0, "an integer >= 1"),
    ("batch_size", True, "an integer >= 1"),
    ("lr", float("nan"), "a finite number >= 0"),
    ("lr", "1e-3", "a finite number >= 0"),
    ("min_lr", -1.0, "None (lr / 10) or a finite number >= 0"),
    ("warmup_iters", -5, "an integer >= 0"),
    ("weight_decay", float("inf"), "a finite number >= 0"),
    ("grad_clip", -0.1, "a finite number >= 0 (0 = no clipping)"),
    ("eval_interval", 0, "an integer >= 1"),
    ("eval_iters", 0, "an integer >= 1"),
    ("eval_batch_size", 0, "None (batch_size) or an integer >= 1"),
    ("seed", -1, "an integer in 0..2147483647"),
    ("seed", 2 ** 31, "an integer in 0..2147483647"),
    ("progress", "yes", "True or False"),
])
def test_each_bad_setting_is_refused_naming_the_field_and_the_value(name, value, need):
    with pytest.raises(ValueError) as e:
        TrainConfig(max_iters=10, **{name: value}) if name != "max_iters" else TrainConfig(max_iters=value)
    assert str(e.value) == f"TrainConfig.{name} must be {need}, got {value!r}"


def test_min_lr_above_lr_and_unknown_devices_are_refused():
    with pytest.raises(ValueError, match=r"TrainConfig.min_lr 0.01 is above lr 0.001: .* at most lr"):
        TrainConfig(max_iters=10, lr=1e-3, min_lr=1e-2)
    for device in ("tpu", "auto"):
        with pytest.raises(ValueError, match=rf"TrainConfig.device must be one of \['cpu', 'cuda', 'mps'\] .*got "
                                             rf"'{device}'"):
            TrainConfig(max_iters=10, device=device)
    assert TrainConfig(max_iters=10, device=torch.device("cpu")).device == torch.device("cpu")


def test_defaults_and_what_none_means():
    config = TrainConfig(max_iters=10)
    assert (config.batch_size, config.lr, config.warmup_iters, config.eval_interval, config.seed) == (12, 1e-3, 100, 250, 1337)
    assert config.final_lr == pytest.approx(1e-4) and config.eval_rows == 12  # lr / 10, and batch_size
    config = TrainConfig(max_iters=10, lr=2e-3, min_lr=0.0, batch_size=8, eval_batch_size=3)
    assert config.final_lr == 0.0 and config.eval_rows == 3


def test_from_settings_takes_the_fields_a_command_settings_dict_holds():
    settings = {"corpus": "python-code", "preset": "tiny", "n_layer": 4, "max_iters": 30, "batch_size": 6,
                "lr": 2e-3, "min_lr": 2e-4, "warmup_iters": 3, "weight_decay": 0.1, "grad_clip": 1.0,
                "eval_interval": 10, "eval_iters": 2, "seed": 5, "corpus_sha256": "ab"}
    config = TrainConfig.from_settings(settings, device="cpu", progress=False)
    assert config == TrainConfig(max_iters=30, batch_size=6, lr=2e-3, min_lr=2e-4, warmup_iters=3, weight_decay=0.1,
                                 grad_clip=1.0, eval_interval=10, eval_iters=2, seed=5, device="cpu", progress=False)
    with pytest.raises(ValueError, match="TrainConfig.batch_size must be an integer >= 1, got 0"):
        TrainConfig.from_settings({**settings, "batch_size": 0})


def test_train_takes_a_config_and_a_run_folder_nothing_else():
    model = toy_model()
    with pytest.raises(TypeError, match=r"train\(\): config must be a TrainConfig .*got \{'max_iters': 2\}"):
        train(model, DATA, {"val": DATA}, {"max_iters": 2})
    with pytest.raises(TypeError, match=r"train\(\): folder must be a RunFolder .*got 'runs/x'"):
        train(model, DATA, {"val": DATA}, TrainConfig(max_iters=2, progress=False), folder="runs/x")
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_iters'"):  # the old call: loud
        train(model, DATA, {"val": DATA}, max_iters=2)
    with pytest.raises(ValueError, match="RunFolder.path must be a folder path, got 3"):
        RunFolder(3)
    with pytest.raises(ValueError, match="RunFolder.resume.step must be an integer >= 0, got -1"):
        RunFolder("runs/x", resume=Resume(-1, []))


# -- a batch that cannot fit -----------------------------------------------------------------------

def test_an_absurd_batch_is_refused_before_any_work(tmp_path, monkeypatch):
    model = toy_model()
    before = {n: p.clone() for n, p in model.named_parameters()}
    drawn = []
    monkeypatch.setattr(train_module, "get_batch", lambda *a, **k: drawn.append("train") or 1 / 0)
    monkeypatch.setattr(train_module, "fixed_batches", lambda *a, **k: drawn.append("eval") or 1 / 0)
    config = TrainConfig(max_iters=5, batch_size=10_000_000, progress=False)
    with pytest.raises(ValueError) as e:
        train(model, DATA, {"train": DATA, "val": DATA}, config, folder=RunFolder(str(tmp_path / "run")))
    message = str(e.value)
    assert message.startswith("train(): batch_size 10,000,000 cannot fit in memory: its activations for the "
                              "backward pass alone take at least ")
    assert "per sequence of 16 tokens, measured on this model" in message
    assert "(2 sets x eval_iters 20 x 10,000,000 sequences)" in message
    assert "The largest batch_size that could fit: " in message
    assert drawn == [] and not (tmp_path / "run").exists()  # no batch drawn, nothing written
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_an_experiment_run_refuses_an_absurd_batch_before_its_memory_probe(tmp_path, monkeypatch):
    import experiments.lib.finetune as finetune_module

    probed = []
    monkeypatch.setattr(finetune_module, "measure_step_memory", lambda *a, **k: probed.append(1) or 1 / 0)
    corpus = Corpus("toy", DATA, DATA[:300], "0" * 64)
    with pytest.raises(ValueError, match="train\\(\\): batch_size 10,000,000 cannot fit in memory"):
        finetune_module.run_finetune(toy_model(), "toy", {"method": "full", "lr": 1e-3}, corpus, corpus, steps=2,
                                     batch_size=10_000_000, seed=0, device="cpu", cache_dir=str(tmp_path),
                                     progress=False)
    assert probed == []  # its one measured step (of 10,000,000 sequences) never started


def test_the_largest_batch_named_fits_and_one_more_does_not(monkeypatch):
    model = toy_model()
    monkeypatch.setattr(batch_memory, "machine_memory", lambda device: (8 * 2 ** 20, "the test's 8 MiB"))
    config = TrainConfig(max_iters=5, batch_size=1_000_000, eval_iters=3)
    with pytest.raises(ValueError, match="but the test's 8 MiB is 8.0 MiB") as e:
        batch_memory.check_batch_fits(model, DATA, config, eval_sets=2)
    largest = int(str(e.value).split("could fit: ")[1].split(" ")[0].replace(",", ""))
    assert largest >= 1
    batch_memory.check_batch_fits(model, DATA, TrainConfig(max_iters=5, batch_size=largest, eval_iters=3), 2)
    with pytest.raises(ValueError, match=f"batch_size {largest + 1:,} cannot fit"):
        batch_memory.check_batch_fits(model, DATA, TrainConfig(max_iters=5, batch_size=largest + 1, eval_iters=3), 2)
    # an evaluation batch of its own that alone exceeds the memory: that is what the message names
    big_eval = TrainConfig(max_iters=5, batch_size=1, eval_batch_size=10_000_000)
    with pytest.raises(ValueError, match="The evaluation batches alone do not fit: lower eval_batch_size "
                                         r"\(now 10,000,000\) or eval_iters."):
        batch_memory.check_batch_fits(model, DATA, big_eval, eval_sets=1)


def test_the_memory_probe_is_linear_in_the_batch_and_leaves_no_trace():
    model = toy_model()
    model.train()
    rng = torch.get_rng_state()
    per_row = batch_memory.activation_bytes_per_row(model, DATA, "cpu")
    assert torch.equal(torch.get_rng_state(), rng) and model.training  # no dropout drawn; mode restored
    x = DATA[:16 * 4].view(4, 16).long()  # (4, T)
    model.eval()
    one = batch_memory.saved_bytes(model, x[:1], x[:1], "cpu")
    four = batch_memory.saved_bytes(model, x, x, "cpu")
    assert per_row > 0 and four - one == 3 * per_row


# -- the same numbers as before --------------------------------------------------------------------

def test_a_short_run_gives_the_history_train_gave_before_it_took_a_config():
    """The settings of tests/data/train_history_before_trainconfig.json, run by the train() of the
    commit before TrainConfig (its "made_by"): the same losses, learning rates and token counts."""
    before = json.loads(BEFORE.read_text())
    config = TrainConfig(max_iters=10, batch_size=4, lr=3e-3, min_lr=1e-4, warmup_iters=2, weight_decay=0.05,
                         grad_clip=0.5, eval_interval=5, eval_iters=2, eval_batch_size=3, seed=7, progress=False)
    result = train(toy_model(), DATA, {"train": DATA, "val": DATA[:300]}, config)
    history = without_times(result["history"])
    assert [h["step"] for h in history] == [h["step"] for h in before["history"]] == [0, 5, 10]
    for now, then in zip(history, before["history"]):
        assert now.keys() == then.keys()
        assert now["tokens_seen"] == then["tokens_seen"] and now["lr"] == pytest.approx(then["lr"], rel=1e-12)
        assert now["train_loss"] == pytest.approx(then["train_loss"], rel=1e-5)
        assert now["val_loss"] == pytest.approx(then["val_loss"], rel=1e-5)
    assert result["step_losses"] == pytest.approx(before["step_losses"], rel=1e-5)


def test_a_run_resumed_through_its_run_folder_is_the_uninterrupted_run(tmp_path):
    config = TrainConfig(max_iters=10, batch_size=4, lr=3e-3, warmup_iters=2, eval_interval=5, eval_iters=2,
                         seed=3, progress=False)
    straight = train(toy_model(), DATA, {"val": DATA}, config, folder=RunFolder(str(tmp_path / "a"), "toy", {"x": 1}))

    def stop_at_step_7(step):
        if step == 6:  # during step 7: the folder keeps the checkpoint of step 5
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="training stopped during step 7; .* holds step 5"):
        train(toy_model(), DATA, {"val": DATA}, config, after_step=stop_at_step_7,
              folder=RunFolder(str(tmp_path / "b"), "toy", {"x": 1}))
    checkpoint = load_checkpoint(str(tmp_path / "b" / "ckpt.pt"))
    assert (checkpoint["step"], checkpoint["corpus"], checkpoint["settings"]) == (5, "toy", {"x": 1})
    model = toy_model(seed=99)  # other weights: the checkpoint's replace them
    optimizer = train_module.configure_optimizer(model, config.lr, config.weight_decay)
    resume = restore_training_state(checkpoint, model, optimizer, str(tmp_path / "b"))
    assert isinstance(resume, Resume) and resume.step == 5
    resumed = train(model, DATA, {"val": DATA}, config, optimizer=optimizer,
                    folder=RunFolder(str(tmp_path / "b"), "toy", {"x": 1}, resume))
    assert without_times(resumed["history"]) == without_times(straight["history"])
    assert resumed["step_losses"] == straight["step_losses"][5:]
