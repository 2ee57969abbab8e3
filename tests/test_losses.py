"""Losses against brute-force Python references."""

import itertools
import math

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


def test_pair_bce():
    logits = torch.tensor([0.0, 2.0, -1.0])
    labels = torch.tensor([1.0, 1.0, 0.0])
    ref = -(math.log(0.5) + math.log(1 / (1 + math.exp(-2))) + math.log(1 - 1 / (1 + math.exp(1)))) / 3
    assert math.isclose(pair_bce(logits, labels).item(), ref, rel_tol=1e-6)
