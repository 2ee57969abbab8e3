"""reidkit.stats: Table 1 numbers and the length distribution on hand-made manifests."""

import json

import numpy as np
import pytest

from reidkit.data import Manifest
from reidkit.stats import format_length_distribution, format_table1, length_distribution, main, table1


@pytest.fixture
def manifest(make_manifest):
    # 5 identities x 2 cameras x 2 tracklets = 20, + 3 distractors + 2 junk = 25 tracklets
    root = make_manifest(num_ids=5, tracklets_per_cam=2, distractors=3, junk=2, frame_size=(20, 10),
                         length_range=(2, 7), protocol="two_camera", num_splits=4)
    return Manifest.load(root)


def test_table1_numbers(manifest):
    s = table1(manifest)
    lengths = [t.num_frames for t in manifest.tracklets]
    assert s["identities"] == 5
    assert s["tracklets"] == 25
    assert s["boxes"] == sum(lengths)
    assert s["distractors"] == 3 and s["junk"] == 2
    assert s["cameras"] == 2
    assert s["resolution"] == [20, 10]
    assert s["evaluation"] == "CMC" and s["protocol"] == "two_camera" and s["num_splits"] == 4
    assert s["detection"] == "rendered"
    assert s["split0_sizes"] == {"train": 8, "query": 6, "gallery": 6 + 5}
    json.dumps(s)  # plain JSON types only


def test_table1_mars_protocol_and_markdown(make_manifest):
    m = Manifest.load(make_manifest(num_ids=4, frame_size=(16, 8)))
    s = table1(m)
    assert s["evaluation"] == "CMC & mAP"
    text = format_table1([s, s])
    lines = text.splitlines()
    assert lines[0] == "| Datasets | tiny | tiny |"
    assert "| #identities | 4 | 4 |" in lines
    assert "| #resolution (W×H) | 8 × 16 | 8 × 16 |" in lines
    assert all(line.count("|") == 4 for line in lines)


def test_length_distribution(manifest):
    d = length_distribution(manifest)
    lengths = np.array([t.num_frames for t in manifest.tracklets])
    assert d["count"] == 25 and d["min"] == lengths.min() and d["max"] == lengths.max()
    assert d["mean"] == pytest.approx(lengths.mean()) and d["median"] == np.median(lengths)
    assert d["percentiles"]["50"] == np.median(lengths)
    assert sum(d["histogram"]) == 25 and len(d["bin_edges"]) == len(d["histogram"]) + 1
    # integer lengths over a narrow range: one bin per length
    assert d["histogram"] == [int((lengths == v).sum()) for v in range(d["min"], d["max"] + 1)]
    sub = length_distribution(manifest, positions=[0, 1])
    assert sub["count"] == 2
    wide = length_distribution(manifest, bins=2)
    assert len(wide["histogram"]) == 2 and sum(wide["histogram"]) == 25
    assert "25 tracklets" in format_length_distribution(d)


def test_main_prints_table_and_json(manifest, capsys):
    assert main([str(manifest.root)]) == 0
    out = capsys.readouterr().out
    assert "| #track-lets | 25 |" in out and "tracklet length" in out
    assert main([str(manifest.root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["table1"]["boxes"] == manifest.total_frames
    assert data["length_distribution"]["count"] == 25


def test_paper_table1_columns_sit_beside_a_computed_one():
    from reidkit.stats import PAPER_TABLE1

    text = format_table1([*PAPER_TABLE1, PAPER_TABLE1[0]])
    header, _, *rows = text.splitlines()
    assert header.startswith("| Datasets | iLIDS-VID (paper) | PRID2011 (paper) | MARS (paper) |")
    row = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows}
    assert row["#identities"][:3] == ["300", "200", "1,261"] and row["#cameras"][:3] == ["2", "2", "6"]
    assert row["#resolution (W×H)"][:3] == ["64 × 128", "64 × 128", "128 × 256"]  # as the paper writes them
    # the paper's last two rows: iLIDS-VID and PRID2011 were cropped by hand and report CMC only
    assert row["#detection"][:3] == ["hand", "hand", "algorithm"]
    assert row["#evaluation"][:3] == ["CMC", "CMC", "CMC & mAP"]
