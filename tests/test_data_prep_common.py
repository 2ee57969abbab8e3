"""data_prep.common: frame sorting, .mat reading, image checks and the manifest writer."""
import csv
import json
import re

import numpy as np
import pytest
import scipy.io
from PIL import Image

from data_prep.common import (DataPrepError, check_image, check_tracklet_images, frame_number, list_frames,
                              load_mat, sort_frames, write_manifest)


def _png(path, size=(4, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)


# ----------------------------------------------------------------- frame numbers and sorting


def test_frame_number_takes_trailing_digits_or_pattern_group():
    assert frame_number("cam1_person001_00317.png") == 317
    assert frame_number("a/b/0001.png") == 1
    pattern = re.compile(r"F(?P<frame>\d+)")
    assert frame_number("0001C1T0002F015.jpg", pattern) == 15


def test_sort_frames_is_numeric_not_lexicographic():
    assert sort_frames(["10.png", "9.png", "2.png", "100.png"]) == ["2.png", "9.png", "10.png", "100.png"]


def test_sort_frames_rejects_unparsable_and_duplicate_numbers():
    with pytest.raises(DataPrepError, match="frame_x.png"):
        sort_frames(["1.png", "frame_x.png"])
    with pytest.raises(DataPrepError, match="001.png"):
        sort_frames(["1.png", "001.png"])


def test_list_frames_sorts_by_number_whatever_the_creation_order(tmp_path):
    for n in (10, 2, 9, 1):
        _png(tmp_path / f"{n}.png")
    (tmp_path / "Thumbs.db").write_bytes(b"x")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    assert [p.name for p in list_frames(tmp_path)] == ["1.png", "2.png", "9.png", "10.png"]


def test_list_frames_errors_name_the_folder(tmp_path):
    with pytest.raises(DataPrepError, match="missing"):
        list_frames(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataPrepError, match="empty"):
        list_frames(tmp_path / "empty")


# ----------------------------------------------------------------- .mat and images


def test_load_mat_checks_file_key_shape_and_values(tmp_path):
    path = tmp_path / "a.mat"
    scipy.io.savemat(path, {"rows": np.arange(8.0).reshape(2, 4), "q": np.array([[1, 2, 3]]),
                            "frac": np.array([[0.5, 1.0]])})
    assert load_mat(path, "rows", shape=(None, 4)).dtype == np.int64
    assert load_mat(path, "q", vector=True).tolist() == [1, 2, 3]
    with pytest.raises(DataPrepError, match=r"a\.mat.*shape \(2, 4\), expected \(n, 5\)"):
        load_mat(path, "rows", shape=(None, 5))
    with pytest.raises(DataPrepError, match="no variable 'nope'"):
        load_mat(path, "nope")
    with pytest.raises(DataPrepError, match="vector"):
        load_mat(path, "rows", vector=True)
    with pytest.raises(DataPrepError, match="whole numbers"):
        load_mat(path, "frac")
    with pytest.raises(DataPrepError, match="b.mat: .mat file not found"):
        load_mat(tmp_path / "b.mat", "rows")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DataPrepError, match="junk.mat"):
        load_mat(tmp_path / "junk.mat", "rows")


def test_check_image_rejects_garbage_and_reports_size(tmp_path):
    _png(tmp_path / "ok.png", size=(6, 10))
    assert check_image(tmp_path / "ok.png") == (10, 6)
    (tmp_path / "bad.png").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(DataPrepError, match="bad.png: unreadable image"):
        check_image(tmp_path / "bad.png")
    # "ends" opens only the first and last frame; "all" finds the broken middle one
    frames = [tmp_path / "ok.png", tmp_path / "bad.png", tmp_path / "ok.png"]
    assert check_tracklet_images([frames], "ends") == [10, 6]
    assert check_tracklet_images([frames], "none") is None
    with pytest.raises(DataPrepError, match="bad.png"):
        check_tracklet_images([frames], "all")


# ----------------------------------------------------------------- write_manifest


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
    write_manifest(tmp_path, tracklets, splits, meta)
    with open(tmp_path / "tracklets.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["tracklet_id", "pid", "camid", "num_frames", "frames", "visibility", "occlusion"]
    assert rows[0] == {"tracklet_id": "0", "pid": "1", "camid": "1", "num_frames": "2",
                       "frames": "a/1.png|a/2.png", "visibility": "1|0.25", "occlusion": "none|object"}
    assert rows[2]["visibility"] == "" and rows[2]["occlusion"] == ""
    assert [r["pid"] for r in rows] == ["1", "1", "2", "2", "0", "-1"]
    assert json.loads((tmp_path / "splits.json").read_text()) == splits
    written = json.loads((tmp_path / "meta.json").read_text())
    assert written["format_version"] == 1
    assert written["generator"] == {"seed": 3} and written["excluded"] == meta["excluded"]
    assert written["counts"] == {"identities": 2, "tracklets": 6, "frames": 8, "distractor_tracklets": 1,
                                 "junk_tracklets": 1, "cameras": 3}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


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


BAD = {"duplicate id": "used twice", "empty frames": "tracklet 1: no frames",
       "visibility length": "visibility has 1 entries for 2 frames", "visibility range": r"\[0, 1\]",
       "extra length": "occlusion has 1", "pipe in path": r"b\|1.png", "absolute path": "relative",
       "camid": "camid 0", "pid": "pid -2", "num_frames": "num_frames 3", "unknown split id": r"unknown.*42",
       "repeated split id": "repeated", "identity overlap": r"identities \[2\]",
       "tracklet overlap": r"tracklets \[9\] are in train", "empty query": "query is empty",
       "protocol": "three_camera", "frame_size": "frame_size", "missing file": r"b[/\\]2.png"}


@pytest.mark.parametrize("case", sorted(BAD))
def test_write_manifest_rejects_bad_input_and_writes_nothing(tmp_path, case):
    tracklets, splits, meta = _dataset(tmp_path)
    _bad(tracklets, splits, meta, case)
    with pytest.raises(DataPrepError, match=BAD[case]):
        write_manifest(tmp_path, tracklets, splits, meta)
    assert not (tmp_path / "tracklets.csv").exists() and not (tmp_path / "meta.json").exists()


def test_write_manifest_without_file_check_accepts_missing_frames(tmp_path):
    tracklets, splits, meta = _dataset(tmp_path)
    tracklets[1]["frames"] = ["elsewhere/1.png"]
    write_manifest(tmp_path / "out", tracklets, splits, meta, check_files=False)
    assert (tmp_path / "out" / "meta.json").exists()


# ----------------------------------------------------------------- the CLI


def test_cli_help_documents_the_options(capsys):
    from data_prep.__main__ import main

    with pytest.raises(SystemExit):
        main(["prid2011", "--help"])
    text = capsys.readouterr().out
    assert "--src" in text and "--out" in text and "--seed" in text and "--check-images" in text


def test_cli_synthetic_calls_the_generator_lazily(tmp_path, monkeypatch, capsys):
    import sys
    import types

    from data_prep.__main__ import main

    calls = []

    def generate(out, preset, seed, progress, occlusion="default"):
        calls.append((out, preset, seed, progress, occlusion))
        tracklets, splits, meta = _dataset(out)
        write_manifest(out, tracklets, splits, meta)

    monkeypatch.setitem(sys.modules, "data_prep.synthetic", types.SimpleNamespace(generate=generate))
    assert main(["synthetic", "--out", str(tmp_path), "--preset", "tiny", "--seed", "4"]) == 0
    assert calls == [(tmp_path, "tiny", 4, True, "default")]
    assert "tracklets 6" in capsys.readouterr().out


def test_relative_frames_resolve_from_the_out_dir_even_through_a_symlink(tmp_path):
    from data_prep.common import relative_folder, relative_frame

    _png(tmp_path / "raw" / "a" / "1.png")
    (tmp_path / "real_out").mkdir()
    (tmp_path / "link_out").symlink_to(tmp_path / "real_out" , target_is_directory=True)
    for out in (tmp_path / "real_out", tmp_path / "link_out", tmp_path / "raw", tmp_path / "raw" / "m" / "n"):
        rel = relative_frame(tmp_path / "raw" / "a" / "1.png", out)
        out.mkdir(parents=True, exist_ok=True)
        assert (out / rel).is_file(), (out, rel)
    assert relative_frame(tmp_path / "raw" / "a" / "1.png", tmp_path / "raw") == "a/1.png"
    assert relative_folder(tmp_path / "raw", tmp_path / "raw") == "."
