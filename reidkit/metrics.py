"""CMC and mAP for video re-identification, in the two MARS conventions.

Both functions take a query × gallery *distance* matrix (lower = more similar) and the pids
and cameras of both sides. Pids follow the MARS convention: ``-1`` junk, ``0`` distractor,
real identities ``>= 1``.

The common convention, :func:`cmc_map` (torchreid, Video-Person-ReID, most papers since 2017)
    The caller passes a gallery *without* the queries. For each query:

    - gallery entries with the query's pid *and* camera are ignored (a same-camera match is
      too easy to count), and so is junk (pid -1);
    - distractors (pid 0) stay in the ranking and count as wrong matches;
    - correct matches are the remaining entries with the query's pid (other cameras);
    - a query with no correct match left is *skipped*: it is left out of CMC and mAP, and
      counted (``RankingMetrics.num_skipped``).

    CMC(k) is the fraction of the kept queries whose first correct match is within rank k
    (ranks counted after the ignored entries are removed). AP is the mean of the precision
    at each correct hit (precision at the hit's rank = hits so far / rank), mAP the mean AP.

The official MARS MATLAB evaluation, :func:`cmc_map_official` (MARS-evaluation, ``compute_AP.m``)
    The caller passes as gallery *all* test tracklets, the queries included (12,180 on MARS).
    For each query, "junk" = gallery entries with the same pid and the same camera (this
    includes the query itself) plus pid -1 entries; they are removed. "Good" = same pid, other
    camera. AP is computed by the trapezoidal rule: for the k-th good hit at rank n (1-based,
    junk removed), with ``ngood`` good entries in all,

        precision_k     = k / n
        old_precision_k = (k - 1) / (n - 1)   if n > 1 else 1   (precision one rank earlier)
        AP             += (1 / ngood) * (old_precision_k + precision_k) / 2

    CMC and mAP are averaged over *all* queries. A query with no good match is not skipped:
    it contributes a zero CMC row and AP = 0 (MATLAB would produce NaN there; on MARS every
    query has a good match, so the choice never shows). Those queries are counted in
    ``RankingMetrics.num_no_match``; ``num_skipped`` is always 0 in this convention.

Why the two differ by about a point on MARS
    1. The gallery. With the queries inside the gallery, a query's *other* query tracklets of
       the same person in other cameras become extra correct matches (in the common
       convention they are not in the gallery at all). More good matches raise CMC and change
       every AP. The query itself is junk (same pid, same camera), so it never helps.
    2. The AP rule. Since (k-1)/(n-1) <= k/n whenever k <= n, every trapezoid term is at most
       the step term: for the same ranking, the trapezoidal AP is never larger than the step
       AP, and it is strictly smaller as soon as a correct hit follows a wrong one.
    3. Skipping. The common convention averages over queries with a correct match; the
       official one over all queries (identical on MARS, where all have one).

Ties and order
    Each query's gallery is ordered by a *stable* sort on the distance, so equal distances
    keep the gallery's own order (lower gallery index first). Results are therefore
    deterministic and identical to a brute-force loop that sorts by (distance, index).

Speed
    One stable argsort per chunk of queries, boolean masks and cumulative sums, no Python
    loop over queries: a 2,000 × 10,000 matrix takes a few seconds on one CPU core
    (``benchmarks/bench_eval.py`` prints the figure). Memory is bounded by ``chunk`` queries
    at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONVENTIONS = ("common", "official")
# What every result reports, in percent: CMC at ranks 1, 5, 10, 20 and mAP (the columns of Tables 2 and 3)
METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP")


def sample_std(values) -> float:
    """The standard deviation of ``values`` with n − 1 (0 for a single value): the "std (n − 1)"
    of every "mean ± std" over seeds or splits."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0

# Flags for one gallery entry seen from one query (used by the per-query retrieval records).
FLAG_IGNORED = -1      # junk (pid -1) or same pid & same camera: removed before ranking
FLAG_WRONG = 0         # another identity
FLAG_CORRECT = 1       # the query's identity, another camera
FLAG_DISTRACTOR = 2    # pid 0: a distractor, counted as a wrong match


@dataclass
class RankingMetrics:
    """CMC/mAP plus what went into them, per query.

    ``cmc`` and ``mAP`` are fractions in [0, 1]. Per-query arrays have one entry per query:
    ``ap`` (NaN for a skipped query), ``first_hit`` (1-based rank of the first correct match
    after removing ignored entries; 0 when there is none) and ``valid`` (counted in the
    averages).
    """

    cmc: np.ndarray
    mAP: float
    convention: str
    num_queries: int
    num_valid: int
    num_skipped: int
    num_no_match: int
    ap: np.ndarray
    first_hit: np.ndarray
    valid: np.ndarray


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def match_flags(order, q_pids, g_pids, q_camids, g_camids) -> np.ndarray:
    """Flag every ranked gallery entry for every query (``FLAG_*``), same shape as ``order``.

    ``order`` (Q, n) holds gallery indices, e.g. the first n of each query's ranking. The
    rule is the one both conventions share: junk and same-pid-same-camera entries are
    ignored, pid 0 is a distractor, the query's pid in another camera is correct. A query
    with pid <= 0 has no correct match.
    """
    order = _as_numpy(order)
    q_pids, g_pids = _as_numpy(q_pids), _as_numpy(g_pids)
    q_camids, g_camids = _as_numpy(q_camids), _as_numpy(g_camids)
    ignore, good = _masks(order, q_pids[:, None], g_pids, q_camids[:, None], g_camids)
    flags = np.full(order.shape, FLAG_WRONG, dtype=np.int8)
    flags[g_pids[order] == 0] = FLAG_DISTRACTOR
    flags[good] = FLAG_CORRECT
    flags[ignore] = FLAG_IGNORED
    return flags


def _masks(order, qp, g_pids, qc, g_camids):
    """(ignored, correct) boolean masks of ranked entries ``order`` for queries ``qp``/``qc`` (Q, 1)."""
    gp = g_pids[order]
    same_pid = (gp == qp) & (qp > 0)
    ignore = (same_pid & (g_camids[order] == qc)) | (gp == -1)
    return ignore, same_pid & ~ignore


def _chunk_stats(order, q_pids, g_pids, q_camids, g_camids, convention):
    """(AP, first-hit rank, number of correct matches) for the queries of one chunk.

    AP here is not yet the final value for queries without a correct match (0 for those).
    """
    ignore, good = _masks(order, q_pids[:, None], g_pids, q_camids[:, None], g_camids)
    rank = np.cumsum(~ignore, axis=1, dtype=np.int32)   # 1-based rank among kept entries
    hits = np.cumsum(good, axis=1, dtype=np.int32)      # correct hits so far
    rows, cols = np.nonzero(good)                       # few: only the correct entries
    n = rank[rows, cols].astype(np.float64)
    k = hits[rows, cols].astype(np.float64)
    count = hits[:, -1].astype(np.int64)
    # np.nonzero is row-major, so the first entry listed for a row is its first correct hit
    starts = np.searchsorted(rows, np.arange(len(order)))
    first_hit = np.zeros(len(order), dtype=np.int64)
    has = count > 0
    first_hit[has] = n[starts[has]].astype(np.int64)
    precision = k / n
    if convention == "common":
        term = precision                                # step rule: mean precision at the hits
    else:
        old = np.where(n > 1, (k - 1) / np.maximum(n - 1, 1), 1.0)
        term = (old + precision) / 2                    # trapezoid between rank n-1 and n
    ap = np.bincount(rows, weights=term, minlength=len(order)) / np.maximum(count, 1)
    return ap, first_hit, count


def _finish(ap, first_hit, ngood, convention, max_rank) -> RankingMetrics:
    num_q = len(ap)
    has_match = ngood > 0
    if convention == "common":
        valid = has_match
        ap = np.where(valid, ap, np.nan)
    else:
        valid = np.ones(num_q, dtype=bool)  # no-match queries count, with AP 0 and a zero CMC row
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a correct match in the gallery (same pid, other camera)")
    fh = first_hit[valid]
    ranks = np.arange(1, max_rank + 1)
    cmc = ((fh[:, None] <= ranks[None, :]) & (fh[:, None] > 0)).mean(axis=0)
    return RankingMetrics(
        cmc=cmc, mAP=float(np.mean(ap[valid])), convention=convention, num_queries=num_q,
        num_valid=num_valid, num_skipped=num_q - num_valid, num_no_match=int((~has_match).sum()),
        ap=ap, first_hit=first_hit, valid=valid)


def _prepare(shape, q_pids, g_pids, q_camids, g_camids, convention):
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if len(shape) != 2:
        raise ValueError(f"expected a 2-D (queries × gallery) matrix, got shape {shape}")
    arrays = [_as_numpy(a).astype(np.int64).reshape(-1) for a in (q_pids, g_pids, q_camids, g_camids)]
    num_q, num_g = shape
    if [len(a) for a in arrays] != [num_q, num_g, num_q, num_g]:
        raise ValueError(f"matrix is {shape} but got {len(arrays[0])}/{len(arrays[2])} query and "
                         f"{len(arrays[1])}/{len(arrays[3])} gallery pids/camids")
    return arrays


def _evaluate(get_order, shape, q_pids, g_pids, q_camids, g_camids, convention, max_rank, chunk):
    q_pids, g_pids, q_camids, g_camids = _prepare(shape, q_pids, g_pids, q_camids, g_camids, convention)
    num_q = shape[0]
    ap, first_hit, ngood = np.zeros(num_q), np.zeros(num_q, np.int64), np.zeros(num_q, np.int64)
    for s in range(0, num_q, chunk):
        sl = slice(s, s + chunk)
        ap[sl], first_hit[sl], ngood[sl] = _chunk_stats(
            get_order(sl), q_pids[sl], g_pids, q_camids[sl], g_camids, convention)
    return _finish(ap, first_hit, ngood, convention, max_rank)


def evaluate_order(order, q_pids, g_pids, q_camids, g_camids, convention="common",
                   max_rank=20, chunk=256) -> RankingMetrics:
    """CMC/mAP of given rankings: ``order`` (Q, G) lists each query's gallery indices, best first.

    Use this when the ranking is not a plain distance sort (e.g. a re-scored top-K);
    otherwise call :func:`evaluate_rankings`. See the module docstring for the conventions.
    """
    order = _as_numpy(order)
    return _evaluate(lambda sl: order[sl], order.shape, q_pids, g_pids, q_camids, g_camids,
                     convention, max_rank, chunk)


def evaluate_rankings(distmat, q_pids, g_pids, q_camids, g_camids, convention="common",
                      max_rank=20, chunk=256) -> RankingMetrics:
    """CMC/mAP of a distance matrix (Q, G), lower = better, with per-query details.

    Ties are broken by gallery index (stable sort). Everything, the sort included, runs
    ``chunk`` queries at a time, so memory stays at a few ``chunk × G`` arrays.
    """
    distmat = _as_numpy(distmat)
    return _evaluate(lambda sl: np.argsort(distmat[sl], axis=1, kind="stable"), distmat.shape,
                     q_pids, g_pids, q_camids, g_camids, convention, max_rank, chunk)


def cmc_map(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, return_details=False):
    """CMC (fractions, ranks 1..max_rank) and mAP in the common MARS convention.

    The gallery must not contain the queries. Returns ``(cmc, mAP)``, or the full
    :class:`RankingMetrics` (skipped-query count, per-query AP and first-hit rank) when
    ``return_details`` is true. See the module docstring for the exact rules.
    """
    m = evaluate_rankings(distmat, q_pids, g_pids, q_camids, g_camids, "common", max_rank)
    return m if return_details else (m.cmc, m.mAP)


def cmc_map_official(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, return_details=False):
    """CMC and mAP as the official MARS MATLAB evaluation computes them.

    The gallery is all test tracklets, the queries included; AP by the trapezoidal rule;
    averages over all queries. See the module docstring for the rules and why the numbers
    differ from :func:`cmc_map` by about a point.
    """
    m = evaluate_rankings(distmat, q_pids, g_pids, q_camids, g_camids, "official", max_rank)
    return m if return_details else (m.cmc, m.mAP)
