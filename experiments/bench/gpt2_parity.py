"""By-hand parity with the reference implementation: load_gpt2 / save_gpt2 against transformers'
GPT2LMHeadModel, and nanogpt.bpe against GPT-2's reference tokenizers. NOT part of the project's
dependencies or tests: run it in a scratch environment that has transformers and tokenizers.

    python -m experiments.bench.gpt2_parity [--tokenizer DIR]

Models: a randomly initialised GPT2LMHeadModel of a tiny shape and of gpt2-small's shape, its weights
scaled up (matrices x3, vectors + N(0, 0.1)) so that activations are larger than at init, as a trained
model's are. Three ways in and out, each compared on the logits of 2 random sequences (the max abs
difference, float32):
    save_pretrained (transformer. prefix, model.safetensors) -> load_gpt2
    the hub's layout (no prefix, attn.bias / attn.masked_bias buffers, pytorch_model.bin) -> load_gpt2
    load_gpt2 -> save_gpt2 -> GPT2LMHeadModel.from_pretrained
Tokenizer (--tokenizer DIR, a folder with GPT-2's vocab.json and merges.txt): ids against
transformers' GPT2Tokenizer and tokenizers' ByteLevelBPETokenizer on a varied text set (Unicode, emoji,
code, runs of spaces and newlines, contractions, control characters, the Python docs' prose, 300
random Unicode strings), and decode(encode(s)) == s on each.
"""
import argparse
import os
import random
import shutil
import sysconfig
import tempfile

import torch

from nanogpt.data import python_docs_bytes
from nanogpt.pretrained import load_gpt2, save_gpt2


def model_parity():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    rows = {}
    for label, kw in (("tiny", dict(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=1000)),
                      ("gpt2-small", dict())):
        config = GPT2Config(**kw)
        ref = GPT2LMHeadModel(config).eval()
        with torch.no_grad():
            for p in ref.parameters():
                p.mul_(3.0) if p.dim() == 2 else p.add_(torch.randn_like(p) * 0.1)
            idx = torch.randint(0, config.vocab_size, (2, min(config.n_positions, 256)))
            want = ref(idx).logits
        with tempfile.TemporaryDirectory() as d:
            ref.save_pretrained(os.path.join(d, "a"))
            with torch.no_grad():
                rows[f"{label}: save_pretrained -> load_gpt2"] = (load_gpt2(os.path.join(d, "a"))(idx)[0] - want).abs().max().item()
            hub = {k.removeprefix("transformer."): v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
            n = config.n_positions
            for i in range(config.n_layer):
                hub[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
                hub[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
            os.makedirs(os.path.join(d, "b"))
            shutil.copy(os.path.join(d, "a", "config.json"), os.path.join(d, "b"))
            torch.save(hub, os.path.join(d, "b", "pytorch_model.bin"))
            with torch.no_grad():
                rows[f"{label}: hub layout (.bin) -> load_gpt2"] = (load_gpt2(os.path.join(d, "b"))(idx)[0] - want).abs().max().item()
            save_gpt2(load_gpt2(os.path.join(d, "a")), os.path.join(d, "c"))
            back = GPT2LMHeadModel.from_pretrained(os.path.join(d, "c")).eval()
            with torch.no_grad():
                rows[f"{label}: save_gpt2 -> from_pretrained"] = (back(idx).logits - want).abs().max().item()
            rows[f"{label}: largest |logit|"] = want.abs().max().item()
            # The float32 noise floor: the reference against itself (its two attention backends) and
            # both against the same model in float64.
            with torch.no_grad():
                eager = GPT2LMHeadModel.from_pretrained(os.path.join(d, "a"), attn_implementation="eager").eval()
                sdpa = GPT2LMHeadModel.from_pretrained(os.path.join(d, "a"), attn_implementation="sdpa").eval()
                exact = GPT2LMHeadModel.from_pretrained(os.path.join(d, "a"), attn_implementation="eager").double().eval()
                e, s, x = eager(idx).logits, sdpa(idx).logits, exact(idx).logits
                ours = load_gpt2(os.path.join(d, "a"))(idx)[0]
            rows[f"{label}: reference eager vs reference sdpa (noise floor)"] = (e - s).abs().max().item()
            rows[f"{label}: float64 reference vs reference eager / sdpa"] = max((x - e).abs().max().item(),
                                                                                (x - s).abs().max().item())
            rows[f"{label}: float64 reference vs load_gpt2"] = (x - ours).abs().max().item()
    return rows


def texts():
    docs = python_docs_bytes().decode()
    with open(os.path.join(sysconfig.get_paths()["stdlib"], "argparse.py"), encoding="utf-8") as f:
        code = f.read()
    fixed = ["Hello world", "I'm sure they'll've done it, isn't it? We'd, you're, I've, he's, 'S 'LL",
             "  leading and   multiple   spaces   \n\n\n  newlines\t\ttabs \r\n crlf   ", "emoji 😀👍🏽 👨‍👩‍👧 🇫🇷",
             "中文字符 日本語のテキスト 한국어 Ελληνικά русский العربية हिन्दी", "control \x00\x01\x07\x1b[31m \x7f \u200b \ufeff",
             "numbers 1234567890 3.14159 1e-5 ½ ²", "def f(x):\n    return x ** 2  # square\n", "<|endoftext|>",
             "a<|endoftext|>b <|endoftext|> c", "", " ", "\n", "’curly’ “quotes” — …", "\u00a0nbsp\u2003em\u3000",
             "x" * 300, "ab" * 200 + " " * 50 + "\n" * 20, docs, code]
    rng = random.Random(0)
    soup = ["".join(chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x7FF), rng.randint(0x800, 0xD7FF),
                                    rng.randint(0xE000, 0x10FFFF), 32, 10])) for _ in range(rng.randint(1, 40)))
            for _ in range(300)]
    return fixed + soup


def tokenizer_parity(folder):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Tokenizer

    from nanogpt.bpe import END_OF_TEXT, load_tokenizer

    ours = load_tokenizer(folder)
    slow = GPT2Tokenizer.from_pretrained(folder)
    fast = ByteLevelBPETokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
    all_texts = texts()
    differ = [t for t in all_texts
              if ours.encode(t) != slow.encode(t)
              or (END_OF_TEXT not in t and ours.encode(t) != fast.encode(t).ids)  # fast has no special tokens here
              or ours.decode(ours.encode(t)) != t]
    return {"texts": len(all_texts), "bytes": sum(len(t.encode()) for t in all_texts), "differ": len(differ),
            "first_differing": [t[:60] for t in differ[:3]]}


def main(argv=None):
    p = argparse.ArgumentParser(description="Parity with transformers / tokenizers (scratch environment only).")
    p.add_argument("--tokenizer", metavar="DIR", help="a folder with GPT-2's vocab.json and merges.txt")
    args = p.parse_args(argv)
    for name, value in model_parity().items():
        print(f"{name}: {value:.3g}")
    if args.tokenizer:
        print(f"tokenizer: {tokenizer_parity(args.tokenizer)}")


if __name__ == "__main__":
    main()
