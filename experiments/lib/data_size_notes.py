"""The data-size section's descriptive notes (experiments/data_size.py): what each size's runs did,
said beside the verdict, which rests on none of them; the small formats and tables the fixed-length and
the early-stopping reads share; and the early-stopping read's summary."""
from experiments.lib import verdicts
from experiments.lib.seeds import paired, show, show_difference, spread


def kib(n):
    """A size in bytes as people write it: 256 bytes, 4 KB, 32 KB, 409.7 KB (KB = 1024 bytes)."""
    if n < 1024:
        return f"{n} bytes"
    return f"{n / 1024:.0f} KB" if n % 1024 == 0 else f"{n / 1024:.1f} KB"


def label(name):
    return "full fine-tuning" if name == "full" else f"LoRA {name}"


def overfitting(summary):
    """Does full fine-tuning overfit the small sets? (one line per size, and the answer): its test
    loss against the base model's (above it: the repetition did harm), and the loss on its own
    training batches at the end against the test loss (the generalisation gap)."""
    base = summary["base_test_loss"]
    rows = sorted((x for x in summary["rows"] if x["name"] == "full"), key=lambda x: x["size"])
    lines, worse, gaps = [], [], {}
    for row in rows:
        test, train = row["test_loss"]["mean"], row["train_loss_end"]["mean"]
        gaps[row["size"]] = test - train
        if test > base:
            worse.append(kib(row["size"]))
        lines.append(f"{kib(row['size'])}: test {show(row['test_loss'])} ({test - base:+.3f} from the base model's "
                     f"{base:.3f}), its own training batches {train:.3f} at the end "
                     f"(test minus training {test - train:+.3f})")
    small, large = rows[0]["size"], rows[-1]["size"]
    stopped = [(row, e) for row in rows for e in summary.get("early", {}).get("rows", [])
               if (e["name"], e["size"]) == ("full", row["size"]) and e["steps"] < summary["steps"]
               and e["test_loss"]["mean"] < row["test_loss"]["mean"]]
    if worse:
        answer = (f"Yes, past the start: on {', '.join(worse)} its test loss ends above the base model's, so the "
                  f"repetition undid what it learned")
    elif stopped:
        answer = (f"Yes, though it still ends below the base model's test loss on every set: stopped early it does "
                  "better, " + ", ".join(f"on {kib(row['size'])} {e['test_loss']['mean']:.3f} after {e['steps']} steps "
                                         f"against {row['test_loss']['mean']:.3f} after {summary['steps']}"
                                         for row, e in stopped))
    else:
        answer = ("Not past the start: at its tuned rate its test loss ends below the base model's on every set, "
                  "so each set still taught it something")
    trend = ("larger" if gaps[small] > gaps[large] else "no larger")
    return lines, (f"{answer}; test minus training is {trend} on {kib(small)} "
                   f"({gaps[small]:+.3f}) than on {kib(large)} ({gaps[large]:+.3f})")


def ahead(summary):
    """Where LoRA ends AHEAD of full fine-tuning (the gap's 95% interval below 0): no part of the claim,
    which has LoRA at best equal, so said apart, without a verdict."""
    cells = [f"r={d['r']} on {kib(d['size'])} ({show_difference(d['difference'])})" for d in summary["differences"]
             if d["difference"]["n"] > 1 and d["difference"]["mean"] + d["difference"]["ci"] < 0]
    if not cells:
        return "LoRA ends ahead of full fine-tuning (a called negative gap) at no size."
    return ("LoRA ends ahead of full fine-tuning, a called negative gap, at " + "; ".join(cells) + ": there full "
            "fine-tuning, at its own tuned rate and the same number of steps, ends worse than LoRA. The claim has "
            "LoRA at best equal, so this is no match, and no part of the verdict.")


def learned_little(summary):
    """Whether every run on the smallest set sat at the lowest rate tried and moved the base model's test
    loss by less than 0.05: runs that learned too little to test whether a low rank holds what full
    fine-tuning learns (the claim's regime), whatever their gap."""
    small = min(summary["sizes"])
    rows = [row for row in summary["rows"] if row["size"] == small]
    return (all(row["tuning"]["at_grid_edge"] and row["lr"] == min(row["tuning"]["lrs"]) for row in rows)
            and max(abs(row["test_loss"]["mean"] - summary["base_test_loss"]) for row in rows) < 0.05)


def smallest_set(summary):
    """How far each method moved from the base model on the smallest set, and what a match there means
    when every tuned rate sat at the lowest rate tried (the runs then learned as little as they could)."""
    small = min(summary["sizes"])
    rows = [row for row in summary["rows"] if row["size"] == small]
    moved = [row["test_loss"]["mean"] - summary["base_test_loss"] for row in rows]
    text = (f"On {kib(small)} the test loss minus the base model's is "
            + ", ".join(f"{label(row['name'])} {m:+.3f}" for row, m in zip(rows, moved)))
    if all(row["tuning"]["at_grid_edge"] and row["lr"] == min(row["tuning"]["lrs"]) for row in rows):
        text += (": every method's best rate there was the lowest tried, so at this step budget the best each "
                 "does is to change the base little. A match on this set is a match between runs that learned "
                 f"{'little' if max(abs(m) for m in moved) < 0.05 else 'what they could at the lowest rate'}, "
                 "not evidence that a low rank holds what full fine-tuning learns"
                 + ("; the early-stopping read above, with fewer steps allowed, does not change that"
                    if summary.get("early") else "; fewer steps (early stopping) would test that regime more fairly, "
                    "and were not run"))
    return text + "."


def behind(summary):
    """Where every rank is behind full fine-tuning, the gap by rank (means, described; no verdict rests on it)."""
    by_size = {}
    for d in summary["differences"]:
        by_size.setdefault(d["size"], {})[d["r"]] = d["difference"]["mean"]
    cells = [f"{kib(n)}: " + ", ".join(f"r={r} {g:+.3f}" for r, g in sorted(gaps.items()))
             for n, gaps in sorted(by_size.items()) if all(g > 0 for g in gaps.values())]
    if not cells:
        return ""
    return ("Where every rank is behind, the gap by rank (mean test loss, LoRA minus full; described, no verdict "
            "rests on it): " + "; ".join(cells) + ".")


def edge_note(summary):
    """What a tuned rate at the edge of the rates tried means here, and who ends worse on test than
    the base model (where the repeated set did harm at every rate tried)."""
    def names(rows):
        return ", ".join(f"{label(row['name'])} on {kib(row['size'])}" for row in rows)

    edges = [row for row in summary["rows"] if row["tuning"]["at_grid_edge"]]
    low = [row for row in edges if row["lr"] == min(row["tuning"]["lrs"])]
    high = [row for row in edges if row not in low]
    worse = [row for row in summary["rows"] if row["test_loss"]["mean"] > summary["base_test_loss"]]
    out = []
    if low:
        out.append(f"The tuned rate of {names(low)} sat at the lowest rate tried: the validation loss still fell "
                   f"toward lower rates, so the best rate lies lower, and a comparison there says what "
                   f"{summary['steps']} steps at the rates tried do to that set, not the best each method reaches "
                   f"on it (a lower rate, or fewer steps, would do better).")
    if high:
        out.append(f"The tuned rate of {names(high)} sat at the highest rate tried, so its best may lie higher.")
    if worse:
        text = names(worse)
        out.append(f"{text[0].upper() + text[1:]} end{'s' if len(worse) == 1 else ''} worse on test than the base "
                   f"model "
                   f"({summary['base_test_loss']:.3f}): there the repeated set did harm.")
    return " ".join(out)


def early_findings(summary, points, early_points):
    """What the early-stopping read (lib/early_stopping.py) says beside the fixed-length runs: how far the
    smallest set's chosen runs moved from the base, and where LoRA matches full fine-tuning in each read.
    points / early_points: {r: the largest size where LoRA r matches, or None} in each read."""
    early = summary["early"]
    small = min(summary["sizes"])
    rows = [row for row in early["rows"] if row["size"] == small]
    moved = [row["test_loss"]["mean"] - summary["base_test_loss"] for row in rows]
    at_edge = sum(bool(row["by_length"][str(row["steps"])].get("at_grid_edge")) for row in rows)
    lowest = sum(bool(row["by_length"][str(row["steps"])].get("at_lowest")) for row in rows)
    low, high = min(points), max(points)

    def moves(p):
        return (p[high] or 0) > (p[low] or 0)
    text = (f"On {kib(small)} the chosen runs move the base model's test loss by "
            + ", ".join(f"{label(row['name'])} {m:+.3f} ({row['steps']} steps)" for row, m in zip(rows, moved))
            + f", and {at_edge} of their {len(rows)} rates sit at the edge of those tried at their length"
            + (f": every one at the lowest the search reached (it adds at most {summary['max_extra']} rates beyond its "
               "first three), so stopping early did not bring ordinary rates within reach. "
               if lowest == len(rows) else ". ")
            + f"Where LoRA matches full fine-tuning with early stopping: {match_text(early_points)}; with every run at "
            f"{summary['steps']} steps: {match_text(points)}. With early stopping the match point "
            f"{'moves' if moves(early_points) else 'does not move'} to larger data with r={high} than with r={low}")
    little = max(abs(m) for m in moved) < 0.05
    if moves(early_points) != moves(points):
        text += (f" (at {summary['steps']} steps it {'does' if moves(points) else 'does not'})"
                 + ("; either way the matches are between runs that barely moved from the base" if little else ""))
    return text + (". The verdict below rests on the fixed-length runs, the design set before the runs"
                   + ("; the matches this read finds are between runs as close to the base, so it changes no part "
                      "of it." if little else "."))


def gaps(rows, ranks, sizes):
    """LoRA minus full fine-tuning's test loss at each rank and size, seed by seed (above 0: LoRA behind)."""
    cell = {(row["name"], row["size"]): row for row in rows}
    return [{"r": r, "size": n, "difference": paired(cell[("full", n)]["test_loss"]["values"],
                                                     cell[(f"r={r}", n)]["test_loss"]["values"])}
            for r in ranks for n in sizes]


def gap_table(differences):
    """The gaps as Markdown, each with the equivalence rule's outcome."""
    lines = ["| data | LoRA r | LoRA minus full (95% CI; * = called) | matches (90% interval) |",
             "| ---: | ---: | ---: | --- |"]
    for d in differences:
        m = verdicts.matches(d["difference"])
        lines.append(f"| {kib(d['size'])} | {d['r']} | {show_difference(d['difference'])} | "
                     f"{m['outcome']} ({m['low']:+.3f} to {m['high']:+.3f}) |")
    return "\n".join(lines) + "\n"


def match_text(points):
    """{r: the largest size where LoRA r matches, or None} as 'r=1: at no size; r=16: up to 4 KB'."""
    return "; ".join(f"r={r}: {'at no size' if n is None else 'up to ' + kib(n)}" for r, n in points.items())


def early_summary(chosen, ranks, sizes):
    """The early-stopping read for data_size.json (chosen: lib/early_stopping.choose_run_length's): each
    method and size at its chosen length and rate, test losses, and the gaps."""
    rows = [{"name": name, "size": n, "steps": c["steps"], "lr": c["lr"],
             "by_length": {str(k): v for k, v in c["by_length"].items()},
             "test_loss": spread([x["final_target_test_loss"] for x in c["records"]])}
            for (name, n), c in chosen.items()]
    return {"rows": rows, "differences": gaps(rows, ranks, sizes)}


def early_table(early, names, lr_text):
    """The early-stopping read as Markdown: each cell's test loss, run length and rate; then the gaps."""
    cell = {(row["name"], row["size"]): row for row in early["rows"]}
    lines = ["| data | " + " | ".join(label(n) for n in names) + " |", "| ---: |" + " ---: |" * len(names)]
    for n in sorted({row["size"] for row in early["rows"]}):
        lines.append(f"| {kib(n)} | " + " | ".join(
            f"{show(cell[(name, n)]['test_loss'])} ({cell[(name, n)]['steps']} steps, {lr_text(cell[(name, n)]['lr'])})"
            for name in names) + " |")
    return "\n".join(lines) + "\n\n" + gap_table(early["differences"])


def early_match_points(early):
    """{r: the largest size at which LoRA r matches full fine-tuning in the early-stopping read, or None}."""
    points = {}
    for d in early["differences"]:
        points.setdefault(d["r"], None)
        if verdicts.matches(d["difference"])["outcome"] == verdicts.REPRODUCED:
            points[d["r"]] = max(points[d["r"]] or 0, d["size"])
    return points
