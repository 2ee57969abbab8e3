"""Interactive explorers for notebooks: thin ipywidgets wrappers around ``reidkit.viz``.

Each explorer returns an ``ipywidgets.VBox`` of controls plus an ``ipywidgets.Output``; every
control change re-runs the model where needed, calls the pure plotting functions of
``reidkit.viz`` and puts the figures into the Output as PNG images (``Output.outputs`` is set
directly, so the explorers work, and can be tested, without a running kernel or display).
A failing callback shows its traceback in the Output and re-raises.

* ``tracklet_explorer`` — a tracklet's frames with their TAM attention and the T×T heatmap;
* ``pair_explorer`` — two tracklets: F, M and S, the SRM maps and (optionally) Captum
  attributions;
* ``query_explorer`` — a query of an ``EvalResult`` and its ranked gallery (Fig. 10).

Widget output is not saved in papermill-executed notebooks and interactive widgets can stall
an unattended run: draw static figures with ``reidkit.viz`` always, and build these explorers
only when a person is at the keyboard.

Not part of the core: nothing in ``reidkit``'s core imports this module.
"""

from __future__ import annotations

import base64
import io
import traceback
from typing import Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import torch

from . import explain, viz
from .data import even_frame_indices, normalize_clips, test_frame_indices
from .models import eval_mode, model_device
from .models.similarity import SCORE_NAMES, feature_distance, metric_score

__all__ = ["show_figures", "tracklet_explorer", "pair_explorer", "query_explorer", "per_query_rows"]


# --------------------------------------------------------------------------- output plumbing


def _png(fig, dpi: int) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def show_figures(out: "widgets.Output", *items, dpi: int = 90) -> None:
    """Replace ``out``'s content with ``items``: matplotlib Figures (as PNG) or strings (HTML)."""
    outputs = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, str):
            data = {"text/html": item, "text/plain": item}
        else:
            data = {"image/png": _png(item, dpi), "text/plain": repr(item)}
        outputs.append({"output_type": "display_data", "data": data, "metadata": {}})
    out.outputs = tuple(outputs)


def _guarded(out, fn):
    """Run ``fn()``; on error show the traceback in ``out`` and re-raise."""
    try:
        fn()
    except Exception:
        out.outputs = ({"output_type": "stream", "name": "stderr", "text": traceback.format_exc()},)
        raise


def _tracklet_label(manifest, position: int) -> str:
    t = manifest.tracklets[position]
    return f"#{t.tracklet_id}  pid {t.pid}  cam {t.camid}  ({t.num_frames} frames)"


def _options(manifest, positions, max_options: int):
    if positions is None:
        positions = range(min(len(manifest.tracklets), max_options))
    return [(_tracklet_label(manifest, int(p)), int(p)) for p in positions]


def _clip(cache, manifest, position: int, T: int, mode: str = "even", chunk: int = 0):
    """uint8 frames (T, H, W, 3), the normalised clip (1, T, 3, H, W) and the frame indices."""
    idx = test_frame_indices(manifest.tracklets[position].num_frames, T, mode)
    idx = idx[min(chunk, len(idx) - 1)]
    frames = cache.clip(position, idx)
    return frames, normalize_clips(torch.from_numpy(np.ascontiguousarray(frames))[None]), idx


# --------------------------------------------------------------------------- explorers


def tracklet_explorer(model, manifest, cache, positions: Sequence[int] | None = None, T: int | None = None,
                      device=None, max_options: int = 500, dpi: int = 90) -> "widgets.VBox":
    """Choose a tracklet (and a clip of it) → its frames with the TAM weights ω̄ and the
    ground-truth visibility (``viz.frame_strip``), and the T×T weights (``viz.attention_heatmap``).

    ``positions``: tracklet positions in ``manifest.tracklets`` to offer (default: the first
    ``max_options``). ``T``: frames per clip (default the model's ``config.seq_len``). Clips are
    ``"even"`` (T evenly spaced frames) or ``"chunks"`` (consecutive frames, chunk number chosen
    with the slider), as in ``reidkit.data.test_frame_indices``.
    """
    T = T or model.config.seq_len
    dev = torch.device(device) if device is not None else model_device(model)
    pick = widgets.Dropdown(options=_options(manifest, positions, max_options), description="tracklet",
                            layout=widgets.Layout(width="420px"))
    mode = widgets.ToggleButtons(options=["even", "chunks"], value="even", description="frames")
    chunk = widgets.IntSlider(value=0, min=0, max=0, description="chunk", disabled=True)
    out = widgets.Output()
    busy = [False]  # adjusting the slider's range must not re-enter update()

    def update(_=None):
        if busy[0]:
            return
        position = pick.value
        n_chunks = -(-manifest.tracklets[position].num_frames // T) if mode.value == "chunks" else 1
        busy[0] = True
        try:
            chunk.max, chunk.disabled = n_chunks - 1, n_chunks == 1
        finally:
            busy[0] = False
        frames, clip, idx = _clip(cache, manifest, position, T, mode.value, chunk.value)
        with eval_mode(model):
            att = model.features(clip.to(dev)).attention
        att = None if att is None else att[0].float().cpu().numpy()
        vis = manifest.tracklets[position].visibility
        vis = None if vis is None else np.asarray(vis)[idx]
        label = _tracklet_label(manifest, position)
        occlusion = manifest.tracklets[position].extras.get("occlusion") if hasattr(
            manifest.tracklets[position], "extras") else None
        names = [f"#{i}" + (f" {occlusion[i]}" if occlusion else "") for i in idx]
        strip = viz.frame_strip(frames, att, vis, title=f"{label} — frames {idx.tolist()}", frame_labels=names)
        heat = viz.attention_heatmap(att, title="ω (rows: step t, columns: frame i)") if att is not None else \
            f"<i>variant {getattr(model, 'variant', '?')!r} has no temporal attention</i>"
        show_figures(out, strip, heat, dpi=dpi)

    for w in (pick, mode, chunk):
        w.observe(lambda ch: _guarded(out, update), names="value")
    _guarded(out, update)
    return widgets.VBox([widgets.HBox([pick, mode]), chunk, out])


def _pair_scores(model, out_a, out_b, logits) -> dict[str, float]:
    """F and M of the pair where the model has them, and the score it ranks by (``pair_score``)."""
    s = {}
    if model.has_feature_branch:
        s["F (distance)"] = float(feature_distance(out_a.features, out_b.features)[0])
    if logits is not None:
        s["M"] = float(metric_score(logits)[0])
    s[SCORE_NAMES[model.ranking]] = float(model.pair_score(out_a.features, out_b.features, logits)[0])
    return s


def pair_explorer(model, manifest, cache, positions: Sequence[int] | None = None, T: int | None = None,
                  device=None, methods: Sequence[str] = ("frame_occlusion", "layer_gradcam"),
                  max_options: int = 500, dpi: int = 80) -> "widgets.VBox":
    """Choose two tracklets → F, M and S of the pair, the SRM maps over both clips
    (``viz.srm_maps``; metric variants only) and, with "attributions" ticked, Captum
    attributions of the score to the frames of clip a (``reidkit.explain``, ``methods``;
    ``viz.attribution_figure``). Clips are T evenly spaced frames of each tracklet."""
    T = T or model.config.seq_len
    dev = torch.device(device) if device is not None else model_device(model)
    options = _options(manifest, positions, max_options)
    pick_a = widgets.Dropdown(options=options, description="clip a", layout=widgets.Layout(width="420px"))
    pick_b = widgets.Dropdown(options=options, value=options[min(1, len(options) - 1)][1], description="clip b",
                              layout=widgets.Layout(width="420px"))
    attribute = widgets.Checkbox(value=False, description="attributions (slower)")
    out = widgets.Output()

    def update(_=None):
        frames_a, clip_a, _ = _clip(cache, manifest, pick_a.value, T)
        frames_b, clip_b, _ = _clip(cache, manifest, pick_b.value, T)
        clip_a, clip_b = clip_a.to(dev), clip_b.to(dev)
        maps, logits = None, None
        with eval_mode(model):
            out_a, out_b = model.features(clip_a), model.features(clip_b)
            if model.has_metric_branch:
                logits, maps = model.metric(out_a.pool5, out_b.pool5, return_maps=True)
        ta, tb = manifest.tracklets[pick_a.value], manifest.tracklets[pick_b.value]
        scores = _pair_scores(model, out_a, out_b, logits)
        same = "same person" if ta.pid == tb.pid else "different persons"
        html = (f"<b>{same}</b> (pid {ta.pid} / {tb.pid}): "
                + ", ".join(f"{k} = {v:.3f}" for k, v in scores.items()))
        items = [html]
        items.append(viz.srm_maps(maps, frames_a, frames_b, title=f"{model.variant}: metric-branch maps")
                     if maps is not None else viz.sample_grid([list(frames_a), list(frames_b)], ["clip a", "clip b"]))
        if attribute.value:
            items.append(viz.attribution_figure(frames_a, explain.explain_pair(model, clip_a, clip_b, methods),
                                                title=f"Attribution of {explain.score_kind(model)} to clip a"))
        show_figures(out, *items, dpi=dpi)

    for w in (pick_a, pick_b, attribute):
        w.observe(lambda ch: _guarded(out, update), names="value")
    _guarded(out, update)
    return widgets.VBox([pick_a, pick_b, attribute, out])


# --------------------------------------------------------------------------- evaluation results

_PER_QUERY_FIELDS = ("query_ids", "gallery_ids", "flags", "scores", "distances")


def per_query_rows(per_query) -> list[dict]:
    """``EvalResult.per_query`` (a ``reidkit.evaluate.PerQuery``, or its ``to_dict()``: arrays
    with one row per query) as a list of ``{"query", "gallery", "flags", "scores", "distances"}``
    dicts of tracklet ids and values, padding (gallery id −1) removed."""
    if per_query is None:
        raise ValueError("the EvalResult has no per_query results (evaluate keeps them unless told not to)")
    d = per_query if isinstance(per_query, Mapping) else {k: getattr(per_query, k, None) for k in _PER_QUERY_FIELDS}
    missing = [k for k in _PER_QUERY_FIELDS if d.get(k) is None]
    if missing:
        raise ValueError(f"per_query lacks {missing}: expected a reidkit.evaluate.PerQuery or its to_dict()")
    rows = []
    for q, g, f, s, dist in zip(*(d[k] for k in _PER_QUERY_FIELDS)):
        keep = [k for k, x in enumerate(g) if int(x) >= 0]  # -1 pads a short gallery
        rows.append({"query": int(q), "gallery": [int(g[k]) for k in keep], "flags": [int(f[k]) for k in keep],
                     "scores": [float(s[k]) for k in keep], "distances": [float(dist[k]) for k in keep]})
    return rows


def _numbers(row) -> tuple[list[float], str]:
    """The number shown above each gallery entry and what it is: M or S where the entry was
    re-scored (``PerQuery.scores`` finite), else the feature distance F."""
    s, d = row["scores"], row["distances"]
    if not np.isfinite(s).any():
        return d, "rank, feature distance F"
    mixed = [sc if np.isfinite(sc) else di for sc, di in zip(s, d)]
    return mixed, "rank, score (M or S)" if np.isfinite(s).all() else "rank, score where re-scored, else distance F"


def query_explorer(eval_result, manifest, cache, top_k: int = 10, query_frames: int = 4,
                   dpi: int = 90) -> "widgets.VBox":
    """Choose a query of an ``EvalResult`` → its frames and its top-``top_k`` gallery tracklets
    with green / red / blue borders (``viz.retrieval_grid``, Fig. 10). "failures only" lists the
    queries whose rank-1 is wrong."""
    rows = per_query_rows(eval_result.per_query)

    def label(i):
        r = rows[i]
        t = manifest.tracklets[manifest.index(r["query"])]
        mark = "✓" if r["flags"] and r["flags"][0] == 1 else "✗"
        return f"{mark} query #{r['query']}  pid {t.pid}  cam {t.camid}"

    failures = widgets.Checkbox(value=False, description="failures only (rank-1 wrong)")
    pick = widgets.Dropdown(options=[(label(i), i) for i in range(len(rows))], description="query",
                            layout=widgets.Layout(width="420px"))
    out = widgets.Output()

    def refilter(_=None):
        keep = [i for i in range(len(rows)) if not failures.value or (rows[i]["flags"][:1] != [1])]
        pick.options = [(label(i), i) for i in keep]  # re-selects the first option → update()
        if not keep:
            show_figures(out, "<i>no query matches the filter</i>")

    def update(_=None):
        if pick.value is None:
            return
        r = rows[pick.value]
        if not r["gallery"]:
            show_figures(out, f"<i>query #{r['query']} has no gallery entries that count</i>")
            return
        qpos = manifest.index(r["query"])
        q_idx = even_frame_indices(manifest, qpos, query_frames)
        gallery, gl = [], []
        for gid in r["gallery"][:top_k]:
            gpos = manifest.index(gid)
            n = manifest.tracklets[gpos].num_frames
            gallery.append(cache.clip(gpos, [n // 2])[0])
            gl.append(f"pid {manifest.tracklets[gpos].pid}")
        k = len(gallery)
        numbers, what = _numbers(r)
        fig = viz.retrieval_grid(cache.clip(qpos, q_idx), gallery, r["flags"][:k],
                                 None if numbers is None else numbers[:k],
                                 query_label=label(pick.value)[2:], gallery_labels=gl,
                                 max_query_frames=query_frames,
                                 title=f"{what}; green = correct, red = wrong, blue = distractor")
        show_figures(out, fig, dpi=dpi)

    failures.observe(lambda ch: _guarded(out, refilter), names="value")
    pick.observe(lambda ch: _guarded(out, update), names="value")
    _guarded(out, update)
    return widgets.VBox([widgets.HBox([pick, failures]), out])
