"""The synthetic video re-id benchmark: presets, the dataset plan, the protocol's splits, writing.

`generate(out, preset, seed)` plans every identity and tracklet first (cheap, in this process),
renders the frames (a process pool over identities for the bigger presets), writes them as
JPEG files with MARS-like names, and writes the manifest through `reidkit.data.manifest.write_manifest`
so the result is read exactly like a real dataset.

Layout of the dataset folder::

    bbox/0001/0001C3T00012F007.jpg     frame 7 of tracklet 12, pid 1, camera 3
    bbox/0000/...                      distractors (pid 0)      bbox/00-1/...  junk (pid -1)
    tracklets.csv  splits.json  meta.json  identities.json

Everything is written into a staging folder beside `out` (``.<name>.partial-<pid>``) that
replaces `out` only once it is complete: an interruption, an error or a full disk leaves an
earlier dataset in `out` exactly as it was (and removes the staging folder; one a killed
generator left is removed by the next run).

Frames are 128×64 (H×W) by default, half of MARS's 256×128: a CPU can train on them, and the
CPU-sized CaffeNet variant still gets a real pool5 grid. Tracklets are shorter than MARS's
(mean ~20 frames instead of ~59) to keep the large preset on disk in ~1.5 GB.

Protocol (as MARS): identities 1..num_train_ids train, the rest test, disjoint. Every identity
is seen by 2-6 of the cameras, one or more tracklets per camera. Query: per test identity, one
tracklet per camera, kept as a query only while every query of that identity still has a
same-identity tracklet from another camera in the gallery. Gallery: all other test tracklets,
plus distractors (pid 0) and junk (pid -1).

Two-camera presets (``pairs``, ``pairs_tiny``: the iLIDS-VID / PRID2011 protocol of Sec. 4 of the
paper): every identity is seen by cameras 1 and 2, one tracklet each (tracklet ids 2·(pid − 1) and
2·(pid − 1) + 1, as data_prep/ilidsvid.py numbers them), no distractors or junk, and
`num_splits` random person splits (`two_camera_splits`): per split `num_test_ids` persons test,
the other `num_train_ids` train; query = the test persons' camera-1 tracklets, gallery = their
camera-2 tracklets. `reidkit ten-split` trains and evaluates one model per split.

Occlusion dial: `generate(..., occlusion="none" | "default" | "heavy" | r in [0, 1])` sets how
often and how badly real-person frames are degraded (`occlusion_params`); identities, tracklet
lengths, cameras, splits and frame names are the same at every level, and "default" is the
benchmark as it was before the dial, byte for byte.

Determinism: identity `pid` draws from `default_rng([seed, 1, pid])`, tracklet `t` from
`default_rng([seed, 2, t])`, camera `c` from `default_rng([seed, 3, c])`; the same seed gives
the same bytes whatever the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reidkit.files import is_disk_full

from ..common import DataPrepError, write_manifest
from .identity import Identity, change_one_region, perturb_identity, sample_identity
from .render import Camera, make_camera
from .tracklet import LABELS, TrackletPlan, render_tracklet

GENERATOR_VERSION = 1

# Shared by every preset unless the preset or an override changes it.
DEFAULTS: dict = {
    "num_cameras": 6,
    "cameras_per_id": (0.3, 0.3, 0.2, 0.12, 0.08),   # P(seen by 2, 3, 4, 5, 6 cameras)
    "extra_tracklets_per_camera": 0.4,  # tracklets per (identity, camera) = 1 + Poisson(this)
    "min_len": 8,
    "median_len": 18,
    "max_len": 80,
    "len_sigma": 0.6,                   # log-normal spread of tracklet lengths (long tail)
    "distractor_frac": 0.15,            # distractor tracklets per real tracklet
    "junk_frac": 0.04,
    "hard_negative_frac": 0.15,         # identities drawn as look-alikes of an earlier one
    "one_region_frac": 0.10,            # identities differing from an earlier one in one region
    # degradations of real-person tracklets (the occlusion dial, OCCLUSION_DIAL, moves these);
    # (a, b) pairs are uniform ranges drawn per event
    "p_occlusion": 0.35,                # per tracklet: an object / person passes in front
    "occlusion_len": (0.3, 0.7),        # its duration, fraction of the tracklet
    "occluder_speed": (2.5, 6.0),       # its drift across the box, px/frame (slower: longer in front)
    "occluder_size": (0.0, 1.0),        # object size (pole width, bin / car height: render.draw_object)
    "occluder_scale": (1.0, 1.12),      # passer-by height / target height (closer: larger)
    "p_crop": 0.2,                      # per tracklet: a few frames of bad crops
    "crop_len": (0.05, 0.25),           # their duration, fraction of the tracklet
    "p_blur": 0.06,                     # per frame
    "blur_radius": (1.2, 2.5),          # Gaussian radius of a blurred frame, px
    "height": 128,
    "width": 64,
    "jpeg_quality": 90,
    "workers": None,                    # None: os.cpu_count(); 1: no process pool
}

# What makes a preset two-camera (iLIDS-VID / PRID2011 protocol); MARS-protocol presets have none
# of "protocol" and "num_splits" (their meta.json stays as it was before two-camera presets existed)
TWO_CAMERA: dict = {"protocol": "two_camera", "num_splits": 10, "num_cameras": 2,
                    "extra_tracklets_per_camera": 0.0, "distractor_frac": 0.0, "junk_frac": 0.0}

PRESETS: dict[str, dict] = {
    # for tests: ~100 tracklets, ~1k frames, a couple of seconds
    "tiny": {"num_train_ids": 10, "num_test_ids": 10, "min_len": 4, "median_len": 8, "max_len": 16,
             "extra_tracklets_per_camera": 0.3, "distractor_frac": 0.12, "junk_frac": 0.05,
             "workers": 1},
    # the lesson default: ~700 tracklets, ~15k frames, under a minute on 2 cores
    "small": {"num_train_ids": 60, "num_test_ids": 60},
    "medium": {"num_train_ids": 200, "num_test_ids": 200, "extra_tracklets_per_camera": 1.0,
               "median_len": 20, "max_len": 120},
    # MARS-scale identities and tracklets (625/636 ids, ~17k + ~3k distractor tracklets);
    # tracklets shorter than MARS (mean ~19 frames) to keep disk use reasonable
    "large": {"num_train_ids": 625, "num_test_ids": 636, "extra_tracklets_per_camera": 3.0,
              "min_len": 6, "median_len": 16, "max_len": 120, "distractor_frac": 0.18,
              "junk_frac": 0.03},
    # iLIDS-VID-like: 300 persons, two cameras, one tracklet per person and camera, ten random
    # 50/50 person splits; ~600 tracklets, ~16k frames (tracklets shorter than iLIDS-VID's ~73 frames)
    "pairs": {**TWO_CAMERA, "num_train_ids": 150, "num_test_ids": 150,
              "min_len": 12, "median_len": 24, "max_len": 64},
    # for tests: 12 persons, three splits
    "pairs_tiny": {**TWO_CAMERA, "num_splits": 3, "num_train_ids": 6, "num_test_ids": 6,
                   "min_len": 4, "median_len": 6, "max_len": 10, "workers": 1},
    # the kit's "ImageNet": a population of other people to pretrain the frame CNN on (reidkit
    # pretrain); almost all of them train, a handful test (the manifest needs a query/gallery)
    "pretrain": {"num_train_ids": 150, "num_test_ids": 6},
}


# The occlusion dial: a level r in [0, 1] ("none" = 0, "default" = 0.5, "heavy" = 1) sets how
# often and how badly real-person frames are degraded. Each parameter below is piecewise linear in
# r through (0, none value), (0.5, DEFAULTS value), (1, heavy value), element-wise for ranges: below
# the default only the probabilities fall (events keep their default shape), above it events also
# grow longer, slower, larger. "default" changes nothing (same seed, same bytes as without the dial).
OCCLUSION_LEVELS = {"none": 0.0, "default": 0.5, "heavy": 1.0}
OCCLUSION_DIAL: dict[str, tuple] = {    # parameter: (value at none, value at heavy)
    "p_occlusion": (0.0, 0.85),
    "occlusion_len": ((0.3, 0.7), (0.6, 1.0)),
    "occluder_speed": ((2.5, 6.0), (1.0, 3.0)),
    "occluder_size": ((0.0, 1.0), (0.5, 2.0)),
    "occluder_scale": ((1.0, 1.12), (1.05, 1.25)),
    "p_crop": (0.0, 0.5),
    "crop_len": ((0.05, 0.25), (0.15, 0.45)),
    "p_blur": (0.0, 0.15),
    "blur_radius": ((1.2, 2.5), (1.5, 3.0)),
}
_RANGES = ("occlusion_len", "occluder_speed", "occluder_size", "occluder_scale", "crop_len", "blur_radius")


def occlusion_level(level: str | float = "default") -> tuple[str, float]:
    """(name, r) of an occlusion level: none / default / heavy or a number in [0, 1].

    The name is the level's word when r is 0, 0.5 or 1, else the number ("0.25").
    """
    word = level.strip().lower() if isinstance(level, str) else None
    if word in OCCLUSION_LEVELS:
        return word, OCCLUSION_LEVELS[word]
    try:
        r = float("nan") if isinstance(level, bool) else float(level)
    except (TypeError, ValueError):
        r = float("nan")
    if not 0.0 <= r <= 1.0:
        raise DataPrepError(f"occlusion level {level!r}: expected none, default, heavy or a number in [0, 1]")
    names = {v: k for k, v in OCCLUSION_LEVELS.items()}
    return names.get(r, str(r)), r


def occlusion_params(level: str | float = "default") -> dict:
    """The parameters an occlusion level overrides (see OCCLUSION_DIAL); {} for the default."""
    _, r = occlusion_level(level)
    r0 = OCCLUSION_LEVELS["default"]
    if r == r0:
        return {}
    out = {}
    for key, (none, heavy) in OCCLUSION_DIAL.items():
        a, b, t = (none, DEFAULTS[key], r / r0) if r < r0 else (DEFAULTS[key], heavy, (r - r0) / (1 - r0))
        if isinstance(a, tuple):   # (1 - t) * a + t * b: exactly a at t = 0, b at t = 1
            out[key] = tuple(round((1 - t) * x + t * y, 6) for x, y in zip(a, b))
        else:
            out[key] = round((1 - t) * a + t * b, 6)
    return out


def preset_params(preset: str, occlusion: str | float = "default", **overrides) -> dict:
    """DEFAULTS + PRESETS[preset] + occlusion_params(occlusion) + overrides, validated."""
    if preset not in PRESETS:
        raise DataPrepError(f"unknown synthetic preset {preset!r}; choose one of {', '.join(PRESETS)}")
    params = {**DEFAULTS, **PRESETS[preset], **occlusion_params(occlusion)}
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise DataPrepError(f"unknown synthetic parameter(s) {unknown}; valid: {', '.join(sorted(params))}")
    params.update(overrides)
    if params["num_train_ids"] < 1 or params["num_test_ids"] < 1:
        raise DataPrepError("num_train_ids and num_test_ids must be >= 1")
    if not 2 <= params["num_cameras"] <= 9:
        raise DataPrepError(f"num_cameras = {params['num_cameras']}: expected 2..9")
    if not 1 <= params["min_len"] <= params["median_len"] <= params["max_len"] <= 999:
        raise DataPrepError("tracklet lengths: need 1 <= min_len <= median_len <= max_len <= 999")
    if params["height"] < 32 or params["width"] < 16:
        raise DataPrepError("frames must be at least 32×16 (H×W)")
    for key in ("p_occlusion", "p_crop", "p_blur"):
        if not 0.0 <= params[key] <= 1.0:
            raise DataPrepError(f"{key} = {params[key]}: expected a probability in [0, 1]")
    for key in _RANGES:
        try:
            lo, hi = (float(x) for x in params[key])
        except (TypeError, ValueError):
            lo = hi = -1.0
        if not 0.0 <= lo <= hi:
            raise DataPrepError(f"{key} = {params[key]}: expected a range (low, high) with 0 <= low <= high")
        params[key] = (lo, hi)
    params["cameras_per_id"] = tuple(float(p) for p in params["cameras_per_id"])
    if params.get("protocol", "mars") == "two_camera":
        if params["num_cameras"] != 2 or params["extra_tracklets_per_camera"] != 0:
            raise DataPrepError(f"preset {preset!r} is two-camera: num_cameras must be 2 (got {params['num_cameras']}) "
                                f"and extra_tracklets_per_camera 0 (got {params['extra_tracklets_per_camera']})")
        n = params["num_splits"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataPrepError(f"num_splits = {n!r}: expected an integer >= 1")
    return params


# --------------------------------------------------------------------------- the plan

@dataclass
class Plan:
    identities: dict[int, Identity]
    relations: list[dict]            # hard negatives: {"pid", "base", "kind", "region"}
    tracklets: list[TrackletPlan]    # in tracklet_id order
    train_pids: list[int]
    test_pids: list[int]


def _lengths(rng: np.random.Generator, count: int, params: dict) -> list[int]:
    raw = np.exp(rng.normal(np.log(params["median_len"]), params["len_sigma"], size=count))
    return [int(x) for x in np.clip(np.round(raw), params["min_len"], params["max_len"])]


def make_plan(params: dict, seed: int) -> Plan:
    """Identities (appearance, cameras, tracklet lengths) and distractor/junk tracklets."""
    n_train, n_test = params["num_train_ids"], params["num_test_ids"]
    n_cams = params["num_cameras"]
    two_camera = params.get("protocol", "mars") == "two_camera"  # no fixed train/test halves
    ks = np.arange(2, 2 + len(params["cameras_per_id"]))
    probs = np.array(params["cameras_per_id"], dtype=float)
    probs = np.where(ks <= n_cams, probs, 0.0)
    probs = probs / probs.sum()
    identities: dict[int, Identity] = {}
    relations: list[dict] = []
    per_pid: list[tuple[int, int, list[int]]] = []   # (pid, camid, lengths)
    for pid in range(1, n_train + n_test + 1):
        rng = np.random.default_rng([seed, 1, pid])
        same_split = list(range(1, pid)) if two_camera or pid <= n_train else list(range(n_train + 1, pid))
        r = rng.random()
        if same_split and r < params["hard_negative_frac"] + params["one_region_frac"]:
            base = same_split[int(rng.integers(len(same_split)))]
            if r < params["hard_negative_frac"]:
                identities[pid] = perturb_identity(identities[base], rng)
                relations.append({"pid": pid, "base": base, "kind": "similar", "region": None})
            else:
                identities[pid], region = change_one_region(identities[base], rng)
                relations.append({"pid": pid, "base": base, "kind": "one_region", "region": region})
        else:
            identities[pid] = sample_identity(rng)
        k = int(rng.choice(ks, p=probs))
        cams = sorted(int(c) + 1 for c in rng.choice(n_cams, size=k, replace=False))
        for camid in cams:
            count = 1 + int(rng.poisson(params["extra_tracklets_per_camera"]))
            per_pid.append((pid, camid, _lengths(rng, count, params)))
    tracklets: list[TrackletPlan] = []
    for pid, camid, lengths in per_pid:
        for n in lengths:
            tracklets.append(TrackletPlan(len(tracklets), pid, camid, n))
    n_real = len(tracklets)
    rng = np.random.default_rng([seed, 4])
    n_dis = int(round(params["distractor_frac"] * n_real))
    n_junk = max(1 if params["junk_frac"] > 0 else 0, int(round(params["junk_frac"] * n_real)))
    for pid, count in ((0, n_dis), (-1, n_junk)):
        cams = rng.integers(1, n_cams + 1, size=count)
        for camid, n in zip(cams, _lengths(rng, count, params)):
            tracklets.append(TrackletPlan(len(tracklets), pid, int(camid), n))
    return Plan(identities, relations, tracklets,
                list(range(1, n_train + 1)), list(range(n_train + 1, n_train + n_test + 1)))


def mars_split(plan: Plan, seed: int) -> dict:
    """Train / query / gallery tracklet ids under the MARS protocol (see the module docstring)."""
    rng = np.random.default_rng([seed, 5])
    train_set = set(plan.train_pids)
    train = [t.tracklet_id for t in plan.tracklets if t.pid in train_set]
    by_pid: dict[int, list[TrackletPlan]] = {}
    for t in plan.tracklets:
        if t.pid >= 1 and t.pid not in train_set:
            by_pid.setdefault(t.pid, []).append(t)
    query: list[int] = []
    for pid in plan.test_pids:
        tracks = by_pid[pid]
        cams = sorted({t.camid for t in tracks})
        picks = []                                    # one candidate tracklet per camera
        for c in cams:
            in_cam = [t for t in tracks if t.camid == c]
            picks.append(in_cam[int(rng.integers(len(in_cam)))])
        chosen: list[TrackletPlan] = []
        for cand in (picks[i] for i in rng.permutation(len(picks))):
            trial = chosen + [cand]
            taken = {t.tracklet_id for t in trial}
            gallery_cams = {t.camid for t in tracks if t.tracklet_id not in taken}
            if all(gallery_cams - {q.camid} for q in trial):
                chosen = trial
        query.extend(sorted(t.tracklet_id for t in chosen))
    query_set = set(query)
    gallery = [t.tracklet_id for t in plan.tracklets
               if t.pid not in train_set and t.tracklet_id not in query_set]
    return {"train": train, "query": sorted(query), "gallery": gallery}


def two_camera_splits(plan: Plan, num_splits: int, seed: int) -> list[dict]:
    """``num_splits`` random person splits of a two-camera plan, as the iLIDS-VID / PRID2011
    converters write them: per split a permutation of all persons, the first
    ``len(plan.test_pids)`` test, the rest train; train = both cameras' tracklets of the train
    persons, query = camera-1 tracklets of the test persons, gallery = their camera-2 tracklets
    (plus distractors and junk, if any)."""
    rng = np.random.default_rng([seed, 6])
    persons = np.array(plan.train_pids + plan.test_pids)
    n_test = len(plan.test_pids)
    real = [t for t in plan.tracklets if t.pid >= 1]
    extra = [t.tracklet_id for t in plan.tracklets if t.pid < 1]
    splits = []
    for _ in range(num_splits):
        test = {int(p) for p in rng.permutation(persons)[:n_test]}
        splits.append({
            "train": [t.tracklet_id for t in real if t.pid not in test],
            "query": [t.tracklet_id for t in real if t.pid in test and t.camid == 1],
            "gallery": [t.tracklet_id for t in real if t.pid in test and t.camid == 2] + extra,
        })
    return splits


# --------------------------------------------------------------------------- rendering

def pid_folder(pid: int) -> str:
    return "00-1" if pid == -1 else f"{pid:04d}"


def frame_path(t: TrackletPlan, index: int) -> str:
    """MARS-like name: bbox/<pid>/<pid>C<cam>T<tracklet>F<frame>.jpg (frame numbers from 1)."""
    p = pid_folder(t.pid)
    return f"bbox/{p}/{p}C{t.camid}T{t.tracklet_id:05d}F{index + 1:03d}.jpg"


_CAMERAS: dict[tuple, Camera] = {}


def _camera(camid: int, seed: int, params: dict) -> Camera:
    key = (camid, seed, params["height"], params["width"])
    if key not in _CAMERAS:
        _CAMERAS[key] = make_camera(camid, seed, params["height"], params["width"])
    return _CAMERAS[key]


def _render_job(job: tuple) -> list[dict]:
    """Render and write a group of tracklets; return their manifest rows (worker entry point)."""
    out, seed, params, items = job
    out = Path(out)
    rows = []
    for plan, ident in items:
        frames = render_tracklet(plan, ident, _camera(plan.camid, seed, params), seed, params)
        paths = [frame_path(plan, i) for i in range(len(frames))]
        (out / paths[0]).parent.mkdir(parents=True, exist_ok=True)
        for path, fr in zip(paths, frames):
            fr.image.save(out / path, format="JPEG", quality=params["jpeg_quality"])
        rows.append({
            "tracklet_id": plan.tracklet_id, "pid": plan.pid, "camid": plan.camid,
            "frames": paths,
            "visibility": [round(fr.visibility, 4) for fr in frames],
            "occlusion": [fr.occlusion for fr in frames],
            "blur": [fr.blur for fr in frames],
        })
    return rows


def _jobs(plan: Plan, out: Path, seed: int, params: dict, chunk: int = 12) -> list[tuple]:
    """One job per identity; distractor/junk tracklets in chunks."""
    groups: dict[int, list] = {}
    others: list = []
    for t in plan.tracklets:
        if t.pid >= 1:
            groups.setdefault(t.pid, []).append((t, plan.identities[t.pid]))
        else:
            others.append((t, None))
    items = list(groups.values()) + [others[i:i + chunk] for i in range(0, len(others), chunk)]
    return [(str(out), seed, params, group) for group in items]


GENERATED = ("bbox", "tracklets.csv", "splits.json", "meta.json", "identities.json")  # what generate writes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prepare_out(out: Path) -> Path:
    """Refuse an `out` that holds anything but a synthetic dataset (which the new one replaces
    once complete); return a fresh staging folder beside it to generate into."""
    if out.exists() and not out.is_dir():
        raise DataPrepError(f"{out}: exists and is not a folder; choose an empty --out")
    if out.exists() and any(out.iterdir()):
        meta = out / "meta.json"
        try:
            previous = json.loads(meta.read_text(encoding="utf-8")).get("source")
        except (OSError, ValueError, AttributeError):
            previous = None
        if previous != "synthetic":
            raise DataPrepError(f"{out}: folder exists and is not a synthetic dataset; choose an empty --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataPrepError(f"{out.parent}: cannot create the folder ({e.strerror})") from None
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # left by a generator that was killed
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _swap_in(staging: Path, out: Path) -> None:
    """Put the complete dataset in `staging` in place of `out`. What `out` held beside an earlier
    dataset's files (its frame cache, the user's notes) moves over to the new one."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(staging, out)
        return
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    os.replace(staging, out)
    for entry in old.iterdir():
        if entry.name not in GENERATED:
            os.replace(entry, out / entry.name)
    shutil.rmtree(old, ignore_errors=True)


def generate(out: str | Path, preset: str = "small", seed: int = 0, progress: bool = True,
             occlusion: str | float = "default", **overrides) -> Path:
    """Render the synthetic benchmark into `out` (frames + manifest) and return the folder.

    `preset` is one of PRESETS (tiny, small, medium, large: MARS protocol; pairs, pairs_tiny:
    two-camera, ten-split protocol); `occlusion` a level of the occlusion
    dial (none, default, heavy or a number in [0, 1], see OCCLUSION_DIAL); `overrides` change any
    parameter of DEFAULTS/PRESETS, after the dial (e.g. `num_train_ids=5, workers=1`). Same seed,
    same bytes.
    """
    params = preset_params(preset, occlusion, **overrides)
    level, r = occlusion_level(occlusion)
    out = Path(out)
    staging = _prepare_out(out)
    try:
        _generate_into(staging, preset, seed, progress, params, level, r)
    except BaseException as e:  # an error, a full disk, Ctrl-C: the earlier dataset stays as it was
        shutil.rmtree(staging, ignore_errors=True)
        kept = f"the dataset already in {out} is intact" if (out / "meta.json").is_file() else f"nothing is in {out}"
        if isinstance(e, OSError) and is_disk_full(e):
            free = shutil.disk_usage(out.parent).free
            raise DataPrepError(f"out of disk space writing the synthetic {preset} dataset for {out} "
                                f"({free / 1e6:.1f} MB free on the disk of {out.parent} once the partial one was "
                                f"removed); {kept}. Free space there or choose another --out") from e
        if isinstance(e, KeyboardInterrupt):
            raise KeyboardInterrupt(f"interrupted: the partial dataset was removed and {kept}") from None
        raise
    _swap_in(staging, out)
    if progress:
        print(f"-> {out}")
    return out


def _generate_into(out: Path, preset: str, seed: int, progress: bool, params: dict, level: str, r: float) -> None:
    """Render the benchmark into the (empty) folder `out`: the body of `generate`."""
    from tqdm import tqdm

    start = time.perf_counter()
    plan = make_plan(params, seed)
    two_camera = params.get("protocol", "mars") == "two_camera"
    splits = two_camera_splits(plan, params["num_splits"], seed) if two_camera else [mars_split(plan, seed)]
    jobs = _jobs(plan, out, seed, params)
    workers = params["workers"] or os.cpu_count() or 1
    workers = max(1, min(int(workers), len(jobs)))
    rows: list[dict] = []
    bar = tqdm(total=len(plan.tracklets), desc=f"synthetic {preset}", unit="tracklet", disable=not progress)
    if workers == 1:
        for job in jobs:
            rows.extend(_render_job(job))
            bar.update(len(job[3]))
    else:
        # fork where there is one: workers need no re-import of the caller's __main__ (spawn would
        # re-run a script without a __main__ guard, and fails under `python -` / some notebooks);
        # the workers use only numpy and PIL, so a parent's torch threads do not matter here
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(workers) as pool:
            for result in pool.imap_unordered(_render_job, jobs):
                rows.extend(result)
                bar.update(len(result))
    bar.close()
    rows.sort(key=lambda r: r["tracklet_id"])

    lengths = np.array([len(r["frames"]) for r in rows if r["pid"] >= 1])
    labels = [lab for r in rows if r["pid"] >= 1 for lab in r["occlusion"]]
    # `workers` changes the speed, never the bytes: left out so meta.json is identical too
    params_json = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items() if k != "workers"}
    meta = {
        "name": (f"synthetic-{preset}" + (f"-occl-{level}" if level != "default" else "")
                 + (f"-seed{seed}" if seed else "")),
        "source": "synthetic",
        "protocol": "two_camera" if two_camera else "mars",
        "frame_size": [params["height"], params["width"]],
        "excluded": [],
        "generator": {"preset": preset, "seed": seed, "version": GENERATOR_VERSION,
                      "occlusion": {"level": level, "r": r}, "params": params_json},
        "notes": ("Procedurally rendered; frames are half MARS's 256x128 and tracklets shorter than "
                  "MARS's (~59 frames on average). visibility = visible target pixels / all target "
                  "pixels (pixel masks); occlusion labels: " + "|".join(LABELS) + "; blur = Gaussian "
                  "radius in px (0 = sharp). pid 0 / -1 frames: visibility of whatever person is in "
                  "the box (0 when none)."),
        "frames_per_tracklet": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                                "mean": round(float(lengths.mean()), 2), "max": int(lengths.max())},
        "occlusion_frames": {lab: labels.count(lab) for lab in LABELS},
        "cameras": [_camera(c, seed, params).describe() for c in range(1, params["num_cameras"] + 1)],
        "hard_negatives": plan.relations,
    }
    if two_camera:  # every person trains in some splits and tests in others
        meta["split_rule"] = (f"{params['num_splits']} permutations of the persons from numpy.random.default_rng"
                              f"([seed, 6]); the first {len(plan.test_pids)} test, the rest train; query = camera 1, "
                              f"gallery = camera 2")
        identities = {str(pid): ident.to_dict() for pid, ident in plan.identities.items()}
    else:
        meta["train_pids"] = [plan.train_pids[0], plan.train_pids[-1]]
        meta["test_pids"] = [plan.test_pids[0], plan.test_pids[-1]]
        identities = {str(pid): {"split": "train" if pid in set(plan.train_pids) else "test",
                                 **ident.to_dict()} for pid, ident in plan.identities.items()}
    (out / "identities.json").write_text(json.dumps(identities, indent=1) + "\n", encoding="utf-8")
    write_manifest(out, rows, splits, meta, check_files=True)
    if progress:
        elapsed = time.perf_counter() - start
        print(f"synthetic {preset} (seed {seed}, occlusion {level}): {len(rows)} tracklets, "
              f"{sum(len(r['frames']) for r in rows)} frames in {elapsed:.1f} s", end=" ")
