"""Is a difference real? Bootstrap intervals for rank-1 differences, and the verdict they allow.

Two questions come up in the lessons, and each gets the statistic it needs:

* **Two scores of one model** (Eq. 2's F, M and S; λ; the two MARS conventions): the same
  queries are ranked twice, so the question is only which queries each scoring gets right.
  :func:`paired_bootstrap` resamples the queries (with replacement), keeping each query's pair
  of outcomes together, and reports the difference of rank-1 with its percentile interval.
* **Two variants** (Table 2): each was trained with several seeds, and a seed moves rank-1 by
  several points. :func:`variant_interval` resamples both sources of noise at once: the seeds of
  each variant (independently) and the queries (shared by both variants, as they are scored on
  the same test set). The interval is for the difference of the mean rank-1 over seeds.

One definition of a real difference is used everywhere: :func:`verdict` calls a claim ``holds``
when the whole 95 % interval lies on the claimed side of zero, ``reversed`` when it lies wholly
on the other side, and ``inconclusive`` otherwise. With three seeds the seed bootstrap sees only
three values per variant, so its interval is, if anything, too narrow; the lessons say so.

Hits are per-query rank-1 outcomes (1 correct at rank 1, 0 not), e.g. ``rank1_hits(result)``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["Interval", "rank1_hits", "paired_bootstrap", "variant_interval", "verdict", "describe"]

VERDICTS = ("holds", "reversed", "inconclusive")


class Interval(NamedTuple):
    """A difference (A − B, in rank-1 points) and its percentile bootstrap interval."""

    diff: float
    low: float
    high: float
    level: float = 0.95
    n_boot: int = 0

    def to_dict(self) -> dict:
        return {"diff": self.diff, "interval": [self.low, self.high], "level": self.level, "n_boot": self.n_boot}


def rank1_hits(result) -> np.ndarray:
    """Per-query rank-1 outcomes (float 0/1) of an ``EvalResult`` with ``per_query``, or of a
    ``PerQuery`` itself (e.g. a row of ``eq2_breakdown``); queries the metric skips (no valid
    match in the gallery) are left out, as rank-1 leaves them out."""
    pq = getattr(result, "per_query", result)
    if pq is None or not hasattr(pq, "first_hit"):
        raise ValueError("the result has no per-query outcomes: evaluate with per_query kept (keep_top >= 1)")
    first_hit, ap = np.asarray(pq.first_hit), np.asarray(pq.ap, dtype=np.float64)
    return (first_hit[~np.isnan(ap)] == 1).astype(np.float64)


def _as_hits(values, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != ndim or a.size == 0:
        raise ValueError(f"{name}: expected a non-empty {ndim}-d array of per-query outcomes, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: per-query outcomes must be finite")
    return a


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> Interval:
    """Rank-1 of A minus rank-1 of B (points), one model's two scorings of the same queries.

    ``a[q]``, ``b[q]``: outcome of query q under each scoring. Each bootstrap sample draws Q
    query indices with replacement and takes the mean difference over them (×100).
    """
    a, b = _as_hits(a, "a", 1), _as_hits(b, "b", 1)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same queries: {a.shape} vs {b.shape}")
    d = (a - b) * 100.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(int(n_boot), len(d)))
    samples = d[idx].mean(axis=1)
    return Interval(float(d.mean()), *_percentiles(samples, level), level, int(n_boot))


def variant_interval(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], n_boot: int = 2000,
                     seed: int = 0, level: float = 0.95) -> Interval:
    """Mean rank-1 of variant A minus that of B (points), over seeds and queries.

    ``a[s, q]``: outcome of query q for A's seed s (likewise ``b``; the seeds may differ in
    number, the queries must be the same). Each bootstrap sample draws, with replacement, the
    seeds of A, the seeds of B and one set of query indices used for both.
    """
    a, b = _as_hits(a, "a", 2), _as_hits(b, "b", 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"both variants must be scored on the same queries: {a.shape[1]} vs {b.shape[1]}")
    rng = np.random.default_rng(seed)
    n_boot, num_q = int(n_boot), a.shape[1]
    sa = rng.integers(0, a.shape[0], size=(n_boot, a.shape[0]))
    sb = rng.integers(0, b.shape[0], size=(n_boot, b.shape[0]))
    q = rng.integers(0, num_q, size=(n_boot, num_q))
    # per sample: mean over the drawn seeds of each query's outcome, then over the drawn queries
    per_query_a = a[sa].mean(axis=1)  # (n_boot, Q): each sample's seed-averaged outcome per query
    per_query_b = b[sb].mean(axis=1)
    rows = np.arange(n_boot)[:, None]
    samples = (per_query_a[rows, q] - per_query_b[rows, q]).mean(axis=1) * 100.0
    diff = float((a.mean() - b.mean()) * 100.0)
    return Interval(diff, *_percentiles(samples, level), level, n_boot)


def verdict(interval: Interval, claimed_sign: int = 1) -> str:
    """``holds`` if the interval lies wholly on the claimed side of 0 (``claimed_sign`` +1: A > B),
    ``reversed`` if wholly on the other side, else ``inconclusive``."""
    if claimed_sign not in (1, -1):
        raise ValueError(f"claimed_sign must be +1 or -1, got {claimed_sign}")
    low, high = interval.low * claimed_sign, interval.high * claimed_sign
    low, high = min(low, high), max(low, high)
    if low > 0:
        return "holds"
    if high < 0:
        return "reversed"
    return "inconclusive"


def describe(interval: Interval, claimed_sign: int = 1, unit: str = "points") -> str:
    """``"+5.9 points, 95 % interval [−1.2, +12.8]: inconclusive"`` (``unit`` names the difference's unit)."""
    return (f"{interval.diff:+.1f} {unit}, {interval.level * 100:.0f} % interval "
            f"[{interval.low:+.1f}, {interval.high:+.1f}]: {verdict(interval, claimed_sign)}")
