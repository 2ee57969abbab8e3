"""Shared test helpers: a tiny, valid manifest (frames drawn here, files by ``write_manifest``).

Use the ``make_manifest`` fixture (it writes below ``tmp_path``)::

    def test_something(make_manifest):
        root = make_manifest(num_ids=4, protocol="two_camera", num_splits=3)
        manifest = Manifest.load(root)

or call ``write_tiny_manifest(root, ...)`` directly (``from conftest import write_tiny_manifest``
inside the test suite). Frames are tiny PNGs whose colours encode identity, camera and frame
number, so every frame differs from every other.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.data import write_manifest


def write_tiny_manifest(
    root,
    num_ids: int = 6,
    num_cams: int = 2,
    tracklets_per_cam: int = 1,
    length_range: tuple[int, int] = (3, 9),
    frame_size: tuple[int, int] = (24, 12),
    distractors: int = 0,
    junk: int = 0,
    visibility: bool = False,
    occlusion: bool = False,
    protocol: str = "mars",
    num_splits: int | None = None,
    name: str = "tiny",
    ext: str = "png",
    seed: int = 0,
) -> Path:
    """Write a small valid manifest (frames, tracklets.csv, splits.json, meta.json) into ``root``.

    - ``num_ids`` identities (pid 1..num_ids), each with ``tracklets_per_cam`` tracklets in each of
      ``num_cams`` cameras (camid 1..num_cams); tracklet lengths drawn from ``length_range``
      (inclusive); frames are ``frame_size`` = (H, W) images.
    - ``distractors`` tracklets with pid 0 and ``junk`` tracklets with pid -1 (MARS folders
      ``0000`` and ``00-1``); they go to the gallery of every split.
    - ``visibility``: a per-frame visibility column (floats in [0, 1]); ``occlusion``: a per-frame
      label column, as the synthetic benchmark writes.
    - ``protocol="mars"``: one split (``num_splits`` default 1): the first half of the identities
      train, the rest test; query = each test identity's first camera-1 tracklet, gallery = all
      other test tracklets plus distractors and junk.
      ``protocol="two_camera"`` (needs ``num_cams == 2``): ``num_splits`` (default 10) random
      50/50 person splits; query = camera-1 tracklets of the test persons, gallery = camera 2.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    H, W = frame_size
    rows = []

    def add(pid: int, cam: int) -> int:
        tid = len(rows)
        n = int(rng.integers(length_range[0], length_range[1] + 1))
        folder = "00-1" if pid == -1 else f"{pid:04d}"
        frames = []
        base = rng.integers(0, 256, size=3)
        for f in range(n):
            rel = f"frames/{folder}/{folder}C{cam}T{tid:04d}F{f:03d}.{ext}"
            img = np.zeros((H, W, 3), np.uint8)
            img[: H // 2] = base                                     # identity-ish colour
            img[H // 2:] = ((base + 60 * cam) % 256)                 # camera colour
            img[:, : W // 3, 0] = (f * 23) % 256                     # frame number
            img[:, : W // 3, 1] = np.linspace(0, 255, H, dtype=np.uint8)[:, None]  # a gradient
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / rel)
            frames.append(rel)
        row = {"tracklet_id": tid, "pid": pid, "camid": cam, "frames": frames,
               "visibility": [round(float(v), 3) for v in rng.uniform(0, 1, n)] if visibility else None}
        if occlusion:
            row["occlusion"] = [str(o) for o in rng.choice(["none", "object", "person", "blur", "crop"], n)]
        rows.append(row)
        return tid

    by_pid: dict[int, dict[int, list[int]]] = {}
    for pid in range(1, num_ids + 1):
        by_pid[pid] = {cam: [add(pid, cam) for _ in range(tracklets_per_cam)]
                       for cam in range(1, num_cams + 1)}
    extra = [add(0, int(rng.integers(1, num_cams + 1))) for _ in range(distractors)]
    extra += [add(-1, int(rng.integers(1, num_cams + 1))) for _ in range(junk)]

    pids = list(by_pid)
    all_of = lambda pid: [t for cam in by_pid[pid].values() for t in cam]  # noqa: E731
    splits = []
    if protocol == "mars":
        for s in range(num_splits or 1):
            order = pids if s == 0 else list(rng.permutation(pids))
            train_ids, test_ids = order[: len(order) // 2], order[len(order) // 2:]
            query = [by_pid[p][1][0] for p in test_ids]
            gallery = [t for p in test_ids for t in all_of(p) if t not in query] + extra
            splits.append({"train": sorted(t for p in train_ids for t in all_of(p)),
                           "query": query, "gallery": gallery})
    elif protocol == "two_camera":
        if num_cams != 2:
            raise ValueError("two_camera protocol needs num_cams=2")
        for s in range(num_splits or 10):
            order = [int(p) for p in rng.permutation(pids)]
            train_ids, test_ids = sorted(order[: len(order) // 2]), sorted(order[len(order) // 2:])
            splits.append({"train": sorted(t for p in train_ids for t in all_of(p)),
                           "query": [t for p in test_ids for t in by_pid[p][1]],
                           "gallery": [t for p in test_ids for t in by_pid[p][2]] + extra})
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
    meta = {"name": name, "source": "synthetic", "protocol": protocol, "frame_size": [H, W], "excluded": []}
    write_manifest(root, rows, splits, meta)  # counts and format_version filled in
    return root


@pytest.fixture
def make_manifest(tmp_path):
    """A callable ``make_manifest(**kwargs) -> Path`` writing ``write_tiny_manifest`` datasets.

    Each call writes a fresh folder below ``tmp_path`` (``subdir=`` names it).
    """
    counter = iter(range(10**6))

    def make(subdir: str | None = None, **kwargs) -> Path:
        return write_tiny_manifest(tmp_path / (subdir or f"dataset{next(counter)}"), **kwargs)

    return make
