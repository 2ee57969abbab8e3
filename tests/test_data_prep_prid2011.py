"""data_prep.prid2011 on a miniature PRID2011 multi-shot layout built here (tiny PNGs)."""
import json
import random

import pytest
from PIL import Image

from data_prep.__main__ import main
from data_prep.common import DataPrepError
from data_prep.prid2011 import build

# (camera, person) -> number of frames; person 3 is one frame short in cam_b (21 frames)
LENGTHS = {("cam_a", p): 22 for p in (1, 2, 3, 4, 5, 201)}
LENGTHS.update({("cam_b", p): 23 for p in (1, 2, 4, 5, 201, 202)})
LENGTHS[("cam_b", 3)] = 21


def make_prid(root):
    base = root / "prid_2011" / "multi_shot"
    for (cam, person), n in LENGTHS.items():
        folder = base / cam / f"person_{person:04d}"
        folder.mkdir(parents=True)
        numbers = list(range(1, n + 1))
        random.Random(person).shuffle(numbers)  # creation order must not matter
        for f in numbers:
            # person 1 in cam_a uses unpadded names: 10.png must follow 9.png, not 1.png
            name = f"{f}.png" if (cam, person) == ("cam_a", 1) else f"{f:04d}.png"
            Image.new("RGB", (4, 8), (person, f, 0)).save(folder / name)
    return root


@pytest.fixture(scope="module")
def prid(tmp_path_factory):
    return make_prid(tmp_path_factory.mktemp("prid") / "raw")


def test_kept_persons_tracklets_and_frame_order(prid):
    tracklets, splits, meta = build(prid, prid.parent / "out")
    assert [(t["tracklet_id"], t["pid"], t["camid"]) for t in tracklets] == [
        (0, 1, 1), (1, 1, 2), (2, 2, 1), (3, 2, 2), (4, 4, 1), (5, 4, 2), (6, 5, 1), (7, 5, 2)]
    names = [f.rsplit("/", 1)[1] for f in tracklets[0]["frames"]]
    assert names == [f"{f}.png" for f in range(1, 23)]
    assert tracklets[1]["frames"][0] == "../raw/prid_2011/multi_shot/cam_b/person_0001/0001.png"
    assert len(tracklets[1]["frames"]) == 23


def test_exclusions_are_recorded_with_their_rule(prid):
    _, _, meta = build(prid, prid.parent / "out")
    single, short = meta["excluded"]
    assert "one camera" in single["rule"] and single["count"] == 3
    assert single["items"] == ["cam_a/person_0201", "cam_b/person_0201", "cam_b/person_0202"]
    assert "more than 21" in short["rule"] and short["count"] == 1
    assert short["items"] == ["person_0003 (cam_a 22, cam_b 21 frames)"]


def test_splits_are_ten_50_50_person_splits_fixed_by_the_seed(prid):
    tracklets, splits, meta = build(prid, prid.parent / "out", seed=0)
    pid = {t["tracklet_id"]: t["pid"] for t in tracklets}
    cam = {t["tracklet_id"]: t["camid"] for t in tracklets}
    assert len(splits) == 10 and meta["split_seed"] == 0
    for s in splits:
        train, test = {pid[i] for i in s["train"]}, {pid[i] for i in s["query"]}
        assert len(train) == len(test) == 2 and train | test == {1, 2, 4, 5}
        assert {pid[i] for i in s["gallery"]} == test
        assert {cam[i] for i in s["query"]} == {1} and {cam[i] for i in s["gallery"]} == {2}
    assert build(prid, prid.parent / "out", seed=0)[1] == splits
    assert build(prid, prid.parent / "out", seed=1)[1] != splits


def test_cli_seed_and_summary(prid, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["prid2011", "--src", str(prid), "--out", str(out), "--seed", "3", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "identities 4" in printed and "excluded 1" in printed
    assert json.loads((out / "meta.json").read_text())["split_seed"] == 3
    assert json.loads((out / "splits.json").read_text()) == build(prid, out, seed=3)[1]


def _break(src, case):
    base = src / "prid_2011" / "multi_shot"
    p2 = base / "cam_b" / "person_0002"
    if case == "missing folder":
        (src / "prid_2011").rename(src / "prid")
    elif case == "bad name":
        (p2 / "0003.png").rename(p2 / "frame_a.png")
    elif case == "empty folder":
        for f in p2.iterdir():
            f.unlink()
    elif case == "missing person":
        for f in p2.iterdir():
            f.unlink()
        p2.rmdir()
    elif case == "unreadable image":
        (p2 / "0023.png").write_bytes(b"not a png" * 7)
    elif case == "stray folder":
        (base / "cam_a" / "notes").mkdir()


BREAKS = {"missing folder": "multi_shot: folder not found", "bad name": "frame_a.png: cannot parse",
          "empty folder": "person_0002: empty tracklet folder", "missing person": "cam_b: person_0002 missing",
          "unreadable image": r"person_0002[/\\]0023.png: unreadable image",
          "stray folder": "notes: unexpected folder name"}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_bad_input_names_the_culprit(tmp_path, case):
    src = make_prid(tmp_path / "raw")
    _break(src, case)
    with pytest.raises(DataPrepError, match=BREAKS[case]):
        build(src, tmp_path / "out")
