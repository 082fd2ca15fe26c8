"""Serve a file of requests, many adapters over one base model, in mixed-adapter batches.

    python -m nanogpt.serve --ckpt runs/base/ckpt.pt --adapters adapters/ \\
        --requests requests.jsonl --out completions.jsonl
    python -m nanogpt.serve --init-from gpt2/ --adapters adapters/ --requests r.jsonl --out c.jsonl

One request per line of --requests, a JSON object (only prompt is required):

    {"id": "r1", "adapter": "french", "prompt": "Bonjour", "max_new_tokens": 40, "temperature": 0.8, "seed": 0}

adapter names a file NAME.pt in the --adapters folder (from nanogpt.finetune or save_adapter), or
is null (or absent) for the base model alone; temperature 0 is greedy. --out gets one JSON line
per request, in the requests' order: its completion, the new tokens, and the seconds its batch
took; or, for a request that cannot be served, an error naming the problem and its line. Every
other request is still served.

How: the requests are sorted by length (prompt plus new tokens, so a batch wastes few steps),
cut into batches of at most --batch-size requests and --max-resident distinct adapters, and each
batch runs as one mixed-adapter batch (minilora.mixed_adapters: row i with its own adapter) with
the KV cache (nanogpt/batch_generate.py: prompts of different lengths, one generator per row, so
a request's completion does not depend on what else is in its batch). The adapters come from
disk through an AdapterStore that keeps at most --max-resident loaded (least recently used out).
"""
import argparse
import json
import math
import os
import sys
import time
import types

import torch
from tqdm import tqdm

from minilora import AdapterStore, mixed_adapters
from minilora.model_ops import lora_layers
from nanogpt.batch_generate import generate_batch
from nanogpt.checkpoint import atomic_write, load_model
from nanogpt.flags import (DEVICE_HELP, SEED_LIMIT, CommandError, device, non_negative_float, non_negative_int,
                           positive_int, run_main, seed)
from nanogpt.pretrained import load_init_from
from nanogpt.tokenizer import decode, encode

FIELDS = ("id", "adapter", "prompt", "max_new_tokens", "temperature", "seed")


def byte_tokenizer():
    """This project's tokenizer (bytes), with the interface of GPT-2's: encode(str) -> list, decode(list) -> str."""
    return types.SimpleNamespace(encode=lambda text: encode(text).tolist(), decode=decode)


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def parse_request(line, defaults, store, block_size, tokenizer):
    """A request dict from one line of text, with its prompt's token ids under "tokens", or
    raise ValueError naming the problem. defaults: max_new_tokens, temperature, seed, and the
    largest max_new_tokens allowed (limit)."""
    try:
        request = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e})") from None
    if not isinstance(request, dict):
        raise ValueError(f"a request must be a JSON object with the fields {list(FIELDS)}, got {type(request).__name__}")
    unknown = sorted(set(request) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; a request has the fields {list(FIELDS)}")
    request = {"adapter": None, **{k: defaults[k] for k in ("max_new_tokens", "temperature", "seed")}, **request}
    rid, adapter, prompt = request.get("id"), request["adapter"], request.get("prompt")
    if rid is not None and not (isinstance(rid, str) or _integer(rid)):
        raise ValueError(f"id must be a string or an integer, got {rid!r}")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty string (the text to continue), got {prompt!r}")
    n, limit = request["max_new_tokens"], defaults["limit"]
    if not _integer(n) or not 0 <= n <= limit:
        raise ValueError(f"max_new_tokens must be an integer in 0..{limit} (--max-new-tokens-limit), got {n!r}")
    temperature = request["temperature"]
    if _integer(temperature):
        temperature = request["temperature"] = float(temperature)
    if not isinstance(temperature, float) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if not _integer(request["seed"]) or not 0 <= request["seed"] < SEED_LIMIT:
        raise ValueError(f"seed must be an integer in 0..{SEED_LIMIT - 1}, got {request['seed']!r}")
    if adapter is not None:
        if not isinstance(adapter, str) or not adapter:
            raise ValueError(f"adapter must be an adapter's name or null (the base model), got {adapter!r}")
        if store is None:
            raise ValueError(f"unknown adapter {adapter!r}: no --adapters folder was given, so only null (the base "
                             f"model) is served")
        try:
            store.path(adapter)
        except KeyError as e:  # the store's sentence: no such file in the folder, with some names it has
            raise ValueError(e.args[0]) from None
    request["tokens"] = tokenizer.encode(prompt)
    if len(request["tokens"]) > block_size:
        raise ValueError(f"prompt too long: {len(request['tokens'])} tokens, and the model reads at most "
                         f"{block_size} (its block_size); shorten it")
    return request


def _id_of(line):
    """The id of a request line that cannot be served, when it has one to report."""
    try:
        rid = json.loads(line).get("id")
    except (ValueError, AttributeError):
        return None
    return rid if isinstance(rid, (str, int)) else None


def read_requests(path, defaults, store, block_size, tokenizer):
    """One entry per non-blank line of the file: {"line": its number, "request": the request,
    "record": None} or, for a line that is no valid request, {"line", "request": None,
    "record": its error record}."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise CommandError(f"--requests {path!r} is not UTF-8 text ({e}); give a file of JSON lines") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entries.append({"line": number, "request": parse_request(line, defaults, store, block_size, tokenizer),
                            "record": None})
        except ValueError as e:
            entries.append({"line": number, "request": None,
                            "record": {"id": _id_of(line), "line": number, "error": f"line {number}: {e}"}})
    return entries


def batches(requests, batch_size, max_adapters):
    """Index lists: the requests sorted by prompt plus new tokens, cut into batches of at most
    batch_size requests and max_adapters distinct adapters."""
    order = sorted(range(len(requests)), key=lambda i: len(requests[i]["tokens"]) + requests[i]["max_new_tokens"])
    out, current, adapters = [], [], set()
    for i in order:
        name = requests[i]["adapter"]
        if current and (len(current) == batch_size or (name is not None and name not in adapters
                                                       and len(adapters) == max_adapters)):
            out.append(current)
            current, adapters = [], set()
        current.append(i)
        if name is not None:
            adapters.add(name)
    return out + ([current] if current else [])


def load_adapters(store, names, bad):
    """Make the batch's adapters resident; {name: error} for those that cannot load (another base,
    a damaged file), remembered in bad so later batches do not retry them."""
    names = [n for n in dict.fromkeys(names) if n is not None and n not in bad]
    try:
        store.use(names)
    except (KeyError, ValueError, OSError, RuntimeError):
        for name in names:  # find the one(s) at fault; the others load
            try:
                store.use([name])
            except (KeyError, ValueError, OSError, RuntimeError) as e:
                bad[name] = str(e.args[0]) if isinstance(e, KeyError) else str(e)
    return bad


def serve_batch(model, requests):
    """The completions of one batch of valid requests whose adapters are resident."""
    names = [r["adapter"] for r in requests]
    args = ([r["tokens"] for r in requests], [r["max_new_tokens"] for r in requests],
            [r["temperature"] for r in requests], [r["seed"] for r in requests])
    if not lora_layers(model):  # no adapter loaded yet: every row is the base model
        return generate_batch(model, *args)
    with mixed_adapters(model, names):
        return generate_batch(model, *args)


def load_base(args):
    """(model, tokenizer) from --ckpt or --init-from."""
    if args.init_from is not None:  # a GPT-2 folder in the Hugging Face layout, with its BPE tokenizer
        model, tokenizer = load_init_from(args.init_from)
        return model.to(args.device), tokenizer
    model, _ = load_model(args.ckpt, map_location=args.device)
    return model, byte_tokenizer()


def serve(args):
    """Read, serve and write every request (main() after parsing); returns the summary dict."""
    model, tokenizer = load_base(args)
    model.eval().requires_grad_(False)
    store = None if args.adapters is None else AdapterStore(model, args.adapters, args.max_resident)
    defaults = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed,
                "limit": args.max_new_tokens_limit}
    entries = read_requests(args.requests, defaults, store, model.config.block_size, tokenizer)
    todo = [e for e in entries if e["request"] is not None]
    groups = batches([e["request"] for e in todo], args.batch_size, args.max_resident)
    bad, tokens, start = {}, 0, time.perf_counter()
    with tqdm(total=len(todo), desc="serving", unit="request", file=sys.stderr) as bar:
        for number, group in enumerate(groups):
            group = [todo[i] for i in group]
            if store is not None:
                load_adapters(store, [e["request"]["adapter"] for e in group], bad)
            for e in group:
                if e["request"]["adapter"] in bad:
                    e["record"] = {"id": e["request"].get("id"), "line": e["line"],
                                   "error": f"line {e['line']}: adapter {e['request']['adapter']!r}: "
                                            f"{bad[e['request']['adapter']]}"}
            group = [e for e in group if e["record"] is None]
            if group:
                seconds, new = timed(serve_batch, model, [e["request"] for e in group])
                for e, ids in zip(group, new):
                    r = e["request"]
                    e["record"] = {"id": r.get("id"), "line": e["line"], "adapter": r["adapter"],
                                   "completion": tokenizer.decode(ids), "tokens": ids, "seconds": round(seconds, 6),
                                   "batch": number, "batch_size": len(group)}
                    tokens += len(ids)
            bar.update(len(groups[number]))
    elapsed = time.perf_counter() - start
    records = [e["record"] for e in entries]
    write_records(records, args.out)
    served = sum("error" not in r for r in records)
    summary = {"requests": len(records), "served": served, "errors": len(records) - served, "batches": len(groups),
               "new_tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0}
    if store is not None:
        summary["adapters"] = {k: v for k, v in store.stats().items() if k != "resident"}
    return summary


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def write_records(records, path):
    """One JSON line per record, written to a temporary file and renamed onto path."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    atomic_write(path, write)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    base = p.add_mutually_exclusive_group()
    base.add_argument("--ckpt", default=None,
                      help="the base model's checkpoint, from nanogpt.train (default runs/base/ckpt.pt)")
    base.add_argument("--init-from", default=None, metavar="DIR",
                      help="a GPT-2 folder in the Hugging Face layout (config.json, weights, vocab.json, merges.txt) "
                           "instead of --ckpt")
    p.add_argument("--adapters", default=None, metavar="DIR",
                   help="a folder of adapter files NAME.pt that requests name (default: none; base-model requests only)")
    p.add_argument("--requests", required=True, metavar="FILE", help="the requests, one JSON object per line")
    p.add_argument("--out", required=True, metavar="FILE", help="where the completions go, one JSON line per request")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (default: refuse)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="requests per batch (default 32)")
    p.add_argument("--max-resident", type=positive_int, default=64,
                   help="adapters kept loaded at once, least recently used out first (default 64)")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=64,
                   help="for requests that give none (default 64)")
    p.add_argument("--max-new-tokens-limit", type=non_negative_int, default=1024,
                   help="the most a request may ask for (default 1024)")
    p.add_argument("--temperature", type=non_negative_float, default=0.8,
                   help="for requests that give none; 0 is greedy (default 0.8)")
    p.add_argument("--seed", type=seed, default=0, help="for requests that give none (default 0)")
    p.add_argument("--device", type=device, default="cpu", help=DEVICE_HELP + " (default cpu)")
    args = p.parse_args(argv)
    if args.init_from is None and args.ckpt is None:
        args.ckpt = "runs/base/ckpt.pt"
    if not os.path.isfile(args.requests):
        raise CommandError(f"--requests {args.requests!r}: no such file; give a file of JSON lines, one request each")
    if args.adapters is not None and not os.path.isdir(args.adapters):
        raise CommandError(f"--adapters {args.adapters!r}: no such folder; give a folder of NAME.pt adapter files")
    if os.path.abspath(args.out) == os.path.abspath(args.requests):
        raise CommandError(f"--out {args.out!r} is the requests file itself; give another path")
    if os.path.exists(args.out) and not args.overwrite:
        raise CommandError(f"--out {args.out!r} exists; nothing was served. Give another path, or --overwrite to "
                           f"replace it")
    if args.max_new_tokens > args.max_new_tokens_limit:
        p.error(f"argument --max-new-tokens: {args.max_new_tokens} is above --max-new-tokens-limit "
                f"{args.max_new_tokens_limit}")
    summary = serve(args)
    adapters = summary.get("adapters")
    print(f"served {summary['served']} of {summary['requests']} requests ({summary['errors']} errors) in "
          f"{summary['batches']} batches: {summary['new_tokens']} new tokens in {summary['seconds']:.2f} s, "
          f"{summary['tokens_per_s']:,.0f} tokens/s"
          + (f"; adapters: {adapters['loads']} loads, {adapters['hits']} hits, {adapters['evictions']} evictions"
             if adapters else "") + f"; wrote {args.out}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    run_main(main)
