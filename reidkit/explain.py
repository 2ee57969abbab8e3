"""Which frames of a clip (and where in them) drive the score of a pair: Captum attributions.

Captum attributes a scalar output to an input, so ``PairScore`` wraps a model into a function
of clip ``a`` alone that returns one score per row against a fixed reference clip ``b``: the
model's ``pair_score``, the score it ranks pairs by (``reidkit.models.similarity``):

* ``all`` (ranking "similarity"): S of Eq. 2, ``1/(1 + F(a, b)) + λ·M(a, b)``;
* metric-only variants (``cnn_diff``, ``cnn_srm``): M = σ(logit) (``score="logit"`` gives the
  logit itself, which does not saturate);
* feature-only variants: −F(a, b), the negative distance of the L2-normalised features, so that
  a larger score always means "more alike".

Three methods, each returning an ``Attribution`` with one number per frame and, where the
method has one, a map per frame at the input resolution:

* ``integrated_gradients`` — IG from a baseline clip (zeros in normalised space, i.e. every
  pixel at the ImageNet mean colour; or the clip's mean frame) to ``a``. Per frame, the sum of
  the pixel attributions; by IG's completeness they add up to score(a) − score(baseline).
* ``frame_occlusion`` — Captum ``Occlusion`` with a window of exactly one whole frame, stride
  one frame: the importance of frame t is score(a) − score(a with frame t replaced by the
  baseline). Baseline ``"zeros"`` (the ImageNet mean colour, a blank grey frame) by default, or
  ``"mean_frame"`` (the clip's average frame: "this frame carries nothing beyond the rest").
  Replacing a frame also changes the attention the TAM gives to every frame, so this measures
  the whole effect of the frame on the score.
* ``layer_gradcam`` — Grad-CAM on conv5 of the CaffeNet. The CNN runs once on ``(N·T, 3, H, W)``,
  so conv5's output has one row per frame and Grad-CAM's channel weights are computed per
  frame; the ``(T, h, w)`` maps (ReLU'd, as in Grad-CAM) are upsampled bilinearly to ``(H, W)``.
  Per-frame importance = mean of the map before upsampling.

All three keep the model in eval mode (dropout off, so results are deterministic) and restore
its previous train/eval state afterwards. On CUDA, an LSTM's backward pass in eval mode is not
supported by cuDNN, so the attribution runs with cuDNN disabled for that call rather than in
train mode (which would switch dropout on).

Not part of the core: nothing in ``reidkit``'s core imports this module.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .models import eval_mode, model_device
from .models.similarity import SCORES

__all__ = ["Attribution", "PairScore", "score_kind", "integrated_gradients", "frame_occlusion",
           "layer_gradcam", "explain_pair", "METHODS"]


@dataclass
class Attribution:
    """The attribution of ``score(a, b)`` to the frames of clip ``a``.

    ``frame_importance`` ``(T,)``; ``maps`` ``(T, H, W)`` at the input resolution or None
    (frame occlusion has one number per frame); ``score`` = score(a, b); ``kind`` = which score
    (see ``score_kind``); ``info`` holds method details (baseline, steps, convergence delta).
    """

    method: str
    frame_importance: np.ndarray
    maps: np.ndarray | None
    score: float
    kind: str
    info: dict = field(default_factory=dict)


def score_kind(model, score: str = "auto") -> str:
    """The score attributed for ``model``: what it ranks by (``model.ranking``): "similarity"
    (S, Eq. 2) for ``all``, "metric" (M) for metric-only variants, "distance" (−F) for
    feature-only variants; or ``score`` if given (one of ``reidkit.models.similarity.SCORES``)."""
    if score != "auto":
        if score not in SCORES:
            raise ValueError(f"score must be 'auto' or one of {SCORES}, got {score!r}")
        return score
    return model.ranking


def _as_clip(x: torch.Tensor, device) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() == 4:
        x = x.unsqueeze(0)
    if x.dim() != 5 or x.shape[0] != 1 or x.shape[2] != 3:
        raise ValueError(f"expected one normalised clip (T, 3, H, W) or (1, T, 3, H, W), got {tuple(x.shape)}")
    return x.detach().to(device=device, dtype=torch.float32)


class PairScore(nn.Module):
    """``forward(clips_a (N, T, 3, H, W)) → (N,)``: the score of each clip against the fixed
    reference clip ``b`` (see the module docstring for which score). ``b``'s features and pool5
    maps are computed once, without gradients; ``a`` goes through the CNN once per call, so a
    hooked CNN layer sees exactly one forward pass."""

    def __init__(self, model: nn.Module, clip_b: torch.Tensor, score: str = "auto"):
        super().__init__()
        self.model = model
        self.kind = score_kind(model, score)
        with torch.no_grad():
            out_b = model.features(_as_clip(clip_b, model_device(model)))
        self.feat_b, self.pool5_b = out_b.features.detach(), out_b.pool5.detach()

    def forward(self, clips_a: torch.Tensor) -> torch.Tensor:
        n = clips_a.shape[0]
        out = self.model.features(clips_a)
        feat_b = self.feat_b.expand(n, *self.feat_b.shape[1:])
        logits = None
        if self.kind != "distance":  # −F is the one score without M
            logits = self.model.metric(out.pool5, self.pool5_b.expand(n, *self.pool5_b.shape[1:]))
        return self.model.pair_score(out.features, feat_b, logits, kind=self.kind)


@contextlib.contextmanager
def _attribution_mode(model: nn.Module):
    """Eval mode (dropout off, BatchNorm's running statistics) with autograd on, the previous
    state restored; only the ``nn.LSTM`` modules are put in train mode, because cuDNN's RNN
    backward refuses to run in eval mode. Their dropout applies between stacked layers only and
    every LSTM here has one layer, so the results are those of eval mode, and cuDNN stays on for
    the convolutions (switching it off would move CaffeNet to slow kernels)."""
    lstms = [m for m in model.modules() if isinstance(m, nn.LSTM)]
    if any(m.num_layers > 1 and m.dropout > 0 for m in lstms):
        raise ValueError("a stacked LSTM with dropout would differ in train mode: attributions need eval mode")
    with eval_mode(model, grad=True):
        for m in lstms:
            m.train()
        yield


def _baseline(clip: torch.Tensor, baseline) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        return baseline.to(clip).expand_as(clip)
    if baseline == "zeros":  # the ImageNet mean colour in normalised space
        return torch.zeros_like(clip)
    if baseline == "mean_frame":
        return clip.mean(dim=1, keepdim=True).expand_as(clip).contiguous()
    raise ValueError(f"baseline must be 'zeros', 'mean_frame' or a tensor, got {baseline!r}")


def _score(fn: PairScore, clip: torch.Tensor) -> float:
    with torch.no_grad():
        return float(fn(clip)[0])


def integrated_gradients(model: nn.Module, clip_a, clip_b, steps: int = 32, baseline="zeros",
                         score: str = "auto", internal_batch_size: int = 8) -> Attribution:
    """Integrated Gradients of score(a, b) w.r.t. the pixels of clip ``a`` (one normalised clip,
    ``(T, 3, H, W)`` or ``(1, T, 3, H, W)``). ``maps`` = attributions summed over colour channels
    ``(T, H, W)``; ``frame_importance`` = their per-frame sums (signed; they add up to
    score(a) − score(baseline) up to ``info["delta"]``)."""
    from captum.attr import IntegratedGradients

    device = model_device(model)
    a = _as_clip(clip_a, device)
    with _attribution_mode(model):
        fn = PairScore(model, clip_b, score)
        base = _baseline(a, baseline)
        attr, delta = IntegratedGradients(fn).attribute(
            a, baselines=base, n_steps=steps, internal_batch_size=internal_batch_size,
            return_convergence_delta=True)
        s, s0 = _score(fn, a), _score(fn, base)
    maps = attr[0].sum(dim=1).detach().cpu().numpy()  # (T, H, W)
    return Attribution("integrated_gradients", maps.reshape(len(maps), -1).sum(1), maps, s, fn.kind,
                       {"baseline": baseline if isinstance(baseline, str) else "tensor", "steps": steps,
                        "baseline_score": s0, "delta": float(delta.abs().max())})


def frame_occlusion(model: nn.Module, clip_a, clip_b, baseline="zeros", score: str = "auto") -> Attribution:
    """Occlude one whole frame of ``a`` at a time (Captum ``Occlusion``, window = stride = one
    frame ``(1, 3, H, W)``): ``frame_importance[t]`` = score(a) − score(a with frame t replaced
    by the baseline). ``maps`` is None. Baselines: ``"zeros"`` (the ImageNet mean colour),
    ``"mean_frame"`` (the clip's average frame) or a tensor shaped like the clip."""
    from captum.attr import Occlusion

    device = model_device(model)
    a = _as_clip(clip_a, device)
    T, C, H, W = a.shape[1:]
    with _attribution_mode(model):
        fn = PairScore(model, clip_b, score)
        attr = Occlusion(fn).attribute(a, sliding_window_shapes=(1, C, H, W), strides=(1, C, H, W),
                                       baselines=_baseline(a, baseline), perturbations_per_eval=T)
        s = _score(fn, a)
    importance = attr[0].reshape(T, -1).mean(1).detach().cpu().numpy()  # constant within a frame
    return Attribution("frame_occlusion", importance, None, s, fn.kind,
                       {"baseline": baseline if isinstance(baseline, str) else "tensor"})


def _conv5(model: nn.Module) -> nn.Module:
    cnn = getattr(model, "cnn", None)
    layer = getattr(cnn, "conv5", None) if cnn is not None else None
    if layer is None:
        raise ValueError("model has no .cnn.conv5; pass layer= explicitly")
    return layer


def layer_gradcam(model: nn.Module, clip_a, clip_b, layer: nn.Module | None = None, score: str = "auto",
                  upsample: bool = True) -> Attribution:
    """Grad-CAM of score(a, b) on conv5 of the CaffeNet (``layer`` to choose another). The CNN
    sees ``(N·T, …)``, so the layer output has one row per frame and each frame gets its own
    channel weights (gradients averaged over the frame's h×w). ``maps`` ``(T, H, W)`` (ReLU'd,
    bilinearly upsampled; ``(T, h, w)`` with ``upsample=False``); ``frame_importance`` = the
    mean of each frame's map at conv5 resolution."""
    from captum.attr import LayerAttribution, LayerGradCam

    device = model_device(model)
    a = _as_clip(clip_a, device)
    T, _, H, W = a.shape[1:]
    layer = layer if layer is not None else _conv5(model)
    with _attribution_mode(model):
        fn = PairScore(model, clip_b, score)
        cam = LayerGradCam(fn, layer).attribute(a.clone().requires_grad_(True), relu_attributions=True)
        s = _score(fn, a)
    cam = cam.detach()
    if cam.shape[0] != T:
        raise RuntimeError(f"expected one Grad-CAM map per frame ({T}), got {tuple(cam.shape)}: "
                           "the CNN must run once on (N·T, ...)")
    importance = cam.reshape(T, -1).mean(1).cpu().numpy()
    maps = LayerAttribution.interpolate(cam, (H, W), interpolate_mode="bilinear") if upsample else cam
    return Attribution("layer_gradcam", importance, maps[:, 0].cpu().numpy(), s, fn.kind,
                       {"layer": type(layer).__name__, "layer_size": tuple(cam.shape[-2:])})


METHODS = {"frame_occlusion": frame_occlusion, "integrated_gradients": integrated_gradients,
           "layer_gradcam": layer_gradcam}


def explain_pair(model: nn.Module, clip_a, clip_b, methods=("frame_occlusion", "layer_gradcam"),
                 score: str = "auto", **kwargs) -> dict[str, Attribution]:
    """Several attributions of one pair, ``{method: Attribution}``, ready for
    ``reidkit.viz.attribution_figure``. ``kwargs`` as ``{method: {arg: value}}``."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {tuple(METHODS)}")
    return {m: METHODS[m](model, clip_a, clip_b, score=score, **kwargs.get(m, {})) for m in methods}
