"""iLIDS-VID (Wang et al., ECCV 2014) as distributed → manifest.

Expected ``--src`` layout (the folder the archive unpacks into)::

    i-LIDS-VID/sequences/cam1/person001/cam1_person001_00317.png
    i-LIDS-VID/sequences/cam2/person001/cam2_person001_00317.png
    train-test people splits/train_test_splits_ilidsvid.mat      ls_set: 10 × 300

Each person has one sequence per camera; pid = the number in ``personNNN``, camid = 1 / 2.
Frames are sorted by the number ending the name (``_00317``), numerically.

How ``ls_set`` is read (the reading of the dataset's own MATLAB code, and of torchreid): row s
is split s; its entries are 1-based indices into the list of persons sorted by number; the
first half of the row are the test persons, the second half the train persons. Train = both
cameras' sequences of the train persons; query = camera-1 sequences of the test persons;
gallery = camera-2 sequences. Tracklet ids: person index × 2 + (camid − 1).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .common import (DataPrepError, check_tracklet_images, list_frames, load_mat, numbered_subdirs,
                     relative_folder, relative_frame, write_manifest)

PERSON_DIR = re.compile(r"person(\d+)")
FRAME_NAME = re.compile(r"cam(?P<cam>\d)_person(?P<person>\d+)_(?P<frame>\d+)")
SPLIT_FILE = Path("train-test people splits") / "train_test_splits_ilidsvid.mat"
DEFAULT_FRAME_SIZE = [128, 64]


def _check_names(frames: list[Path], cam: int, person: int) -> None:
    for f in frames:
        match = FRAME_NAME.fullmatch(f.stem)
        if match is None or int(match["cam"]) != cam or int(match["person"]) != person:
            raise DataPrepError(f"{f}: expected a name like cam{cam}_person{person:03d}_NNNNN.png")


def build(src: Path, out: Path, check_images: str = "ends", progress: bool = False):
    """Read the raw layout; return ``(tracklets, splits, meta)`` for ``write_manifest``."""
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    seq = src / "i-LIDS-VID" / "sequences"
    if not seq.is_dir():
        raise DataPrepError(f"{seq}: folder not found (--src must hold i-LIDS-VID/ and 'train-test people splits/')")
    cams = {cam: dict(numbered_subdirs(seq / f"cam{cam}", PERSON_DIR)) for cam in (1, 2)}
    for cam, other in ((1, 2), (2, 1)):
        lonely = sorted(set(cams[cam]) - set(cams[other]))
        if lonely:
            raise DataPrepError(f"{cams[cam][lonely[0]]}: person {lonely[0]} has no sequence in cam{other}")
    persons = sorted(cams[1])

    tracklets, paths = [], []
    for i, person in enumerate(tqdm(persons, desc="iLIDS-VID: listing", unit="person", disable=not progress)):
        for cam in (1, 2):
            frames = list_frames(cams[cam][person], FRAME_NAME)
            _check_names(frames, cam, person)
            tracklets.append({"tracklet_id": 2 * i + cam - 1, "pid": person, "camid": cam,
                              "frames": [relative_frame(p, out) for p in frames]})
            paths.append(frames)

    n = len(persons)
    split_path = src / SPLIT_FILE
    ls_set = load_mat(split_path, "ls_set", shape=(None, n))
    if n % 2:
        raise DataPrepError(f"{seq}: {n} persons; the 50/50 splits need an even number")
    splits = []
    for s, row in enumerate(ls_set):
        if row.min() < 1 or row.max() > n or len(np.unique(row)) != n:
            raise DataPrepError(f"{split_path}: ls_set row {s + 1} is not a permutation of 1..{n}")
        test_idx, train_idx = row[: n // 2] - 1, row[n // 2:] - 1
        splits.append({
            "train": sorted(2 * int(i) + c for i in train_idx for c in (0, 1)),
            "query": sorted(2 * int(i) for i in test_idx),
            "gallery": sorted(2 * int(i) + 1 for i in test_idx),
        })

    size = check_tracklet_images(paths, check_images, progress, "iLIDS-VID: checking images")
    meta = {"name": "ilidsvid", "source": "ilidsvid", "protocol": "two_camera",
            "frame_size": size or DEFAULT_FRAME_SIZE, "excluded": [],
            "raw_root": relative_folder(src, out), "frames_stored": "relative paths into the raw folder",
            "split_file": SPLIT_FILE.as_posix(),
            "split_reading": "ls_set row s = split s; 1-based indices into the persons sorted by number; "
                             "first half test, second half train",
            "images_checked": check_images}
    return tracklets, splits, meta


def prepare(src: Path, out: Path, check_images: str = "ends", progress: bool = False) -> None:
    """Write the iLIDS-VID manifest into ``out`` (frames stay where they are in ``src``)."""
    tracklets, splits, meta = build(src, out, check_images, progress)
    write_manifest(Path(out), tracklets, splits, meta)
