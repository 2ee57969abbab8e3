"""reidkit.viz: every function returns a Figure of the expected layout and draws the right values."""

import io
import re

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from reidkit import data
from reidkit.attention import attention_spread
from reidkit.models.spatial import DIRECTIONS

viz = pytest.importorskip("reidkit.viz")

RNG = np.random.default_rng(0)


def frames(T=4, H=16, W=8):
    return RNG.integers(0, 256, size=(T, H, W, 3), dtype=np.uint8)


def softmax_rows(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def renders(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=30)
    return buf.getvalue()[:4] == b"\x89PNG"


def test_to_uint8_inverts_imagenet_normalisation():
    x = RNG.integers(0, 256, size=(3, 5, 6, 3), dtype=np.uint8)  # (T,H,W,3)
    mean = torch.tensor(data.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(data.STD).view(1, 3, 1, 1)
    clip = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std  # (T,3,H,W)
    np.testing.assert_array_equal(viz.to_uint8(clip), x)
    np.testing.assert_array_equal(viz.to_uint8(clip[None])[0], x)  # batched
    with pytest.raises(ValueError):
        viz.to_uint8(np.zeros((2, 4, 5, 5)))


def test_to_uint8_inverts_normalize_clips():
    x = torch.from_numpy(RNG.integers(0, 256, size=(2, 3, 8, 4, 3), dtype=np.uint8))
    clips = data.normalize_clips(x, None)
    np.testing.assert_array_equal(viz.to_uint8(clips), x.numpy())


def test_sample_grid_layout_and_labels():
    rows = [[frames(1)[0]] * 5, [frames(1)[0]] * 3]
    fig = viz.sample_grid(rows, ["MARS", "iLIDS-VID"])
    assert isinstance(fig, Figure) and len(fig.axes) == 10
    assert fig.axes[0].get_ylabel() == "MARS" and fig.axes[5].get_ylabel() == "iLIDS-VID"
    assert sum(len(ax.images) for ax in fig.axes) == 8  # blank cells have no image
    assert renders(fig)


def test_frame_strip_weights_and_visibility():
    att = softmax_rows(RNG.normal(size=(4, 4)))
    vis = np.array([1.0, 0.2, 0.5, 0.9])
    fig = viz.frame_strip(frames(), weights=att, visibility=vis, title="x")
    assert len(fig.axes) == 5
    bar_ax = fig.axes[-1]
    heights = [p.get_height() for p in bar_ax.patches]
    np.testing.assert_allclose(heights, att.mean(0))  # the bars are ω averaged over steps
    assert f"ω={att.mean(0)[1]:.2f}" in fig.axes[1].get_title()
    assert len(viz.frame_strip(frames()).axes) == 4  # frames only: no bar axis
    with pytest.raises(ValueError):
        viz.frame_strip(frames(), weights=np.ones(3) / 3)


def test_attention_heatmap_annotates_every_cell():
    att = softmax_rows(RNG.normal(size=(5, 5)))
    fig = viz.attention_heatmap(att)
    assert len(fig.axes) == 2  # heatmap + colour bar
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 25 and texts[7] == f"{att[1, 2]:.2f}"  # row-major: row t, column i


def test_attention_vs_visibility_correlation_in_title():
    vis = [RNG.uniform(size=6) for _ in range(20)]
    w = [softmax_rows(3 * v[None] + RNG.normal(scale=0.3, size=(6, 6))) for v in vis]
    fig = viz.attention_vs_visibility(w, vis)
    assert len(fig.axes) == 1
    flat_w = np.concatenate([x.mean(0) for x in w])
    r = np.corrcoef(flat_w, np.concatenate(vis))[0, 1]
    title = fig.axes[0].get_title()
    got = float(re.search(r"Pearson r = (-?[\d.]+)", title).group(1))
    assert got == pytest.approx(r, abs=1e-3) and r > 0.3
    labels = [np.array(["none", "object", "person"] * 2) for _ in vis]
    fig2 = viz.attention_vs_visibility(w, vis, labels=labels)
    assert len(fig2.axes) == 2
    assert [t.get_text().split("\n")[0] for t in fig2.axes[1].get_xticklabels()] == ["none", "object", "person"]


def test_spread_of_attention_uniform_vs_peaked():
    T = 6
    uniform = np.full((10, T, T), 1.0 / T)
    peaked = np.tile(np.eye(T), (10, 1, 1))
    s_u, s_p = attention_spread(uniform), attention_spread(peaked)
    np.testing.assert_allclose(s_u["spread"], 0, atol=1e-12)
    np.testing.assert_allclose(s_u["entropy"], 1)
    np.testing.assert_allclose(s_p["spread"], 1)
    np.testing.assert_allclose(s_p["entropy"], 0, atol=1e-9)
    fig = viz.spread_of_attention(np.concatenate([uniform, peaked]))
    assert len(fig.axes) == 2 and "50% within 1e-3 of uniform" in fig._suptitle.get_text()


def srm_dict(N=2, T=4, C=8, h=5, w=3, scale=1.0):
    maps = {"difference": RNG.normal(scale=scale, size=(N, T, C, h, w)),
            "context": RNG.normal(scale=scale, size=(N, T, C, h, w))}
    for d in DIRECTIONS:
        maps[d] = torch.randn(N, T, C, h, w) * scale
    return maps


def test_channel_norm():
    m = RNG.normal(size=(2, 3, 4, 5, 6))
    np.testing.assert_allclose(viz.channel_norm(m, 1), np.linalg.norm(m[1], axis=1))


def test_mosaic_places_time_steps_side_by_side():
    m = RNG.normal(size=(3, 4, 2))
    mo = viz.mosaic(m, gap=1)
    assert mo.shape == (4, 3 * 2 + 2) and np.isnan(mo[:, 2]).all()
    np.testing.assert_array_equal(mo[:, 6:8], m[2])
    assert viz.mosaic(frames(3), gap=2)[:, 8:10].min() == 255  # white gap between frames


def test_srm_maps_rows_and_values():
    maps = srm_dict()
    fig = viz.srm_maps(maps, frames(4, 20, 12), frames(4, 20, 12), index=1)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 2 + 8  # 2 frame rows + difference, 6 directions, contextual
    assert len(fig.axes) == 10 + 8  # one colour bar per map row
    assert image_axes[2].get_ylabel().startswith("difference")
    diff = image_axes[2].images[0].get_array()
    w = 3
    np.testing.assert_allclose(diff[:, 2 * (w + 1): 2 * (w + 1) + w], np.linalg.norm(maps["difference"][1, 2], axis=0))
    assert len([ax for ax in viz.srm_maps(maps).axes if ax.images]) == 8
    diff_head = viz.srm_maps({"difference": maps["difference"], "conv": maps["context"]})  # CNN+DIFF
    assert [ax.get_ylabel() for ax in diff_head.axes if ax.images] == ["difference ‖d‖", "1×1 conv"]
    with pytest.raises(ValueError):
        viz.srm_maps({"other": maps["difference"]})


def test_srm_maps_accepts_the_real_heads_maps():
    models = pytest.importorskip("reidkit.models")
    srm = models.SpatialRecurrentModel(8, 3, (4, 2), 6, 5, 4)
    _, maps = srm(torch.randn(2, 3, 8, 4, 2), torch.randn(2, 3, 8, 4, 2), return_maps=True)
    fig = viz.srm_maps(maps)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.images]
    assert labels[0].startswith("difference") and labels[1] == "1×1 conv" and labels[-1] == "contextual"
    assert len(labels) == 9  # difference, 1×1 conv, six sweeps, contextual


def test_srm_pair_comparison_shares_colour_scale():
    pos, neg = srm_dict(scale=0.1), srm_dict(scale=2.0)
    fig = viz.srm_pair_comparison(pos, neg, pos_frames=(frames(), frames()), neg_frames=(frames(), frames()),
                                  pos_score=0.9, neg_score=0.1)
    maps_axes = [ax for ax in fig.axes if ax.images and ax.images[0].get_cmap().name == "magma"]
    assert len(maps_axes) == 4  # (pos, neg) × (difference, contextual)
    assert maps_axes[0].images[0].get_clim() == maps_axes[2].images[0].get_clim()  # difference: pos = neg
    assert maps_axes[0].images[0].get_clim() != maps_axes[1].images[0].get_clim()  # per map kind
    assert "positive (0.900)" in maps_axes[0].get_ylabel()


def test_cmc_curves():
    cmc = {"CNN": np.linspace(0.5, 0.9, 20), "ALL": np.linspace(70.6, 97.6, 20)}
    fig = viz.cmc_curves(cmc, max_rank=20)
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    np.testing.assert_allclose(ax.lines[0].get_ydata()[0], 50.0)  # fractions shown in %
    assert "rank-1 70.6%" in ax.get_legend().get_texts()[1].get_text()


def test_retrieval_grid_border_colours_follow_flags():
    flags = [1, 0, 2, 1, 0]
    scores = np.linspace(0.9, 0.5, 5)
    gallery = [frames(3) for _ in flags]
    fig = viz.retrieval_grid(frames(6), gallery, flags, scores, max_query_frames=4)
    assert len(fig.axes) == 4 + 5
    for ax, f in zip(fig.axes[4:], flags):
        assert ax.spines["left"].get_edgecolor() == to_rgba(viz.FLAG_COLORS[f])
        assert ax.spines["top"].get_linewidth() > 2
    assert fig.axes[5].get_title().startswith("2 0.80")
    fig2 = viz.retrieval_rows([frames(6), frames(2)], [gallery, gallery[:3]], [flags, flags[:3]])
    assert len(fig2.axes) == 4 + 5 + 4 + 3  # a shorter query leaves blank cells
    with pytest.raises(ValueError):
        viz.retrieval_grid(frames(6), gallery, flags[:3])


def test_training_curves_both_history_forms():
    hist = [{"step": s, "loss": 1 / (s + 1), "triplet": 0.5, "bce": 0.7} for s in range(10)]
    fig = viz.training_curves(hist)
    assert len(fig.axes) == 3
    np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), np.arange(10))
    fig2 = viz.training_curves({"epoch": [1, 2, 3], "loss": [3, 2, 1]})
    assert len(fig2.axes) == 1 and list(fig2.axes[0].lines[0].get_ydata()) == [3, 2, 1]
    with pytest.raises(ValueError):
        viz.training_curves({"acc": [1]})


def test_length_histogram():
    fig = viz.length_histogram({"a": RNG.integers(5, 100, 50), "b": RNG.integers(20, 200, 30)})
    assert len(fig.axes) == 1 and len(fig.axes[0].get_legend().get_texts()) == 2
    assert sum(p.get_height() for p in fig.axes[0].patches) == 80


def test_attribution_figure():
    T = 4
    gc = RNG.uniform(size=(T, 16, 8))
    attr = {"occlusion": {"frame_importance": np.array([0.1, -0.2, 1.0, 0.0]), "maps": None},
            "gradcam": {"frame_importance": np.arange(T, dtype=float), "maps": gc}}
    fig = viz.attribution_figure(frames(T), attr)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 2  # frames, one overlay row (gradcam)
    overlay = image_axes[1].images[1].get_array()
    np.testing.assert_allclose(overlay[:, 9:17], gc[1])  # gap of max(1, 8 // 16) = 1 column
    bars = fig.axes[2].patches
    assert len(bars) == 2 * T
    np.testing.assert_allclose([b.get_height() for b in bars[:T]], [0.1, -0.2, 1.0, 0.0])
    assert renders(fig)
    with pytest.raises(ValueError):
        viz.attribution_figure(frames(T), {"x": {"frame_importance": np.ones(T), "maps": np.ones((T, 3, 3))}})


def test_figures_are_not_left_open_in_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = viz.cmc_curves({"a": np.linspace(0.5, 1.0, 20)})
    assert plt.get_fignums() == before  # closed at once: no leak, no double display in Jupyter
    assert isinstance(fig, Figure) and renders(fig)  # still drawable after closing


def test_network_diagram_is_drawn_from_the_models_shapes():
    models = pytest.importorskip("reidkit.models")
    arch = models.build_model("all", config=models.ModelConfig.cpu()).layer_shapes()
    texts = " ".join(t.get_text() for ax in viz.network_diagram(arch).axes for t in ax.texts)
    assert "conv1\n24×64×32" in texts and "pool5\n64×8×4" in texts and "S = 1/(1+F)" in texts
    arch2 = models.build_model("cnn", config=models.ModelConfig.cpu(height=160, width=80)).layer_shapes()
    texts2 = " ".join(t.get_text() for ax in viz.network_diagram(arch2).axes for t in ax.texts)
    assert "input\n3×160×80" in texts2 and "S = 1/(1+F)" not in texts2 and "M\n" not in texts2


def test_sweep_impulses_one_row_per_direction():
    resp = {d: np.zeros((4, 5, 3)) for d in DIRECTIONS}
    resp["time_fwd"][2:, 1, 1] = 1.0
    fig = viz.sweep_impulses(resp, (2, 1, 1))
    rows = [ax for ax in fig.axes if ax.images]
    assert [ax.get_ylabel() for ax in rows] == [d.replace("_", " ") for d in DIRECTIONS]


def _unlabelled_axes(fig):
    """Axes that plot data (lines, bars, scatter) but lack an x or y label, and colour bars
    without a label."""
    bad = []
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            if not (ax.get_ylabel() or ax.get_xlabel()):
                bad.append("colour bar")
            continue
        if ax.images or not (ax.lines or ax.patches or ax.collections):
            continue  # image rows carry their row label; decoration-only axes carry no data
        if not (ax.get_xlabel() and ax.get_ylabel()):
            bad.append(ax.get_title() or "an axis")
    return bad


def test_every_data_axis_and_colour_bar_is_labelled():
    T = 4
    att = np.stack([softmax_rows(RNG.normal(size=(T, T))) for _ in range(6)])
    vis = [RNG.uniform(size=T) for _ in range(6)]
    steps = [{"step": s, "loss": 1.0 / (s + 1), "triplet": 0.5, "bce": 0.7, "attention_entropy": 0.9,
              "attention_grad_norm": 0.1 + s} for s in range(5)]
    probe = {"blank": {1: {"occluded": 0.9, "clean": 1.03}, 2: {"occluded": 0.8, "clean": 1.2}}}
    dose = [{"method": m, "occlusion": lv, "rank1": 50.0, "spearman_rho": 0.1}
            for m in ("CNN", "CNN+TAM") for lv in ("none", "default", "heavy")]
    attr = {"integrated_gradients": {"frame_importance": RNG.normal(size=T), "maps": RNG.normal(size=(T, 16, 8))},
            "frame_occlusion": {"frame_importance": RNG.normal(size=T), "maps": None}}
    figures = {
        "training_curves": viz.training_curves(steps),
        "attention_training": viz.attention_training(steps),
        "cmc_curves": viz.cmc_curves({"a": np.linspace(0.8, 1.0, 20)}),
        "length_histogram": viz.length_histogram(RNG.integers(5, 100, 50)),
        "frame_strip": viz.frame_strip(frames(T), weights=att[0], visibility=vis[0]),
        "attention_heatmap": viz.attention_heatmap(att[0]),
        "attention_vs_visibility": viz.attention_vs_visibility(list(att), vis,
                                                               labels=[np.array(["none", "object"] * 2)] * 6),
        "spread_of_attention": viz.spread_of_attention(att),
        "occlusion_probe_plot": viz.occlusion_probe_plot(probe, T),
        "dose_response_plot": viz.dose_response_plot(dose),
        "srm_maps": viz.srm_maps(srm_dict()),
        "srm_pair_comparison": viz.srm_pair_comparison(srm_dict(), srm_dict()),
        "attribution_figure": viz.attribution_figure(frames(T), attr),
    }
    bad = {name: b for name, fig in figures.items() if (b := _unlabelled_axes(fig))}
    assert not bad, f"axes without labels: {bad}"
    for fig in figures.values():
        assert renders(fig)


def test_cmc_axis_shows_the_whole_scale():
    ax = viz.cmc_curves({"high": np.linspace(0.85, 1.0, 20)}).axes[0]
    low, high = ax.get_ylim()
    assert low == 0 and high >= 100  # a curve between 85 and 100 % is not drawn as if it started at 0


def test_attribution_overlay_scale_follows_the_bulk_of_the_values():
    T = 4
    maps = RNG.normal(scale=0.001, size=(T, 16, 8))
    maps[0, 0, 0] = 0.5  # one extreme pixel, as Integrated Gradients produces
    fig = viz.attribution_figure(frames(T), {"ig": {"frame_importance": np.ones(T), "maps": maps}})
    vmin, vmax = [ax for ax in fig.axes if ax.images][1].images[1].get_clim()
    lim = np.percentile(np.abs(maps), 99)
    assert vmax == pytest.approx(lim) and vmin == pytest.approx(-lim) and vmax < 0.05
    cbar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"][0]
    assert "saturates" in cbar.get_ylabel()
