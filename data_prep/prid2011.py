"""PRID2011 (Hirzer et al., SCIA 2011), multi-shot part → manifest.

Expected ``--src`` layout (the folder holding ``prid_2011/``)::

    prid_2011/multi_shot/cam_a/person_0001/0001.png ...     385 persons
    prid_2011/multi_shot/cam_b/person_0001/0001.png ...     749 persons

Persons 1..200 are seen by both cameras (cam_a → camid 1, cam_b → camid 2; pid = person number).
The usual protocol (and the paper's) keeps those whose two sequences both have more than 21
frames: 178 persons. Everyone else is listed in ``meta.excluded`` with the rule that dropped
them. Splits: ten random 50/50 person splits drawn from ``numpy.random.default_rng(seed)``
(one permutation per split; the first ⌊n/2⌋ persons train, the rest test); query = the cam_a
sequences of the test persons, gallery = the cam_b ones. Tracklet ids: kept-person index × 2
+ (camid − 1). Frames are sorted by the number in the name, numerically.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .common import (DataPrepError, check_tracklet_images, list_frames, numbered_subdirs, relative_folder,
                     relative_frame, write_manifest)

PERSON_DIR = re.compile(r"person_(\d+)")
BOTH_CAMERAS = 200          # persons 1..200 appear in cam_a and cam_b
MIN_FRAMES = 22             # "more than 21 frames" in both cameras
NUM_SPLITS = 10
CAMERAS = {"cam_a": 1, "cam_b": 2}
DEFAULT_FRAME_SIZE = [128, 64]


def build(src: Path, out: Path, seed: int = 0, check_images: str = "ends", progress: bool = False):
    """Read the raw layout; return ``(tracklets, splits, meta)`` for ``write_manifest``."""
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    root = src / "prid_2011" / "multi_shot"
    if not root.is_dir():
        raise DataPrepError(f"{root}: folder not found (--src must hold prid_2011/multi_shot/)")
    cams = {name: dict(numbered_subdirs(root / name, PERSON_DIR)) for name in CAMERAS}

    single, short, kept = [], [], []
    for name, persons in cams.items():
        single += [f"{name}/{persons[p].name}" for p in sorted(persons) if p > BOTH_CAMERAS]
    both = sorted(p for p in cams["cam_a"] if p <= BOTH_CAMERAS)
    for p in tqdm(both, desc="PRID2011: listing", unit="person", disable=not progress):
        if p not in cams["cam_b"]:
            raise DataPrepError(f"{root / 'cam_b'}: person_{p:04d} missing (persons 1..{BOTH_CAMERAS} "
                                "are in both cameras)")
        frames = {name: list_frames(cams[name][p]) for name in CAMERAS}
        lengths = {name: len(f) for name, f in frames.items()}
        if min(lengths.values()) < MIN_FRAMES:
            short.append(f"person_{p:04d} (cam_a {lengths['cam_a']}, cam_b {lengths['cam_b']} frames)")
        else:
            kept.append((p, frames))
    lonely_b = sorted(p for p in cams["cam_b"] if p <= BOTH_CAMERAS and p not in cams["cam_a"])
    if lonely_b:
        raise DataPrepError(f"{root / 'cam_a'}: person_{lonely_b[0]:04d} missing (persons 1..{BOTH_CAMERAS} "
                            "are in both cameras)")
    if len(kept) < 2:
        raise DataPrepError(f"{root}: {len(kept)} persons with more than {MIN_FRAMES - 1} frames in both "
                            "cameras; at least 2 are needed for a split")

    tracklets, paths = [], []
    for i, (p, frames) in enumerate(kept):
        for name, camid in CAMERAS.items():
            tracklets.append({"tracklet_id": 2 * i + camid - 1, "pid": p, "camid": camid,
                              "frames": [relative_frame(f, out) for f in frames[name]]})
            paths.append(frames[name])

    rng = np.random.default_rng(seed)
    n = len(kept)
    splits = []
    for _ in range(NUM_SPLITS):
        order = rng.permutation(n)
        train, test = order[: n // 2], order[n // 2:]
        splits.append({"train": sorted(2 * int(i) + c for i in train for c in (0, 1)),
                       "query": sorted(2 * int(i) for i in test),
                       "gallery": sorted(2 * int(i) + 1 for i in test)})

    excluded = [
        {"rule": f"seen by one camera only (person number > {BOTH_CAMERAS})", "count": len(single),
         "items": single},
        {"rule": f"a sequence with {MIN_FRAMES - 1} frames or fewer (both cameras need more than "
                 f"{MIN_FRAMES - 1})", "count": len(short), "items": short},
    ]
    size = check_tracklet_images(paths, check_images, progress, "PRID2011: checking images")
    meta = {"name": "prid2011", "source": "prid2011", "protocol": "two_camera",
            "frame_size": size or DEFAULT_FRAME_SIZE, "excluded": excluded,
            "raw_root": relative_folder(src, out), "frames_stored": "relative paths into the raw folder",
            "split_seed": int(seed),
            "split_rule": f"{NUM_SPLITS} permutations from numpy.random.default_rng(seed); "
                          "first n//2 persons train, the rest test",
            "images_checked": check_images}
    return tracklets, splits, meta


def prepare(src: Path, out: Path, seed: int = 0, check_images: str = "ends", progress: bool = False) -> None:
    """Write the PRID2011 manifest into ``out`` (frames stay where they are in ``src``)."""
    tracklets, splits, meta = build(src, out, seed, check_images, progress)
    write_manifest(Path(out), tracklets, splits, meta)
