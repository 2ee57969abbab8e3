"""data_prep.ilidsvid on a miniature iLIDS-VID layout built here (tiny PNGs, a real ls_set .mat)."""
import json

import numpy as np
import pytest
import scipy.io
from PIL import Image

from data_prep.__main__ import main
from data_prep.common import DataPrepError
from data_prep.ilidsvid import build

PERSONS = [1, 2, 5, 12]  # numbers with gaps, as in the real set
FRAMES = {(1, 1): [10, 9, 2, 317], (1, 2): [4, 3]}  # creation order; unpadded numbers on purpose
ROW = [3, 1, 4, 2]  # 1-based into PERSONS: test = persons 5, 1; train = persons 12, 2


def make_ilids(root, ls_set=None):
    seq = root / "i-LIDS-VID" / "sequences"
    for person in PERSONS:
        for cam in (1, 2):
            folder = seq / f"cam{cam}" / f"person{person:03d}"
            folder.mkdir(parents=True)
            for f in FRAMES.get((person, cam), [1, 2]):
                Image.new("RGB", (4, 8), (person, cam, f % 255)).save(folder / f"cam{cam}_person{person:03d}_{f}.png")
    splits = root / "train-test people splits"
    splits.mkdir()
    if ls_set is None:
        ls_set = np.array([ROW] + [np.roll(ROW, s) for s in range(1, 10)], dtype=float)
    scipy.io.savemat(splits / "train_test_splits_ilidsvid.mat", {"ls_set": ls_set})
    return root


def test_tracklets_and_ten_splits(tmp_path):
    src = make_ilids(tmp_path / "raw")
    tracklets, splits, meta = build(src, tmp_path / "out")
    assert [(t["tracklet_id"], t["pid"], t["camid"]) for t in tracklets] == [
        (0, 1, 1), (1, 1, 2), (2, 2, 1), (3, 2, 2), (4, 5, 1), (5, 5, 2), (6, 12, 1), (7, 12, 2)]
    assert [f.rsplit("_", 1)[1] for f in tracklets[0]["frames"]] == ["2.png", "9.png", "10.png", "317.png"]
    assert tracklets[0]["frames"][0] == "../raw/i-LIDS-VID/sequences/cam1/person001/cam1_person001_2.png"
    assert len(splits) == 10
    assert splits[0] == {"train": [2, 3, 6, 7], "query": [0, 4], "gallery": [1, 5]}
    assert meta["protocol"] == "two_camera" and meta["frame_size"] == [8, 4]


def test_cli(tmp_path, capsys):
    src = make_ilids(tmp_path / "raw")
    assert main(["ilidsvid", "--src", str(src), "--out", str(tmp_path / "ds"), "--no-progress"]) == 0
    assert "10 split(s)" in capsys.readouterr().out
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["counts"]["identities"] == 4 and meta["counts"]["frames"] == 4 + 2 + 6 * 2


def _break(src, case):
    seq = src / "i-LIDS-VID" / "sequences"
    mat = src / "train-test people splits" / "train_test_splits_ilidsvid.mat"
    p2 = seq / "cam2" / "person002"
    if case == "missing folder":
        (src / "i-LIDS-VID").rename(src / "ilids")
    elif case == "missing mat":
        mat.unlink()
    elif case == "wrong shape":
        scipy.io.savemat(mat, {"ls_set": np.ones((10, 5))})
    elif case == "not a permutation":
        scipy.io.savemat(mat, {"ls_set": np.array([[1, 1, 2, 3]])})
    elif case == "bad name":
        (p2 / "cam2_person002_x.png").write_bytes((p2 / "cam2_person002_1.png").read_bytes())
    elif case == "wrong person in name":
        (p2 / "cam2_person005_3.png").write_bytes((p2 / "cam2_person002_1.png").read_bytes())
    elif case == "empty folder":
        for f in p2.iterdir():
            f.unlink()
    elif case == "missing person":
        for f in p2.iterdir():
            f.unlink()
        p2.rmdir()
    elif case == "unreadable image":
        (p2 / "cam2_person002_2.png").write_bytes(b"\x89PNG garbage" * 5)


BREAKS = {"missing folder": "sequences: folder not found", "missing mat": "train_test_splits_ilidsvid.mat: .mat file",
          "wrong shape": r"ls_set has shape \(10, 5\), expected \(n, 4\)",
          "not a permutation": "ls_set row 1 is not a permutation",
          "bad name": "cam2_person002_x.png: cannot parse",
          "wrong person in name": "cam2_person005_3.png: expected a name like cam2_person002_",
          "empty folder": "person002: empty tracklet folder",
          "missing person": "cam1/person002: person 2 has no sequence in cam2",
          "unreadable image": "cam2_person002_2.png: unreadable image"}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_bad_input_names_the_culprit(tmp_path, case):
    src = make_ilids(tmp_path / "raw")
    _break(src, case)
    with pytest.raises(DataPrepError, match=BREAKS[case]):
        build(src, tmp_path / "out")
