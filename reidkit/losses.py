"""Training losses: triplet loss with hard mining on F(x) and binary cross-entropy on M (Sec. 3.1, 4.2).

The paper trains F with a triplet loss [24] with hard negative mining and M as a binary
"same person / different people" classifier. Inside a P identities × K tracklets batch we use
the batch-hard form (hardest positive and hardest negative per anchor) and draw M's pairs from
the same batch: every positive pair plus as many negative pairs, a share of them the hardest
(camera-balanced) and the rest random (``mine_pairs`` states the rule).

Both run in float32 with autocast off (under bf16 autocast ``x @ x.T`` would be recast to bf16,
a resolution of ~0.09 near 0 against a margin of 0.3, and ties in the hardness order would
favour low batch indices), and without host syncs: nothing reads a device value to decide a
shape or a branch. The pair counts follow from the batch's pids and cameras, which the loader
knows on the host (``mine_pairs`` takes them there), so a training step never waits for the GPU.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from reidkit.models.similarity import feature_distance_matrix

# F of Eq. 2 between every two samples of a batch: feature_distance_matrix with this floor under
# the squared distance, which keeps sqrt's gradient finite on the diagonal
_MIN_SQUARE = 1e-12


def batch_hard_triplet(features: torch.Tensor, pids: torch.Tensor, margin: float | None = 0.3) -> torch.Tensor:
    """mean over anchors a of max(0, margin + max_p d(a, p) − min_n d(a, n)) on normalised features.

    ``margin=None`` is the soft-margin form log(1 + exp(max_p d(a, p) − min_n d(a, n)))
    (Hermans et al., 2017): never exactly 0, so a triplet that already satisfies a margin keeps
    pulling its positive in and pushing its negative away, with a weight that decays smoothly.

    p ranges over the other samples with the anchor's pid, n over samples with another pid.
    Anchors with no positive or no negative in the batch are left out (weight 0); if none is
    left the loss is 0, still connected to the graph. float32, autocast off, no host sync.
    """
    with _fp32(features.device):
        dist = feature_distance_matrix(features.float(), min_square=_MIN_SQUARE)
        pids = pids.to(features.device)
        same = pids[:, None] == pids[None, :]
        eye = torch.eye(len(pids), dtype=torch.bool, device=features.device)
        pos, neg = same & ~eye, ~same
        valid = pos.any(1) & neg.any(1)
        hardest_pos = dist.masked_fill(~pos, float("-inf")).amax(1)
        hardest_neg = dist.masked_fill(~neg, float("inf")).amin(1)
        gap = torch.where(valid, hardest_pos - hardest_neg, 0.0)  # ±inf of invalid anchors never enter
        per_anchor = F.softplus(gap) if margin is None else F.relu(margin + gap)
        weight = valid.float()
        return (per_anchor * weight).sum() / weight.sum().clamp_min(1.0)


def _fp32(device: torch.device):
    """Autocast off on ``device`` (a no-op where autocast does not exist, e.g. the meta device)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _host(values) -> np.ndarray:
    """pids/camids as a host array (a CUDA tensor is copied, which waits for the GPU: pass host ones)."""
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def _true_first(mask: torch.Tensor) -> torch.Tensor:
    """Positions of ``mask``'s True entries in order, then of its False ones: a stable sort, so
    the caller slices a count it knows on the host instead of asking the device (``nonzero``)."""
    return torch.sort((~mask).to(torch.uint8), stable=True).indices


@torch.no_grad()
def mine_pairs(
    features: torch.Tensor, pids, generator: torch.Generator | None = None,
    camids=None, hard_fraction: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs for training M: all positive pairs, and as many negatives, ``hard_fraction`` of them
    the hardest (camera-balanced like the positives, given ``camids``), the rest random.

    With k = min(#positive pairs, #negative pairs) and h = ⌈k · ``hard_fraction``⌉, in order:

    1. positives (``_pairs_by_identity``): every pair i < j of one pid; when the batch has fewer
       negative pairs than positive ones (never a P×K batch with P ≥ 2), k of them drawn at
       random (``generator``), so the two classes are always balanced;
    2. hard negatives (``_hardest_negatives``): the h pairs of different pids with the smallest
       feature distance (normalised features, float32; ties broken by index). With ``camids``
       they are *camera-balanced*: as many cross-camera negatives, in proportion, as the positives
       have cross-camera pairs (⌈#cross-camera positives · h / k⌉, the hardest of each kind),
       topped up in hardness order from the other kind when one runs short;
    3. random negatives (``_random_negatives``): the other k − h drawn uniformly (``generator``)
       from the negatives step 2 left.

    Why camera balance: without it, a P×K batch's positives are mostly cross-camera while the
    hardest negatives are mostly same-camera (shared background and light), and M learns "another
    camera means the same person", which fails at test time where every true match is in another
    camera (measured on the synthetic benchmark: cross-camera negatives scored 0.51, same-camera
    ones 0.19). Why random ones: M trained on hard negatives alone never sees an easy one and may
    score large differences as "same person".

    Returns ``(idx_a, idx_b, labels)`` on the features' device: long, long, float (1 = same
    person). ``pids``/``camids`` may be host arrays or tensors; every count (pairs of each kind,
    quotas) is computed from them on the host, and the device only ranks distances, so the
    training step never waits for the GPU. ``generator`` lives on the features' device (the CPU
    generator on CPU); None uses the global one.
    """
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
    device = features.device
    pos_i, pos_j, neg_i, neg_j = _pairs_by_identity(_host(pids))
    k = min(len(pos_i), len(neg_i))
    a_pos, b_pos = _to_device(pos_i, device), _to_device(pos_j, device)
    if k < len(pos_i):  # step 1: fewer negatives than positives
        keep = torch.randperm(len(pos_i), generator=generator, device=device)[:k]
        a_pos, b_pos = a_pos[keep], b_pos[keep]
        kept = keep.cpu().numpy()  # the one host read, in this degenerate case only
        pos_i, pos_j = pos_i[kept], pos_j[kept]
    a_neg, b_neg = _to_device(neg_i, device), _to_device(neg_j, device)
    if k < len(neg_i):
        n_hard = math.ceil(k * hard_fraction)
        balance = None
        if camids is not None:
            cams = _host(camids)
            quota_cross = math.ceil(int((cams[pos_i] != cams[pos_j]).sum()) * n_hard / k) if k else 0
            balance = (cams[neg_i] != cams[neg_j], quota_cross)
        chosen = _hardest_negatives(features, a_neg, b_neg, n_hard, balance)  # step 2
        if n_hard < k:  # step 3
            chosen = torch.cat([chosen, _random_negatives(chosen, len(neg_i), k - n_hard, generator)])
        a_neg, b_neg = a_neg[chosen], b_neg[chosen]
    labels = torch.cat([torch.ones(k, device=device), torch.zeros(k, device=device)])
    return torch.cat([a_pos, a_neg]), torch.cat([b_pos, b_neg]), labels


def _pairs_by_identity(pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every pair i < j of the batch, split by pid: (pos_i, pos_j, neg_i, neg_j) host arrays."""
    i, j = np.triu_indices(len(pids), k=1)
    same = pids[i] == pids[j]
    return i[same], j[same], i[~same], j[~same]


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host index array to the device without waiting (pageable copies are staged)."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device, non_blocking=True)


def _hardest_negatives(features: torch.Tensor, a_neg: torch.Tensor, b_neg: torch.Tensor, n_hard: int,
                       balance: tuple[np.ndarray, int] | None = None) -> torch.Tensor:
    """Indices into the negative pairs (a_neg[m], b_neg[m]) of the ``n_hard`` closest in feature
    distance, closest first. ``balance`` = (cross-camera flag of each negative, quota): at most
    ``quota`` cross-camera and ``n_hard − quota`` same-camera ones, the hardest of each kind,
    topped up from the other kind when one runs short."""
    device = features.device
    with _fp32(device):
        dist = feature_distance_matrix(features.float(), min_square=_MIN_SQUARE)[a_neg, b_neg]
    order = torch.sort(dist, stable=True).indices  # hardest first
    if balance is None:
        return order[:n_hard]
    cross_neg, quota_cross = balance
    cross = torch.from_numpy(cross_neg).to(device, non_blocking=True)[order]
    # rank of each negative among those of its kind, in hardness order
    rank = torch.where(cross, torch.cumsum(cross, 0), torch.cumsum(~cross, 0)) - 1
    take = torch.where(cross, rank < quota_cross, rank < n_hard - quota_cross)
    # when one kind runs short, take holds fewer than n_hard: the stable sort puts the
    # rest in hardness order right after, so the slice tops up with the hardest of the rest
    return order[_true_first(take)[:n_hard]]


def _random_negatives(chosen: torch.Tensor, n_neg: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """``count`` indices drawn uniformly (``generator``) among the ``n_neg`` negatives not in
    ``chosen`` (listed in index order before the draw)."""
    picked = torch.zeros(n_neg, dtype=torch.bool, device=chosen.device).index_fill_(0, chosen, True)
    left = _true_first(~picked)[: n_neg - len(chosen)]
    pick = torch.randperm(len(left), generator=generator, device=chosen.device)[:count]
    return left[pick]


def pair_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of M's logits against same-person labels (mean over pairs)."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
