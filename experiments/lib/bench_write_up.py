"""The generated text of the two serving-side benchmarks, from their records: many adapters over one
base (results/bench_adapters/, python -m experiments.bench.adapters) and the bytes LoRA saves on the
wire under torchrun (results/bench_ddp/, python -m experiments.bench.ddp). lib/write_up.py puts them
into the README's and the docs' generated blocks; they are measurements, not claims with a verdict."""

MIB = 1024 ** 2


def adapters(results, root=""):
    """Many adapters over one base, from results/bench_adapters; root: from the Markdown file to the repository."""
    bench = results.json("bench_adapters", "bench_adapters.json")
    a, gen = bench["args"], "mixed tokens/s / one_at_a_time tokens/s"
    lines = [f"Measured by `python -m experiments.bench.adapters` ({bench['torch']}, {bench['threads']} thread(s); "
             f"medians over {a['switch_rounds']} rounds for switching and {a['gen_rounds']} for generation "
             f"({a.get('gen_rounds_large', a['gen_rounds'])} above 16 adapters), taken in turns; "
             f"{a['requests_per_adapter']} requests per adapter, a prompt of {a['prompt_len']} tokens and "
             f"{a['new_tokens']} new ones, greedy, with the KV cache):", "",
             "| model | N adapters | set_adapter | merge swap | memory: N resident / N merged copies (MiB) | tokens/s: "
             "mixed batch, one at a time, base alone | mixed / one at a time (quartiles) | ceiling |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for preset, data in bench["presets"].items():
        for n, row in data["by_n_adapters"].items():
            t, r, (q1, q3), b, tps = (row["seconds_median"], row["ratios"], row["ratio_quartiles"][gen], row["bytes"],
                                      row["tokens_per_s_median"])
            lines.append(
                f"| `{preset}` | {n} | {1000 * t['set_adapter']:.2f} ms | {1000 * t['merge_swap']:.2f} ms | "
                f"{b['base_plus_adapters'] / MIB:.1f} / {b['merged_copies'] / MIB:.1f} | {tps['mixed']:,.0f}, "
                f"{tps['one_at_a_time']:,.0f}, {tps['base_batched']:,.0f} | {r[gen]:.2f}x "
                f"({'one round' if q1 == q3 else f'{q1:.2f}-{q3:.2f}'}) | "
                f"{r['base batched tokens/s / base grouped tokens/s (the ceiling)']:.2f}x |")
    same = all(row["same_tokens_share"] == 1 for d in bench["presets"].values() for row in d["by_n_adapters"].values())
    lines += ["", "The ceiling is what batching gains for the base model alone (one batch of all requests against one "
              "batch per adapter)." + (" Every mixed batch produced the same tokens as each adapter alone." * same)]
    if head := bench.get("headline"):
        lines += ["", f"Goal ({head['goal']}): " + ", ".join(
            f"`{p}` {x:.2f}x (quartiles {head['quartiles_by_preset'][p][0]:.2f}-{head['quartiles_by_preset'][p][1]:.2f})"
            for p, x in head["speedup_by_preset"].items()) + f": **{'met' if head['met'] else 'not met'}**."]
    for preset, disk, cache in ((p, d["from_disk"], d["kv_cache"]) for p, d in bench["presets"].items()):
        load, (q1, q3) = disk["seconds_per_adapter_median"], cache["speedup_quartiles"]
        lines += ["", f"`{preset}`: an adapter file ({disk['bytes_per_file'] / 1024:.0f} KiB) loads through the "
                      f"`AdapterStore` in {1000 * load['cold']:.1f} ms (cold: read, checked, added; from the OS's page "
                      f"cache) and {1e6 * load['warm']:.0f} us when resident (warm). The KV cache generates "
                      f"{cache['new_tokens']} tokens {cache['speedup']:.2f}x faster than without (quartiles {q1:.2f}-"
                      f"{q3:.2f}); {cache['steps_past_block_size']} of those steps lie past block_size "
                      f"{cache['block_size']}, where the window slides and runs in full either way."]
    note = bench.get("machine_note", "")
    lines += ["", note[:1].upper() + note[1:] + ". " * bool(note) + "What the mixed batch still loses to the base alone, "
              f"and where the rest of the gap to S-LoRA's figures lies: [`docs/serving.md`]({root}docs/serving.md).", "",
              f"![tokens per second against the number of adapters]({root}results/bench_adapters/bench_adapters.png)\n"]
    return "\n".join(lines)


def ddp(results):
    """The README's communication table and step-time ratios, from results/bench_ddp."""
    bench = results.json("bench_ddp", "bench_ddp.json")
    measured = {(c["preset"], c["method"]): c for c in bench["communication"]}
    lines = ["| model | full fine-tuning, bytes per step | LoRA r=8, bytes per step | LoRA / full | how |",
             "| --- | ---: | ---: | ---: | --- |"]
    for preset in dict.fromkeys(p for p, _ in measured):
        f, l = measured.get((preset, "full")), measured.get((preset, "lora"))
        if f and l:
            lines.append(f"| `{preset}` ({f['base_params'] / 1e6:.2f}M parameters) | "
                         f"{f['allreduce_bytes_per_step']:,} ({f['allreduce_bytes_per_step'] / MIB:.2f} MiB) | "
                         f"{l['allreduce_bytes_per_step']:,} ({l['allreduce_bytes_per_step'] / MIB:.2f} MiB) | "
                         f"{l['allreduce_bytes_per_step'] / f['allreduce_bytes_per_step']:.3f} | measured, 2 processes |")
    for preset, c in bench.get("counted_bytes_per_step", {}).items():
        if (preset, "full") not in measured:
            lines.append(f"| `{preset}` shape | {c['full']:,} ({c['full'] / MIB:.1f} MiB) | {c['lora']:,} "
                         f"({c['lora'] / MIB:.2f} MiB) | {c['lora'] / c['full']:.3f} | counted, 4 bytes per trainable "
                         f"parameter |")
    lines += ["", f"Step time, {bench['cpu_count']} cores, {bench['torch']}, the global batch fixed, launches in "
              f"turns ({bench['settings']['rounds']} rounds of {bench['settings']['steps']} steps; median of the "
              f"rounds' ratios, quartiles in brackets):", "",
              "| model | method | step-time ratio | median (quartiles) |", "| --- | --- | --- | ---: |"]
    lines += [f"| `{r['preset']}` | {r['method']} | {r['ratio']} | {r['median']:.2f} "
              f"({r['quartiles'][0]:.2f}-{r['quartiles'][1]:.2f}) |" for r in bench["step_time_ratios"]]
    return "\n".join(lines) + "\n"
