"""The README's reading of the main results (lib/write_up.py's main_results): each ordering it states
is checked on the numbers, and said the other way where they do not support it."""
import textwrap

from experiments.lib.seeds import show


def monotone(values, rising):
    return all((b > a) if rising else (b < a) for a, b in zip(values, values[1:]))


def rank_curve_text(full, lora, rs, base_t, base_s):
    """The README's reading of the rank sweep: each ordering it states is checked on the means,
    and said the other way where the numbers do not support it."""
    ranks = sorted(lora)
    low, top = ranks[0], ranks[-1]
    mid = 8 if 8 in lora else ranks[len(ranks) // 2]
    docs = [lora[r]["target_loss"]["mean"] for r in ranks]
    code = [lora[r]["source_loss"]["mean"] for r in ranks]
    gains = [a - b for a, b in zip(docs, docs[1:])]
    f_docs, f_code = full["target_loss"]["mean"], full["source_loss"]["mean"]
    between = max(docs) < base_t and min(code) > base_s  # LoRA learned and forgot something at every rank
    if f_docs < min(docs) and f_code > max(code) and between:
        first = (f"Full fine-tuning learns the prose best ({show(full['target_loss'])}) and forgets the most code "
                 f"({base_s:.3f} to {f_code:.3f}). LoRA lands in between at every rank:")
    else:
        first = (f"Full fine-tuning ends at {show(full['target_loss'])} on the prose and {f_code:.3f} on the code "
                 f"(from {base_s:.3f}); LoRA:")
    learn = "more rank learns more" if monotone(docs, False) else "more rank does not always learn more"
    forget = "forgets more" if monotone(code, True) else "does not always forget more"
    steps = ("Each doubling of the rank buys less than the one before" if monotone(gains, False)
             else "The gain per doubling of the rank is " + ", ".join(f"{g:.3f}" for g in gains)
             + " (r=" + " to ".join(str(r) for r in ranks) + ")")
    end = lora[top]["target_loss"]["mean"] - f_docs
    rs_top = rs.get(top)
    rs_text = (f" With rsLoRA's alpha/sqrt(r) at the same rate, r={top} ends at {show(rs_top['target_loss'])}"
               + (": the rate tuned for alpha/r is too high for it (a change of scaling needs its own rate; "
                  "REPRODUCTIONS, sections 2 and 10)." if rs_top["target_loss"]["mean"] > lora[top]["target_loss"]["mean"]
                  else ", below alpha/r's (REPRODUCTIONS, sections 2 and 10, tune each scaling).")) if rs_top else ""
    return textwrap.fill(f"**What is learned and what is forgotten.** {first} {learn} ({show(lora[low]['target_loss'])} at r={low}, {show(lora[mid]['target_loss'])} at "
            f"r={mid}, {show(lora[top]['target_loss'])} at r={top}) and {forget} (code loss {code[0]:.3f} at r={low}, "
            f"{lora[mid]['source_loss']['mean']:.3f} at r={mid}, {code[-1]:.3f} at r={top}). {steps}, and "
            f"{'even ' if end > 0 else ''}r={top} ends {abs(end):.3f} {'above' if end > 0 else 'below'} full "
            f"fine-tuning.{rs_text}", width=100, break_on_hyphens=False)


def held_out_text(scored_on, base_t, base_s):
    """Where the main results' losses come from, and the base model's, wrapped for the README's source."""
    where = ("the held-out test half. This sweep chooses nothing, but its two rates were tuned earlier on the "
             "whole held-out text, this half included, so the test half is not wholly unseen by the choices behind "
             "it" if scored_on == "test" else "the held-out validation text")
    return textwrap.fill(f"Losses are on {where}; means over the seeds ± the 95% confidence interval. The base "
                         f"model starts at {base_t:.3f} on the docs and {base_s:.3f} on the code.", width=100)
