"""The GPT, its data, training, sampling and checkpoints: a specification that runs."""
import hashlib
import json
import math
import os
import urllib.request

import pytest
import torch

from nanogpt import GPT, GPTConfig, config_from_preset
from nanogpt.checkpoint import load_checkpoint, load_model, save_checkpoint
from nanogpt.data import fixed_batches, get_batch, load_corpus, load_text, shakespeare_text
from nanogpt.device import resolve_device
from nanogpt.sample import sample_text
from nanogpt.tokenizer import decode, encode
from nanogpt.train import learning_rate, main as train_main, train
from nanogpt.train_config import TrainConfig

SMALL = dict(n_layer=2, n_head=2, n_embd=32, block_size=16)


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(config_from_preset("tiny", **{**SMALL, **overrides}))


# ---- the model -------------------------------------------------------------------------------

def test_logits_shape_and_loss_at_init_is_uniform():
    model = tiny_model()
    idx = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(1))
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 16, 256)
    # Small init: the model starts close to a uniform guess over 256 bytes.
    assert abs(loss.item() - math.log(256)) < 0.1
    _, no_loss = model(idx)
    assert no_loss is None


def test_causality_a_token_changes_no_earlier_logit():
    model = tiny_model().eval()
    idx = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    t = 9
    changed[0, t] = (idx[0, t] + 1) % 256
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[:, :t], b[:, :t])
    assert not torch.allclose(a[:, t:], b[:, t:])


def test_named_projections_exist_for_lora_targets():
    names = {n.split(".")[-1] for n, m in tiny_model().named_modules() if isinstance(m, torch.nn.Linear)}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"}


def test_weight_tying_is_switchable():
    tied = tiny_model()
    assert tied.lm_head.weight is tied.wte.weight
    untied = tiny_model(tie_weights=False)
    assert untied.lm_head.weight is not untied.wte.weight
    assert untied.num_parameters() == tied.num_parameters() + 256 * 32


def test_overfits_one_batch():
    model = tiny_model()
    x, y = get_batch(encode("the quick brown fox jumps over the lazy dog. " * 4), 4, 16,
                     generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_sequence_longer_than_block_size_is_a_clear_error():
    with pytest.raises(ValueError, match="sequence length 17 is longer than block_size 16"):
        tiny_model()(torch.zeros(1, 17, dtype=torch.long))


def test_bad_config_errors_name_the_value():
    with pytest.raises(ValueError, match=r"n_embd \(30\) must be divisible by n_head \(4\)"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="unknown preset 'huge'.*'small', 'tiny'"):
        config_from_preset("huge")
    with pytest.raises(ValueError, match="unknown GPTConfig field"):
        config_from_preset("tiny", n_layers=3)
    with pytest.raises(ValueError, match="dropout must be in"):
        GPTConfig(dropout=1.5)


def test_presets_have_the_documented_sizes():
    tiny, small = config_from_preset("tiny"), config_from_preset("small")
    assert (tiny.n_layer, tiny.n_head, tiny.n_embd, tiny.block_size) == (4, 4, 128, 64)
    assert (small.n_layer, small.n_head, small.n_embd, small.block_size) == (6, 6, 384, 256)
    assert config_from_preset("tiny", n_layer=2, block_size=None).n_layer == 2


# ---- tokens and corpora ----------------------------------------------------------------------

def test_byte_tokenizer_round_trip_on_non_ascii_text():
    text = "naïve café — 東京 🙂 Ωmega\n\ttabs"
    tokens = encode(text)
    assert tokens.dtype == torch.uint8 and len(tokens) == len(text.encode("utf-8"))
    assert decode(tokens) == text
    assert decode(tokens.tolist()) == text
    assert decode([0xE6]) == "\ufffd"  # a cut multi-byte character does not raise


@pytest.mark.parametrize("name, marker", [("python-code", "def "), ("python-docs", "The ")])
def test_offline_corpora_load_and_split_deterministically(name, marker):
    a, b = load_corpus(name, 64), load_corpus(name, 64)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    total = len(a.train) + len(a.val)
    assert len(a.val) == int(total * 0.1)
    assert marker in decode(a.train[:20000])
    assert total > (1_000_000 if name == "python-code" else 100_000)


def test_batches_are_seeded_and_targets_are_shifted_inputs():
    data = encode("abcdefghijklmnopqrstuvwxyz" * 10)
    x1, y1 = get_batch(data, 4, 8, generator=torch.Generator().manual_seed(5))
    x2, y2 = get_batch(data, 4, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == y1.shape == (4, 8) and x1.dtype == torch.long
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    a, b = fixed_batches(data, 3, 4, 8), fixed_batches(data, 3, 4, 8)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))


def test_text_file_corpus_and_too_short_corpus(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("hello world " * 100)
    corpus = load_corpus(str(path), 16)
    assert decode(corpus.train[:11]) == "hello world"
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(ValueError, match=r"too short: 9 bytes .* block_size=16 needs at least 17 bytes"):
        load_corpus(str(short), 16)


def test_a_file_corpus_is_read_as_its_bytes_even_when_not_utf8(tmp_path):
    """Byte-level tokens: a Latin-1 or binary file trains on its exact bytes, nothing replaced."""
    data = ("caf\u00e9 na\u00efve " * 40).encode("latin-1") + bytes(range(256))
    path = tmp_path / "latin1.txt"
    path.write_bytes(data)
    with pytest.warns(UserWarning, match=r"not valid UTF-8 .*raw bytes"):
        corpus = load_corpus(str(path), 16)
    assert bytes(torch.cat([corpus.train, corpus.val]).tolist()) == data
    assert corpus.sha256 == hashlib.sha256(data).hexdigest()


def test_unknown_corpus_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown corpus 'wikipedia'.*python-code.*python-docs.*shakespeare"):
        load_text("wikipedia")


def test_shakespeare_reads_a_local_cache_and_is_clear_offline(tmp_path, monkeypatch):
    (tmp_path / "shakespeare.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    assert shakespeare_text(str(tmp_path)).startswith("First Citizen:")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    empty = tmp_path / "empty"
    with pytest.raises(RuntimeError, match=r"could not download the shakespeare corpus.*--corpus path/to/input.txt"):
        shakespeare_text(str(empty))
    assert not (empty / "shakespeare.txt").exists()


# ---- training, checkpoints, sampling ----------------------------------------------------------

def test_learning_rate_warms_up_then_decays_to_min():
    assert learning_rate(0, 100, 1.0, 0.1, 10) == pytest.approx(0.1)
    assert learning_rate(9, 100, 1.0, 0.1, 10) == pytest.approx(1.0)
    assert learning_rate(10, 100, 1.0, 0.1, 10) == pytest.approx(1.0)
    assert learning_rate(55, 100, 1.0, 0.1, 10) == pytest.approx(0.55)
    assert learning_rate(100, 100, 1.0, 0.1, 10) == pytest.approx(0.1)


def test_train_records_history_and_trains_only_trainable_parameters():
    model = tiny_model()
    for p in model.blocks[0].parameters():
        p.requires_grad_(False)
    frozen = {n: p.clone() for n, p in model.blocks[0].named_parameters()}
    data = encode("import os\nimport sys\n" * 200)
    config = TrainConfig(max_iters=20, batch_size=4, eval_interval=10, eval_iters=2, warmup_iters=2, progress=False)
    result = train(model, data, {"train": data, "val": data}, config)
    assert [h["step"] for h in result["history"]] == [0, 10, 20]
    assert set(result["history"][0]) == {"step", "train_loss", "val_loss", "lr", "elapsed_s", "tokens_seen"}
    assert result["history"][-1]["tokens_seen"] == 20 * 4 * 16
    assert result["history"][-1]["val_loss"] < result["history"][0]["val_loss"]
    assert len(result["step_losses"]) == len(result["step_times"]) == 20
    assert all(torch.equal(p, frozen[n]) for n, p in model.blocks[0].named_parameters())


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model = tiny_model(seed=3)
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, model, step=7, corpus="python-code")
    loaded, checkpoint = load_model(path)
    idx = torch.randint(0, 256, (2, 16))
    assert torch.equal(model(idx)[0], loaded(idx)[0])
    assert checkpoint["step"] == 7 and checkpoint["corpus"] == "python-code"
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nope.pt"):
        load_checkpoint(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(str(bad))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a nanogpt checkpoint"):
        load_checkpoint(str(other))


def test_checkpoint_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"config": {}, "model": Evil()}, path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(str(path))


def run_cli(tmp_path, out, *extra):
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text("def add(a, b):\n    return a + b\n\n" * 300)
    train_main(["--corpus", str(corpus), "--preset", "tiny", "--n-layer", "1", "--n-embd", "32",
                "--n-head", "2", "--block-size", "16", "--batch-size", "4", "--eval-interval", "5",
                "--eval-iters", "2", "--warmup-iters", "2", "--device", "cpu", "--no-progress",
                "--out", str(out), *extra])


def test_resume_continues_the_same_run(tmp_path, monkeypatch):
    run_cli(tmp_path, tmp_path / "straight", "--max-iters", "10")

    # Interrupt a second run during step 7: its last checkpoint is the one from step 5.
    import nanogpt.train as train_module
    real_get_batch, calls = train_module.get_batch, []

    def interrupted_get_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_get_batch(*args, **kwargs)

    monkeypatch.setattr(train_module, "get_batch", interrupted_get_batch)
    with pytest.raises(KeyboardInterrupt):
        run_cli(tmp_path, tmp_path / "resumed", "--max-iters", "10")
    monkeypatch.setattr(train_module, "get_batch", real_get_batch)
    assert load_checkpoint(str(tmp_path / "resumed" / "ckpt.pt"))["step"] == 5
    run_cli(tmp_path, tmp_path / "resumed", "--max-iters", "10", "--resume")
    a = load_checkpoint(str(tmp_path / "straight" / "ckpt.pt"))
    b = load_checkpoint(str(tmp_path / "resumed" / "ckpt.pt"))
    assert a["step"] == b["step"] == 10
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-5, atol=1e-6)
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 5, 10]


def test_sampling_is_repeatable_under_a_seed():
    model = tiny_model()
    a = sample_text(model, "def ", max_new_tokens=30, seed=4)
    b = sample_text(model, "def ", max_new_tokens=30, seed=4)
    c = sample_text(model, "def ", max_new_tokens=30, seed=5)
    assert a == b and a != c
    assert a.startswith("def ") and len(encode(a)) >= 30  # 30 new bytes (some may be U+FFFD)
    with pytest.raises(ValueError, match="prompt must not be empty"):
        sample_text(model, "")


def test_generate_crops_the_context_to_block_size():
    model = tiny_model()
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=40)
    assert out.shape == (1, 43)


def test_device_choice_errors_are_clear():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU is available"):
            resolve_device("cuda")
