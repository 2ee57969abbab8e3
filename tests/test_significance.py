"""reidkit.significance against brute-force loops over the same bootstrap draws, and the verdict rule."""

import numpy as np
import pytest

from reidkit.significance import Interval, describe, paired_bootstrap, variant_interval, verdict


def _brute_paired(a, b, n_boot, seed):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    samples = []
    for row in idx:
        samples.append(100 * (sum(a[i] for i in row) - sum(b[i] for i in row)) / len(row))
    return np.percentile(samples, [2.5, 97.5])


def _brute_variant(a, b, n_boot, seed):
    rng = np.random.default_rng(seed)
    sa = rng.integers(0, len(a), size=(n_boot, len(a)))
    sb = rng.integers(0, len(b), size=(n_boot, len(b)))
    q = rng.integers(0, len(a[0]), size=(n_boot, len(a[0])))
    samples = []
    for n in range(n_boot):
        ra = np.mean([np.mean([a[s][i] for i in q[n]]) for s in sa[n]])
        rb = np.mean([np.mean([b[s][i] for i in q[n]]) for s in sb[n]])
        samples.append(100 * (ra - rb))
    return np.percentile(samples, [2.5, 97.5])


def test_paired_bootstrap_matches_brute_force():
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 2, 40).astype(float), rng.integers(0, 2, 40).astype(float)
    got = paired_bootstrap(a, b, n_boot=300, seed=5)
    assert got.diff == pytest.approx(100 * (a.mean() - b.mean()))
    assert [got.low, got.high] == pytest.approx(list(_brute_paired(a, b, 300, 5)))


def test_variant_interval_matches_brute_force_with_unequal_seed_counts():
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 2, (3, 25)).astype(float), rng.integers(0, 2, (2, 25)).astype(float)
    got = variant_interval(a, b, n_boot=200, seed=9)
    assert got.diff == pytest.approx(100 * (a.mean() - b.mean()))
    assert [got.low, got.high] == pytest.approx(list(_brute_variant(a, b, 200, 9)))


def test_identical_outcomes_give_a_zero_interval_and_clear_gaps_hold():
    a = np.array([1, 0, 1, 1, 0] * 10, float)
    same = paired_bootstrap(a, a, n_boot=100)
    assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0) and verdict(same) == "inconclusive"
    better = variant_interval(np.ones((3, 50)), np.zeros((3, 50)), n_boot=100)
    assert (better.low, better.high) == (100.0, 100.0)
    assert verdict(better) == "holds" and verdict(better, claimed_sign=-1) == "reversed"


def test_seed_noise_widens_the_variant_interval():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 200).astype(float)
    steady = np.stack([base] * 3)
    noisy = np.stack([base, np.ones(200), np.zeros(200)])  # seeds far apart
    narrow = variant_interval(steady, steady, n_boot=500)
    wide = variant_interval(noisy, steady, n_boot=500)
    assert narrow.high - narrow.low == 0.0 and wide.high - wide.low > 20.0


def test_verdict_rule_and_description():
    assert verdict(Interval(3.0, 0.5, 6.0)) == "holds"
    assert verdict(Interval(-3.0, -6.0, -0.5)) == "reversed"
    assert verdict(Interval(1.0, -0.5, 3.0)) == "inconclusive"
    assert verdict(Interval(-3.0, -6.0, -0.5), claimed_sign=-1) == "holds"
    assert describe(Interval(5.9, -1.2, 12.8)) == "+5.9 points, 95 % interval [-1.2, +12.8]: inconclusive"


@pytest.mark.parametrize("a, b, match", [
    (np.ones(3), np.ones(4), "same queries"),
    (np.ones((2, 3)), np.ones((2, 4)), "same queries"),
    (np.array([]), np.array([]), "non-empty"),
])
def test_refusals(a, b, match):
    fn = paired_bootstrap if np.ndim(a) == 1 else variant_interval
    with pytest.raises(ValueError, match=match):
        fn(a, b)


def test_rank1_hits_of_a_result_or_of_its_per_query():
    from types import SimpleNamespace

    from reidkit.significance import rank1_hits

    pq = SimpleNamespace(first_hit=np.array([1, 3, 0, 1]), ap=np.array([1.0, 0.3, np.nan, 0.5]))
    expected = [1.0, 0.0, 1.0]  # the skipped query (AP NaN) is left out, as rank-1 leaves it out
    np.testing.assert_array_equal(rank1_hits(SimpleNamespace(per_query=pq)), expected)
    np.testing.assert_array_equal(rank1_hits(pq), expected)
    with pytest.raises(ValueError, match="per-query"):
        rank1_hits(SimpleNamespace(per_query=None))
