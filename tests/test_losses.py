"""Losses against brute-force Python references."""

import itertools
import math

import pytest
import torch

from reidkit.losses import batch_hard_triplet, mine_pairs, pair_bce


def _dist(a, b):
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return math.sqrt(sum((x / na - y / nb) ** 2 for x, y in zip(a, b)))


def _triplet_reference(feats, pids, margin):
    rows = feats.tolist()
    losses = []
    for a, pa in enumerate(pids):
        pos = [_dist(rows[a], rows[p]) for p, pp in enumerate(pids) if pp == pa and p != a]
        neg = [_dist(rows[a], rows[n]) for n, pn in enumerate(pids) if pn != pa]
        if pos and neg:
            losses.append(max(0.0, margin + max(pos) - min(neg)))
    return sum(losses) / len(losses) if losses else 0.0


def test_batch_hard_triplet_matches_brute_force():
    torch.manual_seed(0)
    for pids in ([1, 1, 2, 2, 3, 3], [1, 1, 1, 2, 2, 5], [4, 4, 7, 9]):  # the last has anchors with no positive
        feats = torch.randn(len(pids), 5)
        for margin in (0.3, 1.5):
            got = batch_hard_triplet(feats, torch.tensor(pids), margin=margin)
            assert math.isclose(got.item(), _triplet_reference(feats, pids, margin), rel_tol=1e-5, abs_tol=1e-6)


def test_soft_margin_triplet_matches_brute_force_and_never_stops_pulling():
    torch.manual_seed(3)
    pids = [1, 1, 2, 2, 3, 3]
    feats = torch.randn(len(pids), 5)
    x = torch.nn.functional.normalize(feats, dim=1)
    dist = torch.cdist(x.double(), x.double())
    expected = []
    for a, pa in enumerate(pids):
        pos = max(dist[a, p] for p, pp in enumerate(pids) if pp == pa and p != a)
        neg = min(dist[a, n] for n, pn in enumerate(pids) if pn != pa)
        expected.append(math.log1p(math.exp(pos - neg)))
    got = batch_hard_triplet(feats, torch.tensor(pids), margin=None)
    assert math.isclose(got.item(), sum(expected) / len(expected), rel_tol=1e-5)
    # far-apart identities: the hard margin is exactly 0 (no gradient), the soft one still pulls
    easy = torch.tensor([[1.0, 0, 0], [0.99, 0.1, 0], [0, 1.0, 0], [0, 0.99, 0.1]], requires_grad=True)
    ids = torch.tensor([1, 1, 2, 2])
    assert batch_hard_triplet(easy, ids, margin=0.3).item() == 0.0
    batch_hard_triplet(easy, ids, margin=None).backward()
    assert easy.grad.abs().sum() > 0


def test_triplet_is_scale_invariant_and_differentiable():
    torch.manual_seed(1)
    feats = torch.randn(6, 4, requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = batch_hard_triplet(feats, pids)
    assert torch.allclose(loss, batch_hard_triplet(feats * 7.0, pids))  # features are L2-normalised
    loss.backward()
    assert torch.isfinite(feats.grad).all()


def test_triplet_without_valid_anchor_is_zero_with_graph():
    feats = torch.randn(3, 4, requires_grad=True)
    loss = batch_hard_triplet(feats, torch.tensor([1, 2, 3]))  # nobody has a positive
    assert loss.item() == 0.0
    loss.backward()


def test_mine_pairs_all_positives_and_hardest_negatives():
    torch.manual_seed(2)
    pids = torch.tensor([1, 1, 2, 2, 3, 3, 3])
    feats = torch.randn(7, 6)
    idx_a, idx_b, labels = mine_pairs(feats, pids)
    pos = {(a, b) for a, b, y in zip(idx_a.tolist(), idx_b.tolist(), labels.tolist()) if y == 1}
    neg = [(a, b) for a, b, y in zip(idx_a.tolist(), idx_b.tolist(), labels.tolist()) if y == 0]
    expected_pos = {(i, j) for i, j in itertools.combinations(range(7), 2) if pids[i] == pids[j]}
    assert pos == expected_pos and len(neg) == len(pos) == 5  # balanced
    assert all(pids[a] != pids[b] and a < b for a, b in neg)
    # brute force: the chosen negatives are the len(pos) closest different-pid pairs
    all_neg = sorted(
        (_dist(feats[i].tolist(), feats[j].tolist()), i, j)
        for i, j in itertools.combinations(range(7), 2) if pids[i] != pids[j]
    )
    assert set(neg) == {(i, j) for _, i, j in all_neg[: len(pos)]}


def test_mine_pairs_balances_when_negatives_are_few():
    pids = torch.tensor([1, 1, 1, 1, 2])  # 6 positive pairs, 4 negative pairs
    idx_a, idx_b, labels = mine_pairs(torch.randn(5, 3), pids, generator=torch.Generator().manual_seed(0))
    assert int(labels.sum()) == 4 and int((labels == 0).sum()) == 4
    assert all((pids[a] == pids[b]).item() == bool(y) for a, b, y in zip(idx_a, idx_b, labels))


def _brute_force_camera_balanced(feats, pids, camids, hard_fraction=1.0):
    """The rule of mine_pairs(camids=...) written as loops: of the ceil(k · hard_fraction) hard
    negatives, the cross-camera share of the positives (rounded up) cross-camera, the rest
    same-camera, per kind the hardest first; topped up with the hardest of the rest."""
    pairs = list(itertools.combinations(range(len(pids)), 2))
    pos = [(i, j) for i, j in pairs if pids[i] == pids[j]]
    negs = sorted((_dist(feats[i].tolist(), feats[j].tolist()), i, j) for i, j in pairs if pids[i] != pids[j])
    n_hard = math.ceil(len(pos) * hard_fraction)
    quota = {True: math.ceil(sum(camids[i] != camids[j] for i, j in pos) * n_hard / len(pos))}
    quota[False] = n_hard - quota[True]
    chosen = []
    for _, i, j in negs:
        kind = bool(camids[i] != camids[j])
        if quota[kind] > 0:
            quota[kind] -= 1
            chosen.append((i, j))
    for _, i, j in negs:  # top up when one kind ran short
        if len(chosen) < n_hard and (i, j) not in chosen:
            chosen.append((i, j))
    return set(chosen)


@pytest.mark.parametrize("seed", range(6))
def test_mine_pairs_camera_balanced_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    pids = torch.tensor([1, 1, 1, 2, 2, 2, 3, 3, 4, 4])
    camids = torch.randint(1, 4, (10,), generator=g)
    feats = torch.randn(10, 5, generator=g)
    idx_a, idx_b, labels = mine_pairs(feats, pids, camids=camids)
    pos = [(a, b) for a, b, y in zip(idx_a.tolist(), idx_b.tolist(), labels.tolist()) if y == 1]
    neg = [(a, b) for a, b, y in zip(idx_a.tolist(), idx_b.tolist(), labels.tolist()) if y == 0]
    assert len(neg) == len(pos) == 8 and len(set(neg)) == 8
    assert set(neg) == _brute_force_camera_balanced(feats, pids.tolist(), camids.tolist())


def test_mine_pairs_camera_quota_with_random_negatives_matches_brute_force():
    """What every config trains with: cameras and hard_negative_fraction < 1. The hard part (the
    first ceil(k · fraction) negatives returned) follows the camera quota, rounded up."""
    pids = torch.tensor([1, 1, 1, 2, 2, 2, 3, 3, 4, 4])  # k = 8 positive pairs
    fractional = 0
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        camids = torch.randint(1, 4, (10,), generator=g)
        feats = torch.randn(10, 5, generator=g)
        for fraction in (0.3, 0.5, 0.7):
            idx_a, idx_b, labels = mine_pairs(feats, pids, torch.Generator().manual_seed(seed), camids, fraction)
            neg = [(a, b) for a, b, y in zip(idx_a.tolist(), idx_b.tolist(), labels.tolist()) if y == 0]
            n_hard = math.ceil(8 * fraction)
            assert len(neg) == 8 and len(set(neg)) == 8
            assert set(neg[:n_hard]) == _brute_force_camera_balanced(feats, pids.tolist(), camids.tolist(), fraction)
            cross_pos = sum(camids[i] != camids[j] for i, j in itertools.combinations(range(10), 2) if pids[i] == pids[j])
            fractional += (cross_pos * n_hard) % 8 != 0
    assert fractional > 0  # cases where rounding the quota down would pick another set


def test_mine_pairs_camera_balanced_tops_up_when_one_kind_runs_short():
    """One cross-camera and one same-camera positive ask for one negative of each kind, but every
    negative pair is cross-camera: the two hardest of them, so the classes stay balanced."""
    pids, camids = torch.tensor([1, 1, 2, 2]), torch.tensor([1, 2, 3, 3])
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.2, 1.0]])  # (0,2), (1,3) the hardest
    idx_a, idx_b, labels = mine_pairs(feats, pids, camids=camids)
    neg = {(a, b) for a, b, y in zip(idx_a.tolist(), idx_b.tolist(), labels.tolist()) if y == 0}
    assert labels.tolist() == [1, 1, 0, 0] and neg == {(0, 2), (1, 3)}


def test_mine_pairs_camera_balanced_removes_the_camera_shortcut():
    # all positives cross-camera; the closest negatives are same-camera: plain hardest mining
    # picks only same-camera negatives, the camera-balanced rule only cross-camera ones
    pids = torch.tensor([1, 1, 2, 2, 3, 3])
    camids = torch.tensor([1, 2, 1, 2, 1, 2])
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05], [0.05, 1.0], [1.0, 0.1], [0.1, 1.0]])
    for cams, expect_cross in ((None, 0), (camids, 3)):
        idx_a, idx_b, labels = mine_pairs(feats, pids, camids=cams)
        neg = labels == 0
        assert int((camids[idx_a[neg]] != camids[idx_b[neg]]).sum()) == expect_cross


def test_mine_pairs_without_positives_returns_no_pairs():
    pids, camids = torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 1, 2])
    for kwargs in ({}, {"camids": camids}, {"camids": camids, "hard_fraction": 0.5}):
        idx_a, idx_b, labels = mine_pairs(torch.randn(4, 3), pids, **kwargs)
        assert len(idx_a) == len(idx_b) == len(labels) == 0


def test_mine_pairs_hard_fraction_mixes_hardest_and_random_negatives():
    g = torch.Generator().manual_seed(0)
    pids = torch.arange(12) // 4  # 3 ids × 4: 18 positive pairs, 48 negative pairs
    feats = torch.randn(12, 6, generator=g)
    idx_a, idx_b, labels = mine_pairs(feats, pids, generator=torch.Generator().manual_seed(1), hard_fraction=0.5)
    neg = [(a, b) for a, b, y in zip(idx_a.tolist(), idx_b.tolist(), labels.tolist()) if y == 0]
    assert len(neg) == 18 and len(set(neg)) == 18 and all(pids[a] != pids[b] for a, b in neg)
    ranked = sorted((_dist(feats[i].tolist(), feats[j].tolist()), i, j)
                    for i, j in itertools.combinations(range(12), 2) if pids[i] != pids[j])
    assert {(i, j) for _, i, j in ranked[:9]} <= set(neg)  # the 9 hardest are always in
    assert not set(neg) <= {(i, j) for _, i, j in ranked[:18]}  # and some are not among the hardest
    with pytest.raises(ValueError, match="hard_fraction"):
        mine_pairs(feats, pids, hard_fraction=1.5)


def test_pair_bce():
    logits = torch.tensor([0.0, 2.0, -1.0])
    labels = torch.tensor([1.0, 1.0, 0.0])
    ref = -(math.log(0.5) + math.log(1 / (1 + math.exp(-2))) + math.log(1 - 1 / (1 + math.exp(1)))) / 3
    assert math.isclose(pair_bce(logits, labels).item(), ref, rel_tol=1e-6)


def _pk_batch(P=8, K=4, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    pids = torch.arange(P).repeat_interleave(K) + 1
    return torch.randn(P * K, dim, generator=g), pids, torch.randint(1, 4, (P * K,), generator=g)


def test_losses_never_read_a_device_value():
    """On the meta device any read of a value (``int(t)``, ``if t.any()``, ``nonzero``) raises; both
    losses run there, so no host sync can hide in them (on a GPU each would drain the queue)."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        bool(torch.ones(2, device="meta").any())  # the trap works
    feats, pids, cams = _pk_batch()
    meta = torch.empty_like(feats, device="meta").requires_grad_()
    for margin in (0.3, None):
        batch_hard_triplet(meta, pids.to("meta"), margin).backward()
    for camids in (None, cams.numpy()):
        for fraction in (1.0, 0.5, 0.0):
            idx_a, idx_b, labels = mine_pairs(meta.detach(), pids.numpy(), None, camids, fraction)
            assert idx_a.device.type == "meta" and len(idx_a) == len(labels) == 2 * 8 * 6


def test_losses_run_in_float32_under_bf16_autocast():
    # features 1e-3 apart: bf16 would round their distances together and reorder the hardest ones
    feats, pids, cams = _pk_batch(seed=4)
    feats = torch.nn.functional.normalize(feats, dim=1) + 1e-3 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(5))
    plain_loss = batch_hard_triplet(feats, pids, None)
    plain_pairs = mine_pairs(feats, pids, torch.Generator().manual_seed(0), cams, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = batch_hard_triplet(feats, pids, None)
        pairs = mine_pairs(feats, pids, torch.Generator().manual_seed(0), cams, 0.5)
    assert loss.dtype == torch.float32 and torch.equal(loss, plain_loss)
    assert all(torch.equal(a, b) for a, b in zip(pairs, plain_pairs))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by benchmarks/gpu_check)")
def test_losses_do_not_sync_on_cuda():
    feats, pids, cams = _pk_batch()
    feats = feats.cuda().requires_grad_()
    gen = torch.Generator(device="cuda").manual_seed(0)
    pids_cuda = pids.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batch_hard_triplet(feats, pids_cuda, None).backward()
        mine_pairs(feats.detach(), pids.numpy(), gen, cams.numpy(), 0.5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
