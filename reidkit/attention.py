"""Does the temporal attention (Eq. 3) look past degraded frames? Measurements for lesson 4.

Per-clip analysis of ω: :func:`frame_weights` (one weight per frame), :func:`attention_spread`
(distance from uniform: spread and normalised entropy) and :func:`correlations` (Pearson r and
Spearman ρ), which the figures in ``viz`` draw. Three tools, all reading ground-truth
visibility only to *measure* (training never sees it):

- :func:`visibility_stats` — how the TAM's per-frame weight T·ω̄_i relates to each frame's
  ground-truth visibility over many clips: Spearman ρ over all frames and over the frames of
  clips that hold a degraded frame, the mean relative weight of frames below 0.5 visibility
  (1 = the uniform weight 1/T), the spread and entropy of ω.
- :func:`occlusion_probe` — the controlled experiment behind the paper's Fig. 1: take clean
  test clips, occlude k of their T frames (blanked to grey, or covered by a patch of another
  clip, as ``data.erase_frames`` does), and measure where ω moves.
- :func:`dose_response` — train CNN (averaging) and CNN+TAM on datasets of increasing
  occlusion, and report rank-1 and the attention statistics of each (slow: the ``full``
  report profile). Its JSON records a code fingerprint and the machine, so a lesson can show a
  stored result only when this code on this machine produced it (:func:`find_result`).
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from scipy import stats as sps

from reidkit.config import Config
from reidkit.data import FrameCache, Manifest, clip_visibility, erase_frames, even_frame_indices, normalize_clips
from reidkit.evaluate import even_clip_outputs, evaluate
from reidkit.files import write_json
from reidkit.models import METHOD_NAMES, eval_mode
from reidkit.train import Trainer

__all__ = ["DEGRADED", "frame_weights", "attention_spread", "flatten", "correlations", "visibility_stats",
           "test_people", "clean_positions", "occlusion_probe", "dose_response", "code_fingerprint", "machine_id",
           "find_result"]

DEGRADED = 0.7  # a clip "holds a degraded frame" when one of its frames is less than 70 % visible
REPO_ROOT = Path(__file__).resolve().parents[1]


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


def test_people(manifest, split: int = 0) -> np.ndarray:
    """Manifest positions of the real-person test tracklets (query + gallery, pid >= 1): the
    clips the attention is measured on (distractors and junk have no person to look at)."""
    s = manifest.split(split)
    test = manifest.positions(s.query + s.gallery)
    return test[manifest.pids[test] >= 1]


test_people.__test__ = False  # a library function, not a test: tell pytest not to collect it


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

def code_fingerprint(root: Path = REPO_ROOT) -> str:
    """SHA-256 of the code and configs that produce a result: reidkit/, data_prep/, configs/."""
    h = hashlib.sha256()
    for sub, pattern in (("reidkit", "*.py"), ("data_prep", "*.py"), ("configs", "*.yaml")):
        for path in sorted((root / sub).rglob(pattern)):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def machine_id() -> dict:
    """What identifies the machine a result was produced on (host, CPU model, torch, threads)."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads()}


def dose_response(config, datasets: dict, out_dir, variants=("cnn", "cnn_tam"), progress: bool = False,
                  log=print) -> dict:
    """Train ``variants`` on each dataset of ``datasets`` ({occlusion level: manifest folder}).

    Every run uses ``config`` (only the dataset and variant change) and is scored with
    ``config.eval``; models with the TAM are also measured with :func:`visibility_stats` on one
    evenly spaced clip per real-person test tracklet. Writes ``out_dir/dose_response.json``
    (results, config, code fingerprint, machine, wall time) and returns the same dict.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = code_fingerprint()  # the code this study starts with (edits during the run don't count)
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
        "config": config.to_dict(), "code_fingerprint": fingerprint, "machine": machine_id(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out_dir / "dose_response.json", result, indent=1)
    return result


def find_result(search_root: Path, pattern: str = "*/work/dose_response/dose_response.json") -> tuple[dict | None, str]:
    """The newest stored dose-response result made by this code on this machine, if any.

    Returns ``(result, reason)``: ``result`` is None when nothing qualifies, and ``reason``
    says why (none found, or the newest was made by other code / on another machine).
    """
    found = sorted(Path(search_root).glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        return None, f"no dose-response result under {search_root} (run the `full` report profile)"
    fingerprint, machine = code_fingerprint(), machine_id()
    reasons = []
    for path in found:
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            reasons.append(f"{path}: unreadable ({e})")
            continue
        if result.get("code_fingerprint") != fingerprint:
            reasons.append(f"{path}: made by other code (fingerprint {str(result.get('code_fingerprint'))[:12]}…, "
                           f"this code {fingerprint[:12]}…)")
            continue
        stored = result.get("machine", {})
        if (stored.get("host"), stored.get("cpu")) != (machine["host"], machine["cpu"]):
            reasons.append(f"{path}: made on another machine ({stored.get('host')}, {stored.get('cpu')})")
            continue
        result["path"] = str(path)
        return result, f"{path}: made by this code on this machine on {result.get('created')}"
    return None, "; ".join(reasons[:3])
