"""python -m nanogpt.finetune at toy size: the adapter it writes is the model it trained, the history
shows learning and forgetting, and it refuses, resumes and stops as nanogpt.train does."""
import json

import pytest
import torch

import nanogpt.train as train_module
from minilora import load_adapter, read_adapter_file
from nanogpt import finetune
from nanogpt.checkpoint import load_checkpoint, load_model
from nanogpt.data import fixed_batches, load_corpus
from nanogpt.flags import CommandError
from nanogpt.train import NonFiniteLossError, evaluate
from nanogpt.train import main as train_main

FLAGS = ["--max-iters", "10", "--eval-interval", "5", "--eval-iters", "2", "--batch-size", "4", "--device", "cpu",
         "--no-progress"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    code, prose = root / "code.txt", root / "my.txt"
    code.write_text("def add(a, b):\n    return a + b\n\nclass A:\n    pass\n" * 200)
    prose.write_text("The quick brown fox jumps over the lazy dog. A statement ends with a period.\n" * 150)
    train_main(["--corpus", str(code), "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16",
                "--max-iters", "20", "--eval-interval", "10", "--eval-iters", "2", "--device", "cpu",
                "--no-progress", "--out", str(root / "base")])
    return {"base": str(root / "base" / "ckpt.pt"), "code": str(code), "prose": str(prose)}


def run(setup, out, *extra):
    return finetune.main(["--base", setup["base"], "--corpus", setup["prose"], "--out", str(out), *FLAGS, *extra])


def test_a_lora_run_writes_the_adapter_it_trained_its_history_and_settings(setup, tmp_path, capsys):
    out = tmp_path / "ad"
    run(setup, out)
    printed = capsys.readouterr().out
    assert "what fine-tuning forgot" in printed and "--adapter" in printed
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 5, 10]
    assert all({"train_loss", "val_loss", "base_val_loss"} <= set(h) for h in history)
    assert history[-1]["val_loss"] < history[0]["val_loss"]  # it learned the new text
    settings = json.loads((out / "settings.json").read_text())
    assert settings["lr"] == finetune.DEFAULT_LR["lora"] and settings["warmup_iters"] == 1  # 10 // 10
    assert settings["lora_r"] == 8 and settings["lora_targets"] == "all-linear" and settings["base_corpus"] == setup["code"]
    # The adapter file, on the base, is the trained model: its loss on the run's fixed batches is the last one recorded.
    model, _ = load_model(setup["base"])
    load_adapter(model, str(out / "adapter.pt"))
    val = load_corpus(setup["prose"], 16).val
    assert evaluate(model, fixed_batches(val, 2, 4, 16), "cpu") == pytest.approx(history[-1]["val_loss"], abs=1e-5)


def test_a_used_folder_is_refused_and_resume_continues_the_same_run(setup, tmp_path, monkeypatch):
    run(setup, tmp_path / "straight", "--seed", "5")
    with pytest.raises(CommandError, match="already holds a run.*--resume.*--overwrite"):
        run(setup, tmp_path / "straight")
    real, calls = train_module.get_batch, []

    def interrupted(*args, **kwargs):  # a Ctrl-C during step 8
        calls.append(1)
        if len(calls) > 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "get_batch", interrupted)
    with pytest.raises(KeyboardInterrupt, match="nanogpt.finetune --out .* --resume"):
        run(setup, tmp_path / "resumed", "--seed", "5")
    monkeypatch.setattr(train_module, "get_batch", real)
    assert not (tmp_path / "resumed" / "adapter.pt").exists()
    with pytest.raises(CommandError, match="--seed 6, but the run was started with 5"):
        finetune.main(["--out", str(tmp_path / "resumed"), "--resume", "--seed", "6", "--device", "cpu"])
    finetune.main(["--out", str(tmp_path / "resumed"), "--resume", "--device", "cpu", "--no-progress"])
    a = read_adapter_file(str(tmp_path / "straight" / "adapter.pt"))["tensors"]
    b = read_adapter_file(str(tmp_path / "resumed" / "adapter.pt"))["tensors"]
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)
    run(setup, tmp_path / "straight", "--overwrite")  # asked for: replaced


def test_full_fine_tuning_leaves_a_plain_checkpoint(setup, tmp_path):
    run(setup, tmp_path / "full", "--full")
    model, checkpoint = load_model(str(tmp_path / "full" / "ckpt.pt"))  # a plain GPT
    assert not (tmp_path / "full" / "adapter.pt").exists()
    assert checkpoint["settings"]["lr"] == finetune.DEFAULT_LR["full"]
    with pytest.raises(CommandError, match="--lora-r.*--full"):
        run(setup, tmp_path / "full2", "--full", "--lora-r", "4")


def test_qlora_records_its_4bit_base(setup, tmp_path):
    run(setup, tmp_path / "q", "--qlora", "--lora-targets", "q_proj,v_proj", "--lora-r", "2")
    config = read_adapter_file(str(tmp_path / "q" / "adapter.pt"))["config"]
    assert config["quantize"] == "nf4" and config["r"] == 2
    assert [t.rsplit(".", 1)[1] for t in config["targets"]] == ["q_proj", "v_proj"]


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(setup, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"at step \d+ of 10.*last good checkpoint, step 0") as e:
        run(setup, tmp_path / "nan", "--full", "--lr", "1e30", "--grad-clip", "0")
    checkpoint = load_checkpoint(str(tmp_path / "nan" / "ckpt.pt"))
    assert checkpoint["step"] == 0 < e.value.step and all(t.isfinite().all() for t in checkpoint["model"].values())


@pytest.mark.parametrize("flag, value, message", [
    ("--lora-r", "0", "integer >= 1"), ("--lora-alpha", "nan", "finite number > 0"),
    ("--quantize", "nf5", "must be one of"), ("--lora-targets", ",", "all-linear"),
    ("--lora-dropout", "1", "[0, 1)"), ("--max-iters", "-3", "integer >= 1"),
])
def test_bad_flags_are_refused_at_parse_time(flag, value, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        finetune.main(["--out", str(tmp_path / "x"), flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and flag in err and message in err


def test_settings_problems_are_named_before_training(setup, tmp_path):
    with pytest.raises(CommandError, match="required for a new run: --corpus"):
        finetune.main(["--base", setup["base"], "--out", str(tmp_path / "a")])
    with pytest.raises(CommandError, match="--base-corpus none"):
        run(setup, tmp_path / "c", "--base-corpus", str(tmp_path / "gone.txt"))
    with pytest.raises(CommandError, match="target 'nope' matches no module"):
        run(setup, tmp_path / "b", "--lora-targets", "nope")
    assert not (tmp_path / "b" / "ckpt.pt").exists()


def test_every_flag_has_help_and_the_default_rates_are_shared_with_the_experiments():
    for action in finetune.make_parser()._actions:
        assert action.help and len(action.help) > 15, action.option_strings
    from experiments.lib.common import DEFAULT_LR
    assert DEFAULT_LR is finetune.DEFAULT_LR
