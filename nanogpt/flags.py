"""Command-line flags that are checked where they enter, and commands that end in a message.

Every numeric flag of every command has a type from here, so a bad value stops the command
at once, before any work, with argparse's usual line naming the flag:

    error: argument --lr: must be a finite number > 0, got 'nan'

run_main(main) runs a command's main(): a problem the command can name (a bad file, a used
folder, a diverged run) ends with one line `error: ...` and a non-zero exit code instead of
a traceback. Library calls (and tests) call main() directly and get the exception itself.
"""
import argparse
import math
import sys

from nanogpt.device import DEVICE_CHOICES, resolve_device

SEED_LIMIT = 2 ** 31  # seeds are mixed into per-step generator seeds, which must fit in 64 bits


def _number(text, kind):
    try:
        return kind(text)
    except ValueError:
        word = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {word}, got {text!r}") from None


def positive_int(text):
    """An integer >= 1 (steps, batch sizes, ranks, counts)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def non_negative_int(text):
    """An integer >= 0 (0 usually means 'none' or 'off': say so in the flag's help)."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def seed(text):
    """A random seed: an integer in 0 .. 2**31 - 1."""
    value = _number(text, int)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer in 0..{SEED_LIMIT - 1}, got {text!r}")
    return value


def finite_float(text):
    """Any finite number: not nan, not inf."""
    value = _number(text, float)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text):
    """A finite number > 0 (learning rates, alpha, temperature)."""
    value = _number(text, float)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_float(text):
    """A finite number >= 0 (weight decay, the gradient-clipping norm with 0 = off, min_lr)."""
    value = _number(text, float)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def fraction(text):
    """A probability in [0, 1) (dropout)."""
    value = _number(text, float)
    if not 0.0 <= value < 1.0:  # false for nan too
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def comma_list(item_type, example, min_items=1):
    """A type for comma-separated values, each checked by item_type: comma_list(positive_int, "1,2,4")."""
    def parse(text):
        parts = [part.strip() for part in text.split(",") if part.strip()]
        try:
            values = [item_type(part) for part in parts]
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"must be comma-separated values like {example}; an item {e}") from None
        if len(values) < min_items:
            raise argparse.ArgumentTypeError(
                f"must hold at least {min_items} comma-separated value{'s' if min_items > 1 else ''} "
                f"like {example}, got {text!r}")
        return values
    parse.__name__ = f"list of {item_type.__name__}"
    return parse


def device(text):
    """auto, cpu, cuda (cuda:N) or mps, and present on this machine; returns the resolved name."""
    try:
        return resolve_device(text)
    except (ValueError, RuntimeError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def choice(choices):
    """A type for one of a few names, with the choices in the error (like choices=, but the
    message says what was given)."""
    def parse(text):
        if text not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {list(choices)}, got {text!r}")
        return text
    parse.__name__ = "choice"
    return parse


DEVICE_HELP = f"one of {list(DEVICE_CHOICES)}"


class CommandError(Exception):
    """A problem a command can name and the user can fix (a used --out folder, a conflicting
    flag on --resume, a diverged run): run_main prints its message alone, with no traceback."""


def run_main(main):
    """Run a command's main() as a program: a problem it can name ends in one `error:` line on
    stderr and exit code 1 (2 for bad flags, from argparse); Ctrl-C ends with code 130."""
    try:
        main()
    except KeyboardInterrupt as e:
        print(f"\ninterrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        sys.exit(130)
    except (CommandError, ValueError, OSError, RuntimeError, FloatingPointError) as e:
        # ValueError, OSError, RuntimeError: our checks raise these with messages that name the
        # file and the fix; so do torch's for the few faults we cannot check first (out of memory).
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
