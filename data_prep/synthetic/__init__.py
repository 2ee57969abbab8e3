"""The procedural synthetic video re-id benchmark, the kit's offline stand-in for MARS.

    from data_prep.synthetic import generate
    generate("data/synthetic_small", preset="small", seed=0)

or ``python -m data_prep synthetic --out DIR --preset small --seed 0`` (``--preset pairs``: two
cameras and ten person splits, the iLIDS-VID protocol); ``occlusion=`` /
``--occlusion`` (none, default, heavy or a number in [0, 1]) sets how degraded the frames are.
See generate.py for the layout, protocol and occlusion dial, identity.py for what makes people
differ, render.py for how a frame is drawn and how its ground-truth visibility is measured,
tracklet.py for motion and occlusions.
"""

from .generate import (DEFAULTS, OCCLUSION_DIAL, OCCLUSION_LEVELS, PRESETS, generate, make_plan, mars_split,
                       occlusion_level, occlusion_params, preset_params, two_camera_splits)

__all__ = ["generate", "PRESETS", "DEFAULTS", "preset_params", "make_plan", "mars_split", "two_camera_splits",
           "occlusion_params", "occlusion_level", "OCCLUSION_LEVELS", "OCCLUSION_DIAL"]
