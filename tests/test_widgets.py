"""reidkit.widgets: the explorers build without a kernel and redraw on a value change."""

import base64
from types import SimpleNamespace

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
    write_tiny_manifest(root, num_ids=4, num_cams=2, length_range=(3, 9), distractors=1, visibility=True)
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
    box = widgets.tracklet_explorer(model, manifest, cache)
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

    manifest, cache, model, _ = setup
    box = widgets.pair_explorer(model, manifest, cache, methods=("frame_occlusion",))
    out = find(box, ipywidgets.Output)
    html = out.outputs[0]["data"]["text/html"]
    assert "S (Eq. 2)" in html and "M =" in html and len(images(out)) == 1
    find(box, ipywidgets.Checkbox).value = True
    assert len(images(out)) == 2  # + the attribution figure
    find(box, ipywidgets.Dropdown, "clip b").value = 0  # a pair of identical clips
    assert "same person" in out.outputs[0]["data"]["text/html"]
    assert "F (distance) = 0.000" in out.outputs[0]["data"]["text/html"]


def test_per_query_rows_accepts_both_layouts():
    d = {"query_ids": np.array([5, 6]), "top_gallery_ids": np.array([[1, 2], [3, 4]]),
         "match_flags": np.array([[True, False], [False, True]])}
    rows = widgets.per_query_rows(d)
    assert rows[1] == {"query": 6, "gallery": [3, 4], "flags": [0, 1], "scores": None}
    rows2 = widgets.per_query_rows([{"query_id": 5, "gallery_ids": [1, 2], "matches": [1, 0], "scores": [0.9, 0.1]}])
    assert rows2[0]["scores"] == [0.9, 0.1] and rows2[0]["flags"] == [1, 0]


def test_query_explorer_borders_and_filter(setup):
    import ipywidgets

    manifest, cache, _, _ = setup
    split = manifest.splits[0]
    pid = {t.tracklet_id: t.pid for t in manifest.tracklets}
    rng = np.random.default_rng(0)
    q_ids, tops, flags = [], [], []
    for q in split.query:
        g = list(rng.permutation(split.gallery))[:5]
        q_ids.append(q)
        tops.append(g)
        flags.append([pid[x] == pid[q] for x in g])
    result = SimpleNamespace(per_query={"query_ids": q_ids, "top_gallery_ids": tops, "match_flags": flags})
    box = widgets.query_explorer(result, manifest, cache, top_k=5)
    out = find(box, ipywidgets.Output)
    assert len(images(out)) == 1
    failures = find(box, ipywidgets.Checkbox)
    failures.value = True
    pick = find(box, ipywidgets.Dropdown)
    wrong = [i for i, (q, g) in enumerate(zip(q_ids, tops)) if pid[g[0]] != pid[q]]
    assert [v for _, v in pick.options] == wrong
    assert all(label.startswith("✗") for label, _ in pick.options)
    if wrong:
        assert len(images(out)) == 1
