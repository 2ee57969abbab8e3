"""Eq. 2: how two tracklets a, b are compared.

    S(a, b) = 1 / (1 + F(a, b)) + λ · M(a, b)

F is the Euclidean distance of the L2-normalised features F(x) (lower = more alike), M = σ of the
metric branch's logit (the probability "same person"), λ = ``ModelConfig.lam``. F is symmetric,
so S(a, b) = S(b, a) whenever the logits are; M itself is not (see ``spatial``), so swapping the
clips changes S only through M.

F comes in two forms that differ in the last bits, each kept where its numbers are used:

- :func:`feature_distance` — row by row, ``‖â − b̂‖`` of the explicit difference: S of a batch of
  pairs (evaluation re-scoring, attributions, the widgets).
- :func:`feature_distance_matrix` — every query × gallery pair with one matmul,
  ``‖q̂ − ĝ‖² = 2 − 2 q̂·ĝ`` clamped at ``min_square`` before the square root: the feature ranking
  (``min_square=0``) and the training losses (``min_square=1e-12``, which keeps sqrt's gradient
  finite where two features coincide).

:func:`pair_score` is the one score a pair is ranked by, higher = more alike (``JSTRNN.pair_score``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SCORES", "SCORE_NAMES", "feature_distance", "feature_distance_matrix", "metric_score",
           "similarity", "pair_score"]

# kinds of pair score: "distance" −F, "metric" M, "logit" M's logit (does not saturate), "similarity" S
SCORES = ("distance", "metric", "logit", "similarity")
SCORE_NAMES = {"distance": "−F", "metric": "M", "logit": "logit of M", "similarity": "S (Eq. 2)"}


def feature_distance(feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
    """F of Eq. 2 row by row: ``‖a/‖a‖ − b/‖b‖‖`` for each row pair → (N,)."""
    return (F.normalize(feat_a, dim=-1) - F.normalize(feat_b, dim=-1)).norm(dim=-1)


def feature_distance_matrix(query: torch.Tensor, gallery: torch.Tensor | None = None,
                            min_square: float = 0.0) -> torch.Tensor:
    """F of Eq. 2 for every query × gallery pair → (Q, G), in float32; ``gallery=None``: query × query.

    Uses ``‖q̂ − ĝ‖² = 2 − 2 q̂·ĝ`` for unit vectors, clamped at ``min_square`` (rounding can make
    it slightly negative; ``min_square=1e-12`` also keeps the gradient of sqrt finite at 0).
    """
    q = F.normalize(query.float(), dim=-1)
    g = q if gallery is None else F.normalize(gallery.float(), dim=-1)
    return (2.0 - 2.0 * q @ g.T).clamp_min(min_square).sqrt()


def metric_score(logits: torch.Tensor) -> torch.Tensor:
    """M of Eq. 2: σ of the metric branch's logits, the probability "same person"."""
    return torch.sigmoid(logits)


def similarity(feat_a: torch.Tensor, feat_b: torch.Tensor, logits: torch.Tensor | None = None,
               lam: float = 1.0) -> torch.Tensor:
    """S of Eq. 2 row by row: ``1 / (1 + F(a, b)) + λ·M``; without logits ``1 / (1 + F)``."""
    s = 1.0 / (1.0 + feature_distance(feat_a, feat_b))
    return s if logits is None else s + lam * metric_score(logits)


def pair_score(kind: str, feat_a: torch.Tensor | None, feat_b: torch.Tensor | None,
               logits: torch.Tensor | None = None, lam: float = 1.0) -> torch.Tensor:
    """A pair's score row by row, higher = more alike: ``kind`` "distance" → −F, "metric" → M,
    "logit" → M's logit, "similarity" → S (Eq. 2, weight ``lam``). Features are unused by
    "metric"/"logit" (may be None); logits are needed by all but "distance"."""
    if kind not in SCORES:
        raise ValueError(f"unknown score {kind!r}; expected one of {SCORES}")
    if kind == "distance":
        return -feature_distance(feat_a, feat_b)
    if logits is None:
        raise ValueError(f"score {kind!r} needs the metric branch's logits")
    if kind == "logit":
        return logits
    if kind == "metric":
        return metric_score(logits)
    return similarity(feat_a, feat_b, logits, lam)
