"""Timing two things side by side: one round times each once, in turn, and a ratio is taken
within a round, so the machine's drift over a run (other tenants, memory state) cancels where a
ratio of two medians would not. The benchmarks in experiments/bench/ and experiments/scale.py
time this way."""
import statistics
import time


def train_step(model, optimizer, x, y):
    _, loss = model(x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def paired_ratio(times_a, times_b):
    """Median and quartiles over rounds of times_a[i] / times_b[i] (two variants timed in the
    same round): (median, first quartile, third quartile)."""
    per_round = [a / b for a, b in zip(times_a, times_b)]
    if len(per_round) == 1:
        return per_round[0], per_round[0], per_round[0]
    q1, q2, q3 = statistics.quantiles(per_round, n=4)
    return q2, q1, q3
