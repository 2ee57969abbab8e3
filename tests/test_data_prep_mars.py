"""data_prep.mars on a miniature MARS layout built here (tiny JPEGs, real .mat files)."""
import csv
import json
import random

import numpy as np
import pytest
import scipy.io
from PIL import Image

from data_prep.__main__ import main
from data_prep.common import DataPrepError
from data_prep.mars import build

# (part, pid folder, pid, camid, tracklet no., frame numbers in the order the name list gives them)
TRACKS = [
    ("train", "0001", 1, 1, 1, [10, 2, 9]),
    ("train", "0001", 1, 2, 1, [1, 2]),
    ("train", "0002", 2, 1, 3, [5]),
    ("test", "0003", 3, 1, 1, [3, 1, 2]),
    ("test", "0003", 3, 2, 2, [1, 2]),
    ("test", "0004", 4, 1, 1, [1]),
    ("test", "0004", 4, 3, 1, [7, 4]),
    ("test", "0000", 0, 2, 1, [1, 2]),
    ("test", "00-1", -1, 1, 1, [1]),
]
QUERY_ROWS = [1, 3]  # 1-based rows of the test tracks: pid 3 cam 1, pid 4 cam 1


def make_mars(root, tracks=TRACKS, query=QUERY_ROWS):
    info = root / "info"
    info.mkdir(parents=True)
    files = []
    for part in ("train", "test"):
        names, rows = [], []
        for p, folder, pid, cam, track, frames in tracks:
            if p != part:
                continue
            start = len(names) + 1
            for f in frames:
                name = f"{folder}C{cam}T{track:04d}F{f:03d}.jpg"
                names.append(name)
                files.append(root / f"bbox_{part}" / folder / name)
            rows.append([start, len(names), pid, cam])
        (info / f"{part}_name.txt").write_text("\n".join(names) + "\n")
        scipy.io.savemat(info / f"tracks_{part}_info.mat", {f"track_{part}_info": np.array(rows, dtype=float)})
    scipy.io.savemat(info / "query_IDX.mat", {"query_IDX": np.array([query], dtype=float)})
    random.Random(0).shuffle(files)  # creation order must not matter
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 8), (50, 60, 70)).save(path)
    return root


def test_tracklets_pids_camids_and_split(tmp_path):
    src = make_mars(tmp_path / "raw")
    tracklets, splits, meta = build(src, tmp_path / "out")
    assert [(t["tracklet_id"], t["pid"], t["camid"]) for t in tracklets] == [
        (0, 1, 1), (1, 1, 2), (2, 2, 1), (3, 3, 1), (4, 3, 2), (5, 4, 1), (6, 4, 3), (7, 0, 2), (8, -1, 1)]
    assert splits == [{"train": [0, 1, 2], "query": [3, 5], "gallery": [4, 6, 7, 8]}]
    assert tracklets[0]["frames"] == [f"../raw/bbox_train/0001/0001C1T0001F{f:03d}.jpg" for f in (2, 9, 10)]
    assert tracklets[8]["frames"] == ["../raw/bbox_test/00-1/00-1C1T0001F001.jpg"]
    assert meta["protocol"] == "mars" and meta["frame_size"] == [8, 4]


def test_cli_writes_a_manifest_whose_frames_resolve(tmp_path, capsys):
    src = make_mars(tmp_path / "raw")
    out = tmp_path / "datasets" / "mars"
    assert main(["mars", "--src", str(src), "--out", str(out), "--no-progress"]) == 0
    assert "tracklets 9" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["counts"] == {"identities": 4, "tracklets": 9, "frames": 17, "distractor_tracklets": 1,
                              "junk_tracklets": 1, "cameras": 3}
    with open(out / "tracklets.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all((out / f).is_file() for r in rows for f in r["frames"].split("|"))
    assert rows[3]["frames"].split("|")[0].endswith("0003C1T0001F001.jpg")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["mars", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "nowhere" in capsys.readouterr().err


def _break(src, case):
    info = src / "info"
    if case == "missing folder":
        for f in (src / "bbox_test").rglob("*.jpg"):
            f.unlink()
        for d in sorted((src / "bbox_test").rglob("*"), reverse=True):
            d.rmdir()
        (src / "bbox_test").rmdir()
    elif case == "missing mat":
        (info / "tracks_test_info.mat").unlink()
    elif case == "wrong shape":
        scipy.io.savemat(info / "tracks_train_info.mat", {"track_train_info": np.ones((3, 3))})
    elif case == "bad name":
        names = (info / "train_name.txt").read_text().replace("0001C1T0001F002.jpg", "0001_C1_F002.jpg")
        (info / "train_name.txt").write_text(names)
    elif case == "pid mismatch":
        rows = scipy.io.loadmat(info / "tracks_test_info.mat")["track_test_info"]
        rows[1, 2] = 4
        scipy.io.savemat(info / "tracks_test_info.mat", {"track_test_info": rows})
    elif case == "row range":
        rows = scipy.io.loadmat(info / "tracks_train_info.mat")["track_train_info"]
        rows[2, 1] = 99
        scipy.io.savemat(info / "tracks_train_info.mat", {"track_train_info": rows})
    elif case == "query range":
        scipy.io.savemat(info / "query_IDX.mat", {"query_IDX": np.array([[1, 7]])})
    elif case == "unreadable image":
        (src / "bbox_test" / "0004" / "0004C3T0001F007.jpg").write_bytes(b"garbage bytes" * 9)


BREAKS = {"missing folder": "bbox_test: folder not found", "missing mat": "tracks_test_info.mat: .mat file not found",
          "wrong shape": r"tracks_train_info.mat: track_train_info has shape \(3, 3\)",
          "bad name": "train_name.txt: image name '0001_C1_F002.jpg' does not parse",
          "pid mismatch": r"tracks_test_info.mat row 2 .*pid 3, camera 2; the row says pid 4",
          "row range": r"tracks_train_info.mat row 3 .*outside 1..6",
          "query range": r"query_IDX.mat: query_IDX \[7\] outside 1..6",
          "unreadable image": "0004C3T0001F007.jpg: unreadable image"}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_bad_input_names_the_culprit(tmp_path, case):
    src = make_mars(tmp_path / "raw")
    _break(src, case)
    with pytest.raises(DataPrepError, match=BREAKS[case]):
        build(src, tmp_path / "out")
