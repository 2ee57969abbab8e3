"""One tracklet: a person walking through a camera's view, cut into detection boxes.

Per frame: gait phase (legs/arms swing, body bobs), background panning (the box follows the
walker), detector jitter (a smooth random walk of box offset and scale), and events drawn once
per tracklet: an occluder passing in front (a scene object or another person), a few frames of
bad crops (the box slips off the body), blurred frames; how often and how badly is set by the
`p_*`, `*_len`, `occluder_*` and `blur_radius` parameters (the occlusion dial, generate.py).
Each frame gets its measured visibility (render.compose_frame) and one label:

    none | object | person | blur | crop

the dominant degradation of that frame: when less than 92% of the body is visible
(`MIN_LOSS`), `object`/`person` if the occluder hides more of it than the box edges cut off,
else `crop`; otherwise `blur` for a blurred frame, else `none`. So every labelled-occluded frame
of a tracklet has a lower visibility than every `none` frame. Frames of pid 0 (distractors: background-only boxes or fragments of a
passer-by) and pid -1 (junk: far-off, blurred boxes) are labelled `crop`; their visibility is
that of whatever person is in the box (0 for background-only).

Randomness comes from `np.random.default_rng([seed, 2, tracklet_id])` only, so a tracklet's
pixels do not depend on which worker renders it or in which order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .identity import Identity, sample_identity
from .render import MARGIN, Camera, Pose, compose_frame, draw_object, draw_person

LABELS = ("none", "object", "person", "blur", "crop")
OBJECTS = ("pole", "bin", "car")
MIN_LOSS = 0.08   # a frame missing at least this fraction of the body is labelled occluded / crop


@dataclass(frozen=True)
class TrackletPlan:
    tracklet_id: int
    pid: int            # >= 1 person, 0 distractor, -1 junk
    camid: int
    num_frames: int


@dataclass
class _Occluder:
    kind: str                    # "object" | "person"
    xs: np.ndarray               # horizontal position per event frame
    obj: str = ""
    color: tuple = (0, 0, 0)
    size: float = 0.0
    other: Identity | None = None
    scale: float = 1.0
    facing: int = 1


@dataclass
class RenderedFrame:
    image: Image.Image
    visibility: float
    occlusion: str
    blur: float


def _ar1(rng: np.random.Generator, n: int, sigma: float, rho: float = 0.7) -> np.ndarray:
    """A smooth random walk (AR(1)) with stationary std `sigma`: detector jitter over time."""
    eps = rng.normal(0, sigma * math.sqrt(1 - rho * rho), size=n)
    out = np.empty(n)
    out[0] = rng.normal(0, sigma)
    for i in range(1, n):
        out[i] = rho * out[i - 1] + eps[i]
    return out


def _window(rng: np.random.Generator, n: int, frac: tuple[float, float], min_len: int = 2) -> range:
    d = int(np.clip(round(n * rng.uniform(*frac)), min(min_len, n), n))
    start = int(rng.integers(0, n - d + 1))
    return range(start, start + d)


def render_tracklet(plan: TrackletPlan, ident: Identity | None, cam: Camera, seed: int,
                    params: dict) -> list[RenderedFrame]:
    """Render every frame of `plan` (person `ident`, or None for pid 0/-1) seen by `cam`."""
    rng = np.random.default_rng([seed, 2, plan.tracklet_id])
    if plan.pid >= 1:
        return _person(plan, ident, cam, params, rng)
    return _distractor(plan, cam, params, rng)


def _pan(rng: np.random.Generator, cam: Camera, n: int, direction: int, width: int) -> np.ndarray:
    """Background window x per frame: the box follows the walker across the scene."""
    room = cam.background.shape[1] - width
    speed = min(rng.uniform(0.6, 1.6), room / max(1, n))
    start = rng.uniform(0, room - speed * n) if direction > 0 else rng.uniform(speed * n, room)
    return start + direction * speed * np.arange(n)


def _person(plan, ident: Identity, cam: Camera, params: dict, rng) -> list[RenderedFrame]:
    H, W = params["height"], params["width"]
    n = plan.num_frames
    canvas = (W + 2 * MARGIN, H + 2 * MARGIN)
    facing = cam.facing if rng.random() > 0.2 else -cam.facing
    body = H * min(0.97, ident.height * cam.scale * rng.uniform(0.96, 1.04))
    jx, jy, js = _ar1(rng, n, 1.5), _ar1(rng, n, 1.2), _ar1(rng, n, 0.025)
    phase0, cadence = rng.uniform(0, 2 * math.pi), ident.cadence * rng.uniform(0.9, 1.1)
    bg_x = _pan(rng, cam, n, facing, W)
    level = rng.uniform(0.9, 1.1) * (1 + rng.normal(0, 0.015, size=n))
    bias = rng.normal(0, 4)

    # events
    occ_frames, occ = range(0), None
    if n >= 3 and rng.random() < params["p_occlusion"]:
        occ_frames = _window(rng, n, params["occlusion_len"])
        kind = "object" if rng.random() < 0.6 else "person"
        sweep = -facing if rng.random() < 0.8 else facing   # static things drift against the walk
        # the occluder crosses the body centre mid-event, at a walking-speed drift
        speed = rng.uniform(*params["occluder_speed"]) * sweep
        mid = occ_frames.start + (len(occ_frames) - 1) / 2
        xs = W / 2 + rng.normal(0, 0.08 * W) + speed * (np.arange(len(occ_frames)) + occ_frames.start - mid)
        if kind == "object":
            obj = str(rng.choice(OBJECTS, p=[0.45, 0.35, 0.2]))
            color = tuple(int(c) for c in rng.uniform(30, 220, size=3))
            size = float(rng.uniform(*params["occluder_size"]))
            occ = _Occluder("object", xs, obj=obj, color=color, size=size)
        else:
            other = sample_identity(rng)
            scale = float(rng.uniform(*params["occluder_scale"]))
            occ = _Occluder("person", xs + MARGIN, other=other, scale=scale, facing=int(rng.choice([-1, 1])))
    crop_frames, crop_shift = range(0), (0.0, 0.0)
    if n >= 3 and rng.random() < params["p_crop"]:
        crop_frames = _window(rng, n, params["crop_len"], min_len=1)
        if rng.random() < 0.6:
            crop_shift = (float(rng.choice([-1, 1]) * rng.uniform(0.35, 0.6) * W), 0.0)
        else:
            crop_shift = (0.0, float(rng.choice([-1, 1]) * rng.uniform(0.2, 0.35) * H))
    blur = np.where(rng.random(n) < params["p_blur"], rng.uniform(*params["blur_radius"], size=n), 0.0)

    frames = []
    for t in range(n):
        dx, dy = (crop_shift if t in crop_frames else (0.0, 0.0))
        b = body * (1 + js[t])
        pose = Pose(
            cx=MARGIN + W / 2 + cam.offset_x + jx[t] + dx,
            feet_y=MARGIN + (H + b) / 2 + jy[t] + dy,
            body_px=b, phase=phase0 + cadence * t, facing=facing, shear=cam.shear, width=cam.aspect,
        )
        target = draw_person(ident, pose, canvas)
        occluder = None
        if occ is not None and t in occ_frames:
            x = occ.xs[t - occ_frames.start]
            if occ.kind == "object":
                occluder = (*draw_object(occ.obj, x, H, W, occ.color, occ.size), False)
            else:   # a closer passer-by (larger, feet lower) crossing in front
                ob = body * occ.scale
                opose = Pose(cx=x, feet_y=MARGIN + (H + ob) / 2 + 4, body_px=ob,
                             phase=occ.other.cadence * t, facing=occ.facing, shear=cam.shear,
                             width=cam.aspect)
                occluder = (*draw_person(occ.other, opose, canvas), True)
        res = compose_frame(cam, bg_x[t], target, occluder, (level[t], bias), float(blur[t]),
                            rng, H, W)
        occ_loss, crop_loss = res.in_frame - res.visibility, 1.0 - res.in_frame
        if 1.0 - res.visibility >= MIN_LOSS:     # degraded: name the larger of the two losses
            label = occ.kind if occluder is not None and occ_loss >= crop_loss else "crop"
        elif blur[t] > 0:
            label = "blur"
        else:
            label = "none"
        frames.append(RenderedFrame(res.image, res.visibility, label, float(round(blur[t], 3))))
    return frames


def _distractor(plan, cam: Camera, params: dict, rng) -> list[RenderedFrame]:
    """pid 0: background-only boxes or a fragment of a passer-by; pid -1: far-off blurred boxes."""
    H, W = params["height"], params["width"]
    n = plan.num_frames
    canvas = (W + 2 * MARGIN, H + 2 * MARGIN)
    bg_x = _pan(rng, cam, n, int(rng.choice([-1, 1])), W)
    level, bias = rng.uniform(0.85, 1.15), rng.normal(0, 4)
    junk = plan.pid == -1
    background_only = not junk and rng.random() < 0.5
    other = None if background_only else sample_identity(rng)
    if junk:    # most of the body outside a loose box, zoomed in or out
        scale = rng.uniform(0.5, 1.8)
        shift = (rng.choice([-1, 1]) * rng.uniform(0.45, 0.8) * W, rng.choice([-1, 1]) * rng.uniform(0.0, 0.4) * H)
        blur = rng.uniform(1.0, 3.0)
    else:       # a fragment box: a passer-by close to the camera, partly in view
        scale = rng.uniform(1.2, 1.7)
        shift = (rng.choice([-1, 1]) * rng.uniform(0.2, 0.5) * W, rng.uniform(-0.1, 0.3) * H)
        blur = 0.0
    jx, jy = _ar1(rng, n, 2.0), _ar1(rng, n, 1.5)
    phase0, facing = rng.uniform(0, 2 * math.pi), int(rng.choice([-1, 1]))
    frames = []
    for t in range(n):
        target = None
        if other is not None:
            b = H * 0.9 * scale
            pose = Pose(cx=MARGIN + W / 2 + shift[0] + jx[t], feet_y=MARGIN + (H + b) / 2 + shift[1] + jy[t],
                        body_px=b, phase=phase0 + other.cadence * t, facing=facing, shear=cam.shear)
            target = draw_person(other, pose, canvas)
        res = compose_frame(cam, bg_x[t], target, None, (level, bias), blur, rng, H, W)
        frames.append(RenderedFrame(res.image, res.visibility, "crop", float(round(blur, 3))))
    return frames
