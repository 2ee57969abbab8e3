"""Does the temporal attention (Eq. 3) look past degraded frames? Measurements for lesson 4.

Per-clip analysis of ω: :func:`frame_weights` (one weight per frame), :func:`attention_spread`
(distance from uniform: spread and normalised entropy), :func:`row_variation` (does ω_t change
with the step t?) and :func:`correlations` (Pearson r and Spearman ρ), which the figures in
``viz`` draw; :func:`training_dynamics` summarises how the attention trained from the logged
steps. The tools that read ground-truth visibility read it only to *measure* (training never
sees it):

- :func:`visibility_stats` — how the TAM's per-frame weight T·ω̄_i relates to each frame's
  ground-truth visibility over many clips: Spearman ρ over all frames and over the frames of
  clips that hold a degraded frame, the mean relative weight of frames below 0.5 visibility
  (1 = the uniform weight 1/T), the spread and entropy of ω; :func:`low_visibility_discount`
  puts a bootstrap interval on how much those frames are discounted.
- :func:`fc7_diagnostics` and :func:`visibility_oracle` — do degraded frames look different to
  the CNN (fc7 of every frame, :func:`tracklet_fc7`), and what would weighting the frames by
  their true visibility buy over plain averaging (the room the TAM has)?
- :func:`occlusion_probe` — the controlled experiment behind the paper's Fig. 1: take clean
  test clips, occlude k of their T frames (blanked to grey, or covered by a patch of another
  clip, as ``data.erase_frames`` does), and measure where ω moves.
- :func:`dose_response` — train CNN (averaging) and CNN+TAM on datasets of increasing
  occlusion, and report rank-1 and the attention statistics of each (slow: the ``full``
  report profile). Its JSON records the config and the code version (reidkit's version and
  the git commit), so a lesson shows a stored result only when it was made with the config
  the lesson would run and by this version of reidkit (:func:`find_result`).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats as sps

from reidkit import __version__
from reidkit.config import Config
from reidkit.data import FrameCache, Manifest, clip_visibility, erase_frames, even_frame_indices, normalize_clips
from reidkit.evaluate import even_clip_outputs, evaluate
from reidkit.files import write_json
from reidkit.lessons import git_info
from reidkit.metrics import cmc_map
from reidkit.models import METHOD_NAMES, eval_mode
from reidkit.significance import Interval
from reidkit.train import Trainer

__all__ = ["DEGRADED", "frame_weights", "attention_spread", "row_variation", "flatten", "correlations",
           "visibility_stats", "low_visibility_discount", "training_dynamics", "test_people", "tracklet_fc7",
           "fc7_diagnostics", "visibility_oracle", "clean_positions", "occlusion_probe", "dose_response",
           "code_version", "find_result"]

DEGRADED = 0.7  # a clip "holds a degraded frame" when one of its frames is less than 70 % visible


def frame_weights(attention) -> np.ndarray:
    """One weight per frame from the TAM weights: ``(T,)`` as is, ``(T, T)`` averaged over the
    LSTM steps t (rows), i.e. ``ω̄_i = (1/T) Σ_t ω_{t,i}``; sums to 1 like each row."""
    a = np.asarray(attention, dtype=np.float64)
    if a.ndim == 1:
        return a
    if a.ndim == 2:
        return a.mean(axis=0)
    raise ValueError(f"attention must be (T,) or (T, T), got shape {a.shape}")


def attention_spread(attention_batch) -> dict[str, np.ndarray]:
    """How far the TAM weights are from uniform, per clip.

    ``attention_batch``: ``(N, T, T)`` (or a list of ``(T, T)``; rows = steps, each a
    distribution over the T frames). Returns per-clip arrays, each averaged over the steps:
    ``spread`` = max_i ω_{t,i} − min_i ω_{t,i} (0 for uniform weights) and ``entropy`` =
    H(ω_t) / log T (1 for uniform weights, 0 for one-hot).
    """
    a = np.stack([np.asarray(x, np.float64) for x in attention_batch]) if not hasattr(
        attention_batch, "shape") else np.asarray(attention_batch, np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"expected (N, T, T), got shape {a.shape}")
    T = a.shape[-1]
    spread = (a.max(-1) - a.min(-1)).mean(-1)
    p = np.clip(a, 1e-12, None)
    ent = -(a * np.log(p)).sum(-1) / np.log(T) if T > 1 else np.ones(a.shape[:2])
    return {"spread": spread, "entropy": ent.mean(-1)}


def row_variation(attention_batch) -> np.ndarray:
    """Does ω depend on the step t? Per clip, ``max_{t,i} |ω_{t,i} − (1/T) Σ_s ω_{s,i}|``: the
    largest difference between a row of the T×T map and the mean of its rows (0 when every
    step weights the frames alike). ``attention_batch``: ``(N, T, T)``; returns ``(N,)`` in the
    input's float type."""
    a = np.asarray(attention_batch)
    if a.ndim != 3:
        raise ValueError(f"expected (N, T, T), got shape {a.shape}")
    return np.abs(a - a.mean(axis=1, keepdims=True)).max(axis=(1, 2))


def flatten(values) -> np.ndarray:
    """A flat float array from an array or a list of per-tracklet arrays."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64).ravel()
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in values]) if len(values) else np.zeros(0)


def correlations(x, y) -> dict[str, float]:
    """Pearson r and Spearman ρ of two equally long sequences (flattened), NaN if undefined."""
    x, y = flatten(x), flatten(y)
    if x.shape != y.shape:
        raise ValueError(f"lengths differ: {x.shape} vs {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "n": int(len(x))}
    return {"pearson": float(sps.pearsonr(x, y)[0]), "spearman": float(sps.spearmanr(x, y)[0]),
            "n": int(len(x))}


def visibility_stats(attention, visibility) -> dict:
    """Attention against visibility for clips of T frames.

    ``attention`` (N, T, T) with rows ω_t; ``visibility`` (N, T). Per frame the relative weight
    is T·ω̄_i (ω̄_i = mean over the steps t; 1 = uniform). Returns plain floats: ``spearman_rho``
    (all frames), ``spearman_rho_degraded_clips`` (frames of clips with a frame < ``DEGRADED``),
    ``relative_weight_visibility_below_0.5`` / ``_above_0.9`` (None without such frames),
    ``mean_spread`` (max−min of ω_t, averaged), ``mean_entropy`` (H(ω_t)/log T), and counts.
    """
    a = np.asarray(attention, np.float64)
    v = np.asarray(visibility, np.float64)
    if a.ndim != 3 or a.shape[1] != a.shape[2] or v.shape != a.shape[:2]:
        raise ValueError(f"expected attention (N, T, T) and visibility (N, T), got {a.shape} and {v.shape}")
    T = a.shape[-1]
    rel = a.mean(axis=1) * T
    ok = np.isfinite(v)

    def rho(mask):
        x, y = rel[mask], v[mask]
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return float("nan")
        return float(sps.spearmanr(x, y)[0])

    degraded_clip = (np.where(ok, v, 1.0) < DEGRADED).any(axis=1)
    low, high = ok & (v < 0.5), ok & (v > 0.9)
    spread = attention_spread(a)
    return {
        "spearman_rho": rho(ok),
        "spearman_rho_degraded_clips": rho(ok & degraded_clip[:, None]),
        "relative_weight_visibility_below_0.5": float(rel[low].mean()) if low.any() else None,
        "relative_weight_visibility_above_0.9": float(rel[high].mean()) if high.any() else None,
        "mean_spread": float(spread["spread"].mean()),
        "mean_entropy": float(spread["entropy"].mean()),
        "num_clips": int(len(a)), "num_degraded_clips": int(degraded_clip.sum()),
        "num_frames_below_0.5": int(low.sum()), "T": int(T),
    }


def low_visibility_discount(attention, visibility, below: float = 0.5, n_boot: int = 2000,
                            seed: int = 0) -> Interval | None:
    """How much the TAM discounts frames under ``below`` visibility, in % of the uniform weight.

    Per clip that holds such frames, their mean relative weight T·ω̄_i (``attention`` (N, T, T),
    ``visibility`` (N, T)); the estimate is ``(1 − mean over those clips) × 100`` (positive: the
    frames get less than the uniform weight), with a 95 % percentile bootstrap interval that
    resamples the clips. None when no clip holds such a frame.
    """
    a = np.asarray(attention)
    T = a.shape[-1]
    low = []  # per clip: the mean relative weight of its frames under ``below`` visible
    for w_row, v_row in zip(a.mean(axis=1) * T, visibility):
        mask = np.asarray(v_row) < below
        if mask.any():
            low.append(float(w_row[mask].mean()))
    if not low:
        return None
    boot = np.random.default_rng(seed).choice(np.asarray(low), size=(n_boot, len(low))).mean(axis=1)
    lo, hi = np.percentile((1 - boot) * 100, [2.5, 97.5])
    return Interval(float((1 - np.mean(low)) * 100), float(lo), float(hi), 0.95, n_boot)


def training_dynamics(steps_log) -> dict[str, float]:
    """How the attention trained, from the trainer's logged steps (``history.json``'s ``steps``).

    Of the logged steps that carry attention statistics (models with the TAM), the first and the
    last third (at least one step each): the mean norm of the gradient reaching the attention
    sub-net (``first_grad``, ``last_grad``), the mean normalised entropy of ω (``first_entropy``,
    ``last_entropy``) and the mean triplet loss of the last third (``last_triplet``). Empty when
    no step carries them.
    """
    rows = [r for r in steps_log if "attention_entropy" in r]
    if not rows:
        return {}
    third = max(1, len(rows) // 3)

    def mean(key, part):
        return float(np.mean([r[key] for r in part]))

    return {"first_grad": mean("attention_grad_norm", rows[:third]),
            "last_grad": mean("attention_grad_norm", rows[-third:]),
            "first_entropy": mean("attention_entropy", rows[:third]),
            "last_entropy": mean("attention_entropy", rows[-third:]),
            "last_triplet": mean("triplet", rows[-third:])}


def test_people(manifest, split: int = 0) -> np.ndarray:
    """Manifest positions of the real-person test tracklets (query + gallery, pid >= 1): the
    clips the attention is measured on (distractors and junk have no person to look at)."""
    s = manifest.split(split)
    test = manifest.positions(s.query + s.gallery)
    return test[manifest.pids[test] >= 1]


test_people.__test__ = False  # a library function, not a test: tell pytest not to collect it


def tracklet_fc7(model, manifest, cache, position: int, device="cpu", chunk: int = 64,
                 memo: dict | None = None) -> torch.Tensor:
    """fc7 ``(L, D)`` (float32, on the CPU) of all L frames of the tracklet at ``position``,
    through the model's CNN in eval mode, ``chunk`` frames at a time.

    ``memo``: a dict the results are kept in (by position) and read from, so that analyses of
    the same tracklets share one pass of the CNN; the caller owns it (one per model).
    """
    p = int(position)
    if memo is not None and p in memo:
        return memo[p]
    n = int(manifest.lengths[p])
    parts = []
    with eval_mode(model):
        for a in range(0, n, chunk):
            x = torch.from_numpy(np.asarray(cache.clip(p, np.arange(a, min(a + chunk, n)))))
            parts.append(model.pool5_and_fc7(normalize_clips(x[None]).to(device))[1][0].float().cpu())
    fc7 = torch.cat(parts)
    if memo is not None:
        memo[p] = fc7
    return fc7


def fc7_diagnostics(fc7, visibility, below: float = 0.5, above: float = 0.9) -> dict[str, float]:
    """Do degraded frames look different to the CNN? From the fc7 ``(L, D)`` of whole tracklets
    (a list, e.g. from :func:`tracklet_fc7`) and their per-frame ``visibility`` (a list of (L,)).

    Per frame: the cosine distance of its fc7 to its tracklet's mean fc7, and its fc7 norm.
    Returns the mean cosine distance of the frames under ``below`` visibility and over ``above``
    (``cosine_distance_below_0.5`` / ``_above_0.9``, named for the defaults), the ratio of their
    mean norms (``norm_ratio_below_0.5``) and the fraction of frames under ``below``. Empty when
    either group has no frame.
    """
    fc7 = [torch.as_tensor(f) for f in fc7]
    cos = np.concatenate([(1 - F.normalize(f, dim=1) @ F.normalize(f.mean(0), dim=0)).numpy() for f in fc7])
    norms = np.concatenate([f.norm(dim=1).numpy() for f in fc7])
    va = np.concatenate([np.asarray(v) for v in visibility])
    if va.shape != cos.shape:
        raise ValueError(f"{len(va)} visibility values for {len(cos)} frames")
    bad, good = va < below, va > above
    if not (bad.any() and good.any()):
        return {}
    return {"cosine_distance_below_0.5": float(cos[bad].mean()), "cosine_distance_above_0.9": float(cos[good].mean()),
            "norm_ratio_below_0.5": float(norms[bad].mean() / norms[good].mean()),
            "fraction_frames_below_0.5": float(bad.mean())}


def visibility_oracle(fc7_of, manifest, split: int = 0, power: float = 4) -> tuple[dict, dict]:
    """What perfect frame selection would buy: rank the test set with each tracklet's fc7
    averaged over all its frames (weights 1, as evaluation averages) and weighted by its
    ground-truth visibility ``v ** power`` (v clamped to at least 1e-3; occluded frames nearly
    ignored), both L2-normalised, by Euclidean distance (``metrics.cmc_map``).

    ``fc7_of(position)`` returns the fc7 ``(L, D)`` of all frames of a tracklet (e.g.
    :func:`tracklet_fc7` with a ``memo``); a tracklet without visibility gets weights 1 either way.
    Returns ``(scores, hits)``: ``scores[name] = {"rank1": …, "mAP": …}`` (in %) and
    ``hits[name]`` the rank-1 outcome (0/1) of every query the metric counts, in query order, for
    a paired comparison (``significance.paired_bootstrap``); ``name`` is ``"mean"`` or
    ``"visibility_weighted"``.
    """
    s = manifest.split(split)
    q_pos, g_pos = manifest.positions(s.query), manifest.positions(s.gallery)

    def descriptors(ps, weighted):
        out = []
        for p in ps:
            f = fc7_of(p)
            v = manifest.tracklets[p].visibility
            w = (torch.tensor(np.asarray(v), dtype=torch.float32).clamp_min(1e-3) ** power
                 if weighted and v is not None else torch.ones(len(f)))
            out.append((w[:, None] * f).sum(0) / w.sum())
        return F.normalize(torch.stack(out), dim=1)

    scores, hits = {}, {}
    for name, weighted in (("mean", False), ("visibility_weighted", True)):
        d = torch.cdist(descriptors(q_pos, weighted), descriptors(g_pos, weighted)).numpy()
        details = cmc_map(d, manifest.pids[q_pos], manifest.pids[g_pos], manifest.camids[q_pos],
                          manifest.camids[g_pos], return_details=True)
        scores[name] = {"rank1": float(details.cmc[0] * 100), "mAP": float(details.mAP * 100)}
        hits[name] = (details.first_hit[details.valid] == 1).astype(float)
    return scores, hits


def clean_positions(manifest, positions, T: int, min_visibility: float = 0.9) -> np.ndarray:
    """The tracklets among ``positions`` whose evenly spaced T-frame clip is fully visible."""
    keep = []
    for p in np.asarray(positions, dtype=np.int64):
        vis = manifest.tracklets[p].visibility
        if vis is None:
            raise ValueError(f"tracklet {manifest.tracklets[p].tracklet_id} has no visibility: the probe needs "
                             f"the synthetic benchmark's ground truth to pick clean clips")
        idx = even_frame_indices(manifest, p, T)
        if np.min(np.asarray(vis)[idx]) >= min_visibility:
            keep.append(p)
    return np.asarray(keep, dtype=np.int64)


@torch.no_grad()
def occlusion_probe(model, manifest, cache, positions, ks=(0, 1, 2, 3), kinds=("blank", "patch"),
                    seed: int = 0, device="cpu", batch_size: int = 64) -> dict:
    """Occlude k of the T frames of clean clips and measure the TAM's weights (Fig. 1, measured).

    For each clip (one evenly spaced T-frame clip per tracklet in ``positions``) and each k,
    k frames chosen at random (``seed``) are ``"blank"`` (replaced by a mid-grey frame) or
    ``"patch"`` (a rectangle of 30–70 % of the frame replaced by the same region of another
    clip's frame, ``data.erase_frames``). Returns ``{kind: {k: {...}}}`` with the mean relative
    weight T·ω̄ of the occluded frames and of the untouched ones, and the mean spread of ω.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) < 2:
        raise ValueError("the probe needs at least two clean clips (a patch comes from another clip)")
    T = model.config.seq_len
    if max(ks) > T:
        raise ValueError(f"cannot occlude {max(ks)} of T={T} frames")
    rows = cache.offsets[positions][:, None] + even_frame_indices(manifest, positions, T)
    raw = cache.gather(rows)  # uint8 (N, T, H, W, 3) on the CPU
    out: dict = {}
    with eval_mode(model):
        for kind in kinds:
            if kind not in ("blank", "patch"):
                raise ValueError(f"unknown occlusion kind {kind!r}; expected 'blank' or 'patch'")
            out[kind] = {}
            for k in ks:
                rng = np.random.default_rng([seed, k, 0 if kind == "blank" else 1])
                mask = np.zeros((len(positions), T), bool)
                for n in range(len(positions)):
                    mask[n, rng.choice(T, size=k, replace=False)] = True
                clips = raw.clone()
                if kind == "blank":
                    clips[torch.from_numpy(mask)] = 128
                else:
                    clips = erase_frames(raw, rng, p=1.0, frames=mask)[0]
                att = []
                for a in range(0, len(clips), batch_size):
                    x = normalize_clips(clips[a:a + batch_size]).to(device)
                    att.append(model.features(x).attention.float().cpu())
                w = torch.cat(att).numpy()
                rel = w.mean(axis=1) * T
                out[kind][k] = {
                    "occluded": float(rel[mask].mean()) if mask.any() else None,
                    "clean": float(rel[~mask].mean()) if (~mask).any() else None,
                    "spread": float((w.max(-1) - w.min(-1)).mean()),
                    "num_clips": int(len(positions)),
                }
    return out


# --------------------------------------------------------------------------------------------
# The dose-response study (slow) and where its results may be shown
# --------------------------------------------------------------------------------------------

def code_version() -> dict:
    """The code a result is made by: reidkit's version, and the git commit of the checkout with
    whether it had uncommitted changes (None where this is not a git checkout)."""
    git = git_info()
    return {"reidkit": __version__, "commit": git["commit"], "dirty": git["dirty"]}


def _plain(config) -> dict:
    """A config (``Config`` or its dict) as JSON would store it, to compare with a stored one."""
    return json.loads(json.dumps(config.to_dict() if hasattr(config, "to_dict") else config))


def _differing_keys(a, b, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [prefix or "(the whole config)"]
    return [k for key in sorted(set(a) | set(b), key=str)
            for k in _differing_keys(a.get(key), b.get(key), f"{prefix}{key}" if not prefix else f"{prefix}.{key}")]


def dose_response(config, datasets: dict, out_dir, variants=("cnn", "cnn_tam"), progress: bool = False,
                  log=print) -> dict:
    """Train ``variants`` on each dataset of ``datasets`` ({occlusion level: manifest folder}).

    Every run uses ``config`` (only the dataset and variant change) and is scored with
    ``config.eval``; models with the TAM are also measured with :func:`visibility_stats` on one
    evenly spaced clip per real-person test tracklet. Writes ``out_dir/dose_response.json``
    (results, config, code version as :func:`code_version` gives it, wall time) and returns the
    same dict.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    code = code_version()  # the code this study starts with (edits during the run don't count)
    started = time.perf_counter()
    rows = []
    for level, root in datasets.items():
        manifest = Manifest.load(root)
        cache = FrameCache.build(manifest, config.model.height, config.model.width, progress=False)
        for variant in variants:
            cfg = Config.from_dict(config.to_dict(), settings={
                "data.dataset": str(root), "model.variant": variant, "train.out_dir": str(out_dir / str(level) / variant)})
            t0 = time.perf_counter()
            trainer = Trainer(cfg, manifest=manifest, cache=cache)
            trainer.fit(force=True)  # the study owns its run folders
            model = trainer.model.eval()
            result = evaluate(model, manifest, cache, cfg.eval, split=cfg.data.split, device=trainer.device,
                              progress=progress)
            row = {"occlusion": str(level), "variant": variant, "method": METHOD_NAMES[variant],
                   "rank1": float(result.rank1), "mAP": float(result.mAP), "steps": trainer.step}
            if model.temporal is not None and variant in ("cnn_tam", "all"):
                test = test_people(manifest, cfg.data.split)
                clip = even_clip_outputs(model, manifest, cache, test, device=trainer.device, with_pool5=False)
                vis = clip_visibility(manifest, test, clip.frame_idx)
                row.update(visibility_stats(clip.attention.numpy(), vis))
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            log(f"[dose-response] occlusion {level}, {METHOD_NAMES[variant]}: rank-1 {row['rank1']:.1f}"
                + (f", ρ {row['spearman_rho']:.2f}" if "spearman_rho" in row else "") + f" ({row['seconds']:.0f} s)")
    result = {
        "rows": rows, "levels": [str(k) for k in datasets], "variants": list(variants),
        "config": config.to_dict(), "code": code,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out_dir / "dose_response.json", result, indent=1)
    return result


def find_result(search_root: Path, config, pattern: str = "*/work/dose_response/dose_response.json"
                ) -> tuple[dict | None, str]:
    """The newest stored dose-response result made with ``config`` by this version of reidkit.

    ``config``: the study's base config (a ``Config`` or its dict), as :func:`dose_response`
    would be called with it. A stored result qualifies when its recorded config equals it and it
    was made by the same ``reidkit.__version__``; the git commit is reported, not compared.
    Returns ``(result, reason)``: ``result`` is None when nothing qualifies, and ``reason`` says
    why (none found, or the newest were made with another config or version), else where the
    result comes from.
    """
    found = sorted(Path(search_root).glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        return None, f"no dose-response result under {search_root} (run the `full` report profile)"
    wanted, here = _plain(config), code_version()
    reasons = []
    for path in found:
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            reasons.append(f"{path}: unreadable ({e})")
            continue
        code = result.get("code") or {}
        if code.get("reidkit") != here["reidkit"]:
            reasons.append(f"{path}: made by reidkit {code.get('reidkit', 'of unknown version')}, "
                           f"this is {here['reidkit']}")
            continue
        differ = _differing_keys(result.get("config"), wanted)
        if differ:
            reasons.append(f"{path}: made with another config (differs in {', '.join(differ[:5])}"
                           + (", …)" if len(differ) > 5 else ")"))
            continue
        result["path"] = str(path)
        commit = code.get("commit")
        made = (f"commit {commit[:12]}" + (" with uncommitted changes" if code.get("dirty") else "")
                if commit else "no git commit recorded")
        if commit and here["commit"] and commit != here["commit"]:
            made += f"; this checkout is at {here['commit'][:12]}"
        return result, (f"{path}: made with this config by reidkit {code['reidkit']} ({made}) "
                        f"on {result.get('created')}")
    return None, "; ".join(reasons[:3])
