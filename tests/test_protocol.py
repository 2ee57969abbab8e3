"""The ten-split protocol (Table 3): one model per split, its own test half, mean ± std, resumable."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_prep.synthetic import generate
from reidkit.checkpoint import load_checkpoint, load_model
from reidkit.cli import main
from reidkit.config import Config
from reidkit.data import FrameCache, Manifest
from reidkit.evaluate import evaluate
from reidkit.protocol import METRICS, run_splits
from test_train import make_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """The two-camera synthetic preset for tests: 12 persons, 3 random 50/50 splits; a shared cache folder."""
    base = tmp_path_factory.mktemp("pairs")
    return generate(base / "pairs_tiny", "pairs_tiny", seed=0, progress=False), base / "cache"


def _argv(dataset, cache, out, *extra):
    return ["ten-split", "--config", SMOKE, "--dataset", str(dataset), "--out", str(out), "--quiet",
            "train.progress=false", f"data.cache_dir={cache}", *extra]


@pytest.fixture(scope="module")
def first(pairs, tmp_path_factory):
    """One call over every split of the dataset (a tiny ALL model per split)."""
    dataset, cache = pairs
    out = tmp_path_factory.mktemp("ten") / "run"
    assert main(_argv(dataset, cache, out)) == 0
    return dataset, cache, out


def _metrics(out: Path, split: int) -> dict:
    return json.loads((out / f"split_{split}" / "metrics.json").read_text())


def _stamps(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in sorted(out.glob("split_*/*"))}


def test_each_split_trains_on_its_train_half_and_tests_on_its_test_half(first):
    dataset, cache, out = first
    manifest = Manifest.load(dataset)
    assert sorted(p.name for p in out.glob("split_*")) == ["split_0", "split_1", "split_2"]
    for i in range(3):
        state = load_checkpoint(out / f"split_{i}" / "last.pt")
        assert state["config"]["data"]["split"] == i and state["epoch"] == 1
        split = manifest.split(i)
        train_pids = set(manifest.pids[manifest.positions(split.train)].tolist())
        test_pids = set(manifest.pids[manifest.positions(split.query)].tolist())
        m = _metrics(out, i)
        assert m["split"] == i and set(m["test_pids"]) == test_pids and not test_pids & train_pids
        assert m["num_queries"] == len(split.query) == 6 and m["num_gallery"] == len(split.gallery) == 6
    # the number in metrics.json is what split 1's own model scores on split 1's test half
    model, config = load_model(out / "split_1" / "last.pt")
    cache_ = FrameCache.build(manifest, config.model.height, config.model.width, cache, progress=False)
    result = evaluate(model, manifest, cache_, config.eval, split=1, progress=False)
    assert (result.rank1, result.mAP) == pytest.approx((_metrics(out, 1)["rank1"], _metrics(out, 1)["mAP"]))


def test_summary_is_mean_and_std_of_the_split_metrics(first):
    _, _, out = first
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"] == [0, 1, 2] and summary["num_splits_in_dataset"] == 3
    for metric in METRICS:
        values = np.array([_metrics(out, i)[metric] for i in range(3)])
        assert summary[f"{metric}_mean"] == pytest.approx(values.mean(), abs=0.01)
        assert summary[f"{metric}_std"] == pytest.approx(values.std(ddof=1), abs=0.01)
        assert (summary[f"{metric}_min"], summary[f"{metric}_max"]) == pytest.approx((values.min(), values.max()),
                                                                                   abs=0.005)
    cmc = np.mean([_metrics(out, i)["cmc"][:len(summary["cmc"])] for i in range(3)], axis=0)
    assert summary["cmc"] == pytest.approx(cmc, abs=1e-3) and summary["cmc"][0] == pytest.approx(summary["rank1_mean"],
                                                                                                 abs=0.01)
    with open(out / "splits.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == ["0", "1", "2"] and {r["how"] for r in rows} == {"trained"}
    md = (out / "summary.md").read_text()
    assert f"| ALL | 3 | {summary['rank1_mean']:.1f} ± {summary['rank1_std']:.1f}" in md
    assert "Table 3" in md and "| 2 |" in md


def test_a_second_call_retrains_nothing_and_reevaluates_what_lost_its_metrics(first, tmp_path, capsys):
    dataset, cache, original = first
    out = tmp_path / "run"
    shutil.copytree(original, out)
    before, metrics_1 = _stamps(out), _metrics(out, 1)
    (out / "split_1" / "metrics.json").unlink()
    capsys.readouterr()
    assert main(_argv(dataset, cache, out)) == 0
    after = _stamps(out)
    assert {k: v for k, v in after.items() if k != "split_1/metrics.json"} == \
           {k: v for k, v in before.items() if k != "split_1/metrics.json"}  # no checkpoint or metrics rewritten
    assert {k: _metrics(out, 1)[k] for k in METRICS} == pytest.approx({k: metrics_1[k] for k in METRICS})
    with open(out / "splits.csv") as f:
        assert [r["how"] for r in csv.DictReader(f)] == ["kept", "evaluated again", "kept"]


def test_an_interrupted_split_resumes_from_its_checkpoint(pairs, tmp_path):
    dataset, cache = pairs
    config = Config.from_yaml(SMOKE, ["train.progress=false", "train.epochs=2", "model.variant=cnn"],
                              settings={"data.dataset": str(dataset), "data.cache_dir": str(cache)})
    out = tmp_path / "run"

    def interrupt(trainer, epoch, logs):
        if trainer.config.data.split == 1 and epoch == 1:
            raise KeyboardInterrupt  # Ctrl-C after split 1's first epoch was saved

    with pytest.raises(KeyboardInterrupt):
        run_splits(config, out, splits=[0, 1], progress=False, callbacks=[{"on_epoch_end": interrupt}])
    assert (out / "split_0" / "metrics.json").is_file() and not (out / "split_1" / "metrics.json").exists()
    interrupted = load_checkpoint(out / "split_1" / "last.pt")
    assert interrupted["epoch"] == 1 and not (out / "summary.json").exists()
    stamp_0 = (out / "split_0" / "last.pt").stat().st_mtime_ns

    summary = run_splits(config, out, splits=[0, 1], progress=False)
    assert [r["how"] for r in summary["rows"]] == ["kept", "resumed"]
    assert (out / "split_0" / "last.pt").stat().st_mtime_ns == stamp_0
    resumed = load_checkpoint(out / "split_1" / "last.pt")
    assert resumed["epoch"] == 2 and resumed["history"][0] == interrupted["history"][0]  # epoch 1 not redone
    assert _metrics(out, 1)["epochs"] == 2 and summary["splits"] == [0, 1]


@pytest.mark.parametrize("case, message", [
    ("one split", "splits.json has 1 split only; the ten-split protocol trains one model per split"),
    ("mars", "protocol 'mars'; the ten-split protocol is for two-camera datasets"),
    ("out of range", "splits [0, 5]: expected distinct indices in 0..2"),
    ("other settings", "holds a ten-split run of other settings: train.seed: 0 → 1"),
    ("other dataset", "holds a ten-split run on another dataset (synthetic-pairs_tiny"),
    ("not ours", "is not empty and holds no ten-split run (run.json)"),
])
def test_refusals_are_one_line_and_write_nothing(case, message, first, make_manifest, tmp_path, capsys):
    dataset, cache, trained = first
    out, extra = tmp_path / "out", []
    if case == "one split":
        dataset = make_tiny_dataset(tmp_path / "one")
    elif case == "mars":
        dataset = make_manifest(protocol="mars")
    elif case == "out of range":
        extra = ["--splits", "0,5"]
    elif case == "other settings":
        out, extra = trained, ["train.seed=1"]
    elif case == "other dataset":
        out, dataset = trained, generate(tmp_path / "other", "pairs_tiny", seed=1, progress=False)
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before = _stamps(trained), (trained / "run.json").read_bytes()
    capsys.readouterr()
    assert main(_argv(dataset, cache, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("reidkit: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert (_stamps(trained), (trained / "run.json").read_bytes()) == before
    assert not (out / "split_0").exists() or out == trained


def test_a_split_trained_longer_than_asked_is_refused_not_trained_over(first, tmp_path, capsys):
    """train.epochs may grow between calls; a run with more epochs than asked is kept, and refused."""
    from reidkit.checkpoint import save_checkpoint

    dataset, cache, original = first
    out = tmp_path / "run"
    shutil.copytree(original, out)
    last = out / "split_0" / "last.pt"
    save_checkpoint(last, {**load_checkpoint(last), "epoch": 2})  # as a call with train.epochs=2 leaves it
    before = last.read_bytes()
    capsys.readouterr()
    assert main(_argv(dataset, cache, out)) == 2
    err = capsys.readouterr().err
    assert f"{out / 'split_0'} holds a run of other settings or data: train.epochs: 2 done, 1 asked" in err, err
    assert last.read_bytes() == before


def test_split_list_is_checked_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["ten-split", "--dataset", "d", "--out", "o", "--splits", "0,0"])
    assert exit_.value.code == 2 and "'0,0'" in capsys.readouterr().err


def test_the_table_sets_the_papers_row_beside_ours(tmp_path):
    from reidkit.protocol import write_summary

    def row(split, rank1):
        return {"split": split, "method": "ALL", "variant": "all", "trained": True, "rank1": rank1, "rank5": 90.0,
                "rank10": 95.0, "rank20": 99.0, "mAP": 70.0, "num_queries": 89, "num_gallery": 89, "epochs": 4,
                "steps": 200, "how": "trained", "train_s": 1.0, "eval_s": 1.0, "ranking": "S"}

    manifest = Manifest(tmp_path, [], [], {"name": "prid2011", "source": "prid2011", "protocol": "two_camera"})
    summary = write_summary([row(0, 60.0), row(3, 70.0)], [np.full(20, 60.0), np.full(20, 70.0)], tmp_path,
                            Config(), manifest)
    assert summary["rank1_mean"] == 65.0 and summary["splits"] == [0, 3] and summary["cmc"][0] == 65.0
    md = (tmp_path / "summary.md").read_text()
    assert "| ALL | 2 | 65.0 (60.0–70.0) |" in md  # two splits: the mean and the range, no std
    assert "| Zhou et al., Table 3 | 10 | 79.4 | 94.4 | — | 99.3 | — |" in md and "fine-tunes" in md


def test_init_fine_tunes_every_split_from_one_checkpoint(first, tmp_path):
    """Table 3's setting: every split starts from one trained model (here split 0's of the first
    call, standing in for a MARS model) with a fresh optimiser, and the table says so."""
    from reidkit.protocol import write_summary

    dataset, cache, out = first
    source = out / "split_0" / "last.pt"
    tuned = tmp_path / "tuned"
    assert main(_argv(dataset, cache, tuned, "--init", str(source), "--splits", "1")) == 0
    state = load_checkpoint(tuned / "split_1" / "last.pt")
    assert state["config"]["train"]["init"] == str(source) and state["epoch"] == state["config"]["train"]["epochs"]
    manifest = Manifest(tmp_path, [], [], {"name": "ilidsvid", "source": "ilidsvid", "protocol": "two_camera"})
    rows = json.loads((tuned / "summary.json").read_text())["rows"]
    write_summary(rows, [np.full(5, 50.0)], tmp_path / "md", Config.from_dict({}, [f"train.init={source}"]), manifest)
    assert f"these models start from `{source}` (train.init)" in (tmp_path / "md" / "summary.md").read_text()
