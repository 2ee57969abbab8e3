"""Figures for the paper's plots and for looking inside the model.

Every function here is pure: arrays (or dicts / dataclasses of arrays) in, a
``matplotlib.figure.Figure`` out. Figures are created through pyplot and closed at once, so
pyplot's global list stays empty and nothing is shown by itself: a notebook displays the
returned figure (last expression or ``display(fig)``), a script calls ``fig.savefig(...)``. Seaborn's style is applied inside
each call through its context managers, never globally at import.

Frames are ``uint8`` arrays ``(H, W, 3)``; a clip is ``(T, H, W, 3)``. ``to_uint8`` turns a
normalised model input ``(T, 3, H, W)`` back into that form.

Which paper figure each function draws:

* ``sample_grid`` — Fig. 8 (dataset samples, one row per dataset);
* ``frame_strip``, ``attention_heatmap``, ``attention_vs_visibility``, ``spread_of_attention``
  — the temporal attention model's ω (Eq. 3, Fig. 3–4);
* ``network_diagram`` — Fig. 2, drawn from the model's own layers and shapes;
* ``srm_maps``, ``srm_pair_comparison`` — the spatial recurrent model (Fig. 5–7);
  ``sweep_impulses`` — Fig. 6, each sweep's measured reach;
* ``cmc_curves`` — Fig. 9; ``retrieval_grid`` / ``retrieval_rows`` — Fig. 10;
* ``training_curves``, ``length_histogram``, ``attribution_figure`` — the kit's own.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import numpy as np
import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.figure import Figure

from reidkit.attention import attention_spread, correlations, flatten, frame_weights
from reidkit.data import MEAN, STD
from reidkit.models.spatial import DIRECTIONS

__all__ = [
    "FLAG_COLORS",
    "to_uint8",
    "channel_norm",
    "mosaic",
    "sample_grid",
    "frame_strip",
    "attention_heatmap",
    "attention_vs_visibility",
    "srm_maps",
    "srm_pair_comparison",
    "cmc_curves",
    "retrieval_grid",
    "retrieval_rows",
    "training_curves",
    "attention_training",
    "occlusion_probe_plot",
    "dose_response_plot",
    "network_diagram",
    "sweep_impulses",
    "length_histogram",
    "spread_of_attention",
    "attribution_figure",
]

# Fig. 10's border colours; -1 (an ignored entry: junk, or same pid and camera) is grey.
FLAG_COLORS = {1: "#2ca02c", 0: "#d62728", 2: "#1f77b4", -1: "#7f7f7f"}


def _figure(**kwargs) -> Figure:
    """A new figure through pyplot, closed at once: pyplot is what hooks figures into Jupyter's
    display (a bare ``Figure()`` shows as text in a notebook), and closing keeps pyplot's global
    list empty, so nothing leaks and nothing is shown twice. The figure stays fully usable
    (``savefig``, ``display``)."""
    fig = plt.figure(**kwargs)
    plt.close(fig)
    return fig


def _styled(fn):
    """Run ``fn`` under seaborn's style and context (scoped, nothing global changes)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with sns.axes_style("white"), sns.plotting_context("notebook", font_scale=0.8):
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- helpers


def to_uint8(clip, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> np.ndarray:
    """Invert the ImageNet normalisation of a model input.

    ``clip``: a float tensor or array shaped ``(..., 3, H, W)`` (a frame, a clip ``(T, 3, H, W)``
    or a batch ``(N, T, 3, H, W)``), normalised as ``(x / 255 - mean) / std``.
    Returns ``uint8`` ``(..., H, W, 3)``, rounded and clipped to [0, 255].
    """
    if hasattr(clip, "detach"):  # a torch tensor, on any device
        clip = clip.detach().float().cpu().numpy()
    x = np.asarray(clip, dtype=np.float32)
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"expected (..., 3, H, W), got shape {x.shape}")
    m = np.asarray(mean, np.float32).reshape(3, 1, 1)
    s = np.asarray(std, np.float32).reshape(3, 1, 1)
    x = (x * s + m) * 255.0
    x = np.moveaxis(x, -3, -1)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def channel_norm(maps, index: int = 0) -> np.ndarray:
    """Aggregate a feature-map volume over channels with the L2 norm, giving ``(T, h, w)``.

    Accepts ``(N, T, C, h, w)`` (takes pair ``index``), ``(T, C, h, w)`` or already ``(T, h, w)``
    (returned as is, in absolute value).
    """
    if hasattr(maps, "detach"):
        maps = maps.detach().float().cpu().numpy()
    m = np.asarray(maps, np.float64)
    if m.ndim == 5:
        m = m[index]
    if m.ndim == 4:
        return np.sqrt((m ** 2).sum(axis=1))
    if m.ndim == 3:
        return np.abs(m)
    raise ValueError(f"expected (N,T,C,h,w), (T,C,h,w) or (T,h,w), got shape {m.shape}")


def _image_axis(ax, image, title=None):
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize="small")


def _as_frames(frames) -> np.ndarray:
    f = np.asarray(frames)
    if f.ndim == 3:
        f = f[None]
    if f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got shape {f.shape}")
    return f


# --------------------------------------------------------------------------- datasets


@_styled
def sample_grid(rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str] | None = None,
                title: str | None = None, cell_size: float = 1.1) -> Figure:
    """Fig. 8: sample frames, one row per dataset (or per identity).

    ``rows``: a list of rows, each a list of ``uint8 (H, W, 3)`` frames (rows may differ in
    length; empty cells are left blank). ``row_labels`` are written at the left of each row.
    The figure has ``len(rows) × max row length`` axes.
    """
    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    if n_rows == 0 or n_cols == 0:
        raise ValueError("sample_grid needs at least one frame")
    h, w = np.asarray(rows[0][0]).shape[:2]
    fig = _figure(figsize=(cell_size * n_cols * w / h + 0.8, cell_size * n_rows + 0.3), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            if c < len(row):
                _image_axis(ax, row[c])
            else:
                ax.axis("off")
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center")
    for ax in axes.flat:
        sns.despine(ax=ax, left=True, bottom=True)
    if title:
        fig.suptitle(title)
    return fig


@_styled
def length_histogram(lengths, bins: int = 40, title: str | None = None, log: bool = False) -> Figure:
    """Tracklet-length distribution: ``lengths`` is one array, or ``{name: array}`` for several
    datasets (overlaid). Legend entries give n, mean, min and max. One axis."""
    series = dict(lengths) if isinstance(lengths, Mapping) else {"tracklets": lengths}
    fig = _figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    all_values = np.concatenate([np.asarray(v, np.float64).ravel() for v in series.values()])
    edges = np.histogram_bin_edges(all_values, bins=bins)
    for name, values in series.items():
        v = np.asarray(values, np.float64).ravel()
        ax.hist(v, bins=edges, alpha=0.6 if len(series) > 1 else 0.9,
                label=f"{name}: n={len(v)}, mean {v.mean():.1f}, min {v.min():.0f}, max {v.max():.0f}")
    ax.set_xlabel("frames per tracklet")
    ax.set_ylabel("tracklets")
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize="small")
    ax.set_title(title or "Tracklet lengths")
    sns.despine(ax=ax)
    return fig


# --------------------------------------------------------------------------- temporal attention


@_styled
def frame_strip(frames, weights=None, visibility=None, title: str | None = None,
                frame_labels: Sequence[str] | None = None) -> Figure:
    """A tracklet's frames with each frame's attention weight and ground-truth visibility.

    ``frames``: ``uint8 (T, H, W, 3)``. ``weights``: ``(T,)`` or the TAM's ``(T, T)`` (then
    averaged over steps, see ``frame_weights``) or None. ``visibility``: ``(T,)`` in [0, 1] or
    None. Axes: T frame axes, plus one bar axis below when weights or visibility are given
    (bars = ω̄_i, dashed line = uniform 1/T, dots = visibility on the same [0, 1] axis).
    """
    frames = _as_frames(frames)
    T, H, W, _ = frames.shape
    w = None if weights is None else frame_weights(weights)
    v = None if visibility is None else np.asarray(visibility, np.float64).ravel()
    for name, arr in (("weights", w), ("visibility", v)):
        if arr is not None and len(arr) != T:
            raise ValueError(f"{name} has {len(arr)} entries for {T} frames")
    has_bars = w is not None or v is not None
    cell = 1.3
    fig = _figure(figsize=(max(T * max(cell * W / H, 0.9), 4) + (1.8 if has_bars else 0), cell + (1.6 if has_bars else 0) + 0.6),
                 layout="constrained")
    if has_bars:
        gs = fig.add_gridspec(2, T, height_ratios=[1.0, 0.9])
        img_axes = [fig.add_subplot(gs[0, t]) for t in range(T)]
        bar_ax = fig.add_subplot(gs[1, :])
    else:
        img_axes = list(np.atleast_1d(fig.subplots(1, T)))
        bar_ax = None
    for t in range(T):
        parts = [frame_labels[t]] if frame_labels is not None else [f"t={t}"]
        if w is not None:
            parts.append(f"ω={w[t]:.2f}")
        if v is not None:
            parts.append(f"vis={v[t]:.2f}")
        _image_axis(img_axes[t], frames[t], "\n".join(parts))
    if bar_ax is not None:
        x = np.arange(T)
        if w is not None:
            bar_ax.bar(x, w, color=sns.color_palette()[0], label="attention ω̄ (mean over steps)")
            bar_ax.axhline(1.0 / T, color="k", ls="--", lw=1, label="uniform 1/T")
        if v is not None:
            bar_ax.plot(x, v, "o-", color=sns.color_palette()[1], label="visibility (ground truth)")
        bar_ax.set_xticks(x)
        bar_ax.set_xlim(-0.5, T - 0.5)
        bar_ax.set_xlabel("frame")
        bar_ax.set_ylabel(" / ".join(n for n, a in (("weight ω̄", w), ("visibility", v)) if a is not None))
        bar_ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
        sns.despine(ax=bar_ax)
    if title:
        fig.suptitle(title)
    return fig


@_styled
def attention_heatmap(attention, title: str | None = None, annot: bool = True) -> Figure:
    """The TAM weights ω (Eq. 3) of one clip as a T×T heatmap: row t = LSTM step, column i =
    frame; each row sums to 1. Uniform weights (all 1/T) are the known failure. Two axes:
    the heatmap and its colour bar."""
    a = np.asarray(attention.detach().cpu() if hasattr(attention, "detach") else attention, np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"attention must be (T, T), got shape {a.shape}")
    T = a.shape[0]
    fig = _figure(figsize=(1.0 + 0.55 * T, 0.6 + 0.5 * T), layout="constrained")
    ax = fig.subplots()
    sns.heatmap(a, ax=ax, annot=annot, fmt=".2f", cmap="viridis", vmin=0.0, square=True,
                cbar_kws={"label": r"$\omega_{t,i}$"}, annot_kws={"fontsize": "x-small"})
    ax.set_xlabel("frame i")
    ax.set_ylabel("LSTM step t")
    ax.set_title(title or f"Temporal attention (uniform = 1/T = {1.0 / T:.2f})")
    return fig


@_styled
def attention_vs_visibility(weights, visibility, labels=None, title: str | None = None,
                            relative: bool = False) -> Figure:
    """Does the attention follow what is visible? Scatter of per-frame weight against
    ground-truth visibility over many tracklets, with a linear regression and Pearson r /
    Spearman ρ in the title (over all frames pooled).

    ``weights`` / ``visibility``: per-tracklet sequences (a list of ``(T,)`` arrays; a
    ``(T, T)`` entry is averaged over steps) or flat arrays of equal length. ``relative``:
    plot T·ω (1 = uniform) so that clips of different lengths compare. ``labels``: optional
    per-frame occlusion types (same structure, strings); adds a box plot of the weights per
    type as a second axis.
    """
    if not isinstance(weights, np.ndarray) or np.asarray(weights).ndim > 1:
        per_clip = [frame_weights(x) for x in weights]
        if relative:
            per_clip = [x * len(x) for x in per_clip]
        w = flatten(per_clip)
    else:
        w = flatten(weights)
    v = flatten(visibility)
    if w.shape != v.shape:
        raise ValueError(f"{w.size} weights but {v.size} visibility values")
    corr = correlations(w, v)
    lab = None
    if labels is not None:
        lab = np.concatenate([np.asarray(x, dtype=object).ravel() for x in labels]) \
            if not isinstance(labels, np.ndarray) else labels.astype(object).ravel()
        if lab.shape != w.shape:
            raise ValueError(f"{lab.size} labels for {w.size} frames")
    fig = _figure(figsize=(9 if lab is not None else 5, 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, 2 if lab is not None else 1))
    ax = axes[0]
    ok = np.isfinite(w) & np.isfinite(v)
    sns.regplot(x=v[ok], y=w[ok], ax=ax, ci=None, scatter_kws={"s": 8, "alpha": 0.4},
                line_kws={"color": "k", "lw": 1.5})
    ax.set_xlabel("visibility (ground truth)")
    ax.set_ylabel("T·ω (1 = uniform)" if relative else "attention weight ω̄")
    ax.set_title(f"Pearson r = {corr['pearson']:.3f}, Spearman ρ = {corr['spearman']:.3f} (n = {corr['n']})",
                 fontsize="small")
    sns.despine(ax=ax)
    if lab is not None:
        bx = axes[1]
        order = sorted({str(x) for x in lab})
        lab_str = np.asarray([str(x) for x in lab])
        groups = [w[(lab_str == o) & np.isfinite(w)] for o in order]
        bx.boxplot(groups, tick_labels=[f"{o}\n(n={len(g)})" for o, g in zip(order, groups)],
                   patch_artist=True, boxprops={"facecolor": "0.85"}, medianprops={"color": "k"})
        bx.set_xlabel("occlusion type")
        bx.set_ylabel(axes[0].get_ylabel())
        sns.despine(ax=bx)
    if title:
        fig.suptitle(title)
    return fig


@_styled
def spread_of_attention(attention_batch, bins: int = 30, title: str | None = None) -> Figure:
    """Did the attention leave uniform? Histograms over clips of (left) the mean per-step
    spread max ω − min ω (0 = uniform) and (right) the normalised entropy H(ω_t)/log T
    (1 = uniform). The title gives the fraction of clips within 1e-3 of uniform.
    ``attention_batch``: ``(N, T, T)``. Two axes."""
    s = attention_spread(attention_batch)
    near_uniform = float(np.mean(s["spread"] < 1e-3))
    fig = _figure(figsize=(8, 3.2), layout="constrained")
    a1, a2 = fig.subplots(1, 2)
    a1.hist(s["spread"], bins=bins, color=sns.color_palette()[0])
    a1.axvline(0.0, color="k", ls="--", lw=1, label="uniform")
    a1.set_xlabel("max ω − min ω (mean over steps)")
    a1.set_ylabel("clips")
    a1.legend(fontsize="small")
    a2.hist(s["entropy"], bins=bins, color=sns.color_palette()[1])
    a2.axvline(1.0, color="k", ls="--", lw=1, label="uniform")
    a2.set_xlabel("entropy / log T (mean over steps)")
    a2.set_ylabel("clips")
    a2.legend(fontsize="small")
    for ax in (a1, a2):
        sns.despine(ax=ax)
    fig.suptitle(title or f"Spread of attention over {len(s['spread'])} clips: "
                          f"{100 * near_uniform:.0f}% within 1e-3 of uniform")
    return fig


# --------------------------------------------------------------------------- spatial recurrent model


def _srm_rows(maps: Mapping, index: int) -> list[tuple[str, np.ndarray]]:
    """The SRM maps to draw, in Fig. 5's order, each reduced to ``(T, h, w)``: the difference
    map, the 1×1 conv (the sweeps' input; CNN+DIFF's only map), the six sweeps, the context."""
    rows = []
    if "difference" in maps:
        rows.append(("difference ‖d‖", channel_norm(maps["difference"], index)))
    if "conv" in maps:
        rows.append(("1×1 conv", channel_norm(maps["conv"], index)))
    for name in DIRECTIONS:
        if name in maps:
            rows.append((name.replace("_", " "), channel_norm(maps[name], index)))
    if "context" in maps:
        rows.append(("contextual", channel_norm(maps["context"], index)))
    if not rows:
        raise ValueError(f"no SRM maps found among keys {sorted(maps)}")
    return rows


def mosaic(stack, gap: int = 1) -> np.ndarray:
    """Lay a time series of maps ``(T, h, w)`` or frames ``(T, h, w, 3)`` side by side with
    ``gap`` blank columns between time steps (NaN for maps, white for frames): one image per
    row keeps figures with many rows cheap to draw."""
    a = np.asarray(stack)
    T, h, w = a.shape[:3]
    fill = 255 if a.dtype == np.uint8 else np.nan
    out = np.full((h, T * w + (T - 1) * gap, *a.shape[3:]), fill, dtype=a.dtype if a.dtype == np.uint8 else np.float64)
    for t in range(T):
        out[:, t * (w + gap): t * (w + gap) + w] = a[t]
    return out


def _row_image(ax, stack, label, gap, **imshow_kwargs):
    """One row of a time mosaic on ``ax``: extent (0, T) in x so that rows of frames and of maps
    (different resolutions) line up; x ticks at each time step."""
    T, w = len(stack), np.asarray(stack).shape[2]
    units = (T * w + (T - 1) * gap) / w
    im = ax.imshow(mosaic(stack, gap), extent=(0, units, 1, 0), aspect="auto", interpolation="nearest",
                   **imshow_kwargs)
    ax.set_xticks([t * (w + gap) / w + 0.5 for t in range(T)], [f"t={t}" for t in range(T)], fontsize="x-small")
    ax.set_yticks([])
    ax.tick_params(length=0)
    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize="small")
    for spine in ax.spines.values():
        spine.set_visible(False)
    return im


MAP_NORM_LABEL = "‖·‖₂ over\nchannels"  # what an SRM map row's colour bar measures


def _draw_map_rows(fig, axes, rows, shared=None):
    """``rows`` = [(label, (T, h, w))] on ``axes`` (one each), a colour bar per row, labelled.
    ``shared``: {label: (vmin, vmax)} colour limits, else 0 … the row's max."""
    for ax, (label, m) in zip(axes, rows):
        vmin, vmax = shared[label] if shared and label in shared else (0.0, float(m.max()) or 1.0)
        im = _row_image(ax, m, label, gap=1, cmap="magma", vmin=vmin, vmax=vmax)
        cbar = fig.colorbar(im, ax=ax, pad=0.01, aspect=6, fraction=0.04)
        cbar.set_label(MAP_NORM_LABEL, fontsize="x-small")


def _frame_rows(axes, frame_sets, map_width: int | None = None):
    """Frame mosaics; the gap is scaled so that it matches a 1-cell gap of maps ``map_width`` wide."""
    for ax, (label, frames) in zip(axes, frame_sets):
        frames = _as_frames(frames)
        gap = max(1, round(frames.shape[2] / map_width)) if map_width else max(1, frames.shape[2] // 16)
        _row_image(ax, frames, label, gap)


def _row_figure(n_rows: int, T: int, aspect: float) -> tuple[Figure, np.ndarray]:
    """A figure of ``n_rows`` full-width rows, each a time mosaic of T cells of height/width
    ``aspect``."""
    width = min(1.0 * T, 12.0) + 2.0
    cell = (width - 2.0) / T
    fig = _figure(figsize=(width, n_rows * max(cell * aspect, 0.6) + 0.6), layout="constrained")
    return fig, np.atleast_1d(fig.subplots(n_rows, 1, squeeze=False)[:, 0])


@_styled
def srm_maps(maps: Mapping, frames_a=None, frames_b=None, title: str | None = None, index: int = 0) -> Figure:
    """Fig. 5–7 on real data: the spatial recurrent model's maps for one pair.

    ``maps``: the dict from ``SpatialRecurrentModel.forward(..., return_maps=True)`` (or
    ``JSTRNN.metric(a, b, return_maps=True)[1]``): the difference map ``d = pool5(a) − pool5(b)``
    (key ``difference``), the six sweeps (``time_fwd`` … ``height_bwd``) and the contextual
    feature (key ``context``); for the ``DifferenceHead`` (CNN+DIFF) its 1×1 conv map; each ``(N, T, C, h, w)`` (pair ``index`` is drawn) or
    ``(T, C, h, w)``. Every map is reduced to one value per location by the L2 norm over
    channels. One row (axis) per item, time steps side by side: the two clips' frames (if
    given), then one row per map with its own colour bar.
    """
    rows = _srm_rows(maps, index)
    T, h, w = rows[0][1].shape
    frame_sets = [(lab, f) for lab, f in (("clip a", frames_a), ("clip b", frames_b)) if f is not None]
    fig, axes = _row_figure(len(frame_sets) + len(rows), T, h / w)
    _frame_rows(axes[: len(frame_sets)], frame_sets, w)
    _draw_map_rows(fig, axes[len(frame_sets):], rows)
    fig.suptitle(title or "Spatial recurrent model maps (L2 norm over channels)")
    return fig


@_styled
def srm_pair_comparison(pos_maps: Mapping, neg_maps: Mapping, pos_frames=None, neg_frames=None,
                        keys: Sequence[str] = ("difference", "context"), pos_score: float | None = None,
                        neg_score: float | None = None, title: str | None = None, index: int = 0) -> Figure:
    """A positive pair against a negative pair, same colour scale per map kind, so the eye
    compares magnitudes: a same-person pair should leave a weaker difference map.

    ``pos_maps`` / ``neg_maps``: SRM ``return_maps`` dicts (see ``srm_maps``). ``keys``: which
    maps to show ("difference", "context", "conv" or direction names). ``pos_frames`` /
    ``neg_frames``: optional ``(a_frames, b_frames)`` tuples drawn above each block. Scores
    (e.g. M or S) go into the block labels. One row (axis) per frame set and per key, time
    steps side by side, and one colour bar per map row.
    """
    def pick(maps, key):
        if key not in maps:
            raise KeyError(f"map {key!r} not in {sorted(maps)}")
        return channel_norm(maps[key], index)

    blocks = []
    for name, maps, frames, score in (("positive", pos_maps, pos_frames, pos_score),
                                      ("negative", neg_maps, neg_frames, neg_score)):
        lab = name if score is None else f"{name} ({score:.3f})"
        blocks.append((lab, frames, [(f"{lab}\n{k}", pick(maps, k), k) for k in keys]))
    T, h, w = blocks[0][2][0][1].shape
    limits = {k: (0.0, max(float(m.max()) for _, _, rows in blocks for _, m, kk in rows if kk == k) or 1.0)
              for k in keys}
    n = sum((2 if fr is not None else 0) + len(rows) for _, fr, rows in blocks)
    fig, axes = _row_figure(n, T, h / w)
    r = 0
    for lab, frames, rows in blocks:
        if frames is not None:
            _frame_rows(axes[r: r + 2], [(f"{lab}\nclip a", frames[0]), (f"{lab}\nclip b", frames[1])], w)
            r += 2
        _draw_map_rows(fig, axes[r: r + len(rows)], [(label, m) for label, m, _ in rows],
                       shared={label: limits[k] for label, _, k in rows})
        r += len(rows)
    fig.suptitle(title or "SRM maps: positive vs negative pair (shared colour scale per map)")
    return fig


# --------------------------------------------------------------------------- evaluation


@_styled
def cmc_curves(curves: Mapping[str, np.ndarray], max_rank: int = 20, title: str | None = None) -> Figure:
    """Fig. 9: CMC curves, one line per method, rank 1 … ``max_rank``.

    ``curves``: ``{name: cmc}`` with ``cmc[k]`` = matching rate at rank k+1, as a fraction
    (all values ≤ 1, then shown in %) or already in %. The legend gives each rank-1. One axis,
    its y axis always 0–100 %.
    """
    fig = _figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for name, cmc in curves.items():
        c = np.asarray(cmc, np.float64).ravel()[:max_rank]
        if c.size and c.max() <= 1.0 + 1e-9:
            c = c * 100.0
        ranks = np.arange(1, len(c) + 1)
        ax.plot(ranks, c, marker="o", ms=3, label=f"{name} (rank-1 {c[0]:.1f}%)")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 101)  # the whole scale: a curve near the top is not stretched into a large gap
    ax.set_xlim(1, max_rank)
    ax.set_xticks([1] + list(range(5, max_rank + 1, 5)))
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(alpha=0.3)
    ax.set_title(title or "CMC")
    sns.despine(ax=ax)
    return fig


def _representative(frames) -> np.ndarray:
    """One frame standing for a sequence (Fig. 10): the middle one of a clip."""
    f = np.asarray(frames)
    return f[len(f) // 2] if f.ndim == 4 else f


def _set_border(ax, color, width=4.0):
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(color)
        spine.set_linewidth(width)


def _draw_retrieval_row(fig, gs, r, query_frames, gallery_frames, flags, scores, n_q, query_label,
                        gallery_labels):
    q = _as_frames(query_frames)
    show = np.linspace(0, len(q) - 1, min(n_q, len(q))).round().astype(int)
    for j in range(n_q):
        ax = fig.add_subplot(gs[r, j])
        if j < len(show):
            _image_axis(ax, q[show[j]])
            _set_border(ax, "black", 1.0)
        else:
            ax.axis("off")
        if j == 0 and query_label is not None:
            ax.set_title(query_label, fontsize="small", loc="left")
    for k, (g, flag) in enumerate(zip(gallery_frames, flags)):
        ax = fig.add_subplot(gs[r, n_q + 1 + k])
        _image_axis(ax, _representative(g))
        flag = int(flag)
        _set_border(ax, FLAG_COLORS.get(flag, "black"))
        parts = [f"{k + 1}"]
        if scores is not None and np.isfinite(float(scores[k])):
            parts.append(f"{float(scores[k]):.2f}")
        if gallery_labels is not None:
            parts.append(str(gallery_labels[k]))
        ax.set_title(" ".join(parts), fontsize="x-small")


@_styled
def retrieval_grid(query_frames, gallery_frames: Sequence, flags: Sequence[int], scores=None,
                   query_label: str | None = None, gallery_labels: Sequence | None = None,
                   max_query_frames: int = 4, title: str | None = None) -> Figure:
    """Fig. 10 for one query: the query's frames, then the ranked gallery, each gallery entry
    shown by one frame (the middle one of a clip) with a border: green = same person (flag 1),
    red = wrong (0), blue = distractor (2), grey = ignored (-1).

    ``query_frames``: ``(T, H, W, 3)`` (up to ``max_query_frames`` evenly spaced are shown) or
    one frame. ``gallery_frames``: a list of frames or clips, best first. ``scores``: optional
    one per gallery entry (shown above it with the rank). Axes: ``max_query_frames`` (or fewer)
    query axes + one per gallery entry.
    """
    return _retrieval([query_frames], [gallery_frames], [flags], None if scores is None else [scores],
                      [query_label], None if gallery_labels is None else [gallery_labels],
                      max_query_frames, title)


@_styled
def retrieval_rows(queries: Sequence, galleries: Sequence[Sequence], flags: Sequence[Sequence[int]],
                   scores: Sequence | None = None, query_labels: Sequence[str] | None = None,
                   max_query_frames: int = 4, title: str | None = None) -> Figure:
    """Fig. 10 for several queries: one ``retrieval_grid`` row per query (same arguments, one
    list entry per query)."""
    return _retrieval(queries, galleries, flags, scores, query_labels or [None] * len(queries), None,
                      max_query_frames, title)


def _retrieval(queries, galleries, flags, scores, query_labels, gallery_labels, max_query_frames, title):
    if not (len(queries) == len(galleries) == len(flags)):
        raise ValueError("one gallery list and one flag list per query")
    for g, f in zip(galleries, flags):
        if len(g) != len(f):
            raise ValueError(f"{len(g)} gallery entries but {len(f)} flags")
    n_q = min(max_query_frames, max(len(_as_frames(q)) for q in queries))
    n_g = max(len(g) for g in galleries)
    h, w = _as_frames(queries[0]).shape[1:3]
    cols = n_q + 1 + n_g  # an empty spacer column separates the query from the gallery
    fig = _figure(figsize=(0.9 * cols * w / h * 1.6 + 0.3, 1.7 * len(queries) + 0.4), layout="constrained")
    gs = fig.add_gridspec(len(queries), cols, width_ratios=[1] * n_q + [0.25] + [1] * n_g)
    for r in range(len(queries)):
        _draw_retrieval_row(fig, gs, r, queries[r], galleries[r], flags[r],
                            None if scores is None else scores[r], n_q, query_labels[r],
                            None if gallery_labels is None else gallery_labels[r])
    fig.suptitle(title or "Retrieval (green = correct, red = wrong, blue = distractor)", fontsize="small")
    return fig


# --------------------------------------------------------------------------- training


CURVE_LABELS = {"loss": "total loss", "triplet": "triplet loss (feature branch)",
                "bce": "pair loss, BCE (metric branch)"}


@_styled
def training_curves(history, keys: Sequence[str] = ("loss", "triplet", "bce"), x: str | None = None,
                    title: str | None = None) -> Figure:
    """Loss curves from a ``Trainer`` history: a list of dicts (one per step or epoch) or a
    dict of lists. One axis per key present in the history (missing keys are skipped). The x
    axis is ``x`` if given, else ``step`` or ``epoch`` when present, else the entry index; the
    y axis is labelled with the loss (``CURVE_LABELS``, else the key)."""
    if isinstance(history, Mapping):
        cols = {k: np.asarray(v, np.float64) for k, v in history.items()}
    else:
        names = {k for row in history for k in row}
        cols = {k: np.asarray([row.get(k, np.nan) for row in history], np.float64) for k in names}
    present = [k for k in keys if k in cols]
    if not present:
        raise ValueError(f"none of {tuple(keys)} in history keys {sorted(cols)}")
    if x is None:
        x = next((k for k in ("step", "epoch") if k in cols), None)
    xs = cols[x] if x is not None else np.arange(len(cols[present[0]]))
    fig = _figure(figsize=(3.6 * len(present), 3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(present)))
    for ax, k in zip(axes, present):
        y = cols[k]
        ok = np.isfinite(y)
        ax.plot(xs[ok], y[ok], lw=1.2)
        ax.set_title(k)
        ax.set_xlabel(x or "entry")
        ax.set_ylabel(CURVE_LABELS.get(k, k))
        ax.grid(alpha=0.3)
        sns.despine(ax=ax)
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------- attributions


@_styled
def attribution_figure(frames, attributions: Mapping, title: str | None = None, alpha: float = 0.55,
                       clip_percentile: float = 99.0) -> Figure:
    """Which frames (and where) drove the score (see ``reidkit.explain``).

    ``frames``: ``uint8 (T, H, W, 3)``. ``attributions``: ``{method: result}`` where a result
    has ``frame_importance`` ``(T,)`` and ``maps`` ``(T, H, W)`` (an ``explain.Attribution``,
    or a dict with those keys); ``maps`` may be None (importance only). Rows (one axis each,
    time steps side by side): the frames, one overlay per method with maps (signed maps in a
    diverging colour map centred on 0), then a bar chart of each method's frame importance
    divided by its largest absolute value (signs kept).

    Pixel attributions are heavy-tailed (Integrated Gradients puts most of its mass on a few
    pixels), so a colour scale up to the largest value leaves nearly every pixel invisible. Each
    overlay's scale is symmetric, ±(the ``clip_percentile`` percentile of |value|) of that
    method's maps (0 … that value for non-negative maps such as Grad-CAM's); larger values
    saturate, and the colour bar's label says so.
    """
    frames = _as_frames(frames)
    T, H, W = frames.shape[:3]

    def get(res, name):
        return res.get(name) if isinstance(res, Mapping) else getattr(res, name, None)

    with_maps = [(m, np.asarray(get(r, "maps"), np.float64)) for m, r in attributions.items()
                 if get(r, "maps") is not None]
    n = 1 + len(with_maps) + 1
    width = min(1.0 * T, 12.0) + 2.0
    row_h = max((width - 2.0) / T * H / W, 0.6)
    fig = _figure(figsize=(width, row_h * (n - 1) + 2.2), layout="constrained")
    axes = fig.subplots(n, 1, squeeze=False, height_ratios=[row_h] * (n - 1) + [1.6])[:, 0]
    gap = max(1, W // 16)
    _frame_rows(axes[:1], [("frames", frames)])
    for ax, (method, maps) in zip(axes[1:], with_maps):
        if maps.shape != (T, H, W):
            raise ValueError(f"{method}: maps must be (T, H, W) = {(T, H, W)}, got {maps.shape}")
        lim = float(np.percentile(np.abs(maps), clip_percentile)) or float(np.abs(maps).max()) or 1.0
        signed = maps.min() < 0
        _row_image(ax, frames, method, gap)
        units = (T * W + (T - 1) * gap) / W
        im = ax.imshow(mosaic(maps, gap), extent=(0, units, 1, 0), aspect="auto", alpha=alpha,
                       cmap="RdBu_r" if signed else "magma", vmin=-lim if signed else 0.0, vmax=lim)
        cbar = fig.colorbar(im, ax=ax, pad=0.01, aspect=6, fraction=0.04)
        cbar.set_label(f"per pixel\n(saturates at {'±' if signed else ''}{lim:.2g},\n"
                       f"p{clip_percentile:g} of |·|)", fontsize="x-small")
    bar_ax = axes[-1]
    names = list(attributions)
    bw = 0.8 / max(len(names), 1)
    for j, m in enumerate(names):
        imp = np.asarray(get(attributions[m], "frame_importance"), np.float64)
        scale = float(np.abs(imp).max()) or 1.0
        bar_ax.bar(np.arange(T) + (j - (len(names) - 1) / 2) * bw, imp / scale, width=bw, label=m)
    bar_ax.axhline(0, color="k", lw=0.8)
    bar_ax.set_xticks(np.arange(T))
    bar_ax.set_xlim(-0.5, T - 0.5)
    bar_ax.set_xlabel("frame")
    bar_ax.set_ylabel("importance / max |·|")
    bar_ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    sns.despine(ax=bar_ax)
    fig.suptitle(title or "Attribution of the pair score to the frames of clip a")
    return fig


@_styled
def attention_training(steps: Sequence[Mapping], title: str | None = None) -> Figure:
    """How the TAM trained: triplet loss, entropy of ω (1 = uniform) and the gradient norm
    reaching the attention sub-net, against the optimiser step (``history.json``'s ``steps``)."""
    rows = [r for r in steps if "attention_entropy" in r]
    if not rows:
        raise ValueError("no attention_entropy in the step history: the run has no TAM, or predates the logging")
    x = [r["step"] for r in rows]
    fig = _figure(figsize=(10, 3), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, key, label in zip(axes, ("triplet", "attention_entropy", "attention_grad_norm"),
                              ("triplet loss", "entropy of ω / log T", "‖∇ attention sub-net‖")):
        ax.plot(x, [r[key] for r in rows], marker="o", ms=2)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        sns.despine(ax=ax)
    axes[2].set_yscale("log")
    if title:
        fig.suptitle(title)
    return fig


@_styled
def occlusion_probe_plot(probe: Mapping, T: int, title: str | None = None) -> Figure:
    """The controlled probe: relative weight T·ω̄ of the occluded and of the untouched frames
    against the number k of occluded frames, one panel per kind of occlusion (1 = uniform)."""
    kinds = list(probe)
    fig = _figure(figsize=(4.2 * len(kinds), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(kinds)))
    for ax, kind in zip(axes, kinds):
        ks = sorted(int(k) for k in probe[kind])
        occ = [probe[kind][k]["occluded"] if k in probe[kind] else probe[kind][str(k)]["occluded"] for k in ks]
        clean = [probe[kind][k]["clean"] if k in probe[kind] else probe[kind][str(k)]["clean"] for k in ks]
        ax.plot(ks, [np.nan if v is None else v for v in occ], marker="o", color="#d62728", label="occluded frames")
        ax.plot(ks, [np.nan if v is None else v for v in clean], marker="o", color="#2ca02c", label="untouched frames")
        ax.axhline(1.0, color="grey", ls="--", lw=1, label="uniform (1/T each)")
        ax.set_xticks(ks)
        ax.set_xlabel(f"frames occluded (of T = {T})")
        ax.set_ylabel("relative weight T·ω̄")
        ax.set_title(f"{kind}")
        ax.grid(alpha=0.3)
        sns.despine(ax=ax)
    axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


@_styled
def dose_response_plot(rows: Sequence[Mapping], title: str | None = None) -> Figure:
    """Rank-1 of each method and the TAM's ρ(T·ω̄, visibility) against the occlusion level."""
    levels = list(dict.fromkeys(r["occlusion"] for r in rows))
    fig = _figure(figsize=(9, 3.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for method in dict.fromkeys(r["method"] for r in rows):
        y = [next((r["rank1"] for r in rows if r["method"] == method and r["occlusion"] == lv), np.nan) for lv in levels]
        ax1.plot(levels, y, marker="o", label=method)
        rho = [next((r.get("spearman_rho", np.nan) for r in rows if r["method"] == method and r["occlusion"] == lv),
                    np.nan) for lv in levels]
        if np.isfinite(np.asarray(rho, float)).any():
            ax2.plot(levels, rho, marker="o", label=method)
    ax1.set_ylabel("rank-1 (%)")
    ax2.set_ylabel("Spearman ρ(T·ω̄, visibility)")
    for ax in (ax1, ax2):
        ax.set_xlabel("occlusion level of the synthetic benchmark")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        sns.despine(ax=ax)
    if title:
        fig.suptitle(title)
    return fig


def _shape(shape) -> str:
    return "×".join(str(x) for x in shape)


@_styled
def network_diagram(arch: Mapping, title: str | None = None) -> Figure:
    """Fig. 2 from ``JSTRNN.layer_shapes()``: the shared CNN (every layer with its per-frame output
    shape), then the feature branch (fc7 of T frames → temporal model → F(x)) and the metric
    branch (pool5 of two clips → difference → head → M), joined by S of Eq. 2. Nothing is typed
    in: change the config and the figure follows."""
    cnn, T = list(arch["cnn"]), arch["T"]
    fig = _figure(figsize=(12.5, 4.6))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 40)
    ax.axis("off")

    def box(x, y, w, h, text, color):
        ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=color, edgecolor="#444", linewidth=0.8))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=7.5)

    def arrow(x0, y0, x1, y1):
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color="#444", lw=0.8))

    # the shared CNN, one column per layer (conv/pool up to pool5, then fc6/fc7 on the feature branch)
    conv = [(n, s) for n, s in cnn if not n.startswith("fc")]
    fcs = [(n, s) for n, s in cnn if n.startswith("fc")]
    step = 50 / max(1, len(conv))
    for i, (name, shape) in enumerate(conv):
        box(1 + i * step, 17, step - 1.2, 7, f"{name}\n{_shape(shape)}", "#dbe9f6" if name != "input" else "#eeeeee")
        if i:
            arrow(1 + i * step - 1.2, 20.5, 1 + i * step, 20.5)
    ax.text(26, 26, f"shared CaffeNet, run on each of the T = {T} frames (per-frame output shapes)",
            ha="center", fontsize=8)
    x_pool5 = 1 + (len(conv) - 1) * step + step - 1.2
    # feature branch
    if arch["temporal"] is not None:
        x = x_pool5 + 1.5
        for name, shape in fcs:
            box(x, 29, 7, 6, f"{name}\n{_shape(shape)}", "#dbe9f6")
            arrow(x + 7, 32, x + 8.2, 32)
            x += 8.2
        arrow(x_pool5, 23, x_pool5 + 1.5, 31)
        box(x, 29, 13, 6, f"{arch['temporal']}\nover the T fc7 vectors", "#fde2c8")
        box(x + 15, 29, 8, 6, f"F(x)\n{arch['feature_dim']}-d", "#fff3b0")
        arrow(x + 13, 32, x + 15, 32)
    # metric branch
    if arch["head"] is not None:
        pool5 = _shape(arch["pool5"])
        box(x_pool5 + 1.5, 5, 11, 7, f"pool5 of clips\na and b, {pool5}", "#dbe9f6")
        arrow(x_pool5, 18, x_pool5 + 1.5, 10)
        box(x_pool5 + 14, 5, 8, 7, "d = a − b", "#e4d7f5")
        arrow(x_pool5 + 12.5, 8.5, x_pool5 + 14, 8.5)
        srm = arch["srm"]
        head = (f"{arch['head']}\n1×1 conv → {srm['in']}, six LSTM\nsweeps ({srm['hidden']} each),\n"
                f"1×1 conv → {srm['out']}, FC" if arch["head"] == "SpatialRecurrentModel"
                else f"{arch['head']}\n1×1 conv → {srm['in']}, FC")
        box(x_pool5 + 23.5, 2, 13, 13, head, "#e4d7f5")
        arrow(x_pool5 + 22, 8.5, x_pool5 + 23.5, 8.5)
        box(x_pool5 + 38, 5, 6, 7, "M\n= σ(logit)", "#fff3b0")
        arrow(x_pool5 + 36.5, 8.5, x_pool5 + 38, 8.5)
    if arch["temporal"] is not None and arch["head"] is not None:
        box(90, 17, 9.5, 7, f"S = 1/(1+F)\n+ {arch['lam']:g}·M (Eq. 2)", "#c8f0c8")
        arrow(x + 19, 29, 93, 24)
        arrow(x_pool5 + 41, 12, 93, 17)
    fig.suptitle(title or f"The network of Fig. 2 as built for variant {arch['variant']!r}", y=0.99, fontsize=10)
    return fig


@_styled
def sweep_impulses(responses: Mapping, at: Sequence[int], title: str | None = None) -> Figure:
    """Fig. 6, measured: for each of the six sweeps (``SpatialRecurrentModel.impulse_response``),
    where an impulse at ``at`` = (t, y, x) changes the sweep's output, one panel of T frames
    each (``mosaic``); the impulse's location is marked."""
    names = [n for n in DIRECTIONS if n in responses]
    T, h, w = np.asarray(responses[names[0]]).shape
    fig, axes = _row_figure(len(names), T, h / w)
    for ax, name in zip(axes, names):
        m = np.asarray(responses[name], dtype=np.float64)
        _row_image(ax, m, name.replace("_", " "), gap=1, cmap="magma", vmin=0.0, vmax=float(m.max()) or 1.0)
        t, y, x = at
        ax.plot([t * (w + 1) / w + (x + 0.5) / w], [(y + 0.5) / h], marker="s", mfc="none", mec="#39d353", ms=7)
    fig.suptitle(title or f"Reach of each sweep: output change from one impulse at t={at[0]}, y={at[1]}, x={at[2]}")
    return fig


def learning_curves(curves: Mapping[str, Mapping], title: str | None = None) -> Figure:
    """Validation rank-1 against training steps, one line per method: the mean over seeds with
    the min–max range shaded (``reidkit.ablate.learning_curves``'s dict)."""
    fig = _figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for name, c in curves.items():
        steps = np.asarray(c["steps"])
        line, = ax.plot(steps, c["mean"], marker="o", ms=3, label=f"{name} ({len(c['per_seed'])} seeds)")
        ax.fill_between(steps, c["min"], c["max"], color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xlabel("training steps")
    ax.set_ylabel("validation rank-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(alpha=0.3)
    ax.set_title(title or "learning curves (held-out training identities)")
    sns.despine(ax=ax)
    return fig
