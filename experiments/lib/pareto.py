"""Pareto fronts of (learned, forgotten) points, and reading a front at a given amount learned.

A fine-tuned model is a point (target loss, source loss): left is more learned, down is less
forgotten, both better. A point is dominated when another point is at least as good on both
axes and better on one; the front is what is left. Sorted by target loss, a front's source loss
falls strictly: every step to the left (more learned) costs some forgetting.

Between two neighbouring vertices we read the front as the straight line joining them. That
line is not itself a trained model; it is the usual reading of a front drawn from finitely many
runs, and it is exact at the vertices.
"""
import math


def pareto_front(points):
    """The non-dominated points of [(x, y), ...] (both lower is better), sorted by x; x strictly
    rises and y strictly falls along it. Exact duplicates count once; a point with a nan or
    infinite coordinate (a diverged run) is left out."""
    front = []
    for x, y in sorted({(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)}):  # by x, then y: every point before this one has x' <= x
        if not front or y < front[-1][1]:  # below the lowest y so far: nothing before dominates it
            front.append((x, y))
    return front


def front_at(front, x):
    """The front's y at x, linear between neighbouring vertices (exact at a vertex); None when x
    lies outside the front's range of x (no extrapolation)."""
    if not front or not front[0][0] <= x <= front[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(front, front[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return front[0][1]  # a front of one point, and x is that point's x
