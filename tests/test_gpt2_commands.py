"""--init-from and --export-hf end to end, on a small GPT-2-shaped checkpoint written here in the
Hugging Face layout (with its own vocab.json / merges.txt): fine-tune, export, load, sample."""
import json

import pytest
import torch

from minilora import load_adapter
from nanogpt import finetune, sample
from nanogpt.bpe import load_tokenizer
from nanogpt.checkpoint import save_checkpoint
from nanogpt.flags import CommandError
from nanogpt.model import GPT, GPTConfig
from nanogpt.pretrained import load_gpt2, load_init_from, save_gpt2
from tests.test_bpe import write_tokenizer

PROSE = "The quick brown fox jumps over the lazy dog. The thing is singing in the theatre.\n" * 60


def write_gpt2_folder(root):
    """A 2-layer GPT-2 (gelu_new, BPE vocabulary of 269 tokens, 32 positions) in the Hugging Face layout,
    written to root/gpt2; returns that folder."""
    folder = root / "gpt2"
    vocab = write_tokenizer(folder)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=len(vocab), block_size=32, n_layer=2, n_head=2, n_embd=16, activation="gelu_new")
    save_gpt2(GPT(config), str(folder))
    return folder


@pytest.fixture
def gpt2_dir(tmp_path):
    return write_gpt2_folder(tmp_path)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "prose.txt"
    path.write_text(PROSE)
    return str(path)


def finetune_args(gpt2_dir, corpus, out, *extra):
    return ["--init-from", str(gpt2_dir), "--corpus", corpus, "--out", str(out), "--max-iters", "4", "--batch-size", "2",
            "--eval-interval", "2", "--eval-iters", "1", "--no-progress", "--device", "cpu", *extra,
            *([] if "--full" in extra else ["--lora-r", "2"])]


def test_finetune_from_a_gpt2_folder_exports_the_merged_model(tmp_path, gpt2_dir, corpus, capsys):
    out, export = tmp_path / "run", tmp_path / "merged"
    result = finetune.main(finetune_args(gpt2_dir, corpus, out, "--export-hf", str(export)))
    printed = capsys.readouterr().out
    assert "nats/token =" in printed and "nats/byte" in printed and "bytes per token" in printed
    settings = json.loads((out / "settings.json").read_text())
    assert settings["init_from"] == str(gpt2_dir) and settings["base"] is None
    tok = load_tokenizer(str(gpt2_dir))
    ids = tok.encode(PROSE)
    val = ids[len(ids) - int(len(ids) * 0.1):]  # the corpus is BPE-tokenized: the val split's bytes per token
    assert settings["val_bytes_per_token"] == pytest.approx(sum(tok.token_bytes(i) for i in val) / len(val))
    assert settings["val_bytes_per_token"] > 1.2  # merges made tokens longer than a byte
    assert len(result["history"]) >= 2
    # The export: a GPT-2 folder with the tokenizer, holding base + adapter merged.
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
    merged, merged_tok = load_init_from(str(export))
    with_adapter = load_gpt2(str(gpt2_dir))
    load_adapter(with_adapter, str(out / "adapter.pt"))
    idx = torch.randint(0, merged.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (merged(idx)[0] - with_adapter(idx)[0]).abs().max().item() < 1e-5
        assert (merged(idx)[0] - load_gpt2(str(gpt2_dir))(idx)[0]).abs().max().item() > 1e-4  # it did learn
    assert merged_tok.encode(PROSE[:200]) == tok.encode(PROSE[:200])


def test_sample_from_a_gpt2_folder_with_and_without_an_adapter(tmp_path, gpt2_dir, corpus, capsys):
    sample.main(["--init-from", str(gpt2_dir), "--prompt", "The thing", "--max-new-tokens", "5", "--seed", "1"])
    text = capsys.readouterr().out
    assert text.startswith("The thing") and len(text) > len("The thing\n")
    model, tok = load_init_from(str(gpt2_dir))
    assert text.rstrip("\n") == sample.sample_text(model, "The thing", 5, seed=1, tokenizer=tok)
    finetune.main(finetune_args(gpt2_dir, corpus, tmp_path / "run"))
    capsys.readouterr()
    sample.main(["--init-from", str(gpt2_dir), "--adapter", str(tmp_path / "run" / "adapter.pt"), "--prompt", "The",
                 "--max-new-tokens", "3"])
    assert capsys.readouterr().out.startswith("The")


def test_a_prompt_longer_than_the_context_is_refused(gpt2_dir):
    model, tok = load_init_from(str(gpt2_dir))
    with pytest.raises(ValueError, match="the prompt is 40 tokens long, longer than the model's context of 32"):
        sample.sample_text(model, " the" * 40, 1, tokenizer=tok)
    byte_model = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8))
    with pytest.raises(ValueError, match="the prompt is 9 bytes long, longer than the model's context of 8"):
        sample.sample_text(byte_model, "123456789", 1)


def test_init_from_errors_come_before_any_work(tmp_path, gpt2_dir, corpus):
    with pytest.raises(CommandError, match="--base and --init-from both give the model"):
        finetune.main(finetune_args(gpt2_dir, corpus, tmp_path / "a", "--base", "x.pt"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        finetune.main(finetune_args(tmp_path, corpus, tmp_path / "b"))
    (gpt2_dir / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="has no merges.txt"):
        finetune.main(finetune_args(gpt2_dir, corpus, tmp_path / "c"))
    assert not (tmp_path / "c" / "ckpt.pt").exists()


def test_tokenizer_and_model_of_different_vocabularies_are_refused(tmp_path, gpt2_dir, corpus):
    write_tokenizer(gpt2_dir, merges=[("h", "e")])  # 258 tokens, the model has 269
    with pytest.raises(ValueError, match="vocab.json has 258 tokens but config.json's vocab_size is 269"):
        finetune.main(finetune_args(gpt2_dir, corpus, tmp_path / "run"))


def test_export_hf_refuses_a_folder_with_a_checkpoint_before_training(tmp_path, gpt2_dir, corpus):
    with pytest.raises(CommandError, match=r"--export-hf .* already holds \['config.json', 'model.safetensors'\]"):
        finetune.main(finetune_args(gpt2_dir, corpus, tmp_path / "run", "--export-hf", str(gpt2_dir)))
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_full_finetuning_of_a_gpt2_exports_and_resumes(tmp_path, gpt2_dir, corpus, capsys):
    out = tmp_path / "run"
    finetune.main(finetune_args(gpt2_dir, corpus, out, "--full", "--export-hf", str(tmp_path / "full")))
    exported = load_gpt2(str(tmp_path / "full"))
    trained = torch.load(out / "ckpt.pt", weights_only=True)["model"]
    assert torch.equal(exported.state_dict()["blocks.0.attn.q_proj.weight"], trained["blocks.0.attn.q_proj.weight"])
    capsys.readouterr()
    finetune.main(["--out", str(out), "--resume", "--no-progress", "--device", "cpu"])  # tokenized as it was started
    printed = capsys.readouterr().out
    assert "resuming" in printed and "nats/token" in printed and "tokens" in printed


def test_rank_sweep_and_full_vs_lora_run_on_a_gpt2_folder(tmp_path, gpt2_dir, corpora):
    from experiments import full_vs_lora, rank_sweep

    toy = ["--init-from", str(gpt2_dir), "--block-size", "16", "--batch-size", "2", "--max-iters", "4", "--eval-interval", "2",
           "--eval-iters", "1", "--no-progress", "--workers", "1", *corpora]
    rank_sweep.main([*toy, "--ranks", "1,2", "--seeds", "1", "--no-rslora", "--out", str(tmp_path / "sweep")])
    records = json.loads((tmp_path / "sweep" / "records.json").read_text())
    assert {r["method"] for r in records} == {"full", "lora"} and len(records) == 3
    for r in records:  # nats per byte = nats per token / bytes per token, with BPE tokens
        assert r["target_bytes_per_token"] > 1.0 and r["block_size"] == 16
        assert r["final_target_nats_per_byte"] == pytest.approx(r["final_target_loss"] / r["target_bytes_per_token"])
        assert r["final_source_nats_per_byte"] == pytest.approx(r["final_source_loss"] / r["source_bytes_per_token"])
        assert r["total_params"] >= GPT(GPTConfig(vocab_size=269, block_size=16, n_layer=2, n_head=2,
                                                  n_embd=16)).num_parameters()
    full_vs_lora.main([*toy, "--memory-batches", "1", "--out", str(tmp_path / "fvl")])
    assert len(json.loads((tmp_path / "fvl" / "records.json").read_text())) == 2


def test_experiments_refuse_a_bad_init_from_before_any_work(tmp_path, corpora, capsys):
    from experiments import rank_sweep

    with pytest.raises(SystemExit):
        rank_sweep.main(["--init-from", str(tmp_path), *corpora, "--out", str(tmp_path / "o"), "--no-progress"])
    assert "has no config.json" in capsys.readouterr().err


def test_block_size_crops_the_context_of_a_gpt2(tmp_path, gpt2_dir, corpus, capsys):
    full, _ = load_init_from(str(gpt2_dir))
    short, _ = load_init_from(str(gpt2_dir), block_size=8)
    assert short.config.block_size == 8 and short.wpe.weight.shape == (8, 16)
    idx = torch.randint(0, 269, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the first 8 positions compute what they did
        assert torch.equal(short(idx)[0], full(idx)[0])
    with pytest.raises(ValueError, match="--block-size 64 is longer than the context of the GPT-2 in"):
        load_init_from(str(gpt2_dir), block_size=64)
    out = tmp_path / "run"
    finetune.main(finetune_args(gpt2_dir, corpus, out, "--block-size", "16", "--export-hf", str(tmp_path / "x")))
    assert json.loads((tmp_path / "x" / "config.json").read_text())["n_positions"] == 16
    assert json.loads((out / "settings.json").read_text())["block_size"] == 16
    assert f"sample:  python -m nanogpt.sample --init-from {gpt2_dir} --block-size 16 --adapter" in capsys.readouterr().out
    sample.main(["--init-from", str(gpt2_dir), "--block-size", "16", "--adapter", str(out / "adapter.pt"),
                 "--prompt", "The", "--max-new-tokens", "2"])  # the adapter loads onto the cropped base
    assert capsys.readouterr().out.startswith("The")
    save_checkpoint(str(tmp_path / "base.pt"), GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=16)))
    with pytest.raises(CommandError, match="--block-size crops the context of a GPT-2 given with --init-from"):
        finetune.main(["--base", str(tmp_path / "base.pt"), "--corpus", corpus, "--out", str(tmp_path / "b"),
                       "--block-size", "8"])
