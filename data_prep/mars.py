"""MARS (Zheng et al., ECCV 2016) as distributed → manifest.

Expected ``--src`` layout::

    bbox_train/PPPP/PPPPCcTttttFfff.jpg     e.g. bbox_train/0001/0001C1T0001F001.jpg
    bbox_test/PPPP/...                      PPPP = 0000 (distractors) and 00-1 (junk) included
    info/train_name.txt, info/test_name.txt               one image name per line
    info/tracks_train_info.mat (track_train_info, n×4)    rows [start, end, pid, camid];
    info/tracks_test_info.mat  (track_test_info, n×4)     start/end 1-based, inclusive, into the name list
    info/query_IDX.mat         (query_IDX, 1×1980)        1-based rows of track_test_info

One split (the common convention): train = the train tracks, query = the ``query_IDX`` tracks,
gallery = the other test tracks (the official evaluation's gallery = query + gallery).
Tracklet ids: train rows 0..n_train-1 in file order, then test rows n_train + row index.
Junk (pid -1) and distractor (pid 0) tracks keep those pids. Every name of a track must carry
the pid and camera of its .mat row; the frames of a track are sorted by the ``F`` number.
"""
from __future__ import annotations

import re
from pathlib import Path

from .common import (DataPrepError, check_tracklet_images, load_mat, read_lines, relative_folder,
                     relative_frame, write_manifest)

NAME = re.compile(r"(?P<pid>\d{4}|00-1)C(?P<cam>\d+)T(?P<track>\d+)F(?P<frame>\d+)")
DEFAULT_FRAME_SIZE = [256, 128]


def parse_name(name: str, where: str) -> tuple[int, int, int]:
    """``0001C1T0001F001.jpg`` → (pid 1, camid 1, frame 1); ``00-1...`` → pid -1."""
    stem = Path(name).stem
    match = NAME.fullmatch(stem)
    if match is None or Path(name).suffix.lower() != ".jpg":
        raise DataPrepError(f"{where}: image name {name!r} does not parse "
                            "(expected PPPPCcTttttFfff.jpg, e.g. 0001C1T0001F001.jpg)")
    pid = -1 if match["pid"] == "00-1" else int(match["pid"])
    return pid, int(match["cam"]), int(match["frame"])


def _tracks(src: Path, out: Path, part: str, names_file: str, mat_file: str, key: str,
            first_id: int, progress: bool) -> tuple[list[dict], list[list[Path]]]:
    from tqdm import tqdm

    info = src / "info"
    names = read_lines(info / names_file)
    rows = load_mat(info / mat_file, key, shape=(None, 4))
    if len(rows) == 0:
        raise DataPrepError(f"{info / mat_file}: {key} has no rows")
    tracklets, paths = [], []
    for r, (start, end, pid, camid) in enumerate(tqdm(rows.tolist(), desc=f"MARS: {part}", unit="track",
                                                      disable=not progress)):
        where = f"{info / mat_file} row {r + 1} {[start, end, pid, camid]}"
        if not 1 <= start <= end <= len(names):
            raise DataPrepError(f"{where}: start/end outside 1..{len(names)} (lines of {names_file})")
        numbered = []
        for name in names[start - 1:end]:
            n_pid, n_cam, n_frame = parse_name(name, f"{info / names_file}")
            if (n_pid, n_cam) != (pid, camid):
                raise DataPrepError(f"{where}: image {name} has pid {n_pid}, camera {n_cam}; "
                                    f"the row says pid {pid}, camera {camid}")
            numbered.append((n_frame, name))
        numbered.sort()
        for (f_a, n_a), (f_b, n_b) in zip(numbered, numbered[1:]):
            if f_a == f_b:
                raise DataPrepError(f"{where}: frame number {f_a} used by {n_a} and {n_b}")
        frame_paths = [src / part / name[:4] / name for _, name in numbered]
        tracklets.append({"tracklet_id": first_id + r, "pid": pid, "camid": camid,
                          "frames": [relative_frame(p, out) for p in frame_paths]})
        paths.append(frame_paths)
    return tracklets, paths


def build(src: Path, out: Path, check_images: str = "ends", progress: bool = False):
    """Read the raw layout; return ``(tracklets, splits, meta)`` for ``write_manifest``."""
    src, out = Path(src), Path(out)
    for sub in ("bbox_train", "bbox_test", "info"):
        if not (src / sub).is_dir():
            raise DataPrepError(f"{src / sub}: folder not found (--src must hold bbox_train/, bbox_test/, info/)")
    train, train_paths = _tracks(src, out, "bbox_train", "train_name.txt", "tracks_train_info.mat",
                                 "track_train_info", 0, progress)
    test, test_paths = _tracks(src, out, "bbox_test", "test_name.txt", "tracks_test_info.mat",
                               "track_test_info", len(train), progress)
    query_rows = load_mat(src / "info" / "query_IDX.mat", "query_IDX", vector=True).tolist()
    bad = [q for q in query_rows if not 1 <= q <= len(test)]
    if bad:
        raise DataPrepError(f"{src / 'info' / 'query_IDX.mat'}: query_IDX {bad[:5]} outside 1..{len(test)}")
    if len(set(query_rows)) != len(query_rows):
        raise DataPrepError(f"{src / 'info' / 'query_IDX.mat'}: repeated rows in query_IDX")
    query = [test[q - 1]["tracklet_id"] for q in query_rows]
    query_set = set(query)
    gallery = [t["tracklet_id"] for t in test if t["tracklet_id"] not in query_set]
    splits = [{"train": [t["tracklet_id"] for t in train], "query": query, "gallery": gallery}]

    size = check_tracklet_images(train_paths + test_paths, check_images, progress, "MARS: checking images")
    meta = {"name": "mars", "source": "mars", "protocol": "mars",
            "frame_size": size or DEFAULT_FRAME_SIZE, "excluded": [],
            "raw_root": relative_folder(src, out), "frames_stored": "relative paths into the raw folder",
            "query_convention": "gallery = test tracklets not in query_IDX (official evaluation: add the queries)",
            "images_checked": check_images}
    return train + test, splits, meta


def prepare(src: Path, out: Path, check_images: str = "ends", progress: bool = False) -> None:
    """Write the MARS manifest into ``out`` (frames stay where they are in ``src``)."""
    tracklets, splits, meta = build(src, out, check_images, progress)
    write_manifest(Path(out), tracklets, splits, meta)
