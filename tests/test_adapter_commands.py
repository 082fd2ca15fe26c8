"""The adapter commands at toy size: nanogpt.sample --adapter, nanogpt.export, nanogpt.inspect_adapter."""
import json

import pytest
import torch

from minilora import apply_adalora, apply_lora, load_adapter, lora_layers, save_adapter
from nanogpt import export, inspect_adapter, sample
from nanogpt.adapters import apply_adapter_files
from nanogpt.checkpoint import load_model, save_checkpoint
from nanogpt.model import GPT
from nanogpt.presets import config_from_preset

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]
SAMPLE = ["--prompt", "def ", "--max-new-tokens", "40", "--seed", "3"]


def base_checkpoint(path, seed):
    torch.manual_seed(seed)
    model = GPT(config_from_preset("tiny", n_layer=2, n_embd=32, n_head=2, block_size=32))
    save_checkpoint(str(path), model, None, 10, "toy")
    return str(path)


def make_adapter(ckpt, path, kind="lora", seed=0):
    """An adapter file with random nonzero updates (a trained one, as far as these commands can tell)."""
    model, _ = load_model(ckpt)
    if kind == "adalora":
        apply_adalora(model, TARGETS, init_r=4, target_r=2, alpha=8)
    else:
        apply_lora(model, TARGETS, r=4, alpha=8, dora=kind == "dora", quantize="nf4" if kind == "qlora" else None)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            adapter = layer.adapters["default"]
            adapter.lora_B.copy_(torch.randn(adapter.lora_B.shape, generator=g) * 0.3)
            if kind == "adalora":
                adapter.lora_E.copy_(torch.randn(adapter.lora_E.shape, generator=g))
                adapter.lora_E[-1] = 0.0  # a pruned triplet: saved files keep the survivors only
            if kind == "dora":
                adapter.magnitude.mul_(1.5)
    save_adapter(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base = base_checkpoint(root / "base.pt", seed=0)
    return {"root": root, "base": base, "other_base": base_checkpoint(root / "other.pt", seed=1),
            "a": make_adapter(base, root / "a.pt", seed=0), "b": make_adapter(base, root / "b.pt", seed=1)}


def run_sample(argv, capsys):
    sample.main(argv + SAMPLE)
    return capsys.readouterr()


def test_sample_with_an_adapter_is_the_adapted_model(files, capsys):
    with_adapter = run_sample(["--ckpt", files["base"], "--adapter", files["a"]], capsys)
    assert "sampling with adapter" in with_adapter.err
    model, _ = load_model(files["base"])
    load_adapter(model, files["a"])
    assert with_adapter.out.strip() == sample.sample_text(model, "def ", 40, seed=3)
    assert with_adapter.out != run_sample(["--ckpt", files["base"]], capsys).out


def test_sample_combines_adapters_by_weight(files, capsys):
    out = run_sample(["--ckpt", files["base"], "--adapter", files["a"], "--adapter", files["b"],
                      "--adapter-weights", "0.7,0.3"], capsys)
    assert "0.7 x" in out.err and "0.3 x" in out.err
    idx = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    single, _ = load_model(files["base"])
    apply_adapter_files(single, [files["a"]])
    halves, _ = load_model(files["base"])
    apply_adapter_files(halves, [files["a"], files["a"]], [0.5, 0.5])  # half of a, twice, is a
    with torch.no_grad():
        torch.testing.assert_close(halves(idx)[0], single(idx)[0], rtol=1e-5, atol=1e-5)
    mixed, _ = load_model(files["base"])
    apply_adapter_files(mixed, [files["a"], files["b"]])  # default weights: the average
    with torch.no_grad():
        assert not torch.allclose(mixed(idx)[0], single(idx)[0], atol=1e-3)


def test_sample_flags_are_checked(files, capsys):
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", files["base"], "--adapter", files["a"], "--adapter-weights", "0.5,0.5"])
    assert e.value.code == 2 and "2 weights for 1 --adapter" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", files["base"], "--adapter", files["a"], "--adapter-weights", "x"])
    assert e.value.code == 2 and "comma-separated finite numbers" in capsys.readouterr().err


def test_an_adapter_for_another_base_is_a_clear_error(files):
    with pytest.raises(ValueError, match="made for another base model"):
        sample.main(["--ckpt", files["other_base"], "--adapter", files["a"]] + SAMPLE)


@pytest.mark.parametrize("kind", ["lora", "qlora", "dora", "adalora"])
def test_export_writes_a_plain_checkpoint_that_samples_as_the_unmerged_model(files, tmp_path, capsys, kind):
    adapter = make_adapter(files["base"], tmp_path / f"{kind}.pt", kind)
    path = export.main(["--base", files["base"], "--adapter", adapter, "--out", str(tmp_path / "merged")])
    assert "largest logit difference" in capsys.readouterr().out
    state = torch.load(path, weights_only=True)["model"]
    assert set(state) == set(GPT(config_from_preset("tiny", n_layer=2, n_embd=32, n_head=2,
                                                    block_size=32)).state_dict())  # a plain GPT's keys
    merged = run_sample(["--ckpt", path], capsys).out
    unmerged = run_sample(["--ckpt", files["base"], "--adapter", adapter], capsys).out
    assert merged == unmerged
    plain, _ = load_model(path)
    base, _ = load_model(files["base"])
    adapted, _ = load_model(files["base"])
    apply_adapter_files(adapted, [adapter])  # QLoRA: its base quantized as in training
    idx = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(plain(idx)[0], adapted(idx)[0], rtol=1e-5, atol=1e-5)
        assert (plain(idx)[0] - base(idx)[0]).abs().max() > 1e-3  # the adapter changed the model


def test_export_refuses_to_overwrite(files, tmp_path):
    argv = ["--base", files["base"], "--adapter", files["a"], "--out", str(tmp_path / "m")]
    export.main(argv)
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.main(argv)
    export.main(argv + ["--overwrite"])
    with pytest.raises(ValueError, match="would replace the base checkpoint"):
        export.main(["--base", str(tmp_path / "m" / "ckpt.pt"), "--adapter", files["a"], "--out", str(tmp_path / "m"),
                     "--overwrite", ])


def test_inspect_shows_config_targets_parameters_and_base(files, capsys):
    info = inspect_adapter.main([files["a"], "--base", files["base"]])
    out = capsys.readouterr().out
    for text in ("'default': LoRA, r 4, alpha 8, scaling 2", "full precision", "attn.q_proj (blocks 0-1)",
                 "mlp.down_proj (blocks 0-1)", f"parameters    {info['parameters']:,} in 12 layers",
                 "n_embd 32", f"fits {files['base']}: yes"):
        assert text in out, text
    per_block = 4 * 4 * (32 + 32) + 2 * 4 * (32 + 128)  # q, k, v, o and up, down at r=4
    assert info["parameters"] == 2 * per_block
    assert info["fits"]["fits"] is True
    info = inspect_adapter.main([files["a"], "--base", files["other_base"], "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["fits"]["fits"] is False and "made for another base" in printed["fits"]["why_not"]
    assert printed["base"]["id"] == info["base"]["id"] and len(printed["targets"]) == 12


def test_inspect_qlora_and_adalora_files(files, tmp_path, capsys):
    inspect_adapter.main([make_adapter(files["base"], tmp_path / "q.pt", "qlora")])
    assert "4-bit nf4, blocks of 64, double quantization (QLoRA)" in capsys.readouterr().out
    info = inspect_adapter.main([make_adapter(files["base"], tmp_path / "ada.pt", "adalora")])
    assert "AdaLoRA (init_r 4, target_r 2)" in capsys.readouterr().out
    assert [t["rank"] for t in info["targets"]] == [3] * 12  # the pruned triplet is not in the file


@pytest.mark.parametrize("module", [export, inspect_adapter])
def test_every_flag_has_help(module):
    parser = module.make_parser()
    for action in parser._actions:
        assert action.help and len(action.help) > 15, action.option_strings
