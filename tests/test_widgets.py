"""reidkit.widgets: the explorers build without a kernel and redraw on a value change."""

import base64

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")
widgets = pytest.importorskip("reidkit.widgets")
data = pytest.importorskip("reidkit.data")
models = pytest.importorskip("reidkit.models")

H, W, T = 64, 32, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import write_tiny_manifest

    root = tmp_path_factory.mktemp("tiny")
    write_tiny_manifest(root, num_ids=4, num_cams=2, length_range=(3, 9), distractors=1, visibility=True,
                        occlusion=True)
    manifest = data.Manifest.load(root)
    cache = data.FrameCache.build(manifest, H, W, cache_dir=root / "cache", progress=False)
    cfg = models.ModelConfig.cpu(height=H, width=W, seq_len=T, width_mult=0.125, fc_dim=32, rnn_hidden=16,
                                 attention_dim=8, srm_in=8, srm_hidden=4, srm_out=4)
    torch.manual_seed(0)
    return manifest, cache, models.build_model("all", config=cfg), models.build_model("cnn", config=cfg)


def find(box, cls, description=None):
    """Depth-first search of a widget tree."""
    import ipywidgets

    stack = [box]
    while stack:
        w = stack.pop()
        if isinstance(w, cls) and (description is None or getattr(w, "description", None) == description):
            return w
        if isinstance(w, ipywidgets.Box):
            stack.extend(w.children)
    raise LookupError(cls)


def images(out):
    return [o["data"]["image/png"] for o in out.outputs if "image/png" in o.get("data", {})]


def test_show_figures_renders_png_and_html():
    import ipywidgets
    from reidkit import viz

    out = ipywidgets.Output()
    widgets.show_figures(out, "<b>hi</b>", viz.cmc_curves({"a": np.linspace(0.5, 1, 20)}), None)
    assert len(out.outputs) == 2 and out.outputs[0]["data"]["text/html"] == "<b>hi</b>"
    assert base64.b64decode(images(out)[0])[:4] == b"\x89PNG"


def test_tracklet_explorer_redraws(setup):
    import ipywidgets

    manifest, cache, model, _ = setup
    model.train()
    box = widgets.tracklet_explorer(model, manifest, cache, dpi=40)
    assert isinstance(box, ipywidgets.VBox)
    out = find(box, ipywidgets.Output)
    first = images(out)
    assert len(first) == 2  # frame strip + attention heatmap
    pick = find(box, ipywidgets.Dropdown)
    pick.value = pick.options[2][1]
    assert len(images(out)) == 2 and images(out)[0] != first[0]
    mode = find(box, ipywidgets.ToggleButtons)
    mode.value = "chunks"
    slider = find(box, ipywidgets.IntSlider)
    assert slider.max == -(-manifest.tracklets[pick.value].num_frames // T) - 1
    assert model.training  # state restored after the forward pass


def test_tracklet_explorer_without_attention(setup):
    import ipywidgets

    manifest, cache, _, cnn = setup
    out = find(widgets.tracklet_explorer(cnn, manifest, cache), ipywidgets.Output)
    assert len(images(out)) == 1 and "no temporal attention" in out.outputs[1]["data"]["text/html"]


def test_pair_explorer_scores_maps_and_attributions(setup):
    import ipywidgets

    manifest, cache, model, cnn = setup
    box = widgets.pair_explorer(model, manifest, cache, methods=("frame_occlusion",), dpi=40)
    out = find(box, ipywidgets.Output)
    html = out.outputs[0]["data"]["text/html"]
    assert "S (Eq. 2)" in html and "M =" in html and len(images(out)) == 1
    find(box, ipywidgets.Dropdown, "clip b").value = 0  # a pair of identical clips
    html = out.outputs[0]["data"]["text/html"]
    assert "same person" in html and "F (distance) = 0.000" in html
    find(box, ipywidgets.Checkbox).value = True
    assert len(images(out)) == 2  # + the attribution figure
    # a feature-only model: F, and −F (what it ranks by), no M
    html = find(widgets.pair_explorer(cnn, manifest, cache, dpi=40), ipywidgets.Output).outputs[0]["data"]["text/html"]
    assert "F (distance) =" in html and "−F =" in html and "M =" not in html and "S (Eq. 2)" not in html


def test_per_query_rows_layouts_and_padding():
    d = {"query_ids": np.array([5, 6]), "gallery_ids": np.array([[1, 2, -1], [3, 4, 7]]),
         "flags": np.array([[1, 2, -1], [0, 1, 0]]), "scores": np.full((2, 3), np.nan),
         "distances": np.ones((2, 3))}
    rows = widgets.per_query_rows(d)
    assert rows[0]["gallery"] == [1, 2] and rows[0]["flags"] == [1, 2]  # padding dropped
    assert widgets._numbers(rows[1]) == ([1.0, 1.0, 1.0], "rank, feature distance F")
    with pytest.raises(ValueError, match="lacks"):
        widgets.per_query_rows({"query_ids": [5], "gallery_ids": [[1, 2]]})


def test_query_explorer_on_a_real_evaluation(setup):
    import ipywidgets

    evaluate = pytest.importorskip("reidkit.evaluate")
    manifest, cache, model, _ = setup
    result = evaluate.evaluate(model, manifest, cache, progress=False, keep_top=5)
    pq = result.per_query
    box = widgets.query_explorer(result, manifest, cache, top_k=5)
    out = find(box, ipywidgets.Output)
    assert len(images(out)) == 1
    pick = find(box, ipywidgets.Dropdown)
    assert len(pick.options) == len(pq.query_ids)
    rank1_wrong = [i for i in range(len(pq.query_ids)) if pq.flags[i][0] != 1]
    assert [label.startswith("✗") for label, _ in pick.options] == [i in rank1_wrong for i in range(len(pq.query_ids))]
    find(box, ipywidgets.Checkbox).value = True  # failures only
    assert [v for _, v in pick.options] == rank1_wrong
    if rank1_wrong:
        assert len(images(out)) == 1
