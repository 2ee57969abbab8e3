"""The synthetic benchmark: manifest, frames, ground truth, MARS protocol, determinism, identity."""

import csv
import json
from collections import defaultdict
from dataclasses import fields

import numpy as np
import pytest
from PIL import Image

from data_prep.__main__ import main
from data_prep.synthetic import (PRESETS, generate, make_plan, occlusion_level, occlusion_params,
                                  preset_params)
from data_prep.synthetic.identity import change_one_region, sample_identity
from data_prep.synthetic.render import MARGIN, Pose, compose_frame, draw_person, make_camera
from data_prep.synthetic.tracklet import LABELS

H, W = 128, 64
OCCLUDED = {"object", "person", "crop"}


def _read(root):
    with open(root / "tracklets.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for key in ("tracklet_id", "pid", "camid", "num_frames"):
            r[key] = int(r[key])
        r["frames"] = r["frames"].split("|")
        r["visibility"] = [float(v) for v in r["visibility"].split("|")]
        r["occlusion"] = r["occlusion"].split("|")
    splits = json.loads((root / "splits.json").read_text())
    meta = json.loads((root / "meta.json").read_text())
    return rows, splits, meta


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = generate(tmp_path_factory.mktemp("syn") / "a", "tiny", seed=0, progress=False)
    return root, *_read(root)


def test_manifest_parses(tiny):
    root, rows, splits, meta = tiny
    assert meta["source"] == "synthetic" and meta["protocol"] == "mars"
    assert meta["frame_size"] == [H, W] and meta["excluded"] == []
    assert meta["generator"]["preset"] == "tiny" and meta["generator"]["seed"] == 0
    assert meta["counts"]["tracklets"] == len(rows) and meta["counts"]["cameras"] == 6
    assert meta["counts"]["identities"] == 20
    assert len(splits) == 1 and set(splits[0]) == {"train", "query", "gallery"}
    assert [r["tracklet_id"] for r in rows] == list(range(len(rows)))
    for r in rows:
        n = r["num_frames"]
        assert n == len(r["frames"]) == len(r["visibility"]) == len(r["occlusion"])
        assert 1 <= r["camid"] <= 6


def test_frames_exist_and_decode(tiny):
    root, rows, _, _ = tiny
    for r in rows:
        assert all((root / f).is_file() for f in r["frames"])
        for f in (r["frames"][0], r["frames"][-1]):
            with Image.open(root / f) as img:
                img.load()
                assert img.size == (W, H) and img.mode == "RGB"


def test_visibility_matches_occlusion_labels(tiny):
    _, rows, _, meta = tiny
    seen = defaultdict(int)
    compared = 0
    for r in rows:
        vis, occ = np.array(r["visibility"]), r["occlusion"]
        assert np.all((vis >= 0) & (vis <= 1))
        assert set(occ) <= set(LABELS)
        for label in occ:
            seen[label] += 1
        if r["pid"] < 1:
            continue
        clean = vis[[o == "none" for o in occ]]
        hidden = vis[[o in OCCLUDED for o in occ]]
        assert clean.size > 0 and clean.min() > 0.9
        if hidden.size:
            assert hidden.max() < clean.min()   # every occluded frame is below every clean one
            compared += 1
    assert compared >= 5
    assert all(seen[label] > 0 for label in LABELS), dict(seen)
    assert meta["occlusion_frames"]["none"] > meta["occlusion_frames"]["object"]


def test_mars_protocol(tiny):
    _, rows, splits, _ = tiny
    split = splits[0]
    by_id = {r["tracklet_id"]: r for r in rows}
    train, query, gallery = (set(split[k]) for k in ("train", "query", "gallery"))
    assert not (train & query or train & gallery or query & gallery)
    assert train | query | gallery == set(by_id)
    train_pids = {by_id[t]["pid"] for t in train}
    test_pids = {by_id[t]["pid"] for t in query | gallery} - {0, -1}
    assert train_pids and test_pids and not (train_pids & test_pids)
    assert {0, -1} - train_pids == {0, -1}        # no distractor / junk in train
    assert {by_id[t]["pid"] for t in query} == test_pids   # every test identity queries
    assert {0, -1} <= {by_id[t]["pid"] for t in gallery}
    for q in query:
        pid, cam = by_id[q]["pid"], by_id[q]["camid"]
        assert any(by_id[g]["pid"] == pid and by_id[g]["camid"] != cam for g in gallery)
    cams = defaultdict(set)
    for r in rows:
        cams[r["pid"]].add(r["camid"])
    assert all(len(c) >= 2 for pid, c in cams.items() if pid >= 1)


def test_lengths_vary(tiny):
    _, rows, _, _ = tiny
    p = PRESETS["tiny"]
    lengths = [r["num_frames"] for r in rows]
    assert len(set(lengths)) >= 5
    assert p["min_len"] <= min(lengths) and max(lengths) <= p["max_len"]


def test_deterministic_whatever_the_workers(tiny, tmp_path):
    root, rows, _, _ = tiny
    again = generate(tmp_path / "b", "tiny", seed=0, progress=False, workers=2)
    for name in ("tracklets.csv", "splits.json", "meta.json", "identities.json"):
        assert (root / name).read_bytes() == (again / name).read_bytes(), name
    for r in rows[::9]:
        f = r["frames"][-1]
        assert (root / f).read_bytes() == (again / f).read_bytes(), f
    other = generate(tmp_path / "c", "tiny", seed=1, progress=False)
    assert (root / "tracklets.csv").read_bytes() != (other / "tracklets.csv").read_bytes()
    first_other = _read(other)[0][0]["frames"][0]
    assert (root / rows[0]["frames"][0]).read_bytes() != (other / first_other).read_bytes()


def test_rendering_carries_identity(tiny):
    """Upper-body colour: tracklets of one person (across cameras) agree more than two people do."""
    root, rows, splits, meta = tiny
    feats, pids = [], []
    for r in rows:
        if r["pid"] < 1:
            continue
        clean = [f for f, o in zip(r["frames"], r["occlusion"]) if o == "none"]
        crops = [np.asarray(Image.open(root / f), dtype=np.float32)[40:56, 26:38] for f in clean[:4]]
        feats.append(np.mean([c.reshape(-1, 3).mean(0) for c in crops], axis=0))
        pids.append(r["pid"])
    feats, pids = np.array(feats), np.array(pids)
    d = np.linalg.norm(feats[:, None] - feats[None], axis=-1)
    same = pids[:, None] == pids[None]
    off = ~np.eye(len(pids), dtype=bool)
    assert d[same & off].mean() < 0.5 * d[~same].mean()


def test_visibility_from_masks():
    cam = make_camera(1, 0, H, W)
    canvas = (W + 2 * MARGIN, H + 2 * MARGIN)
    ident = sample_identity(np.random.default_rng(0))
    rng = np.random.default_rng(0)

    def vis(dx=0.0, occluder=None):
        pose = Pose(cx=MARGIN + W / 2 + dx, feet_y=MARGIN + H - 8, body_px=110, phase=0.3)
        return compose_frame(cam, 0, draw_person(ident, pose, canvas), occluder, (1.0, 0.0), 0.0,
                             rng, H, W).visibility

    assert vis() == pytest.approx(1.0)
    half = vis(dx=W / 2)                    # body centre on the box edge: about half inside
    assert 0.3 < half < 0.7
    wall = (Image.new("RGB", (W, H)), Image.new("L", (W, H), 255), False)
    assert vis(occluder=wall) == 0.0
    left = Image.new("L", (W, H), 0)
    left.paste(255, (0, 0, W // 2, H))      # hides the left half of the box
    assert 0.3 < vis(occluder=(Image.new("RGB", (W, H)), left, False)) < 0.7


def test_one_region_look_alikes_differ_in_one_region():
    rng = np.random.default_rng(3)
    groups = {"upper": {"upper"}, "lower": {"lower"}, "shoes": {"shoes"}}
    for _ in range(30):
        base = sample_identity(rng)
        new, region = change_one_region(base, rng)
        changed = {f.name for f in fields(base) if getattr(base, f.name) != getattr(new, f.name)}
        expected = groups.get(region) or {region.split(":")[1]}
        assert changed == expected, (region, changed)
    plan = make_plan(preset_params("small"), 0)
    kinds = {r["kind"] for r in plan.relations}
    assert kinds == {"similar", "one_region"}
    split_of = lambda pid: pid <= 60  # noqa: E731
    assert all(split_of(r["pid"]) == split_of(r["base"]) for r in plan.relations)


def test_bad_input():
    with pytest.raises(ValueError, match="tiny, small, medium, large"):
        preset_params("huge")
    with pytest.raises(ValueError, match="num_train_ids"):
        preset_params("tiny", num_trian_ids=3)


# --------------------------------------------------------------------------- the occlusion dial

@pytest.fixture(scope="module")
def dialled(tmp_path_factory, tiny):
    """The tiny benchmark at occlusion none, 0.25, default (the `tiny` fixture), heavy."""
    base = tmp_path_factory.mktemp("occl")
    roots = {level: generate(base / str(level), "tiny", seed=0, progress=False, occlusion=level)
             for level in ("none", 0.25, "heavy")}
    roots["default"] = tiny[0]
    return {level: (root, *_read(root)) for level, root in roots.items()}


def _degraded(rows):
    """Fraction of real-person frames with visibility < 0.7 or a label other than none."""
    flags = [v < 0.7 or o != "none"
             for r in rows if r["pid"] >= 1 for v, o in zip(r["visibility"], r["occlusion"])]
    return sum(flags) / len(flags)


def test_occlusion_dial_is_monotone(dialled):
    frac = {level: _degraded(rows) for level, (_, rows, _, _) in dialled.items()}
    assert frac["none"] < frac[0.25] < frac["default"] < frac["heavy"], frac
    assert frac["none"] < 0.01 and frac["heavy"] > 2 * frac["default"], frac
    # none: no occluder, no blur, no bad-crop event; only detector jitter may cut a body edge
    labels = {o for r in dialled["none"][1] if r["pid"] >= 1 for o in r["occlusion"]}
    assert labels <= {"none", "crop"}
    with open(dialled["none"][0] / "tracklets.csv", newline="", encoding="utf-8") as fh:
        blur = [float(b) for r in csv.DictReader(fh) if int(r["pid"]) >= 1 for b in r["blur"].split("|")]
    assert not any(blur)


def test_occlusion_dial_changes_only_the_degradations(dialled):
    from reidkit.data import FrameCache, Manifest

    root, rows, splits, meta = dialled["default"]
    prints = set()
    for level, (other, other_rows, other_splits, other_meta) in dialled.items():
        assert other_splits == splits
        assert (other / "identities.json").read_bytes() == (root / "identities.json").read_bytes()
        assert [r["frames"] for r in other_rows] == [r["frames"] for r in rows]
        # distractors and junk are degraded by definition: the same at every level
        assert [r for r in other_rows if r["pid"] < 1] == [r for r in rows if r["pid"] < 1]
        name, r = occlusion_level(level)
        assert other_meta["generator"]["occlusion"] == {"level": name, "r": r}
        assert other_meta["name"] == "synthetic-tiny" + ("" if name == "default" else f"-occl-{name}")
        prints.add(FrameCache.fingerprint_of(Manifest.load(other), H, W))
    assert len(prints) == len(dialled)
    assert dialled["heavy"][3]["generator"]["params"]["p_occlusion"] == 0.85


def test_occlusion_default_is_unchanged(tiny, tmp_path):
    assert occlusion_params("default") == occlusion_params(0.5) == {}
    assert preset_params("tiny", occlusion="default") == preset_params("tiny")
    root, rows, _, _ = tiny
    again = generate(tmp_path / "d", "tiny", seed=0, progress=False, occlusion="default")
    for name in ("tracklets.csv", "splits.json", "meta.json", "identities.json"):
        assert (root / name).read_bytes() == (again / name).read_bytes(), name
    for r in rows[::7]:
        f = r["frames"][-1]
        assert (root / f).read_bytes() == (again / f).read_bytes(), f


def test_occlusion_params_interpolate():
    none, default, heavy = (preset_params("tiny", level) for level in ("none", "default", "heavy"))
    assert none["p_occlusion"] == none["p_crop"] == none["p_blur"] == 0.0
    assert heavy["p_occlusion"] > 0.5 and heavy["occlusion_len"] > default["occlusion_len"]
    for lo, level, hi in ((none, 0.25, default), (default, 0.75, heavy)):
        mid = preset_params("tiny", level)
        for key in ("p_occlusion", "p_crop", "p_blur"):
            assert lo[key] < mid[key] < hi[key], (level, key)
        assert mid["p_occlusion"] == pytest.approx((lo["p_occlusion"] + hi["p_occlusion"]) / 2)
    # explicit parameters win over the dial
    assert preset_params("tiny", "heavy", p_blur=0.0)["p_blur"] == 0.0


@pytest.mark.parametrize("level", ["1.5", "foo", -0.1, "nan", True, None])
def test_occlusion_bad_level(level):
    expected = r"occlusion level .*: expected none, default, heavy or a number in \[0, 1\]"
    with pytest.raises(ValueError, match=expected):
        occlusion_params(level)


@pytest.mark.parametrize("level", ["1.5", "foo"])
def test_occlusion_bad_level_cli(level, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["synthetic", "--out", str(out), "--preset", "tiny", "--occlusion", level]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: occlusion level") and repr(level) in err and "Traceback" not in err
    assert not out.exists()


def test_occlusion_cli(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["synthetic", "--out", str(out), "--preset", "tiny", "--occlusion", "0.25"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["name"] == "synthetic-tiny-occl-0.25"
    assert meta["generator"]["occlusion"] == {"level": "0.25", "r": 0.25}
    assert "synthetic-tiny-occl-0.25" in capsys.readouterr().out


# --------------------------------------------------------------------------- two-camera presets

def test_mars_presets_are_unchanged_by_the_two_camera_presets():
    """The plan (identities, tracklets, lengths, cameras) and split of tiny and small, pinned: adding
    presets must not move a byte of the existing ones (the digests are of the code before them)."""
    import hashlib

    from data_prep.synthetic import mars_split

    pinned = {"tiny": "325521bc77a3f020bb901b922bdb604cb6f222f86c076334eeb510236ed7abd8",
              "small": "cecbf042f64a611de865b8a508885d0557709d436fcc323552a8bc57949008d6"}
    for preset, digest in pinned.items():
        plan = make_plan(preset_params(preset), 0)
        text = json.dumps({"tracklets": [[t.tracklet_id, t.pid, t.camid, t.num_frames] for t in plan.tracklets],
                           "identities": {pid: i.to_dict() for pid, i in plan.identities.items()},
                           "relations": plan.relations, "split": mars_split(plan, 0)}, sort_keys=True)
        assert hashlib.sha256(text.encode()).hexdigest() == digest, preset
        assert "protocol" not in preset_params(preset) and "num_splits" not in preset_params(preset)


def test_pairs_preset_is_ilidsvid_like(tmp_path):
    from reidkit.data import Manifest

    root = generate(tmp_path / "p", "pairs_tiny", seed=0, progress=False)
    rows, splits, meta = _read(root)
    assert meta["protocol"] == "two_camera" and meta["counts"]["cameras"] == 2 and len(splits) == 3
    assert meta["counts"]["distractor_tracklets"] == meta["counts"]["junk_tracklets"] == 0
    assert "train_pids" not in meta and "3 permutations" in meta["split_rule"]
    # one tracklet per person and camera, numbered as data_prep/ilidsvid.py numbers them
    assert [(r["tracklet_id"], r["pid"], r["camid"]) for r in rows] == [
        (2 * (pid - 1) + cam - 1, pid, cam) for pid in range(1, 13) for cam in (1, 2)]
    by_id = {r["tracklet_id"]: r for r in rows}
    pids_of = lambda ids: {by_id[t]["pid"] for t in ids}  # noqa: E731
    for s in splits:
        assert {by_id[t]["camid"] for t in s["query"]} == {1} and {by_id[t]["camid"] for t in s["gallery"]} == {2}
        assert pids_of(s["query"]) == pids_of(s["gallery"]) and len(pids_of(s["query"])) == 6
        assert len(s["train"]) == 12 and pids_of(s["train"]) | pids_of(s["query"]) == set(range(1, 13))
        assert not pids_of(s["train"]) & pids_of(s["query"])
    assert len({tuple(s["query"]) for s in splits}) == 3  # random splits, not one repeated
    assert len(Manifest.load(root).splits) == 3
    again = generate(tmp_path / "q", "pairs_tiny", seed=0, progress=False, workers=2)
    for name in ("tracklets.csv", "splits.json", "meta.json"):
        assert (root / name).read_bytes() == (again / name).read_bytes(), name
    other = _read(generate(tmp_path / "r", "pairs_tiny", seed=1, progress=False))[1]
    assert other != splits


def test_pairs_preset_parameters():
    params = preset_params("pairs")
    assert (params["num_splits"], params["num_train_ids"], params["num_test_ids"]) == (10, 150, 150)
    with pytest.raises(ValueError, match="two-camera: num_cameras must be 2"):
        preset_params("pairs", num_cameras=3)
    with pytest.raises(ValueError, match="num_splits = 0"):
        preset_params("pairs_tiny", num_splits=0)
    with pytest.raises(ValueError, match=r"unknown synthetic parameter\(s\) \['num_splits'\]"):
        preset_params("tiny", num_splits=3)
