"""reidkit.data.manifest: reading and writing the manifest, and the one set of rules both apply."""

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from reidkit.data import Manifest, ManifestError, write_manifest


def _png(path, size=(4, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)


def _rewrite_rows(root, edit):
    """Apply ``edit(rows)`` to tracklets.csv (list of dicts) and write it back (broken on purpose)."""
    path = root / "tracklets.csv"
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols, rows = reader.fieldnames, list(reader)
    cols = edit(rows) or cols
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _as_written(manifest):
    """The tracklet dicts ``write_manifest`` takes, from a loaded manifest."""
    return [{"tracklet_id": t.tracklet_id, "pid": t.pid, "camid": t.camid, "frames": list(t.frames),
             "visibility": t.visibility, **{k: list(v) for k, v in t.extras.items()}}
            for t in manifest.tracklets]


# ------------------------------------------------------------------ reading

def test_load_valid_manifest(make_manifest):
    root = make_manifest(num_ids=4, distractors=2, junk=1, visibility=True, occlusion=True)
    m = Manifest.load(root)
    assert len(m) == 4 * 2 + 3
    assert m.protocol == "mars" and len(m.splits) == 1
    assert sorted(set(m.pids.tolist())) == [-1, 0, 1, 2, 3, 4]
    t = m.tracklets[3]
    assert t.num_frames == len(t.frames) == m.lengths[3]
    assert t.visibility.shape == (t.num_frames,) and t.visibility.dtype == np.float32
    assert len(t.extras["occlusion"]) == t.num_frames
    assert m.index(t.tracklet_id) == 3
    assert m.positions([t.tracklet_id, 0]).tolist() == [3, 0]
    assert Manifest.load(root / "tracklets.csv").root == root
    with pytest.raises(KeyError):
        m.index(999)


def test_load_two_camera(make_manifest):
    m = Manifest.load(make_manifest(num_ids=6, protocol="two_camera", num_splits=3))
    assert m.protocol == "two_camera" and len(m.splits) == 3
    for s in m.splits:
        q, g = m.positions(s.query), m.positions(s.gallery)
        assert set(m.camids[q]) == {1} and set(m.camids[g]) == {2}
        assert not set(m.pids[m.positions(s.train)]) & set(m.pids[q])


@pytest.mark.parametrize("edit, message", [
    (lambda rows: ["tracklet_id", "pid", "camid", "frames"], "missing column(s) ['num_frames']"),
    (lambda rows: rows[2].update(pid="x7"), "row 3 (line 4): pid 'x7' is not an integer"),
    (lambda rows: rows[2].update(pid="-2"), "row 3 (line 4): pid -2; expected -1 (junk)"),
    (lambda rows: rows[1].update(camid="0"), "row 2 (line 3): camid 0 must be >= 1"),
    (lambda rows: rows[4].update(tracklet_id=rows[1]["tracklet_id"]),
     "row 5 (line 6): duplicate tracklet_id 1 (first at row 2)"),
    (lambda rows: rows[0].update(num_frames=int(rows[0]["num_frames"]) + 1), "row 1 (line 2): num_frames"),
    (lambda rows: rows[3].update(visibility="0.5|0.5"), "row 4 (line 5): visibility has 2 values"),
    (lambda rows: rows[3].update(visibility="|".join(["1.5"] * int(rows[3]["num_frames"]))),
     "row 4 (line 5): visibility value 1.5 is outside [0, 1]"),
    (lambda rows: rows[0].update(frames=rows[0]["frames"] + "|"), "row 1 (line 2): empty frame path"),
    (lambda rows: rows[0].update(frames="/abs/0.png", num_frames=1, visibility=""),
     "row 1 (line 2): frame path '/abs/0.png' must be relative"),
    (lambda rows: list(rows[0]) + ["bad name"], "header: column name 'bad name' must be an identifier"),
])
def test_tracklets_validation_names_file_row_value(make_manifest, edit, message):
    root = make_manifest(num_ids=3, visibility=True)
    _rewrite_rows(root, edit)
    with pytest.raises(ManifestError) as e:
        Manifest.load(root)
    assert str(root / "tracklets.csv") in str(e.value)
    assert message in str(e.value)


# make_manifest(num_ids=4): pid p has tracklet 2(p-1) in camera 1 and 2(p-1)+1 in camera 2;
# pids 1, 2 train (tracklets 0-3), pids 3, 4 test: query [4, 6], gallery [5, 7].
SPLIT_BREAKS = {
    "tracklet in train and gallery": (lambda s: s["gallery"].append(0),
                                      r"split 0: tracklet ids \[0\] are in train and in gallery"),
    "tracklet in train and query": (lambda s: s["query"].append(1),
                                    r"split 0: tracklet ids \[1\] are in train and in query"),
    "gallery id twice": (lambda s: s["gallery"].append(5),
                         r"split 0, gallery: tracklet ids \[5\] are listed more than once"),
    "query id twice": (lambda s: s["query"].insert(0, 6),
                       r"split 0, query: tracklet ids \[6\] are listed more than once"),
    "train identity in query": (lambda s: (s["gallery"].remove(5), s["train"].append(5)),
                                r"split 0: identities \(pid\) \[3\] are in train and in query"),
    "train identity in gallery": (lambda s: (s["query"].remove(4), s["train"].append(4)),
                                  r"split 0: identities \(pid\) \[3\] are in train and in gallery"),
    "unknown id": (lambda s: s["gallery"].append(4242),
                   r"split 0, gallery: tracklet ids \[4242\] are not in tracklets\.csv"),
    "not an integer": (lambda s: s["gallery"].append("3"), r"split 0, gallery: id '3' is not an integer"),
    "empty query": (lambda s: s["query"].clear(), r"split 0: query is empty"),
    "extra key": (lambda s: s.update(val=[]), r"split 0: expected keys train, query, gallery"),
}


@pytest.mark.parametrize("case", sorted(SPLIT_BREAKS))
def test_reader_and_writer_refuse_the_same_splits(make_manifest, tmp_path, case):
    """One validator: a split the writer refuses, the reader refuses too, with the same words."""
    root = make_manifest(num_ids=4)
    good = Manifest.load(root)
    assert [vars(s) for s in good.splits] == [{"train": [0, 1, 2, 3], "query": [4, 6], "gallery": [5, 7]}]
    edit, message = SPLIT_BREAKS[case]
    splits = json.loads((root / "splits.json").read_text())
    edit(splits[0])

    (root / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(ManifestError, match=message) as e:
        Manifest.load(root)
    assert str(e.value).startswith(f"{root / 'splits.json'}, split 0")

    out = tmp_path / "rewritten"
    with pytest.raises(ManifestError, match=message) as e:
        write_manifest(out, _as_written(good), splits, good.meta, check_files=False)
    assert str(e.value).startswith(f"{out / 'splits.json'}, split 0")
    assert not (out / "splits.json").exists()


@pytest.mark.parametrize("key, value, message", [
    ("protocol", "three_camera", "protocol 'three_camera' is not one of"),
    ("source", "imagenet", "source 'imagenet' is not one of"),
    ("frame_size", [128], r"frame_size \[128\]: expected \[H, W\]"),
    ("name", "", "name '': expected a non-empty string"),
])
def test_reader_and_writer_refuse_the_same_meta(make_manifest, tmp_path, key, value, message):
    root = make_manifest(num_ids=3)
    good = Manifest.load(root)
    meta = {**good.meta, key: value}
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ManifestError, match=rf"^{re.escape(str(root / 'meta.json'))}: {message}"):
        Manifest.load(root)
    out = tmp_path / "rewritten"
    with pytest.raises(ManifestError, match=rf"^{re.escape(str(out / 'meta.json'))}: {message}"):
        write_manifest(out, _as_written(good), [vars(s) for s in good.splits], meta, check_files=False)


@pytest.mark.parametrize("version, message", [
    (None, "no format_version (expected 1)"),
    (2, "format_version 2 is not supported"),
    ("1", "format_version '1' is not supported"),
])
def test_reader_refuses_a_missing_or_unknown_format_version(make_manifest, version, message):
    root = make_manifest(num_ids=2)
    meta = json.loads((root / "meta.json").read_text())
    assert meta["format_version"] == 1
    if version is None:
        del meta["format_version"]
    else:
        meta["format_version"] = version
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ManifestError) as e:
        Manifest.load(root)
    assert str(e.value).startswith(f"{root / 'meta.json'}: {message}")


def test_invalid_json_is_named(make_manifest):
    root = make_manifest(num_ids=2)
    (root / "splits.json").write_text("[{")
    with pytest.raises(ManifestError, match=r"splits\.json: invalid JSON"):
        Manifest.load(root)


@pytest.mark.parametrize("name", ["tracklets.csv", "splits.json", "meta.json"])
def test_missing_file(make_manifest, name):
    root = make_manifest(num_ids=2)
    (root / name).unlink()
    with pytest.raises(ManifestError, match=f"{name}: file not found"):
        Manifest.load(root)


# ------------------------------------------------------------------ writing


def _dataset(tmp_path):
    for name in ("a/1.png", "a/2.png", "b/1.png", "c/1.png", "c/2.png", "d/1.png"):
        _png(tmp_path / name)
    tracklets = [
        {"tracklet_id": 0, "pid": 1, "camid": 1, "frames": ["a/1.png", "a/2.png"], "visibility": [1.0, 0.25],
         "occlusion": ["none", "object"]},
        {"tracklet_id": 1, "pid": 1, "camid": 2, "frames": ["b/1.png"]},
        {"tracklet_id": 5, "pid": 2, "camid": 1, "frames": ["c/1.png", "c/2.png"], "visibility": None},
        {"tracklet_id": 7, "pid": 2, "camid": 2, "frames": ["d/1.png"]},
        {"tracklet_id": 8, "pid": 0, "camid": 3, "frames": ["d/1.png"]},
        {"tracklet_id": 9, "pid": -1, "camid": 3, "frames": ["d/1.png"]},
    ]
    splits = [{"train": [0, 1], "query": [5], "gallery": [7, 8, 9]}]
    meta = {"name": "toy", "source": "synthetic", "protocol": "mars", "frame_size": [8, 4],
            "excluded": [{"rule": "too short", "count": 1, "items": ["x"]}], "generator": {"seed": 3}}
    return tracklets, splits, meta


def test_write_manifest_round_trip(tmp_path):
    tracklets, splits, meta = _dataset(tmp_path)
    write_manifest(tmp_path, tracklets, splits, {**meta, "format_version": 7})
    with open(tmp_path / "tracklets.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["tracklet_id", "pid", "camid", "num_frames", "frames", "visibility", "occlusion"]
    assert rows[0] == {"tracklet_id": "0", "pid": "1", "camid": "1", "num_frames": "2",
                       "frames": "a/1.png|a/2.png", "visibility": "1|0.25", "occlusion": "none|object"}
    assert rows[2]["visibility"] == "" and rows[2]["occlusion"] == ""
    assert [r["pid"] for r in rows] == ["1", "1", "2", "2", "0", "-1"]
    assert json.loads((tmp_path / "splits.json").read_text()) == splits
    written = json.loads((tmp_path / "meta.json").read_text())
    assert written["format_version"] == 1  # stamped by the writer, whatever was given
    assert written["generator"] == {"seed": 3} and written["excluded"] == meta["excluded"]
    assert written["counts"] == {"identities": 2, "tracklets": 6, "frames": 8, "distractor_tracklets": 1,
                                 "junk_tracklets": 1, "cameras": 3}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    m = Manifest.load(tmp_path)  # what the writer writes, the reader reads
    assert [t.tracklet_id for t in m.tracklets] == [0, 1, 5, 7, 8, 9]
    assert m.tracklets[0].visibility.tolist() == [1.0, 0.25] and m.tracklets[1].visibility is None
    assert m.tracklets[0].extras == {"occlusion": ("none", "object")}


def _bad(tracklets, splits, meta, case):
    t = lambda i: tracklets[i]  # noqa: E731
    if case == "duplicate id":
        t(1)["tracklet_id"] = 0
    elif case == "empty frames":
        t(1)["frames"] = []
    elif case == "visibility length":
        t(0)["visibility"] = [1.0]
    elif case == "visibility range":
        t(0)["visibility"] = [1.0, 1.5]
    elif case == "extra length":
        t(0)["occlusion"] = ["none"]
    elif case == "pipe in path":
        t(1)["frames"] = ["b|1.png"]
    elif case == "absolute path":
        t(1)["frames"] = ["/b/1.png"]
    elif case == "camid":
        t(1)["camid"] = 0
    elif case == "pid":
        t(1)["pid"] = -2
    elif case == "num_frames":
        t(1)["num_frames"] = 3
    elif case == "unknown split id":
        splits[0]["gallery"].append(42)
    elif case == "repeated split id":
        splits[0]["query"].append(5)
    elif case == "identity overlap":
        splits[0]["gallery"].remove(7)
        splits[0]["train"].append(7)
    elif case == "tracklet overlap":
        splits[0]["train"].append(9)
    elif case == "empty query":
        splits[0]["query"] = []
    elif case == "protocol":
        meta["protocol"] = "three_camera"
    elif case == "frame_size":
        meta["frame_size"] = [8]
    elif case == "missing file":
        t(1)["frames"] = ["b/2.png"]


BAD = {"duplicate id": r"row 2 \(tracklet_id 0\): duplicate tracklet_id 0 \(first at row 1\)",
       "empty frames": r"row 2 \(tracklet_id 1\): no frames",
       "visibility length": "visibility has 1 values, num_frames is 2", "visibility range": r"\[0, 1\]",
       "extra length": "occlusion has 1", "pipe in path": r"b\|1.png", "absolute path": "relative",
       "camid": "camid 0", "pid": "pid -2", "num_frames": "num_frames 3",
       "unknown split id": r"\[42\] are not in tracklets.csv", "repeated split id": "listed more than once",
       "identity overlap": r"identities \(pid\) \[2\] are in train and in query",
       "tracklet overlap": r"tracklet ids \[9\] are in train and in gallery", "empty query": "query is empty",
       "protocol": "three_camera", "frame_size": "frame_size", "missing file": r"b[/\\]2.png"}


@pytest.mark.parametrize("case", sorted(BAD))
def test_write_manifest_rejects_bad_input_and_writes_nothing(tmp_path, case):
    tracklets, splits, meta = _dataset(tmp_path)
    _bad(tracklets, splits, meta, case)
    with pytest.raises(ManifestError, match=BAD[case]):
        write_manifest(tmp_path, tracklets, splits, meta)
    assert not (tmp_path / "tracklets.csv").exists() and not (tmp_path / "meta.json").exists()


def test_write_manifest_without_file_check_accepts_missing_frames(tmp_path):
    tracklets, splits, meta = _dataset(tmp_path)
    tracklets[1]["frames"] = ["elsewhere/1.png"]
    write_manifest(tmp_path / "out", tracklets, splits, meta, check_files=False)
    assert (tmp_path / "out" / "meta.json").exists()
