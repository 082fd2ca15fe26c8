"""What happens when things go wrong: no silent wrong result, no lost run, every bad flag caught
before work starts. Each of the six silent cases of issue 11 has a test here that failed before
its fix (items 3 and 5 are in test_experiments.py and test_nanogpt.py)."""
import builtins
import copy
import json
import math
import os

import pytest
import torch

import minilora
import nanogpt.train as train_module
from experiments import full_vs_lora, rank_sweep
from experiments.bench import lora as bench_lora
from experiments.lib import base_model
from experiments.lib.finetune import run_finetune
from nanogpt import GPT, config_from_preset
from nanogpt import sample as sample_module
from nanogpt.checkpoint import load_checkpoint, load_model, save_checkpoint
from nanogpt.data import load_corpus
from nanogpt.flags import CommandError, run_main
from nanogpt.run_folder import clean_stale_temporaries
from nanogpt.train import NonFiniteLossError, main as train_main
from nanogpt.train_config import TrainConfig

from tests.test_experiments import TOY

SMALL = dict(n_layer=1, n_head=2, n_embd=32, block_size=16)
TRAIN_FLAGS = ["--preset", "tiny", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16",
               "--batch-size", "4", "--eval-interval", "5", "--eval-iters", "2", "--warmup-iters", "2",
               "--device", "cpu", "--no-progress"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("def add(a, b):\n    return a + b\n\n" * 300)
    return str(path)


def run_train(corpus, out, *extra):
    train_main(["--corpus", corpus, *TRAIN_FLAGS, "--out", str(out), *extra])


def interrupt_after(monkeypatch, module, name, calls_before_interrupt):
    """Make module.name raise KeyboardInterrupt on its (calls_before_interrupt + 1)-th call, as a
    Ctrl-C or a kill would, at exactly that point."""
    real, calls = getattr(module, name), []

    def patched(*args, **kwargs):
        calls.append(1)
        if len(calls) > calls_before_interrupt:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, patched)
    return real


def weights_equal(a, b):
    return all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a if torch.is_tensor(a[k]))


def toy_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(config_from_preset("tiny", **SMALL))


# ---- 1. a used folder is never overwritten by accident -------------------------------------------

def test_running_again_into_a_used_folder_is_refused_and_keeps_the_run(tmp_path, corpus):
    out = tmp_path / "run"
    run_train(corpus, out, "--max-iters", "10")
    before = (out / "ckpt.pt").read_bytes()
    with pytest.raises(CommandError) as e:
        run_train(corpus, out, "--max-iters", "5")
    message = str(e.value)
    assert repr(str(out)) in message and "--resume" in message and "--overwrite" in message
    assert "step 10" in message
    assert (out / "ckpt.pt").read_bytes() == before  # untouched: not even the step-0 save happened
    run_train(corpus, out, "--max-iters", "5", "--overwrite")  # asked for: replaced
    assert load_checkpoint(str(out / "ckpt.pt"))["step"] == 5
    with pytest.raises(CommandError, match="give one of them"):
        run_train(corpus, out, "--resume", "--overwrite")
    with pytest.raises(CommandError, match="nothing to resume"):
        run_train(corpus, tmp_path / "empty", "--resume")


def test_resuming_a_finished_run_changes_nothing(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    run_train(corpus, out, "--max-iters", "10")
    before = (out / "ckpt.pt").read_bytes()
    run_train(corpus, out, "--resume")
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "ckpt.pt").read_bytes() == before


# ---- 2. --resume continues the run that was started --------------------------------------------

def test_resume_uses_the_runs_saved_settings(tmp_path, corpus, monkeypatch):
    settings = ["--lr", "0.002", "--seed", "7", "--batch-size", "3", "--max-iters", "10", "--min-lr", "0.0005"]
    run_train(corpus, tmp_path / "straight", *settings)
    real = interrupt_after(monkeypatch, train_module, "get_batch", 7)  # killed during step 8
    with pytest.raises(KeyboardInterrupt):
        run_train(corpus, tmp_path / "resumed", *settings)
    monkeypatch.setattr(train_module, "get_batch", real)
    # Resume naming nothing but the folder: the seed, rate, batch, schedule and corpus come from the checkpoint.
    train_main(["--out", str(tmp_path / "resumed"), "--resume", "--device", "cpu", "--no-progress"])
    a = load_checkpoint(str(tmp_path / "straight" / "ckpt.pt"))
    b = load_checkpoint(str(tmp_path / "resumed" / "ckpt.pt"))
    assert a["step"] == b["step"] == 10
    assert weights_equal(a["model"], b["model"])
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["tokens_seen"] for h in history] == [0, 5 * 3 * 16, 10 * 3 * 16]


def test_resume_refuses_a_conflicting_flag_naming_both_values(tmp_path, corpus):
    out = tmp_path / "run"
    run_train(corpus, out, "--max-iters", "10", "--lr", "0.002")
    with pytest.raises(CommandError) as e:
        run_train(corpus, out, "--resume", "--lr", "0.01", "--batch-size", "8")
    message = str(e.value)
    assert "--lr 0.01, but the run was started with 0.002" in message
    assert "--batch-size 8, but the run was started with 4" in message
    run_train(corpus, out, "--resume", "--lr", "0.002")  # the same value again is fine


def test_resume_refuses_an_edited_corpus(tmp_path, corpus):
    out = tmp_path / "run"
    run_train(corpus, out, "--max-iters", "10", "--eval-interval", "5")
    with open(corpus, "a") as f:
        f.write("something else entirely\n" * 20)
    with pytest.raises(CommandError, match="has changed since the run .* started"):
        run_train(corpus, out, "--resume")


# ---- 4. a merged model's state_dict loads as merged -----------------------------------------------

@pytest.mark.parametrize("variant", ["lora", "dora", "embedding", "two adapters"])
def test_merged_state_dict_loads_into_an_unmerged_model_without_adding_delta_w_twice(variant):
    model = toy_gpt()
    if variant == "embedding":
        model.lm_head.weight = torch.nn.Parameter(model.wte.weight.detach().clone())  # untie to adapt wte
        minilora.apply_lora(model, ["wte", "q_proj"], r=4, alpha=8)
    else:
        minilora.apply_lora(model, ["q_proj", "up_proj"], r=4, alpha=8, dora=variant == "dora")
    if variant == "two adapters":
        minilora.add_adapter(model, "other", ["q_proj", "up_proj"], r=2, alpha=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.1)  # a trained adapter: delta W != 0
    if variant == "two adapters":
        minilora.set_adapter(model, "other")
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    expected = model(x)[0]
    unmerged = copy.deepcopy(model)
    minilora.merge_lora(model)
    unmerged.load_state_dict(model.state_dict())
    torch.testing.assert_close(unmerged(x)[0], expected, rtol=1e-4, atol=1e-5)
    minilora.unmerge_lora(unmerged)  # and it unmerges back to the adapter on W0
    torch.testing.assert_close(unmerged(x)[0], expected, rtol=1e-4, atol=1e-5)
    # The other way round: an unmerged state_dict into a merged model gives the unmerged model.
    merged = copy.deepcopy(model)
    merged.load_state_dict(unmerged.state_dict())
    assert not any(layer.merged for _, layer in minilora.lora_layers(merged))
    torch.testing.assert_close(merged(x)[0], expected, rtol=1e-4, atol=1e-5)


def test_a_merged_state_dict_for_an_adapter_the_model_lacks_is_refused():
    model = toy_gpt()
    minilora.apply_lora(model, ["q_proj"], r=4, alpha=8)
    minilora.add_adapter(model, "french", ["q_proj"], r=4, alpha=8)
    minilora.set_adapter(model, "french")
    minilora.merge_lora(model)
    other = toy_gpt()
    minilora.apply_lora(other, ["q_proj"], r=4, alpha=8)
    state = {k: v for k, v in model.state_dict().items() if ".french." not in k}
    with pytest.raises(ValueError, match="adapter 'french' merged .* has no adapter 'french'"):
        other.load_state_dict(state)


# ---- 6. a diverging run stops, keeps its last good checkpoint, and exits non-zero ----------------

def test_nan_min_lr_is_refused_before_any_work(tmp_path, corpus, capsys):
    with pytest.raises(SystemExit) as e:
        run_train(corpus, tmp_path / "run", "--min-lr", "nan")
    assert e.value.code == 2
    assert "argument --min-lr: must be a finite number >= 0, got 'nan'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    flags = ["--max-iters", "40", "--lr", "1e6", "--warmup-iters", "1", "--grad-clip", "0"]
    with pytest.raises(NonFiniteLossError) as e:
        run_train(corpus, out, *flags)
    assert f"at step {e.value.step} of 40" in str(e.value) and "last good checkpoint" in str(e.value)
    checkpoint = load_checkpoint(str(out / "ckpt.pt"))
    assert checkpoint["step"] < e.value.step
    assert all(t.isfinite().all() for t in checkpoint["model"].values())
    history = json.loads((out / "history.json").read_text())
    assert all(math.isfinite(h["val_loss"]) for h in history)
    # As a command: a message, no traceback, exit code 1.
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: run_train(corpus, out, *flags, "--overwrite"))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: the training loss became nan")


def test_a_run_whose_loss_blows_up_but_stays_finite_ends_with_a_warning(tmp_path, corpus, capsys):
    # lr 30 for 4 steps: the loss climbs to thousands of nats/byte without reaching NaN
    run_train(corpus, tmp_path / "run", "--max-iters", "4", "--eval-interval", "2", "--lr", "30")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert math.isfinite(history[-1]["train_loss"]) and history[-1]["train_loss"] > math.log(256)
    err = capsys.readouterr().err
    assert "warning: at step 4 the training loss is" in err and "the run diverged. Try a lower --lr" in err
    run_train(corpus, tmp_path / "calm", "--max-iters", "4", "--eval-interval", "2")  # a sound run: no warning
    assert "warning" not in capsys.readouterr().err
    # A fresh model starts a little above ln 256 on random bytes; a run that has not risen from
    # there has not diverged, even when its loss is above a uniform guess.
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(torch.randint(0, 256, (20_000,), generator=torch.Generator().manual_seed(0)).tolist()))
    with pytest.warns(UserWarning, match="not valid UTF-8"):  # random bytes: read as they are
        run_train(str(noise), tmp_path / "noise", "--max-iters", "2", "--eval-interval", "2", "--lr", "1e-6")
    history = json.loads((tmp_path / "noise" / "history.json").read_text())
    assert history[-1]["train_loss"] > math.log(256)  # the case the warning must not fire on
    assert "warning" not in capsys.readouterr().err


def test_a_diverged_fine_tuning_run_is_recorded_as_diverged(tmp_path):
    base = toy_gpt()
    data = load_corpus(str(_write(tmp_path / "t.txt", "hello world, hello code. " * 100)), 16)
    spec = {"method": "full", "lr": 1e30}
    record = run_finetune(base, "base", spec, data, data, steps=12, batch_size=2, seed=0, device="cpu",
                          cache_dir=str(tmp_path / "cache"), eval_interval=4, eval_iters=1, progress=False)
    assert record["diverged_at_step"] <= 12
    assert math.isnan(record["final_target_loss"]) and math.isnan(record["final_source_loss"])
    assert all(math.isfinite(h["target_loss"]) for h in record["history"])


def _write(path, text):
    path.write_text(text)
    return path


# ---- bad flags are refused when they are parsed, naming the flag --------------------------------

BAD_TRAIN_FLAGS = [("--max-iters", "0"), ("--batch-size", "-1"), ("--lr", "nan"), ("--lr", "inf"), ("--lr", "0"),
                   ("--min-lr", "-1"), ("--warmup-iters", "-1"), ("--weight-decay", "nan"), ("--grad-clip", "-1"),
                   ("--eval-interval", "0"), ("--eval-iters", "0"), ("--seed", "-1"), ("--n-layer", "0"),
                   ("--block-size", "0"), ("--dropout", "1.5"), ("--preset", "huge"), ("--device", "tpu")]


@pytest.mark.parametrize("flag, value", BAD_TRAIN_FLAGS)
def test_every_bad_train_flag_names_itself(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--out", str(tmp_path / "run"), flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: " in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, value", [("--max-new-tokens", "-1"), ("--temperature", "nan"), ("--temperature", "0"),
                                         ("--top-k", "0"), ("--seed", "x"), ("--device", "tpu"), ("--prompt", "")])
def test_every_bad_sample_flag_names_itself(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        sample_module.main(["--ckpt", "unused.pt", flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: " in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [
    ("--max-iters", "0"), ("--batch-size", "0"), ("--eval-interval", "0"), ("--eval-iters", "0"),
    ("--pretrain-iters", "0"), ("--pretrain-lr", "nan"), ("--full-lr", "-1"), ("--lora-lr", "inf"),
    ("--alpha", "0"), ("--seed", "x"), ("--n-embd", "0"), ("--preset", "huge"), ("--ranks", "0"),
    ("--methods", ","),
])
def test_every_bad_experiment_flag_names_itself(flag, value, tmp_path, corpora, capsys):
    module = full_vs_lora if flag == "--methods" else rank_sweep
    with pytest.raises(SystemExit) as e:
        module.main([*TOY, *corpora, "--out", str(tmp_path / "out"), flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: " in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("flag, value", [("--threads", "0"), ("--r", "1000"), ("--steps", "0"), ("--alpha", "nan")])
def test_every_bad_bench_flag_names_itself(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        bench_lora.main(["--preset", "tiny", "--out", str(tmp_path), flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: " in capsys.readouterr().err


# ---- the experiments check every planned run before pretraining -------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--ranks", "1,64"], "r=64 is not a valid rank"),
    (["--targets", "nope"], "target 'nope' matches no module"),
    (["--targets", "lm_head"], "tied weights"),
    (["--targets", ","], "targets must be a non-empty list"),
    (["--n-head", "3"], "do not fit together"),
])
def test_a_bad_planned_run_stops_the_experiment_before_pretraining(extra, message, tmp_path, corpora, capsys):
    with pytest.raises(SystemExit) as e:
        rank_sweep.main([*TOY, *corpora, "--out", str(tmp_path / "out"), *extra])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("cache/base-*"))  # nothing was pretrained


@pytest.mark.parametrize("flag", ["--out", "--cache"])
def test_an_out_or_cache_that_is_a_file_is_named(flag, tmp_path, corpora, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    args = [*TOY, *corpora, "--out", str(tmp_path / "out"), "--ranks", "1", flag, str(a_file)]
    with pytest.raises(SystemExit):
        rank_sweep.main(args)
    assert f"{flag} '{a_file}' is a file, not a folder" in capsys.readouterr().err


def test_a_damaged_cache_is_named_and_force_rebuilds_it(tmp_path, corpora, capsys):
    args = [*TOY, *corpora, "--out", str(tmp_path / "out"), "--ranks", "1", "--no-full"]
    rank_sweep.main(args)
    cache = tmp_path / "cache"
    record = next((cache / "runs").glob("*.json"))
    record.write_text(record.read_text()[:50])  # a truncated record: recomputed, with a warning
    with pytest.warns(UserWarning, match="cached run record .* cannot be read"):
        rank_sweep.main(args)
    assert json.loads(record.read_text())["method"] == "lora"
    ckpt = next(cache.glob("base-*/ckpt.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:3000])  # a damaged base model: named, and --force rebuilds it
    with pytest.raises(SystemExit):
        rank_sweep.main(args)
    err = capsys.readouterr().err
    assert f"the cached base model in '{ckpt.parent}' cannot be used" in err and "--force" in err
    rank_sweep.main([*args, "--force"])
    assert load_model(str(ckpt))[1]["step"] == 10  # TOY's --pretrain-iters


def test_an_interrupted_base_pretraining_continues_where_it_stopped(tmp_path, monkeypatch):
    data = load_corpus(str(_write(tmp_path / "c.txt", "def f(x):\n    return x\n" * 200)), 16)
    config = config_from_preset("tiny", **SMALL)
    kwargs = dict(max_iters=8, batch_size=2, lr=1e-3, seed=0, device="cpu", progress=False)
    straight, _ = base_model.get_base_model(data, config, cache_dir=str(tmp_path / "a"), **kwargs)
    real = interrupt_after(monkeypatch, train_module, "get_batch", 5)  # checkpoints every 2 steps
    with pytest.raises(KeyboardInterrupt):
        base_model.get_base_model(data, config, cache_dir=str(tmp_path / "b"), **kwargs)
    monkeypatch.setattr(train_module, "get_batch", real)
    resumed_from = []
    monkeypatch.setattr(base_model, "restore_training_state",
                        lambda *a: resumed_from.append(a[0]["step"]) or train_module.restore_training_state(*a))
    resumed, _ = base_model.get_base_model(data, config, cache_dir=str(tmp_path / "b"), **kwargs)
    assert resumed_from == [4]
    assert weights_equal(straight.state_dict(), resumed.state_dict())


# ---- leftovers and gaps -----------------------------------------------------------------------------

def test_a_kill_between_checkpoint_and_history_leaves_no_gap(tmp_path, corpus, monkeypatch):
    run_train(corpus, tmp_path / "straight", "--max-iters", "15")
    # Killed just after the step-10 checkpoint, before its history.json: calls 1, 2 pass, the 3rd is killed.
    real = interrupt_after(monkeypatch, train_module, "write_json", 2)
    with pytest.raises(KeyboardInterrupt, match="during step 10; .*ckpt.pt holds step 10"):
        run_train(corpus, tmp_path / "killed", "--max-iters", "15")
    monkeypatch.setattr(train_module, "write_json", real)
    assert [h["step"] for h in json.loads((tmp_path / "killed" / "history.json").read_text())] == [0, 5]
    run_train(corpus, tmp_path / "killed", "--resume")
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "history.json").read_text())
    assert [h["step"] for h in resumed] == [0, 5, 10, 15]
    assert [h["val_loss"] for h in resumed] == pytest.approx([h["val_loss"] for h in straight], rel=1e-5)


def test_temporary_files_of_killed_runs_are_cleaned(tmp_path, corpus):
    out = tmp_path / "run"
    run_train(corpus, out, "--max-iters", "5")
    (out / "ckpt.pt.tmp999999999").write_bytes(b"half a checkpoint")  # a process that no longer exists
    (out / "ckpt.pt.tmp1").write_bytes(b"pid 1 is alive: being written now")
    (out / "notes.tmp").write_text("not ours")
    run_train(corpus, out, "--resume")
    assert sorted(os.listdir(out)) == ["ckpt.pt", "ckpt.pt.tmp1", "history.json", "notes.tmp"]
    assert clean_stale_temporaries(str(out)) == []


def test_a_failed_save_leaves_no_temporary(tmp_path, monkeypatch):
    def broken_save(obj, path):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(str(tmp_path / "ckpt.pt"), toy_gpt())
    assert os.listdir(tmp_path) == []


# ---- the data path ----------------------------------------------------------------------------------

def test_bad_corpus_files_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="is a folder; give one file"):
        load_corpus(str(tmp_path), 16)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        load_corpus(str(tmp_path / "empty.txt"), 16)
    locked = _write(tmp_path / "locked.txt", "x" * 1000)
    real_open = builtins.open

    def no_permission(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_permission)
    with pytest.raises(ValueError, match="cannot read corpus file .*locked.txt.*Permission denied"):
        load_corpus(str(locked), 16)


# ---- loading: say what the file is and what to do ---------------------------------------------------

def test_a_checkpoint_of_a_lora_model_names_the_two_ways_to_save_it(tmp_path):
    model = toy_gpt()
    minilora.apply_lora(model, ["q_proj"], r=4, alpha=8)
    save_checkpoint(str(tmp_path / "lora.pt"), model)
    with pytest.raises(ValueError, match="holds a model with LoRA layers .*unload_lora.*save_adapter"):
        load_model(str(tmp_path / "lora.pt"))


def test_a_checkpoint_with_an_unknown_config_key_or_nan_weights_is_named(tmp_path):
    save_checkpoint(str(tmp_path / "ckpt.pt"), toy_gpt())
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    checkpoint["config"]["n_experts"] = 4
    torch.save(checkpoint, tmp_path / "future.pt")
    with pytest.raises(ValueError, match=r"unknown keys: \['n_experts'\]"):
        load_model(str(tmp_path / "future.pt"))
    del checkpoint["config"]["n_experts"]
    checkpoint["model"]["wpe.weight"][0, 0] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=r"non-finite weights .*wpe.weight.* diverged"):
        load_model(str(tmp_path / "nan.pt"))


def test_an_adapter_file_holding_nan_is_refused(tmp_path):
    model = toy_gpt()
    minilora.apply_lora(model, ["q_proj"], r=4, alpha=8)
    minilora.save_adapter(model, str(tmp_path / "a.pt"))
    saved = torch.load(tmp_path / "a.pt", weights_only=True)
    saved["tensors"]["blocks.0.attn.q_proj.lora_B"][0, 0] = float("inf")
    torch.save(saved, tmp_path / "a.pt")
    fresh = toy_gpt()
    with pytest.raises(ValueError, match="holds NaN or inf values in .*q_proj.lora_B"):
        minilora.load_adapter(fresh, str(tmp_path / "a.pt"))
    assert not minilora.lora_layers(fresh)  # refused before anything changed


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_weighted_combination_with_a_non_finite_weight_is_refused(bad):
    model = toy_gpt()
    minilora.apply_lora(model, ["q_proj"], r=4, alpha=8)
    minilora.add_adapter(model, "b", ["q_proj"], r=4, alpha=8)
    with pytest.raises(ValueError, match="weights must be finite numbers"):
        minilora.add_weighted_adapter(model, ["default", "b"], [bad, 1.0], "mix")
    assert minilora.adapter_names(model) == ["default", "b"]


def test_saving_to_a_folder_path_is_a_clear_error(tmp_path):
    model = toy_gpt()
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        save_checkpoint(str(tmp_path), model)
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        train_module.write_json({}, str(tmp_path))
    minilora.apply_lora(model, ["q_proj"], r=4, alpha=8)
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        minilora.save_adapter(model, str(tmp_path))


def test_train_checks_its_numbers():
    for bad in (dict(eval_interval=0), dict(batch_size=0), dict(lr=float("nan")), dict(min_lr=-1.0),
                dict(eval_iters=0), dict(grad_clip=float("inf"))):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=f"TrainConfig\\.{name} must be"):
            TrainConfig(max_iters=2, progress=False, **bad)


def test_force_trains_each_run_once(tmp_path, corpora, monkeypatch):
    import experiments.lib.finetune as finetune_module

    real, calls = finetune_module.train, []
    monkeypatch.setattr(finetune_module, "train", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = [*TOY, *corpora, "--out", str(tmp_path / "out"), "--ranks", "1,2", "--seeds", "1", "--no-full", "--no-rslora",
            "--workers", "1"]
    rank_sweep.main(args)
    assert len(calls) == 2
    rank_sweep.main([*args, "--force"])
    assert len(calls) == 4  # recomputed once each, not trained a second time when read back
