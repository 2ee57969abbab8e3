"""The joint spatial and temporal RNN model (Fig. 2) and its Table-2 ablations (``variants``).

One CaffeNet (``CaffeNet``) is shared by both branches (Fig. 2: "the weights of all
convolution layers are shared"). Clips are ``(N, T, 3, H, W)``; the CNN runs once on
``(N·T, 3, H, W)`` and its pool5 maps are kept, so M can be evaluated for any pairs of the
batch (or from cached pool5 maps at test time) without running the CNN again.

Metric-only variants have no F(x); their ``features`` are the time- and space-averaged pool5
descriptor, used only to shortlist candidates that M then re-scores.

Also here, for every caller that runs a model outside training: ``model_device`` and
``eval_mode`` (eval mode and no autograd for a block, the previous mode restored).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
from torch import nn

from .caffenet import CaffeNet
from .config import ModelConfig
from .similarity import pair_score
from .spatial import DifferenceHead, SpatialRecurrentModel
from .temporal import AveragePooling, RecurrentPooling, TemporalAttention
from .variants import FEATURE_BRANCH, METHOD_NAMES, METRIC_BRANCH, RANKING, VARIANTS

__all__ = ["VARIANTS", "METHOD_NAMES", "JSTRNN", "FeatureOutput", "build_model", "load_pretrained_cnn", "model_device",
           "eval_mode"]


class FeatureOutput(NamedTuple):
    features: torch.Tensor  # (N, D): F(x), or the averaged pool5 descriptor for metric-only variants
    attention: torch.Tensor | None  # (N, T, T) TAM weights ω[:, t, i], None without TAM
    pool5: torch.Tensor  # (N, T, C, h, w)


class JSTRNN(nn.Module):
    """Joint spatial and temporal RNNs (Fig. 2) in the ``config.variant`` of ``VARIANTS`` (Table 2).

    - ``features(clips)`` → :class:`FeatureOutput` (one CNN pass; also ``forward``).
    - ``metric(a, b)`` → logits (N,) of "same person"; ``a``/``b`` are clips (N, T, 3, H, W) at
      the config's frame size or cached pool5 maps (N, T, C, h, w) of this CNN, told apart by
      their exact per-frame shape (``input_kind``); any other shape is an error naming both.
    - ``pair_score(feat_a, feat_b, logits)`` → the score pairs are ranked by (Eq. 2, with the
      config's λ): −F, M or S, as ``ranking`` says.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.variant = variant = config.variant
        self.has_feature_branch = variant in FEATURE_BRANCH
        self.has_metric_branch = variant in METRIC_BRANCH
        self.ranking = RANKING[variant]  # "distance" | "metric" | "similarity"
        self.cnn = CaffeNet(c.cnn, c.width_mult, c.height, c.width, c.fc_dim, c.norm, c.fc_dropout,
                            with_fc=self.has_feature_branch)
        grid, channels = self.cnn.grid, self.cnn.out_channels
        kind = FEATURE_BRANCH.get(variant)
        self.temporal = {
            "avg": lambda: AveragePooling(c.fc_dim),
            "rnn": lambda: RecurrentPooling(c.fc_dim, c.rnn_hidden),
            "tam": lambda: TemporalAttention(c.fc_dim, c.rnn_hidden, c.attention_dim, c.attention_temperature),
            None: lambda: None,
        }[kind]()
        kind = METRIC_BRANCH.get(variant)
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

    def input_kind(self, x: torch.Tensor) -> str:
        """``"clips"`` for frames (N, T, 3, H, W) at the config's ``height`` × ``width``, ``"pool5"``
        for this CNN's maps (N, T, C, h, w); a ``ValueError`` naming both shapes otherwise."""
        c = self.config
        frames, maps = (3, c.height, c.width), (self.cnn.out_channels, *self.cnn.grid)
        per_frame = tuple(x.shape[2:]) if x.dim() == 5 else None
        if per_frame == frames:
            return "clips"
        if per_frame == maps:
            return "pool5"
        raise ValueError(f"expected clips (N, T, {', '.join(map(str, frames))}) or pool5 maps "
                         f"(N, T, {', '.join(map(str, maps))}), got shape {tuple(x.shape)}")

    def metric(self, a: torch.Tensor, b: torch.Tensor, return_maps: bool = False):
        """Logits of M(a, b) (Sec. 3.3), row by row: a[k] is compared with b[k]; clips or pool5
        maps (``input_kind``), clips of both sides in one CNN pass."""
        if self.head is None:
            raise RuntimeError(f"variant {self.variant!r} has no metric branch (M); use a cnn_diff, cnn_srm or all model")
        kinds = self.input_kind(a), self.input_kind(b)
        if kinds == ("clips", "clips") and a.shape[1:] == b.shape[1:]:
            pool5 = self.pool5_and_fc7(torch.cat([a, b]))[0]  # one CNN pass for both sides
            pa, pb = pool5[: len(a)], pool5[len(a):]
        else:
            pa, pb = (self.pool5_and_fc7(x)[0] if kind == "clips" else x for x, kind in zip((a, b), kinds))
        return self.head(pa, pb, return_maps=return_maps)

    def pair_score(self, feat_a: torch.Tensor | None, feat_b: torch.Tensor | None,
                   logits: torch.Tensor | None = None, kind: str | None = None,
                   lam: float | None = None) -> torch.Tensor:
        """The score of each pair (a[k], b[k]), higher = more alike: by default what this variant
        ranks by (``ranking``): −F (feature variants), M = σ(logits) (metric-only), S of Eq. 2
        with λ = ``config.lam`` (``all``). ``kind`` picks another (``similarity.SCORES``), ``lam``
        another λ (to isolate the parts of Eq. 2: F only, M only, S at several λ).

        ``feat_*`` are ``features`` outputs (unused by M), ``logits`` those of ``metric(a, b)``
        (unused by −F); see ``reidkit.models.similarity``.
        """
        return pair_score(kind or self.ranking, feat_a, feat_b, logits, self.config.lam if lam is None else lam)

    def layer_shapes(self) -> dict:
        """The network of Fig. 2 as this config builds it, measured by one dry pass of a blank
        clip (no parameter changes; eval mode for the pass): ``cnn`` = [(layer, per-frame output
        shape)] from the input frame to fc7, ``temporal``/``head`` = the class names of the two
        branches (None where absent), ``feature_dim``, ``pool5`` (T, C, h, w), ``T``, ``variant``.
        Drawn by ``viz.network_diagram``; it stays true whatever the config."""
        c, shapes = self.config, []
        hooks = [m.register_forward_hook(lambda mod, inp, out, n=name: shapes.append((n, tuple(out.shape[1:]))))
                 for name, m in self.cnn.named_children() if isinstance(m, (nn.Conv2d, nn.Linear, nn.MaxPool2d))]
        try:
            with eval_mode(self):
                out = self.features(torch.zeros(1, c.seq_len, 3, c.height, c.width, device=model_device(self)))
        finally:
            for h in hooks:
                h.remove()
        layers, pools = [("input", (3, c.height, c.width))], 0
        for name, shape in shapes:  # the one MaxPool module runs three times: name each call
            if name == "pool":
                pools += 1
                name = f"pool{ {1: 1, 2: 2, 3: 5}[pools] }"
            layers.append((name, shape))
        return {"variant": self.variant, "T": c.seq_len, "cnn": layers, "pool5": tuple(out.pool5.shape[1:]),
                "temporal": type(self.temporal).__name__ if self.temporal is not None else None,
                "head": type(self.head).__name__ if self.head is not None else None,
                "feature_dim": self.feature_dim, "lam": c.lam,
                "srm": {"in": c.srm_in, "hidden": c.srm_hidden, "out": c.srm_out}}

    def parameter_groups(self, cnn_lr: float, head_lr: float, attention_lr: float | None = None) -> list[dict]:
        """Optimizer groups: the CNN at ``cnn_lr``, the temporal model and metric head at ``head_lr``,
        and, with ``attention_lr``, the TAM's attention sub-net (U, V, W, w of Eq. 3) at that rate.

        ``train.cnn_lr_scale`` and ``train.attention_lr_scale`` set the ratios. With CaffeNet's LRN
        and fc dropout (``norm="lrn"``) a slower CNN kept the TAM's LSTM from saturating; with the
        default BatchNorm one rate for both (scale 1) trains every variant (docs/experiments.md,
        "Training from scratch").
        """
        attention = (self.temporal.attention_parameters() if attention_lr is not None
                     and hasattr(self.temporal, "attention_parameters") else [])
        taken = {id(p) for p in attention}
        heads = [p for m in (self.temporal, self.head) if m is not None for p in m.parameters() if id(p) not in taken]
        groups = [{"params": list(self.cnn.parameters()), "lr": cnn_lr}, {"params": heads, "lr": head_lr}]
        return groups + ([{"params": attention, "lr": attention_lr}] if attention else [])


def build_model(variant: str | None = None, config: ModelConfig | None = None, **overrides) -> JSTRNN:
    """``build_model("all")`` (paper sizes), ``build_model("cnn", config=ModelConfig.cpu())``,
    ``build_model(config=cfg)`` (``cfg.variant``) or ``build_model("all", height=128, width=64,
    cnn="caffenet_light")``; ``variant`` and the overrides apply on top of ``config``."""
    if variant is not None and (config is None or variant != config.variant):
        overrides["variant"] = variant
    if config is None:
        config = ModelConfig(**overrides)
    elif overrides:
        config = ModelConfig.from_dict({**config.to_dict(), **overrides})
    return JSTRNN(config)


def load_pretrained_cnn(model: JSTRNN | CaffeNet, path) -> tuple[str, list[str]]:
    """Load a pretrained frame CNN (``model.pretrained``: ``reidkit pretrain``'s cnn.pt, a run's
    checkpoint or converted ImageNet CaffeNet) into the model's CNN; fc6/fc7 of other shapes start
    fresh (``skip_mismatched_fc``).

    Returns a one-line message for the user and the skipped layers. Only the trainer calls this,
    for a new run: a checkpoint already holds the weights, and ``load_model`` never reads the file."""
    cnn = model.cnn if isinstance(model, JSTRNN) else model
    result = cnn.load_pretrained(path, skip_mismatched_fc=True)
    message = f"[pretrained] {path}: loaded {', '.join(result.loaded)}"
    if result.skipped:
        message += (f"; {', '.join(result.skipped)} start fresh: the file's fc layers do not fit this model "
                    f"(model.fc_dim equal to the file's, at 227×227 frames, loads them too)")
    if not cnn.with_fc:
        message += "; the file's fc6/fc7 unused (this variant has no fc layers)"
    return message, result.skipped


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module, grad: bool = False):
    """``model.eval()`` (dropout off, BatchNorm's running statistics) and autograd off for the
    block (``grad=True`` keeps it on, for attributions); the previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.set_grad_enabled(grad):
            yield model
    finally:
        model.train(was_training)
