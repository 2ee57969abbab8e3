"""The ``reidkit`` command line: help for every command, one-line errors, a train → evaluate run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reidkit.cli import main
from test_train import make_tiny_dataset  # noqa: F401  (tests/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("cli") / "tiny")


def test_python_dash_m_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "reidkit", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("train", "evaluate", "ablate", "ten-split", "stats", "prepare", "report", "convert-caffemodel"):
        assert command in out.stdout


@pytest.mark.parametrize("command, options", [
    ("train", ["--config", "--dataset", "--variant", "--out", "--pretrained", "--resume", "key=value"]),
    ("convert-caffemodel", ["src", "out", "--mean", "B,G,R"]),
    ("evaluate", ["--checkpoint", "--dataset", "--convention", "--rerank-top-k", "--exact", "--out"]),
    ("ablate", ["--config", "--dataset", "--out", "--variants", "--plot", "key=value"]),
    ("ten-split", ["--config", "--dataset", "--out", "--splits", "--variant", "key=value"]),
    ("stats", ["dataset"]),
    ("prepare", ["synthetic"]),
    ("report", ["--profile"]),
])
def test_every_subcommand_has_help(capsys, command, options):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text, f"{command} --help does not mention {option}"


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", SMOKE, "train.lr=abc"], "train.lr: expected float, got 'abc'"),
    (["train", "--config", SMOKE, "train.lrr=1"], "unknown config key 'train.lrr'"),
    (["train", "--config", "nope.yaml"], "config file not found: nope.yaml"),
    (["train", "--config", SMOKE], "data.dataset is not set"),
    (["train", "--config", SMOKE, "--dataset", "/no/such/dir"], "/no/such/dir: dataset folder not found"),
    (["evaluate", "--checkpoint", "/no/such.pt"], "checkpoint not found: /no/such.pt"),
    (["train", "--config", SMOKE, "--dataset", ".", "--pretrained", "/no/w.pt"], "pretrained weights not found: /no/w.pt"),
    (["convert-caffemodel", "/no/such.caffemodel", "out.pt"], "caffemodel not found: /no/such.caffemodel"),
])
def test_user_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("reidkit: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_argparse_errors_name_the_bad_value(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--variant", "cnn_lstm"])
    assert exit_.value.code == 2
    assert "'cnn_lstm'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--checkpoint", "x.pt", "--rerank-top-k", "-3"])
    assert "'-3'" in capsys.readouterr().err


def test_train_then_evaluate(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", SMOKE, "--dataset", str(tiny), "--out", str(out), "--variant", "cnn_tam",
                 "train.epochs=2", "train.P=2", "train.progress=false",
                 f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    assert (out / "last.pt").exists() and (out / "epoch_002.pt").exists()
    with open(out / "history.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    result = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--quiet", "--out", str(result),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    d = json.loads(result.read_text())
    assert d["variant"] == "cnn_tam" and 0 <= d["rank1"] <= 100 and len(d["cmc"]) >= 1
    assert "rank-1" in capsys.readouterr().out


def test_ablate_writes_tables(tiny, tmp_path):
    out = tmp_path / "abl"
    assert main(["ablate", "--config", SMOKE, "--dataset", str(tiny), "--out", str(out), "--quiet",
                 "--variants", "cnn,cnn_srm", "--seeds", "0,1", "train.P=2", "train.progress=false",
                 f"data.cache_dir={tmp_path / 'cache'}"]) == 0
    with open(out / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("untrained CNN", "0"), ("untrained ALL", "0"), ("CNN", "0"), ("CNN", "1"), ("CNN+SRM", "0"), ("CNN+SRM", "1")]
    assert (out / "cnn" / "seed_1" / "last.pt").is_file()
    with open(out / "summary.csv") as f:
        summary = {r["method"]: r for r in csv.DictReader(f)}
    cnn = [float(r["rank1"]) for r in rows if r["method"] == "CNN"]
    assert summary["CNN"]["seeds"] == "0 1" and float(summary["CNN"]["rank1_min"]) == min(cnn)
    assert float(summary["CNN"]["rank1_max"]) == max(cnn)
    md = (out / "ablation.md").read_text()
    assert "| CNN+SRM |" in md and "Rank@1" in md and "mAP" in md and "Protocol:" in md and "2 seeds" in md
    curves = json.loads((out / "cmc.json").read_text())["curves"]
    assert set(curves) == {r["method"] for r in rows}
    with pytest.raises(SystemExit) as exit_:  # argparse: a clear one-line error
        main(["ablate", "--dataset", str(tiny), "--out", str(out), "--seeds", "0,0"])
    assert exit_.value.code == 2


def test_summary_uses_n_minus_1():
    from reidkit.ablate import summarize

    def row(method, seed, rank1):
        return {"method": method, "variant": "cnn", "trained": True, "seed": seed, "rank1": rank1, "rank5": 0.0,
                "rank10": 0.0, "rank20": 0.0, "mAP": 0.0, "paper_rank1_mars": 58.5}

    s = {r["method"]: r for r in summarize([row("A", 0, 50.0), row("A", 1, 54.0), row("B", 0, 55.0)])}
    assert s["A"]["rank1_mean"] == 52.0 and s["A"]["rank1_min"] == 50.0 and s["A"]["rank1_max"] == 54.0
    assert s["A"]["rank1_std"] == round(float(np.std([50.0, 54.0], ddof=1)), 2) and s["B"]["rank1_std"] == 0.0


def test_conclusions_judge_each_claim_against_its_strongest_rival():
    from reidkit.ablate import conclusions

    rng = np.random.default_rng(0)
    q = 120

    def runs(p):  # three seeds of per-query outcomes with success rate p
        return {s: (rng.random(q) < p).astype(int).tolist() for s in range(3)}

    hits = {"CNN": runs(0.5), "CNN+RNN": runs(0.3), "CNN+TAM": runs(0.9), "CNN+DIFF": runs(0.5),
            "CNN+SRM": runs(0.1), "ALL": runs(0.88)}
    got = {c["name"]: c for c in conclusions(hits, n_boot=400)}
    assert got["attention"]["b"] == "CNN" and got["attention"]["verdict"] == "holds"  # CNN beats RNN here
    assert [x["verdict"] for x in got["attention"]["comparisons"]] == ["holds", "holds"]
    assert got["spatial_recurrence"]["verdict"] == "reversed"
    lo, hi = got["spatial_recurrence"]["interval"]
    assert lo <= got["spatial_recurrence"]["diff"] <= hi < 0
    assert got["joint_learning"]["b"] == "CNN+TAM" and got["joint_learning"]["verdict"] == "inconclusive"
    assert conclusions({"CNN": hits["CNN"]}) == []  # nothing to judge without the variants


def test_table_cells_show_the_spread_the_seeds_allow():
    from reidkit.ablate import format_cell

    row = {"seeds": [0, 1, 2], "rank1_mean": 50.0, "rank1_std": 2.0, "rank1_min": 48.0, "rank1_max": 52.0}
    assert format_cell(row, "rank1") == "50.0 ± 2.0 (48.0–52.0)"                     # three seeds: mean ± std
    assert format_cell({**row, "seeds": [0, 1]}, "rank1") == "50.0 (48.0–52.0)"      # two: the range
    assert format_cell({**row, "seeds": [0]}, "rank1") == "50.0"                     # one: the value


def test_evaluate_both_conventions_extracts_once_and_matches_each(make_manifest, tiny, tmp_path, capsys):
    dataset = make_manifest(num_ids=8, num_cams=3, distractors=2, junk=1)
    out, cache = tmp_path / "run", str(tmp_path / "cache")
    assert main(["train", "--config", SMOKE, "--dataset", str(dataset), "--out", str(out), "--variant", "all",
                 "train.epochs=1", "train.P=2", "train.progress=false", f"data.cache_dir={cache}"]) == 0
    results = {}
    for convention in ("common", "official", "both"):
        path = tmp_path / f"{convention}.json"
        assert main(["evaluate", "--checkpoint", str(out / "last.pt"), "--quiet", "--convention", convention,
                     "--cache-dir", cache, "--out", str(path)]) == 0
        results[convention] = json.loads(path.read_text())
    for convention in ("common", "official"):
        for key in ("rank1", "mAP", "num_queries", "num_gallery", "cmc"):
            assert results["both"][convention][key] == results[convention][key]
    # a two-camera dataset has no official convention: refused in one line
    two = tmp_path / "two"
    assert main(["train", "--config", SMOKE, "--dataset", str(tiny), "--out", str(two), "train.epochs=1", "train.P=2",
                 "train.progress=false", f"data.cache_dir={cache}"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(two / "last.pt"), "--quiet", "--convention", "both",
                 "--cache-dir", cache]) == 2
    assert "two_camera" in capsys.readouterr().err


def test_learning_curves_keep_the_validation_rows_every_seed_has():
    from reidkit.ablate import learning_curves

    def rows(*points):
        return [{"epoch": i, "step": k, "rank1": r, "mAP": r / 2, "scored_on": "validation"}
                for i, (k, r) in enumerate(points, 1)] + [{"epoch": 9, "step": 99, "rank1": 1.0, "mAP": 1.0,
                                                          "scored_on": "test"}]

    curves = learning_curves({"CNN": {0: rows((20, 50.0), (40, 60.0), (60, 70.0)),
                                      1: rows((20, 40.0), (40, 80.0))},
                              "ALL": {0: [{"epoch": 1, "step": 20, "rank1": 3.0}]}})
    assert list(curves) == ["CNN"]  # ALL was never scored on validation identities
    c = curves["CNN"]
    assert c["steps"] == [20, 40]  # step 60 only seed 0 reached; the test-scored row is left out
    assert c["mean"] == [45.0, 70.0] and c["min"] == [40.0, 60.0] and c["max"] == [50.0, 80.0]
    assert c["mAP_mean"] == [22.5, 35.0] and c["per_seed"] == {"0": [50.0, 60.0], "1": [40.0, 80.0]}
