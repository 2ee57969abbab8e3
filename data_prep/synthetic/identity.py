"""What a synthetic person looks like: body shape, clothing, patterns, accessories, gait.

An `Identity` is a plain dataclass of numbers and RGB triples; `render.draw_person` turns it into
pixels. Three ways to make one:

- `sample_identity(rng)`: an independent draw (most identities);
- `perturb_identity(base, rng)`: a *hard negative*, every attribute a small step away from `base`
  (colours moved a little in HSV, shape a few percent), the kind of look-alike a re-id model
  must learn to separate;
- `change_one_region(base, rng)`: a copy of `base` that differs in ONE body region only
  (upper clothes, lower clothes, shoes, or one accessory), the case where a model that attends
  to the right part wins and a global colour histogram loses.
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass, replace

import numpy as np

RGB = tuple[int, int, int]

PATTERNS = ("plain", "stripes", "checks", "logo")
LOWER_KINDS = ("trousers", "shorts", "skirt")
REGIONS = ("upper", "lower", "shoes", "accessory")

# Base hues of typical clothing, as (r, g, b); each draw moves them a little in HSV.
_CLOTH_PALETTE: tuple[RGB, ...] = (
    (200, 30, 35), (30, 60, 170), (240, 240, 235), (25, 25, 28), (40, 130, 60),
    (235, 200, 40), (120, 120, 125), (250, 130, 30), (120, 40, 130), (120, 80, 45),
    (90, 170, 220), (235, 130, 170), (30, 40, 80), (200, 180, 140), (100, 130, 40),
    (20, 150, 150),
)
_LOWER_PALETTE: tuple[RGB, ...] = (
    (30, 40, 80), (25, 25, 28), (70, 90, 140), (120, 120, 125), (200, 180, 140),
    (90, 60, 35), (60, 70, 50), (225, 225, 220), (140, 30, 35), (45, 75, 120),
)
_SHOE_PALETTE: tuple[RGB, ...] = (
    (20, 20, 20), (240, 240, 240), (100, 60, 30), (200, 30, 30), (40, 60, 150), (130, 130, 130),
)
_SKIN_PALETTE: tuple[RGB, ...] = (
    (245, 210, 180), (225, 180, 140), (190, 140, 100), (150, 100, 65), (100, 65, 40),
)
_HAIR_PALETTE: tuple[RGB, ...] = (
    (20, 15, 10), (60, 40, 20), (110, 70, 30), (200, 170, 100), (130, 130, 130), (150, 50, 20),
)


@dataclass(frozen=True)
class Identity:
    """Appearance and gait of one synthetic person (all sizes relative to the body height)."""

    height: float        # fraction of the detection box the standing body fills (0.8-0.95)
    width: float         # body width factor (1 = average build)
    head: float          # head size factor
    leg: float           # leg length as a fraction of body height
    skin: RGB
    hair: RGB
    upper: RGB           # shirt / jacket
    lower: RGB           # trousers / shorts / skirt
    shoes: RGB
    pattern: str         # one of PATTERNS, on the upper body
    pattern_color: RGB
    pattern_period: float  # stripe / check period, in body-height units (x100)
    long_sleeves: bool
    lower_kind: str      # one of LOWER_KINDS
    bag: RGB | None      # shoulder bag colour, None = no bag
    bag_side: int        # +1 front / -1 back side of the body (in the facing-right drawing)
    backpack: RGB | None
    hat: RGB | None
    stride: float        # leg swing amplitude (radians)
    cadence: float       # gait phase advance per frame (radians)

    def to_dict(self) -> dict:
        return asdict(self)


def _jitter_color(rgb: RGB, rng: np.random.Generator, dh: float, ds: float, dv: float) -> RGB:
    """Move a colour by up to (dh, ds, dv) in HSV (hue wraps), return integer RGB."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    h = (h + rng.uniform(-dh, dh)) % 1.0
    s = float(np.clip(s + rng.uniform(-ds, ds), 0.0, 1.0))
    v = float(np.clip(v + rng.uniform(-dv, dv), 0.03, 1.0))
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def _pick(palette: tuple[RGB, ...], rng: np.random.Generator) -> RGB:
    return palette[int(rng.integers(len(palette)))]


def _cloth(palette: tuple[RGB, ...], rng: np.random.Generator) -> RGB:
    return _jitter_color(_pick(palette, rng), rng, 0.04, 0.15, 0.15)


def _distinct_color(avoid: RGB, palette: tuple[RGB, ...], rng: np.random.Generator) -> RGB:
    """A clothing colour clearly different from `avoid` (RGB distance > 120)."""
    for _ in range(50):
        c = _cloth(palette, rng)
        if np.linalg.norm(np.subtract(c, avoid)) > 120:
            return c
    return tuple(255 - x for x in avoid)  # type: ignore[return-value]


def sample_identity(rng: np.random.Generator) -> Identity:
    """An independent random person."""
    upper = _cloth(_CLOTH_PALETTE, rng)
    pattern = str(rng.choice(PATTERNS, p=[0.5, 0.2, 0.15, 0.15]))
    return Identity(
        height=float(rng.uniform(0.80, 0.94)),
        width=float(rng.uniform(0.80, 1.25)),
        head=float(rng.uniform(0.85, 1.2)),
        leg=float(rng.uniform(0.44, 0.52)),
        skin=_jitter_color(_pick(_SKIN_PALETTE, rng), rng, 0.01, 0.05, 0.05),
        hair=_jitter_color(_pick(_HAIR_PALETTE, rng), rng, 0.02, 0.1, 0.1),
        upper=upper,
        lower=_cloth(_LOWER_PALETTE, rng),
        shoes=_jitter_color(_pick(_SHOE_PALETTE, rng), rng, 0.02, 0.1, 0.1),
        pattern=pattern,
        pattern_color=_distinct_color(upper, _CLOTH_PALETTE, rng),
        pattern_period=float(rng.uniform(4.0, 8.0)),
        long_sleeves=bool(rng.random() < 0.6),
        lower_kind=str(rng.choice(LOWER_KINDS, p=[0.7, 0.15, 0.15])),
        bag=_cloth(_CLOTH_PALETTE, rng) if rng.random() < 0.2 else None,
        bag_side=int(rng.choice([-1, 1])),
        backpack=_cloth(_CLOTH_PALETTE, rng) if rng.random() < 0.2 else None,
        hat=_cloth(_CLOTH_PALETTE, rng) if rng.random() < 0.15 else None,
        stride=float(rng.uniform(0.25, 0.45)),
        cadence=float(rng.uniform(0.45, 0.75)),
    )


def perturb_identity(base: Identity, rng: np.random.Generator) -> Identity:
    """A look-alike of `base`: same clothing kinds and accessories, every value nudged slightly."""
    def c(x: RGB | None) -> RGB | None:
        return None if x is None else _jitter_color(x, rng, 0.03, 0.08, 0.08)

    return replace(
        base,
        height=float(np.clip(base.height * rng.uniform(0.96, 1.04), 0.78, 0.95)),
        width=float(base.width * rng.uniform(0.93, 1.07)),
        head=float(base.head * rng.uniform(0.93, 1.07)),
        leg=float(np.clip(base.leg + rng.uniform(-0.015, 0.015), 0.43, 0.53)),
        skin=c(base.skin), hair=c(base.hair), upper=c(base.upper), lower=c(base.lower),
        shoes=c(base.shoes), pattern_color=c(base.pattern_color),
        bag=c(base.bag), backpack=c(base.backpack), hat=c(base.hat),
        stride=float(base.stride * rng.uniform(0.9, 1.1)),
        cadence=float(base.cadence * rng.uniform(0.9, 1.1)),
    )


def change_one_region(base: Identity, rng: np.random.Generator) -> tuple[Identity, str]:
    """A copy of `base` that differs in exactly one body region; returns (identity, region)."""
    region = str(rng.choice(REGIONS, p=[0.45, 0.3, 0.1, 0.15]))
    if region == "upper":
        return replace(base, upper=_distinct_color(base.upper, _CLOTH_PALETTE, rng)), region
    if region == "lower":
        return replace(base, lower=_distinct_color(base.lower, _LOWER_PALETTE, rng)), region
    if region == "shoes":
        return replace(base, shoes=_distinct_color(base.shoes, _SHOE_PALETTE, rng)), region
    # accessory: add the one it lacks, or take away the one it has
    which = str(rng.choice(["bag", "backpack", "hat"]))
    current = getattr(base, which)
    new = _cloth(_CLOTH_PALETTE, rng) if current is None else None
    return replace(base, **{which: new}), f"accessory:{which}"
