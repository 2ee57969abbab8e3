"""Drawing: camera scenes, a walking person, occluders, and the composition of one frame.

Everything is drawn with PIL shapes straight at frame resolution (no per-pixel Python loops).
The person is drawn into an oversized canvas (the frame plus a margin on every side) together
with a binary mask of the person's pixels, so that parts that fall outside the detection box
still count: the ground-truth visibility of a frame is

    visibility = (target pixels inside the box and not covered by an occluder) / (all target pixels)

computed from those masks, which is what the temporal-attention lessons compare against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .identity import Identity

RGB = tuple[int, int, int]
MARGIN = 48  # canvas margin (px) around the frame, enough for the bad-crop offsets


# --------------------------------------------------------------------------- cameras

@dataclass
class Camera:
    """One of the fixed cameras: its scene and how it images people.

    `facing` is the dominant walking direction (+1 right, -1 left, i.e. mirrored views);
    `scale`, `shear`, `aspect` (horizontal stretch), `offset_x` model viewpoint and detector habits; `gain`, `bias`, `noise`,
    `resolution` model illumination, colour cast and sensor quality.
    """

    camid: int
    scene: str
    facing: int
    scale: float
    shear: float
    aspect: float
    offset_x: float
    gain: tuple[float, float, float]
    bias: float
    noise: float
    resolution: float
    background: np.ndarray = field(repr=False)  # (H, 4W, 3) uint8 panorama the crops pan over

    def describe(self) -> dict:
        return {
            "camid": self.camid, "scene": self.scene, "facing": self.facing,
            "scale": round(self.scale, 3), "shear": round(self.shear, 3), "aspect": round(self.aspect, 3),
            "offset_x": round(self.offset_x, 2), "gain": [round(g, 3) for g in self.gain],
            "bias": round(self.bias, 2), "noise": round(self.noise, 2),
            "resolution": self.resolution,
        }


SCENES = ("street", "mall", "campus", "corridor", "plaza", "station")


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency texture in [-1, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.uniform(0, 255, size=cells).astype(np.uint8)
    img = Image.fromarray(coarse, "L").resize((w, h), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def make_background(rng: np.random.Generator, scene: str, height: int, width: int) -> np.ndarray:
    """A textured scene panorama (height, width, 3) uint8: wall/facade above a floor."""
    horizon = int(height * rng.uniform(0.45, 0.65))
    wall_a, wall_b = rng.uniform(60, 220, size=(2, 3))
    floor_a, floor_b = rng.uniform(40, 200, size=(2, 3))
    if scene == "campus":
        floor_a, floor_b = np.array([70, 130, 60]) * rng.uniform(0.7, 1.2), np.array([90, 150, 70])
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    img = np.where(
        np.arange(height)[:, None, None] < horizon,
        wall_a + (wall_b - wall_a) * t,
        floor_a + (floor_b - floor_a) * t,
    ) * np.ones((1, width, 1), dtype=np.float32)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(pil)
    # facades / shop fronts / doors with windows
    x = int(rng.integers(-20, 0))
    while x < width:
        w = int(rng.integers(18, 60))
        top = int(rng.integers(0, max(1, horizon // 2)))
        col = tuple(int(c) for c in rng.uniform(50, 230, size=3))
        d.rectangle([x, top, x + w, horizon], fill=col)
        if scene != "campus":
            win = tuple(int(c) for c in rng.uniform(20, 255, size=3))
            step = int(rng.integers(8, 14))
            for wy in range(top + 4, horizon - 8, step):
                for wx in range(x + 3, x + w - 6, step):
                    d.rectangle([wx, wy, wx + step // 2, wy + step // 2], fill=win)
        else:  # trees: blobs over the facade line
            leaf = tuple(int(c) for c in np.array([40, 110, 40]) * rng.uniform(0.6, 1.3))
            d.ellipse([x, top - 10, x + w, top + 25], fill=leaf)
        x += w + int(rng.integers(0, 20))
    # floor: tiles / kerb lines
    line = tuple(int(c) for c in rng.uniform(30, 230, size=3))
    for y in range(horizon + 4, height, int(rng.integers(7, 16))):
        d.line([0, y, width, y], fill=line, width=1)
    if scene in ("mall", "corridor", "station"):
        for x in range(0, width, int(rng.integers(10, 24))):
            d.line([x, horizon, x - 20, height], fill=line, width=1)
    arr = np.asarray(pil, dtype=np.float32)
    arr += _smooth_noise(rng, height, width, (height // 8, width // 8))[..., None] * rng.uniform(8, 25)
    arr += rng.normal(0, 3, size=arr.shape).astype(np.float32)
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_camera(camid: int, seed: int, height: int, width: int) -> Camera:
    """Camera `camid` of the dataset with this seed (deterministic; independent of the others)."""
    rng = np.random.default_rng([seed, 3, camid])
    scene = SCENES[(camid - 1) % len(SCENES)]
    cast = rng.uniform(0.82, 1.18, size=3)
    cast = cast / cast.mean()
    brightness = rng.uniform(0.7, 1.15)
    return Camera(
        camid=camid,
        scene=scene,
        facing=1 if camid % 2 else -1,
        scale=float(rng.uniform(0.9, 1.04)),
        shear=float(rng.uniform(-0.12, 0.12)),
        aspect=float(rng.uniform(0.9, 1.1)),
        offset_x=float(rng.uniform(-4, 4)),
        gain=tuple(float(g) for g in cast * brightness),
        bias=float(rng.uniform(-10, 15)),
        noise=float(rng.uniform(2, 6)),
        resolution=float(rng.choice([1.0, 0.8, 0.6])),
        background=make_background(rng, scene, height, 4 * width),
    )


# --------------------------------------------------------------------------- people

@dataclass
class Pose:
    """Where and how the person is drawn in canvas coordinates (facing +1 right / -1 left)."""

    cx: float            # body centre line x
    feet_y: float        # ground contact y
    body_px: float       # standing body height in pixels
    phase: float         # gait phase (radians)
    facing: int = 1
    shear: float = 0.0   # x += shear * (y - feet_y): viewpoint tilt
    width: float = 1.0   # camera-dependent horizontal stretch


def _shade(c: RGB, k: float) -> RGB:
    return (int(c[0] * k), int(c[1] * k), int(c[2] * k))


class _Painter:
    """Draws each shape both in colour and (255) into the person mask."""

    def __init__(self, size: tuple[int, int]):
        self.rgb = Image.new("RGB", size, (0, 0, 0))
        self.mask = Image.new("L", size, 0)
        self.d = ImageDraw.Draw(self.rgb)
        self.m = ImageDraw.Draw(self.mask)

    def polygon(self, pts, fill: RGB) -> None:
        self.d.polygon(pts, fill=fill)
        self.m.polygon(pts, fill=255)

    def line(self, pts, fill: RGB, width: float) -> None:
        w = max(1, int(round(width)))
        self.d.line(pts, fill=fill, width=w, joint="curve")
        self.m.line(pts, fill=255, width=w, joint="curve")

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: RGB) -> None:
        box = [cx - abs(rx), cy - abs(ry), cx + abs(rx), cy + abs(ry)]
        self.d.ellipse(box, fill=fill)
        self.m.ellipse(box, fill=255)

    def pieslice(self, cx, cy, rx, ry, start, end, fill: RGB) -> None:
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        self.d.pieslice(box, start, end, fill=fill)
        self.m.pieslice(box, start, end, fill=255)


def draw_person(ident: Identity, pose: Pose, size: tuple[int, int]) -> tuple[Image.Image, Image.Image]:
    """Draw `ident` walking in `pose` on a black canvas of `size` (W, H); returns (rgb, mask L)."""
    p = _Painter(size)
    u = pose.body_px / 100.0                       # one body-height percent, in pixels
    f = pose.facing
    sx = ident.width * pose.width

    def P(xoff: float, y: float) -> tuple[float, float]:
        # body-frame offset (facing right) -> canvas point, mirrored and sheared
        return (pose.cx + f * xoff * u + pose.shear * (y - pose.feet_y), y)

    bob = -1.2 * u * abs(math.cos(pose.phase))
    top = pose.feet_y - pose.body_px + bob
    head_r = 6.5 * u * ident.head
    head_cy = top + head_r
    neck_y = top + 2 * head_r + 0.5 * u
    shoulder_y = neck_y + 1.5 * u
    hip_y = pose.feet_y - ident.leg * pose.body_px + bob
    tw = 24.0 * sx                                  # torso width in u
    swing = ident.stride * math.sin(pose.phase)
    leg_len = pose.feet_y - hip_y
    arm_len = 0.8 * (hip_y - shoulder_y) + 6 * u
    leg_w = 8.5 * u * sx
    arm_w = 5.0 * u * sx

    def leg(side: int, angle: float, shade: float) -> None:
        hx = side * 0.22 * tw
        hip = P(hx, hip_y)
        foot_x = hx + math.sin(angle) * leg_len / u
        foot_y = hip_y + math.cos(angle) * leg_len
        foot = P(foot_x, foot_y)
        if ident.lower_kind == "trousers":
            p.line([hip, foot], _shade(ident.lower, shade), leg_w)
        else:
            knee = ((hip[0] + foot[0]) / 2, (hip[1] + foot[1]) / 2)
            p.line([hip, foot], _shade(ident.skin, shade), leg_w * 0.8)
            if ident.lower_kind == "shorts":
                p.line([hip, knee], _shade(ident.lower, shade), leg_w)
        sx0, sy0 = P(foot_x + 2.0, foot_y - 1.5 * u)
        p.ellipse(sx0, sy0, 5.0 * u, 2.2 * u, _shade(ident.shoes, shade))

    def arm(side: int, angle: float, shade: float) -> None:
        sh = P(side * 0.42 * tw, shoulder_y + 1.5 * u)
        hand_off = side * 0.42 * tw + math.sin(angle) * arm_len / u
        hand = P(hand_off, shoulder_y + 1.5 * u + math.cos(angle) * arm_len)
        col = _shade(ident.upper, shade)
        if ident.long_sleeves:
            p.line([sh, hand], col, arm_w)
        else:
            elbow = ((sh[0] + hand[0]) / 2, (sh[1] + hand[1]) / 2)
            p.line([sh, hand], _shade(ident.skin, shade), arm_w * 0.8)
            p.line([sh, elbow], col, arm_w)
        hx, hy = hand
        p.ellipse(hx, hy, 1.8 * u, 1.8 * u, _shade(ident.skin, shade))

    if ident.backpack is not None:                     # behind the torso, on the back side
        x0, x1 = -0.5 * tw - 7.0, -0.5 * tw + 6.0
        y0, y1 = shoulder_y + 2 * u, hip_y - 3 * u
        p.polygon([P(x0, y0), P(x1, y0), P(x1, y1), P(x0, y1)], ident.backpack)
    arm(-1, -0.8 * swing, 0.78)
    leg(-1, -swing, 0.8)
    leg(1, swing, 1.0)
    if ident.lower_kind == "skirt":
        y1 = hip_y + 0.55 * leg_len
        p.polygon([P(-0.4 * tw, hip_y - 2 * u), P(0.4 * tw, hip_y - 2 * u),
                   P(0.6 * tw, y1), P(-0.6 * tw, y1)], ident.lower)
    # torso (+ pattern clipped to it)
    torso = [P(-0.5 * tw, shoulder_y), P(0.5 * tw, shoulder_y),
             P(0.42 * tw, hip_y + 2 * u), P(-0.42 * tw, hip_y + 2 * u)]
    p.polygon(torso, ident.upper)
    _draw_pattern(p, ident, torso, P, tw, shoulder_y, hip_y, u)
    # neck, head, hair, hat
    nx, ny = P(0, neck_y)
    p.ellipse(nx, ny, 3.0 * u, 2.0 * u, ident.skin)
    hx, hy = P(1.0, head_cy)
    p.ellipse(hx, hy, head_r * 0.9, head_r, ident.skin)
    p.pieslice(hx - f * 0.6 * u, hy, head_r * 0.95, head_r * 1.02, 180, 360, ident.hair)
    if ident.hat is not None:                          # crown over the hair, brim in front
        by = hy - 0.15 * head_r
        p.pieslice(hx, by, head_r * 1.02, head_r * 0.95, 180, 360, ident.hat)
        bx0, _ = P(-7.0 * ident.head, by)
        bx1, _ = P(11.0 * ident.head, by)
        p.polygon([(bx0, by - 1.0 * u), (bx1, by - 1.0 * u), (bx1, by + 0.6 * u), (bx0, by + 0.6 * u)],
                  ident.hat)
    if ident.bag is not None:                          # strap across the torso, bag at the hip
        side = ident.bag_side
        strap = [P(-side * 0.4 * tw, shoulder_y), P(side * 0.45 * tw, hip_y - 3 * u)]
        p.line(strap, _shade(ident.bag, 0.7), 1.3 * u)
        bx, by = P(side * 0.5 * tw, hip_y - 1 * u)
        p.polygon([(bx - 5 * u, by - 4 * u), (bx + 5 * u, by - 4 * u),
                   (bx + 5 * u, by + 5 * u), (bx - 5 * u, by + 5 * u)], ident.bag)
    arm(1, 0.8 * swing, 1.0)
    return p.rgb, p.mask


def _draw_pattern(p: _Painter, ident: Identity, torso, P, tw, shoulder_y, hip_y, u) -> None:
    if ident.pattern == "plain":
        return
    if ident.pattern == "logo":
        cx, cy = P(0.12 * tw, shoulder_y + 0.3 * (hip_y - shoulder_y))
        r = 3.2 * u
        p.d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=ident.pattern_color)
        return
    xs = [q[0] for q in torso]
    ys = [q[1] for q in torso]
    x0, y0 = int(math.floor(min(xs))), int(math.floor(min(ys)))
    w, h = int(math.ceil(max(xs))) - x0 + 1, int(math.ceil(max(ys))) - y0 + 1
    layer = Image.new("RGB", (w, h), ident.upper)
    clip = Image.new("L", (w, h), 0)
    ImageDraw.Draw(clip).polygon([(x - x0, y - y0) for x, y in torso], fill=255)
    ld = ImageDraw.Draw(layer)
    period = max(2.0, ident.pattern_period * u)
    half = max(1.0, period / 2)
    for k in range(int(h / period) + 2):
        yy = k * period
        if ident.pattern == "stripes":
            ld.rectangle([0, yy, w, yy + half - 1], fill=ident.pattern_color)
        else:  # checks
            for j in range(int(w / period) + 2):
                xx = j * period + (half if k % 2 else 0)
                ld.rectangle([xx, yy, xx + half - 1, yy + half - 1], fill=ident.pattern_color)
    p.rgb.paste(layer, (x0, y0), clip)


# --------------------------------------------------------------------------- occluders

def draw_object(kind: str, x: float, height: int, width: int, color: RGB,
                size: float) -> tuple[Image.Image, Image.Image]:
    """A static scene object at horizontal position `x` of a frame (pole, bin or car)."""
    p = _Painter((width, height))
    if kind == "pole":
        w = 3 + 4 * size
        p.polygon([(x - w, -1), (x + w, -1), (x + w, height), (x - w, height)], color)
    elif kind == "bin":
        h, w = height * (0.25 + 0.15 * size), 10 + 6 * size
        p.polygon([(x - w, height - h), (x + w, height - h), (x + w, height), (x - w, height)], color)
        p.polygon([(x - w - 2, height - h - 3), (x + w + 2, height - h - 3),
                   (x + w + 2, height - h), (x - w - 2, height - h)], _shade(color, 0.7))
    else:  # car: a long body across the lower part of the frame, with wheels
        h, w = height * (0.3 + 0.15 * size), width * 0.9
        p.polygon([(x - w, height - h), (x + w, height - h), (x + w, height - 8), (x - w, height - 8)],
                  color)
        p.polygon([(x - 0.6 * w, height - h - 14), (x + 0.4 * w, height - h - 14),
                   (x + 0.5 * w, height - h), (x - 0.7 * w, height - h)], _shade(color, 0.6))
        for wx in (x - 0.6 * w, x + 0.6 * w):
            p.ellipse(wx, height - 8, 9, 8, (20, 20, 20))
    return p.rgb, p.mask


# --------------------------------------------------------------------------- one frame

@dataclass
class FrameResult:
    image: Image.Image
    visibility: float      # visible target pixels / all target pixels
    in_frame: float        # target pixels inside the box / all target pixels (crop loss only)


def compose_frame(
    cam: Camera,
    bg_x: float,
    target: tuple[Image.Image, Image.Image] | None,
    occluder: tuple[Image.Image, Image.Image, bool] | None,
    photometric: tuple[float, float],
    blur: float,
    rng: np.random.Generator,
    height: int,
    width: int,
) -> FrameResult:
    """Background window + target (canvas with MARGIN) + occluder (frame-sized or canvas-sized,
    flag says which) -> camera photometry, resolution, blur, noise; and the pixel-mask visibility."""
    x0 = int(np.clip(round(bg_x), 0, cam.background.shape[1] - width))
    frame = cam.background[:, x0:x0 + width].astype(np.float32)
    total = inside = visible = 0
    sl = (slice(MARGIN, MARGIN + height), slice(MARGIN, MARGIN + width))
    tmask = None
    if target is not None:
        t_rgb, t_mask = (np.asarray(a) for a in target)
        full = t_mask > 127
        total = int(full.sum())
        tmask = full[sl]
        inside = int(tmask.sum())
        np.copyto(frame, t_rgb[sl], where=tmask[..., None])
    if occluder is not None:
        o_rgb, o_mask, on_canvas = occluder
        o_rgb, o_mask = np.asarray(o_rgb), np.asarray(o_mask) > 127
        if on_canvas:
            o_rgb, o_mask = o_rgb[sl], o_mask[sl]
        np.copyto(frame, o_rgb, where=o_mask[..., None])
        if tmask is not None:
            tmask = tmask & ~o_mask
    if tmask is not None:
        visible = int(tmask.sum())
    # camera photometry: colour cast and brightness (per-tracklet/frame factor), bias
    level, bias = photometric
    frame = frame * (np.asarray(cam.gain, dtype=np.float32) * level) + (cam.bias + bias)
    img = Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8), "RGB")
    if cam.resolution < 1.0:   # a far / low-resolution camera: detail lost, then upsampled
        small = (max(8, int(width * cam.resolution)), max(8, int(height * cam.resolution)))
        img = img.resize(small, Image.BILINEAR).resize((width, height), Image.BILINEAR)
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(cam.noise)
    arr = np.asarray(img, dtype=np.float32) + noise
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    vis = visible / total if total else 0.0
    return FrameResult(img, float(min(1.0, vis)), float(inside / total) if total else 0.0)
