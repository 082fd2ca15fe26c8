"""python -m nanogpt.serve: good and bad request files, the output file's safety, batch independence."""
import json

import pytest
import torch

from minilora import apply_lora, load_adapter, lora_layers, save_adapter, set_adapter
from nanogpt import serve
from nanogpt.checkpoint import save_checkpoint
from nanogpt.flags import CommandError
from nanogpt.model import GPT
from nanogpt.presets import config_from_preset
from nanogpt.tokenizer import decode, encode

BLOCK = 24


def small_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(config_from_preset("tiny", n_layer=2, n_head=2, n_embd=32, block_size=BLOCK)).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A base checkpoint, a folder with adapters a, b, c (r=2 on q, v) and one made for another base."""
    root = tmp_path_factory.mktemp("serve")
    save_checkpoint(str(root / "ckpt.pt"), small_gpt())
    folder = root / "adapters"
    for seed, name in enumerate(["a", "b", "c"]):
        model = small_gpt()
        apply_lora(model, ["q_proj", "v_proj"], r=2, alpha=4)
        torch.manual_seed(10 + seed)
        with torch.no_grad():
            for _, layer in lora_layers(model):
                layer.lora_A.normal_(std=1.0)
                layer.lora_B.normal_(std=1.0)
        save_adapter(model, str(folder / f"{name}.pt"))
    other = small_gpt(seed=9)
    apply_lora(other, ["q_proj", "v_proj"], r=2, alpha=4)
    save_adapter(other, str(folder / "other.pt"))
    return root


def run(setup, tmp_path, requests, *flags, name="requests.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests))
    out = tmp_path / (name + ".out")
    summary = serve.main(["--ckpt", str(setup / "ckpt.pt"), "--adapters", str(setup / "adapters"),
                          "--requests", str(path), "--out", str(out), *flags])
    return summary, [json.loads(line) for line in out.read_text().splitlines()]


def expected(setup, adapter, prompt, n, temperature, seed):
    """The request run alone through GPT.generate, its adapter set (None: the base model)."""
    model = small_gpt()
    if adapter is not None:
        load_adapter(model, str(setup / "adapters" / f"{adapter}.pt"), adapter_name=adapter)
        set_adapter(model, adapter)
    idx = encode(prompt).long()[None, :]
    if temperature == 0:
        out = model.generate(idx, n, top_k=1)
    else:
        out = model.generate(idx, n, temperature=temperature, generator=torch.Generator().manual_seed(seed))
    return out[0, idx.shape[1]:].tolist()


GOOD = [
    {"id": "r1", "adapter": "a", "prompt": "hello", "max_new_tokens": 12, "temperature": 0, "seed": 0},
    {"id": 2, "adapter": None, "prompt": "hi", "max_new_tokens": 30, "temperature": 0.9, "seed": 3},
    {"id": "r3", "adapter": "b", "prompt": "a longer prompt", "max_new_tokens": 5, "temperature": 1.0, "seed": 1},
    {"id": "r4", "prompt": "x", "max_new_tokens": 0},
    {"id": "r5", "adapter": "a", "prompt": "hello", "max_new_tokens": 12, "temperature": 0.7, "seed": 5},
    {"id": "r6", "adapter": "c", "prompt": "zz", "max_new_tokens": 8, "temperature": 0, "seed": 0},
]


def test_every_request_gets_what_it_gets_alone_in_order(setup, tmp_path, capsys):
    summary, records = run(setup, tmp_path, GOOD, "--batch-size", "4")
    assert [r["id"] for r in records] == ["r1", 2, "r3", "r4", "r5", "r6"]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5, 6]
    for request, record in zip(GOOD, records):
        assert "error" not in record
        n = request["max_new_tokens"]
        want = expected(setup, request.get("adapter"), request["prompt"], n, request.get("temperature", 0.8),
                        request.get("seed", 0))
        assert record["tokens"] == want, record["id"]
        assert record["completion"] == decode(want) and len(record["tokens"]) == n
        assert record["seconds"] > 0 and record["adapter"] == request.get("adapter")
    assert summary["served"] == 6 and summary["errors"] == 0 and summary["batches"] == 2
    assert summary["new_tokens"] == 12 + 30 + 5 + 0 + 12 + 8
    assert summary["adapters"]["loads"] == 3
    assert "served 6 of 6 requests (0 errors) in 2 batches" in capsys.readouterr().err


def test_a_request_gets_the_same_completion_whatever_its_batch(setup, tmp_path):
    alone = {}
    for request in GOOD:
        _, [record] = run(setup, tmp_path, [request], name=f"alone-{request['id']}.jsonl")
        alone[request["id"]] = record["tokens"]
    for flags in (["--batch-size", "1"], ["--batch-size", "3", "--max-resident", "1"], ["--batch-size", "32"]):
        _, records = run(setup, tmp_path, GOOD[::-1] + GOOD, *flags, name=f"mixed{flags[1]}.jsonl")
        assert [r["tokens"] for r in records] == [alone[r["id"]] for r in GOOD[::-1] + GOOD]


def test_bad_requests_get_an_error_naming_the_problem_and_the_others_are_served(setup, tmp_path):
    too_long = "y" * (BLOCK + 1)
    requests = [
        GOOD[0],
        {"id": "unknown", "adapter": "nope", "prompt": "hi"},
        {"id": "other-base", "adapter": "other", "prompt": "hi"},
        {"id": "long", "prompt": too_long},
        '{"id": "broken", "prompt": ',
        {"id": "hot", "prompt": "hi", "temperature": -1},
        {"id": "many", "prompt": "hi", "max_new_tokens": "x"},
        {"id": "typo", "prompt": "hi", "max_tokens": 3},
        {"id": "empty", "prompt": ""},
        "[1, 2]",
        "",
        {"id": "seed", "prompt": "hi", "seed": -4},
        GOOD[5],
    ]
    summary, records = run(setup, tmp_path, requests)
    by_id = {r["id"]: r for r in records if r["id"] is not None}
    assert len(records) == 12  # the blank line is no request
    assert by_id["r1"]["tokens"] == expected(setup, "a", "hello", 12, 0, 0)
    assert by_id["r6"]["tokens"] == expected(setup, "c", "zz", 8, 0, 0)
    errors = {
        "unknown": "line 2: unknown adapter 'nope': no file 'nope.pt'",
        "other-base": "line 3: adapter 'other': adapter file",
        "long": f"line 4: prompt too long: {BLOCK + 1} tokens, and the model reads at most {BLOCK}",
        "hot": "line 6: temperature must be a finite number >= 0 (0: greedy), got -1",
        "many": "line 7: max_new_tokens must be an integer in 0..1024 (--max-new-tokens-limit), got 'x'",
        "typo": "line 8: unknown field(s) ['max_tokens']",
        "empty": "line 9: prompt must be a non-empty string",
        "seed": "line 12: seed must be an integer in 0..2147483647, got -4",
    }
    for rid, message in errors.items():
        assert by_id[rid]["error"].startswith(message), by_id[rid]["error"]
        assert "tokens" not in by_id[rid]
    assert "made for another base model" in by_id["other-base"]["error"]
    assert records[4] == {"id": None, "line": 5, "error": records[4]["error"]}
    assert records[4]["error"].startswith("line 5: not valid JSON")
    assert records[9]["error"].startswith("line 10: a request must be a JSON object")
    assert summary["served"] == 2 and summary["errors"] == 10


def test_an_existing_output_is_refused_unless_overwrite(setup, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(GOOD[0]) + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text("finished work\n")
    flags = ["--ckpt", str(setup / "ckpt.pt"), "--adapters", str(setup / "adapters"), "--requests", str(requests),
             "--out", str(out)]
    with pytest.raises(CommandError, match="exists; nothing was served. Give another path, or --overwrite"):
        serve.main(flags)
    assert out.read_text() == "finished work\n"
    serve.main(flags + ["--overwrite"])
    assert json.loads(out.read_text())["id"] == "r1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "requests.jsonl"]  # no temporary left
    with pytest.raises(CommandError, match="is the requests file itself"):
        serve.main(flags[:-1] + [str(requests), "--overwrite"])
    with pytest.raises(CommandError, match="--adapters '.*nope': no such folder"):
        serve.main(flags[:3] + [str(tmp_path / "nope")] + flags[4:] + ["--overwrite"])


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got '0'"),
    (["--temperature", "nan"], "argument --temperature: must be a finite number >= 0, got 'nan'"),
    (["--max-new-tokens", "50", "--max-new-tokens-limit", "10"], "argument --max-new-tokens: 50 is above"),
])
def test_bad_flags_are_refused_before_any_work(setup, tmp_path, flags, message, capsys):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(GOOD[0]) + "\n")
    with pytest.raises(SystemExit) as e:
        serve.main(["--ckpt", str(setup / "ckpt.pt"), "--requests", str(requests), "--out", str(tmp_path / "o"),
                    *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_without_an_adapter_folder_only_the_base_model_is_served(setup, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(GOOD[1]) + "\n" + json.dumps(GOOD[0]) + "\n")
    out = tmp_path / "out.jsonl"
    serve.main(["--ckpt", str(setup / "ckpt.pt"), "--requests", str(requests), "--out", str(out)])
    first, second = [json.loads(line) for line in out.read_text().splitlines()]
    assert first["tokens"] == expected(setup, None, "hi", 30, 0.9, 3)
    assert second["error"].startswith("line 2: unknown adapter 'a': no --adapters folder was given")


def test_a_gpt2_folder_is_served_with_its_own_tokenizer(tmp_path):
    """--init-from: the model and the BPE tokenizer come from a GPT-2 folder in the Hugging Face layout;
    each completion is what GPT.generate gives for the prompt's BPE ids, with and without an adapter."""
    from nanogpt.bpe import load_tokenizer
    from nanogpt.pretrained import load_gpt2
    from tests.test_gpt2_commands import write_gpt2_folder

    folder = write_gpt2_folder(tmp_path)
    (tmp_path / "adapters").mkdir()
    model = load_gpt2(str(folder))
    apply_lora(model, ["q_proj", "v_proj"], r=2, alpha=4)
    torch.manual_seed(1)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.normal_(std=1.0)
    save_adapter(model, str(tmp_path / "adapters" / "a.pt"))
    requests = [{"id": 1, "adapter": "a", "prompt": "The quick brown fox", "max_new_tokens": 6, "temperature": 0},
                {"id": 2, "prompt": "The thing is", "max_new_tokens": 6, "temperature": 0}]
    path, out = tmp_path / "r.jsonl", tmp_path / "r.out"
    path.write_text("".join(json.dumps(r) + "\n" for r in requests))
    serve.main(["--init-from", str(folder), "--adapters", str(tmp_path / "adapters"), "--requests", str(path),
                "--out", str(out)])
    got = [json.loads(line) for line in out.read_text().splitlines()]
    tokenizer = load_tokenizer(str(folder))
    for request, record in zip(requests, got):
        base = load_gpt2(str(folder)).eval()
        if request.get("adapter"):
            load_adapter(base, str(tmp_path / "adapters" / "a.pt"))
        idx = torch.tensor([tokenizer.encode(request["prompt"])])
        want = base.generate(idx, 6, top_k=1)[0, idx.shape[1]:].tolist()
        assert record["tokens"] == want and record["completion"] == tokenizer.decode(want)
    assert got[0]["tokens"] != got[1]["tokens"]


def test_a_bad_gpt2_folder_is_refused_before_any_work(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(FileNotFoundError, match="config.json"):
        serve.main(["--init-from", str(tmp_path), "--requests", str(path), "--out", str(tmp_path / "o.jsonl")])
    assert not (tmp_path / "o.jsonl").exists()
