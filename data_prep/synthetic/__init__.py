"""The procedural synthetic video re-id benchmark, the kit's offline stand-in for MARS.

    from data_prep.synthetic import generate
    generate("data/synthetic_small", preset="small", seed=0)

or ``python -m data_prep synthetic --out DIR --preset small --seed 0``. See generate.py for the
layout and protocol, identity.py for what makes people differ, render.py for how a frame is
drawn and how its ground-truth visibility is measured, tracklet.py for motion and occlusions.
"""

from .generate import DEFAULTS, PRESETS, generate, make_plan, mars_split, preset_params

__all__ = ["generate", "PRESETS", "DEFAULTS", "preset_params", "make_plan", "mars_split"]
