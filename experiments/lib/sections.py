"""The order of REPRODUCTIONS.md's sections, which numbers them: experiments/report.py puts the
sections together in this order, lib/write_up.py numbers the headings and the summary table by
it, and an experiment's text names another's section with section_ref. It lives here, below
both, so that neither the report nor any experiment imports the other to ask."""

# The experiments in the order REPRODUCTIONS.md tells them: the learning rates first, because
# every other comparison runs each method at its own tuned rate.
SECTIONS = ("lr_sweep", "rank_sweep", "which_weights", "rank_targets", "subspace", "update_spectrum", "capacity",
            "learn_forget", "batch_size", "variants", "loraplus", "qlora", "adalora",
            # made on the held-out test split (nanogpt.data.load_corpus(test_split=True)) from the start, from
            # here on (every older section but capacity's was moved onto it later; report.on_test_split reads
            # which are)
            "settle", "placement", "data_size", "exact_match")
# The results folder (under results/) of the three-seed rank sweep (`rank_sweep --reproduce`) that
# REPRODUCTIONS.md and the README's main results read; the quickstart's own sweep is results/rank_sweep/.
MAIN_SWEEP_FOLDER = "rank_sweep_reproduction"
# The sections whose own runs went from three seeds to five after three had left a comparison open (the
# rules' call): a second look at those comparisons, which REPRODUCTIONS' multiplicity paragraph names.
RERUN_AT_FIVE_SEEDS = ("lr_sweep", "which_weights", "subspace", "batch_size", "adalora", "placement", "data_size")


def section_number(name):
    """An experiment's section number in REPRODUCTIONS.md (1 for SECTIONS[0])."""
    return SECTIONS.index(name) + 1


def section_ref(name):
    """'section N' for an experiment's section in REPRODUCTIONS.md (its place in SECTIONS)."""
    return f"section {section_number(name)}"


def numbers_text(numbers):
    """[1, 2, 3, 5] -> 'sections 1 to 3 and 5'; [] -> 'none'."""
    if not numbers:
        return "none"
    runs, start = [], numbers[0]
    for a, b in zip(numbers, numbers[1:] + [None]):
        if b != a + 1:
            runs += [str(start)] if start == a else [str(start), str(a)] if a == start + 1 else [f"{start} to {a}"]
            start = b
    word = "section" if len(numbers) == 1 else "sections"
    return f"{word} {runs[0]}" if len(runs) == 1 else f"{word} {', '.join(runs[:-1])} and {runs[-1]}"
