"""CMC/mAP against brute-force loops and hand-computed cases, in both MARS conventions."""

import numpy as np
import pytest
import torch

from reidkit.metrics import (
    FLAG_CORRECT, FLAG_DISTRACTOR, FLAG_IGNORED, FLAG_WRONG, cmc_map, cmc_map_official,
    evaluate_order, evaluate_rankings, match_flags)


def brute_common(dist, qp, gp, qc, gc, max_rank):
    """Common convention, one query at a time, straight from the definition."""
    rows, aps, skipped = [], [], 0
    for i in range(len(qp)):
        ranked = sorted(range(len(gp)), key=lambda j: (dist[i][j], j))
        kept = [j for j in ranked
                if gp[j] != -1 and not (gp[j] == qp[i] and gc[j] == qc[i])]
        correct = [qp[i] > 0 and gp[j] == qp[i] for j in kept]
        if not any(correct):
            skipped += 1
            continue
        first = correct.index(True) + 1
        rows.append([1.0 if first <= k else 0.0 for k in range(1, max_rank + 1)])
        precisions, hits = [], 0
        for n, c in enumerate(correct, start=1):
            if c:
                hits += 1
                precisions.append(hits / n)
        aps.append(sum(precisions) / len(precisions))
    return np.mean(rows, axis=0), float(np.mean(aps)), skipped


def brute_official(dist, qp, gp, qc, gc, max_rank):
    """The MATLAB compute_AP loop (recall steps × mean of old and new precision), transcribed."""
    rows, aps = [], []
    for i in range(len(qp)):
        index = sorted(range(len(gp)), key=lambda j: (dist[i][j], j))
        good = {j for j in range(len(gp)) if qp[i] > 0 and gp[j] == qp[i] and gc[j] != qc[i]}
        junk = {j for j in range(len(gp)) if gp[j] == -1 or (gp[j] == qp[i] and gc[j] == qc[i])}
        cmc = [0.0] * len(index)
        ap, old_recall, old_precision, intersect, j, njunk = 0.0, 0.0, 1.0, 0, 0, 0
        for n, g in enumerate(index, start=1):
            if g in good:
                for r in range(n - njunk - 1, len(index)):
                    cmc[r] = 1.0
            if g in junk:
                njunk += 1
                continue
            if g in good:
                intersect += 1
            if not good:
                break
            recall = intersect / len(good)
            precision = intersect / (j + 1)
            ap += (recall - old_recall) * (old_precision + precision) / 2
            old_recall, old_precision = recall, precision
            j += 1
            if intersect == len(good):
                break
        cmc = (cmc + [cmc[-1]] * max_rank)[:max_rank]
        rows.append(cmc)
        aps.append(ap)
    return np.mean(rows, axis=0), float(np.mean(aps))


def random_case(seed, num_q=12, num_g=40):
    """Small case with many ties, same-camera positives, junk (-1) and distractors (0), in the gallery
    and among the queries."""
    rng = np.random.default_rng(seed)
    dist = rng.integers(0, 5, size=(num_q, num_g)).astype(np.float64)  # few values: many ties
    # pids 6, 7 are not in the gallery: skipped queries; so are pid 0 and -1 queries (a distractor or
    # junk tracklet as the query), although the gallery holds those pids: they match nothing
    qp = rng.integers(-1, 8, size=num_q)
    gp = rng.integers(-1, 6, size=num_g)
    qc = rng.integers(1, 4, size=num_q)
    gc = rng.integers(1, 4, size=num_g)
    return dist, qp, gp, qc, gc


@pytest.mark.parametrize("seed", range(8))
def test_common_matches_brute_force(seed):
    dist, qp, gp, qc, gc = random_case(seed)
    m = cmc_map(dist, qp, gp, qc, gc, max_rank=20, return_details=True)
    cmc, mAP, skipped = brute_common(dist, qp, gp, qc, gc, 20)
    np.testing.assert_allclose(m.cmc, cmc)
    assert m.mAP == pytest.approx(mAP)
    assert m.num_skipped == skipped
    assert m.num_valid + m.num_skipped == len(qp)


@pytest.mark.parametrize("seed", range(8))
def test_official_matches_matlab_loop(seed):
    dist, qp, gp, qc, gc = random_case(seed)
    cmc, mAP = cmc_map_official(dist, qp, gp, qc, gc, max_rank=20)
    ref_cmc, ref_map = brute_official(dist, qp, gp, qc, gc, 20)
    np.testing.assert_allclose(cmc, ref_cmc)
    assert mAP == pytest.approx(ref_map)


def test_chunking_does_not_change_results():
    dist, qp, gp, qc, gc = random_case(3, num_q=37, num_g=50)
    a = evaluate_rankings(dist, qp, gp, qc, gc, chunk=5)
    b = evaluate_rankings(dist, qp, gp, qc, gc, chunk=1000)
    np.testing.assert_array_equal(a.cmc, b.cmc)
    np.testing.assert_array_equal(a.first_hit, b.first_hit)
    assert a.mAP == b.mAP


# One query (pid 1, camera 1) and a gallery given in increasing distance:
#   g0 pid 2 (wrong), g1 pid 1 cam 1 (same camera: ignored), g2 pid 1 cam 2 (correct),
#   g3 pid 0 (distractor: wrong), g4 pid -1 (junk: ignored), g5 pid 1 cam 3 (correct).
# Kept ranking: wrong, correct (rank 2), distractor, correct (rank 4).
HAND = dict(distmat=np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]), q_pids=[1], q_camids=[1],
            g_pids=[2, 1, 1, 0, -1, 1], g_camids=[1, 1, 2, 3, 2, 3])


def test_hand_computed_common():
    m = cmc_map(**HAND, max_rank=5, return_details=True)
    np.testing.assert_allclose(m.cmc, [0, 1, 1, 1, 1])
    assert m.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)   # precision at the two hits
    assert m.first_hit.tolist() == [2]


def test_hand_computed_official_trapezoid():
    cmc, mAP = cmc_map_official(**HAND, max_rank=5)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1, 1])
    # hit 1 at n=2: (0/1 + 1/2)/2 ; hit 2 at n=4: (1/3 + 2/4)/2 ; mean over the 2 good
    assert mAP == pytest.approx(((0 + 1 / 2) / 2 + (1 / 3 + 1 / 2) / 2) / 2)
    assert mAP == pytest.approx(1 / 3)


def test_match_flags_hand_case():
    order = np.argsort(HAND["distmat"], axis=1, kind="stable")
    flags = match_flags(order, HAND["q_pids"], HAND["g_pids"], HAND["q_camids"], HAND["g_camids"])
    assert flags.tolist() == [[FLAG_WRONG, FLAG_IGNORED, FLAG_CORRECT, FLAG_DISTRACTOR,
                               FLAG_IGNORED, FLAG_CORRECT]]


def test_ties_broken_by_gallery_index():
    # Two gallery entries at the same distance: the wrong one (index 0) comes first.
    m = cmc_map(np.zeros((1, 2)), [1], [2, 1], [1], [2, 2], max_rank=2, return_details=True)
    assert m.first_hit.tolist() == [2]
    m = cmc_map(np.zeros((1, 2)), [1], [1, 2], [1], [2, 2], max_rank=2, return_details=True)
    assert m.first_hit.tolist() == [1]


def test_skipped_queries_counted_and_excluded():
    # Query 0 has a correct match at rank 1; query 1's only same-pid entry is in its own camera.
    dist = np.array([[0.1, 0.9], [0.1, 0.9]])
    m = cmc_map(dist, [1, 2], [1, 2], [1, 2], [2, 2], max_rank=2, return_details=True)
    assert (m.num_valid, m.num_skipped, m.num_no_match) == (1, 1, 1)
    np.testing.assert_allclose(m.cmc, [1, 1])   # the skipped query does not pull it down
    assert m.mAP == 1.0
    assert np.isnan(m.ap[1]) and m.first_hit[1] == 0
    # The official convention keeps it as a zero row with AP 0.
    o = cmc_map_official(dist, [1, 2], [1, 2], [1, 2], [2, 2], max_rank=2, return_details=True)
    assert (o.num_valid, o.num_skipped, o.num_no_match) == (2, 0, 1)
    np.testing.assert_allclose(o.cmc, [0.5, 0.5])
    assert o.mAP == 0.5


def test_no_correct_match_anywhere_raises():
    with pytest.raises(ValueError, match="no query"):
        cmc_map(np.zeros((1, 2)), [1], [2, 3], [1], [1, 2])


def test_official_differs_when_queries_are_in_the_gallery():
    # Queries A (pid 1, cam 1) and B (pid 1, cam 2); other test tracklets C (pid 1, cam 3), D (pid 2).
    # Distances from query A: A 0.0, B 0.5, C 0.2, D 0.1.
    # Common: gallery = {C, D} -> D wrong, C correct at rank 2: AP = 1/2.
    m = cmc_map(np.array([[0.2, 0.1]]), [1], [1, 2], [1], [3, 2], max_rank=3, return_details=True)
    assert m.mAP == pytest.approx(0.5)
    np.testing.assert_allclose(m.cmc, [0, 1, 1])
    # Official: gallery = {A, B, C, D}. A itself is junk (same pid, same camera) and does not
    # count as a rank-1 hit; B becomes a second correct match (rank 3 after removing A).
    o = cmc_map_official(np.array([[0.0, 0.5, 0.2, 0.1]]), [1], [1, 1, 1, 2], [1], [1, 2, 3, 2],
                         max_rank=3, return_details=True)
    np.testing.assert_allclose(o.cmc, [0, 1, 1])
    assert o.mAP == pytest.approx(((0 + 1 / 2) / 2 + (1 / 2 + 2 / 3) / 2) / 2)   # 5/12
    assert o.mAP != pytest.approx(m.mAP)


@pytest.mark.parametrize("seed", range(4))
def test_trapezoid_never_above_step_ap(seed):
    dist, qp, gp, qc, gc = random_case(seed + 100)
    common = evaluate_rankings(dist, qp, gp, qc, gc, "common")
    official = evaluate_rankings(dist, qp, gp, qc, gc, "official")
    v = common.valid
    assert np.all(official.ap[v] <= common.ap[v] + 1e-12)
    np.testing.assert_array_equal(official.first_hit, common.first_hit)


def test_perfect_ranking_gives_ones_in_both_conventions():
    # Correct matches first (other camera), then wrong ones: CMC = 1 and AP = 1 either way.
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    args = ([1], [1, 1, 2, 3], [1], [2, 3, 2, 2])
    for fn in (cmc_map, cmc_map_official):
        cmc, mAP = fn(dist, *args, max_rank=4)
        np.testing.assert_allclose(cmc, 1.0)
        assert mAP == pytest.approx(1.0)


def test_evaluate_order_equals_distance_sort_and_accepts_torch():
    dist, qp, gp, qc, gc = random_case(7)
    order = np.argsort(dist, axis=1, kind="stable")
    a = evaluate_order(order, qp, gp, qc, gc)
    b = evaluate_rankings(torch.from_numpy(dist), torch.from_numpy(qp), torch.from_numpy(gp),
                          torch.from_numpy(qc), torch.from_numpy(gc))
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert a.mAP == b.mAP


def test_max_rank_beyond_gallery_and_bad_inputs():
    cmc, _ = cmc_map(np.array([[0.3, 0.1]]), [1], [1, 2], [1], [2, 2], max_rank=5)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="convention"):
        evaluate_rankings(np.zeros((1, 2)), [1], [1, 2], [1], [2, 2], convention="matlab")
    with pytest.raises(ValueError, match="gallery"):
        cmc_map(np.zeros((1, 3)), [1], [1, 2], [1], [2, 2])
