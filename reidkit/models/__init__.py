"""The joint spatial and temporal RNN model (Fig. 2) and its Table-2 ablations.

=============  ========================  =====================  ==================
variant        feature branch F(x)       metric branch M        ranks by
=============  ========================  =====================  ==================
``cnn``        mean of fc7 ("CNN")       —                      distance of F
``cnn_rnn``    LSTM, mean of outputs     —                      distance of F
``cnn_tam``    TemporalAttention (Eq.3)  —                      distance of F
``cnn_diff``   —                         DifferenceHead         M
``cnn_srm``    —                         SpatialRecurrentModel  M
``all``        TemporalAttention         SpatialRecurrentModel  S of Eq. 2
=============  ========================  =====================  ==================

One CaffeNet (``CaffeNet``) is shared by both branches (Fig. 2: "the weights of all
convolution layers are shared"). Clips are ``(N, T, 3, H, W)``; the CNN runs once on
``(N·T, 3, H, W)`` and its pool5 maps are kept, so M can be evaluated for any pairs of the
batch (or from cached pool5 maps at test time) without running the CNN again.

Metric-only variants have no F(x); their ``features`` are the time- and space-averaged pool5
descriptor, used only to shortlist candidates that M then re-scores.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .caffenet import CaffeNet, PretrainedWeightsError
from .config import ModelConfig
from .spatial import DIRECTIONS, DifferenceHead, SpatialRecurrentModel
from .temporal import AveragePooling, RecurrentPooling, TemporalAttention

__all__ = [
    "VARIANTS", "ModelConfig", "CaffeNet", "PretrainedWeightsError", "AveragePooling", "RecurrentPooling",
    "TemporalAttention", "DifferenceHead", "SpatialRecurrentModel", "DIRECTIONS", "JSTRNN", "FeatureOutput",
    "build_model", "feature_distance", "similarity", "pairwise_feature_similarity",
]

VARIANTS = ("cnn", "cnn_rnn", "cnn_tam", "cnn_diff", "cnn_srm", "all")
_FEATURE = {"cnn": "avg", "cnn_rnn": "rnn", "cnn_tam": "tam", "all": "tam"}
_METRIC = {"cnn_diff": "diff", "cnn_srm": "srm", "all": "srm"}


class FeatureOutput(NamedTuple):
    features: torch.Tensor  # (N, D): F(x), or the averaged pool5 descriptor for metric-only variants
    attention: torch.Tensor | None  # (N, T, T) TAM weights ω[:, t, i], None without TAM
    pool5: torch.Tensor  # (N, T, C, h, w)


def feature_distance(feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
    """F of Eq. 2: Euclidean distance of the L2-normalised features, row by row → (N,)."""
    return (F.normalize(feat_a, dim=-1) - F.normalize(feat_b, dim=-1)).norm(dim=-1)


def similarity(feat_a: torch.Tensor, feat_b: torch.Tensor, logits: torch.Tensor | None = None, lam: float = 1.0) -> torch.Tensor:
    """Eq. 2, row by row: S = 1 / (1 + F(a, b)) + λ·σ(logits); without logits S = 1 / (1 + F).

    F is symmetric, so S(a, b) = S(b, a) whenever the logits are; M itself is not (see
    ``spatial``), so swapping the clips changes S only through M.
    """
    s = 1.0 / (1.0 + feature_distance(feat_a, feat_b))
    return s if logits is None else s + lam * torch.sigmoid(logits)


def pairwise_feature_similarity(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """1 / (1 + F) for every query × gallery pair → (Q, G), the feature part of Eq. 2 for ranking."""
    q, g = F.normalize(query.float(), dim=-1), F.normalize(gallery.float(), dim=-1)
    # ‖q − g‖² = 2 − 2 q·g for unit vectors; clamp the rounding below zero
    dist = (2.0 - 2.0 * q @ g.T).clamp_min(0.0).sqrt()
    return 1.0 / (1.0 + dist)


class JSTRNN(nn.Module):
    """Joint spatial and temporal RNNs (Fig. 2) in one of the six ``VARIANTS`` (Table 2).

    - ``features(clips)`` → :class:`FeatureOutput` (one CNN pass; also ``forward``/``forward_train``).
    - ``metric(a, b)`` → logits (N,) of "same person"; ``a``/``b`` are clips (N, T, 3, H, W) or
      cached pool5 maps (N, T, C, h, w), told apart by the channel axis: 3 means frames
      (pool5 always has more channels, ``config.pool5_channels``).
    - ``similarity(feat_a, feat_b, logits=None)`` → S of Eq. 2 with the config's λ.
    """

    def __init__(self, variant: str, config: ModelConfig):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        self.variant, self.config = variant, config
        self.has_feature_branch = variant in _FEATURE
        self.has_metric_branch = variant in _METRIC
        self.ranking = "similarity" if variant == "all" else "metric" if self.has_metric_branch else "distance"
        c = config
        self.cnn = CaffeNet(c, with_fc=self.has_feature_branch)
        grid, channels = self.cnn.grid, self.cnn.out_channels
        kind = _FEATURE.get(variant)
        self.temporal = {
            "avg": lambda: AveragePooling(c.fc_dim),
            "rnn": lambda: RecurrentPooling(c.fc_dim, c.rnn_hidden),
            "tam": lambda: TemporalAttention(c.fc_dim, c.rnn_hidden, c.attention_dim, c.attention_temperature),
            None: lambda: None,
        }[kind]()
        kind = _METRIC.get(variant)
        self.head = {
            "diff": lambda: DifferenceHead(channels, c.seq_len, grid, c.srm_in, c.dropout),
            "srm": lambda: SpatialRecurrentModel(channels, c.seq_len, grid, c.srm_in, c.srm_hidden, c.srm_out, c.dropout),
            None: lambda: None,
        }[kind]()
        self.feature_dim = self.temporal.out_dim if self.temporal is not None else channels

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, ranking={self.ranking!r}"

    def pool5_and_fc7(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the CNN once on all frames: pool5 (N, T, C, h, w) and fc7 (N, T, D) or None."""
        n, t = clips.shape[:2]
        pool5, fc7 = self.cnn(clips.reshape(n * t, *clips.shape[2:]))  # torchreid-style (N·T, …)
        pool5 = pool5.reshape(n, t, *pool5.shape[1:])
        return pool5, None if fc7 is None else fc7.reshape(n, t, -1)

    def features(self, clips: torch.Tensor) -> FeatureOutput:
        """F(x) of Eq. 1 (or the pool5 descriptor), TAM weights ω and pool5, from one CNN pass."""
        pool5, fc7 = self.pool5_and_fc7(clips)
        if self.temporal is None:
            return FeatureOutput(pool5.mean(dim=(1, 3, 4)), None, pool5)
        feat, attention = self.temporal(fc7)
        return FeatureOutput(feat, attention, pool5)

    def forward(self, clips: torch.Tensor) -> FeatureOutput:
        return self.features(clips)

    forward_train = forward  # features, attention and pool5 from one CNN pass

    def _as_pool5(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"expected clips (N,T,3,H,W) or pool5 maps (N,T,C,h,w), got shape {tuple(x.shape)}")
        if x.shape[2] == 3:
            return self.pool5_and_fc7(x)[0]
        expected = (self.cnn.out_channels, *self.cnn.grid)
        if tuple(x.shape[2:]) != expected:
            raise ValueError(f"pool5 maps must be (N,T,{expected[0]},{expected[1]},{expected[2]}), got {tuple(x.shape)}")
        return x

    def metric(self, a: torch.Tensor, b: torch.Tensor, return_maps: bool = False):
        """Logits of M(a, b) (Sec. 3.3), row by row: a[k] is compared with b[k]."""
        if self.head is None:
            raise RuntimeError(f"variant {self.variant!r} has no metric branch (M); use a cnn_diff, cnn_srm or all model")
        if a.dim() == 5 and b.dim() == 5 and a.shape[2] == 3 and b.shape[2] == 3 and a.shape[1:] == b.shape[1:]:
            pool5 = self.pool5_and_fc7(torch.cat([a, b]))[0]  # one CNN pass for both sides
            pa, pb = pool5[: len(a)], pool5[len(a):]
        else:
            pa, pb = self._as_pool5(a), self._as_pool5(b)
        return self.head(pa, pb, return_maps=return_maps)

    def parameter_groups(self, cnn_lr: float, head_lr: float) -> list[dict]:
        """Optimizer groups: the CNN at ``cnn_lr``, the temporal model and metric head at ``head_lr``.

        ``train.cnn_lr_scale`` sets the ratio. With CaffeNet's LRN and fc dropout (``norm="lrn"``)
        a slower CNN kept the TAM's LSTM from saturating; with the default BatchNorm one rate
        for both (scale 1) trains every variant (README, "Ablation").
        """
        heads = [p for m in (self.temporal, self.head) if m is not None for p in m.parameters()]
        return [{"params": list(self.cnn.parameters()), "lr": cnn_lr}, {"params": heads, "lr": head_lr}]

    def similarity(self, feat_a: torch.Tensor, feat_b: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """S of Eq. 2 with λ = ``config.lam``."""
        return similarity(feat_a, feat_b, logits, self.config.lam)


def build_model(variant: str = "all", config: ModelConfig | None = None, **overrides) -> JSTRNN:
    """``build_model("all")`` (paper sizes), ``build_model("cnn", config=ModelConfig.cpu())`` or
    ``build_model("all", height=128, width=64, cnn="caffenet_light")``; overrides apply on top of
    ``config``."""
    if config is None:
        config = ModelConfig(**overrides)
    elif overrides:
        config = ModelConfig.from_dict({**config.to_dict(), **overrides})
    return JSTRNN(variant, config)
