"""data_prep.common: frame sorting, .mat reading, image checks; the CLI (the writer: test_manifest.py)."""
import re

import numpy as np
import pytest
import scipy.io
from PIL import Image

from conftest import write_tiny_manifest
from data_prep.common import (DataPrepError, check_image, check_tracklet_images, frame_number, list_frames,
                              load_mat, sort_frames)
from reidkit.data import ManifestError


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
        write_tiny_manifest(out, num_ids=3)

    monkeypatch.setitem(sys.modules, "data_prep.synthetic", types.SimpleNamespace(generate=generate))
    assert main(["synthetic", "--out", str(tmp_path), "--preset", "tiny", "--seed", "4"]) == 0
    assert calls == [(tmp_path, "tiny", 4, True, "default")]
    assert "tracklets 6" in capsys.readouterr().out


def test_cli_reports_manifest_rule_breaks_as_clean_errors(tmp_path, monkeypatch, capsys):
    """write_manifest raises ManifestError; a raw-layout DataPrepError is one too: both end as "error: ..."."""
    import sys
    import types

    from data_prep.__main__ import main

    assert issubclass(DataPrepError, ManifestError) and issubclass(DataPrepError, ValueError)

    def generate(out, preset, seed, progress, occlusion="default"):
        if preset == "tiny":
            raise DataPrepError("raw/x: folder not found")
        write_tiny_manifest(out / "raw", num_ids=3)  # then its splits broken: tracklet 0 in the gallery too
        splits = [{"train": [0, 1], "query": [2], "gallery": [3, 0]}]
        from reidkit.data import Manifest, write_manifest
        m = Manifest.load(out / "raw")
        write_manifest(out, [{"tracklet_id": t.tracklet_id, "pid": t.pid, "camid": t.camid, "frames": t.frames}
                             for t in m.tracklets], splits, m.meta, check_files=False)

    monkeypatch.setitem(sys.modules, "data_prep.synthetic", types.SimpleNamespace(generate=generate))
    assert main(["synthetic", "--out", str(tmp_path), "--preset", "tiny"]) == 2
    assert capsys.readouterr().err == "error: raw/x: folder not found\n"
    assert main(["synthetic", "--out", str(tmp_path), "--preset", "small"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'splits.json'}, split 0: tracklet ids [0] are in train and in gallery")


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
