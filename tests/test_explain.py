"""reidkit.explain: Captum attributions of a pair's score to the frames of clip a."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("captum")
explain = pytest.importorskip("reidkit.explain")


class FrameTwoModel(nn.Module):
    """A stand-in with the JSTRNN interface whose score depends on frame 2 only.

    ``ranking="metric"``: logit = mean of ReLU(conv5) over frame 2 of a minus that of b, so the
    score rises with frame 2's activations (a positive conv5 bias keeps them switched on).
    ``ranking="distance"``: F(x) = frame 2's channel means."""

    def __init__(self, ranking="metric"):
        super().__init__()
        self.ranking = ranking
        self.cnn = nn.Module()
        self.cnn.conv5 = nn.Conv2d(3, 4, 3, padding=1)
        nn.init.normal_(self.cnn.conv5.weight, std=0.1)
        nn.init.constant_(self.cnn.conv5.bias, 1.0)
        self.dropout = nn.Dropout(0.5)  # on in train mode: attributions must switch it off

    def features(self, clips):
        n, t = clips.shape[:2]
        x = torch.relu(self.cnn.conv5(clips.reshape(n * t, *clips.shape[2:])))  # CNN once on (N·T, …)
        pool5 = self.dropout(x).reshape(n, t, *x.shape[1:])
        return explain_output(pool5[:, 2].mean(dim=(-1, -2)), None, pool5)

    def metric(self, a, b):
        return a[:, 2].mean(dim=(1, 2, 3)) - b[:, 2].mean(dim=(1, 2, 3))

    def pair_score(self, fa, fb, logits=None, kind=None):
        from reidkit.models import pair_score

        return pair_score(kind or self.ranking, fa, fb, logits)


def explain_output(features, attention, pool5):
    from collections import namedtuple

    return namedtuple("FeatureOutput", "features attention pool5")(features, attention, pool5)


def clip(T=5, H=12, W=8, seed=0):
    return torch.randn(T, 3, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ranking", ["metric", "distance"])
def test_toy_only_frame_two_matters(ranking):
    torch.manual_seed(0)
    model = FrameTwoModel(ranking).train()
    a, b = clip(seed=1), clip(seed=2)
    occ = explain.frame_occlusion(model, a, b)
    ig = explain.integrated_gradients(model, a, b, steps=16)
    for res in (occ, ig):
        imp = np.abs(res.frame_importance)
        assert imp.shape == (5,) and np.argmax(imp) == 2
        np.testing.assert_allclose(np.delete(imp, 2), 0.0, atol=1e-7)
        assert imp[2] > 1e-4
    assert ig.maps.shape == (5, 12, 8)
    assert model.training  # state restored


def test_toy_gradcam_lights_frame_two_only():
    model = FrameTwoModel("metric").eval()
    cam = explain.layer_gradcam(model, clip(seed=1), clip(seed=2))
    assert cam.maps.shape == (5, 12, 8) and cam.frame_importance.shape == (5,)
    assert np.argmax(cam.frame_importance) == 2 and cam.frame_importance[2] > 0
    np.testing.assert_allclose(np.delete(cam.maps, 2, axis=0), 0.0, atol=1e-8)


def test_score_kinds_follow_ranking():
    for ranking, kind in (("similarity", "similarity"), ("metric", "metric"), ("distance", "distance")):
        assert explain.score_kind(type("M", (), {"ranking": ranking})()) == kind
    with pytest.raises(ValueError):
        explain.score_kind(None, "cosine")


@pytest.fixture(scope="module")
def tiny_models():
    models = pytest.importorskip("reidkit.models")
    cfg = models.ModelConfig.cpu(height=64, width=32, seq_len=4, width_mult=0.125, fc_dim=32, rnn_hidden=16,
                                 attention_dim=8, srm_in=8, srm_hidden=4, srm_out=4)
    torch.manual_seed(0)
    return {v: models.build_model(v, config=cfg) for v in ("all", "cnn_srm", "cnn_tam")}


@pytest.mark.parametrize("variant", ["all", "cnn_srm", "cnn_tam"])
def test_real_model_shapes_finite_and_state_restored(tiny_models, variant):
    model = tiny_models[variant].train()  # dropout on: attribution must switch it off, then restore
    a, b = clip(4, 64, 32, seed=3), clip(4, 64, 32, seed=4)
    res = explain.explain_pair(model, a, b, methods=tuple(explain.METHODS),
                               integrated_gradients={"steps": 8})
    for name, r in res.items():
        assert r.frame_importance.shape == (4,) and np.isfinite(r.frame_importance).all(), name
        if r.maps is not None:
            assert r.maps.shape == (4, 64, 32) and np.isfinite(r.maps).all(), name
        assert r.kind == explain.score_kind(model)
    assert res["frame_occlusion"].maps is None
    assert model.training
    again = explain.frame_occlusion(model, a, b)  # deterministic: dropout was off
    np.testing.assert_allclose(again.frame_importance, res["frame_occlusion"].frame_importance, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant, kinds", [("all", ("auto", "similarity", "metric", "logit", "distance")),
                                            ("cnn_srm", ("auto", "logit")), ("cnn_tam", ("auto",))])
def test_pair_score_module_is_the_models_pair_score(tiny_models, variant, kinds):
    """What Captum attributes is exactly ``model.pair_score`` of the pair (the score it ranks by)."""
    model = tiny_models[variant].eval()
    a, b = clip(4, 64, 32, seed=9)[None], clip(4, 64, 32, seed=10)[None]
    with torch.no_grad():
        out_a, out_b = model.features(a), model.features(b)
        logits = model.metric(out_a.pool5, out_b.pool5) if model.has_metric_branch else None
        for kind in kinds:
            expected = model.pair_score(out_a.features, out_b.features, logits, kind=None if kind == "auto" else kind)
            torch.testing.assert_close(explain.PairScore(model, b, kind)(a), expected)


def test_occlusion_is_score_drop_per_frame(tiny_models):
    model = tiny_models["all"].eval()
    a, b = clip(4, 64, 32, seed=5), clip(4, 64, 32, seed=6)
    res = explain.frame_occlusion(model, a, b, baseline="mean_frame")
    fn = explain.PairScore(model, b)
    with torch.no_grad():
        full = fn(a[None])[0]
        for t in range(4):
            occluded = a.clone()
            occluded[t] = a.mean(0)
            assert res.frame_importance[t] == pytest.approx(float(full - fn(occluded[None])[0]), abs=1e-5)
    assert res.score == pytest.approx(float(full), abs=1e-6)
    # S of Eq. 2 lies in (0, 1 + λ]
    assert 0 < res.score <= 1 + model.config.lam


def test_integrated_gradients_completeness(tiny_models):
    model = tiny_models["all"].eval()
    res = explain.integrated_gradients(model, clip(4, 64, 32, seed=7), clip(4, 64, 32, seed=8), steps=32)
    gap = res.score - res.info["baseline_score"]
    assert res.frame_importance.sum() == pytest.approx(gap, abs=1e-3 + 0.02 * abs(gap))


def test_core_does_not_import_notebook_packages():
    pytest.importorskip("reidkit.models")
    pytest.importorskip("reidkit.data")
    code = ("import sys, reidkit.models, reidkit.data; "
            "bad = [m for m in ('captum', 'ipywidgets', 'matplotlib', 'seaborn', 'IPython') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core imported {out.stdout.strip()}"


def test_attribution_mode_keeps_cudnn_on_and_only_the_lstms_in_train_mode():
    from reidkit.models import ModelConfig, build_model

    model = build_model("all", config=ModelConfig.cpu()).train()
    cudnn_before = torch.backends.cudnn.enabled
    clips = torch.randn(1, model.config.seq_len, 3, model.config.height, model.config.width)
    with torch.no_grad():
        model.eval()
        expected = model.metric(clips, clips.flip(1))
        model.train()
    with explain._attribution_mode(model):
        assert torch.backends.cudnn.enabled == cudnn_before and torch.is_grad_enabled()
        lstms = [m for m in model.modules() if isinstance(m, nn.LSTM)]
        assert lstms and all(m.training for m in lstms)
        assert not any(m.training for m in model.modules() if not isinstance(m, nn.LSTM) and not any(
            isinstance(c, nn.LSTM) for c in m.modules()))  # dropout and BatchNorm in eval mode
        assert torch.equal(model.metric(clips, clips.flip(1)), expected)  # eval-mode results
    assert all(m.training for m in model.modules())  # the previous state is back
