"""Mistakes a careless user makes, as one table: each row is the mistake, the refusal it must
meet, and what must still be intact afterwards. The next mistake found is one more row.

All rows share one trained run (the smoke config, two epochs on the hand-made tiny dataset);
a row gets a fresh copy of it in its own folder, so rows cannot disturb each other.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from reidkit import report
from reidkit.cli import main
from reidkit.data import ManifestError
from reidkit.train import run_files
from test_train import make_tiny_dataset  # noqa: F401  (tests/ is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset, run folder, cache folder): a finished two-epoch run to make mistakes with."""
    base = tmp_path_factory.mktemp("mistakes")
    dataset = make_tiny_dataset(base / "tiny")
    run, cache = base / "run", base / "cache"
    assert main(["train", "--config", SMOKE, "--dataset", str(dataset), "--out", str(run), "--variant", "cnn",
                 "train.epochs=2", "train.P=2", "train.progress=false", f"data.cache_dir={cache}"]) == 0
    return dataset, run, cache


@dataclass
class Ctx:
    dataset: Path
    run: Path
    cache: Path
    tmp: Path
    before: dict = field(default_factory=dict)

    def train(self, *extra: str, dataset: Path | None = None, out: Path | None = None) -> list[str]:
        return ["train", "--config", SMOKE, "--dataset", str(dataset or self.dataset), "--out", str(out or self.run),
                "--variant", "cnn", "train.epochs=2", "train.P=2", "train.progress=false",
                f"data.cache_dir={self.cache}", *extra]


def _broken_splits(ctx: Ctx, mutate: Callable[[list], None]) -> Path:
    bad = ctx.tmp / "bad"
    shutil.copytree(ctx.dataset, bad)
    splits = json.loads((bad / "splits.json").read_text())
    mutate(splits)
    (bad / "splits.json").write_text(json.dumps(splits))
    return bad


@dataclass
class Mistake:
    name: str
    argv: Callable[[Ctx], list[str]]
    refusal: str                                  # a fragment of the one-line error
    intact: Callable[[Ctx], bool] = lambda ctx: True
    exit_code: int = 2


def _damaged_checkpoint(ctx: Ctx) -> Path:
    """last.pt with one weight changed after it was written (bit rot, a bad copy): the checksum
    written with it no longer matches."""
    import torch

    state = torch.load(ctx.run / "last.pt", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name].view(-1)[0] += 1.0
    damaged = ctx.tmp / "damaged.pt"
    torch.save(state, damaged)
    return damaged


def _bad_yaml(ctx: Ctx) -> Path:
    path = ctx.tmp / "bad.yaml"
    path.write_text("train:\n  lr: [0.1\n  epochs: 2\n")
    return path


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _mislabelled_checkpoint(ctx: Ctx) -> Path:
    """A checkpoint (valid checksum) whose config names another variant than its weights are."""
    from reidkit.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(ctx.run / "last.pt")
    state["config"]["model"]["variant"] = "all"
    return save_checkpoint(ctx.tmp / "mislabelled.pt", state)


def _last_unchanged(ctx: Ctx) -> bool:
    return _digest(ctx.run / "last.pt") == ctx.before["last.pt"]


MISTAKES = [
    Mistake("train into a folder that holds a run, without --resume",
            lambda c: c.train(), "already holds a run", _last_unchanged),
    Mistake("resume with another learning rate",
            lambda c: c.train("--resume", "train.lr=0.5"), "train.lr: 0.001 → 0.5", _last_unchanged),
    Mistake("resume with another batch shape and seed",
            lambda c: c.train("--resume", "train.K=3", "train.seed=7"), "train.K: 2 → 3", _last_unchanged),
    Mistake("resume where no run was ever written",
            lambda c: c.train("--resume", out=c.tmp / "empty"),
            "does not exist (train without --resume", lambda c: not (c.tmp / "empty" / "last.pt").exists()),
    Mistake("evaluate --out naming the checkpoint itself",
            lambda c: ["evaluate", "--checkpoint", str(c.run / "last.pt"), "--quiet", "--out", str(c.run / "last.pt")],
            "is the checkpoint being evaluated", _last_unchanged),
    Mistake("evaluate --out naming another file",
            lambda c: ["evaluate", "--checkpoint", str(c.run / "last.pt"), "--quiet", "--out", str(c.run / "history.csv")],
            "is not a result of `reidkit evaluate`",
            lambda c: _digest(c.run / "history.csv") == c.before["history.csv"]),
    Mistake("evaluate a checkpoint whose weights were damaged after writing",
            lambda c: ["evaluate", "--checkpoint", str(_damaged_checkpoint(c)), "--quiet"],
            "is damaged: its contents do not match the checksum", _last_unchanged),
    Mistake("train.lr=nan", lambda c: c.train("--force", "train.lr=nan"), "train.lr: expected a finite number",
            _last_unchanged),
    Mistake("a YAML syntax error in the config",
            lambda c: ["train", "--config", str(_bad_yaml(c)), "--dataset", str(c.dataset)],
            "bad.yaml, line 3, column 9: not valid YAML", _last_unchanged),
    Mistake("--device cuda on a machine without a GPU",
            lambda c: [*c.train("--force"), "--device", "cuda"], "sees no CUDA device", _last_unchanged)
    if not _has_cuda() else None,
    Mistake("data.cache_dir naming a file, so the cache folder cannot be created",
            lambda c: c.train("--force", f"data.cache_dir={c.run / 'history.csv'}"),
            "set data.cache_dir (or --cache-dir) to a writable folder", _last_unchanged),
    Mistake("resume a run as another variant",
            lambda c: [*c.train("--resume"), "--variant", "all"], "model.variant: 'cnn' → 'all'", _last_unchanged),
    Mistake("evaluate a checkpoint whose config names another variant than its weights",
            lambda c: ["evaluate", "--checkpoint", str(_mislabelled_checkpoint(c)), "--quiet"],
            "the weights do not fit its own config (model.variant=all)", _last_unchanged),
    Mistake("eval.batch_size=0", lambda c: c.train("--force", "eval.batch_size=0"),
            "eval.batch_size: expected a positive integer", _last_unchanged),
    Mistake("eval.rerank_top_k=-3", lambda c: c.train("--force", "eval.rerank_top_k=-3"),
            "eval.rerank_top_k: expected a positive integer", _last_unchanged),
    Mistake("the same tracklet in train and gallery",
            lambda c: c.train("--force", dataset=_broken_splits(c, lambda s: s[0]["gallery"].append(s[0]["train"][0]))),
            "are in train and in gallery", _last_unchanged),
    Mistake("a gallery id listed twice",
            lambda c: c.train("--force", dataset=_broken_splits(c, lambda s: s[0]["gallery"].append(s[0]["gallery"][0]))),
            "are listed more than once", _last_unchanged),
    Mistake("report --dataset pointing at a folder that does not exist",
            lambda c: ["report", "--profile", "smoke", "--dataset", str(c.tmp / "typo"), "--out", str(c.tmp / "rep")],
            "no manifest there", lambda c: not (c.tmp / "typo").exists() and not (c.tmp / "rep").exists(), exit_code=1),
]


MISTAKES = [m for m in MISTAKES if m is not None]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_mistake_is_refused_and_nothing_is_lost(mistake, trained, tmp_path, capsys):
    dataset, run, cache = trained
    ctx = Ctx(dataset, tmp_path / "run", cache, tmp_path)
    shutil.copytree(run, ctx.run)
    ctx.before = {p.name: _digest(p) for p in ctx.run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(mistake.argv(ctx)) == mistake.exit_code
    err = capsys.readouterr().err
    assert mistake.refusal in err, err
    assert "Traceback" not in err
    assert mistake.intact(ctx), f"{mistake.name}: something was lost"


def test_force_replaces_a_run_and_resume_continues_it(trained, tmp_path):
    dataset, run, cache = trained
    ctx = Ctx(dataset, tmp_path / "run", cache, tmp_path)
    shutil.copytree(run, ctx.run)
    assert main(ctx.train("--resume", "train.epochs=3")) == 0  # more epochs: a bookkeeping change
    assert json.loads((ctx.run / "history.json").read_text())["epochs"][-1]["epoch"] == 3
    assert main(ctx.train("--force", "train.epochs=1")) == 0  # starting over removes the old run's files
    assert [p.name for p in run_files(ctx.run)[1]] == ["epoch_001.pt"]


def test_epoch_files_are_cleaned_up_by_number_not_by_name(tmp_path):
    for n in (3, 999, 1000, 20):
        (tmp_path / f"epoch_{n:03d}.pt").write_bytes(b"")
    assert [p.name for p in run_files(tmp_path)[1]] == ["epoch_003.pt", "epoch_020.pt", "epoch_999.pt", "epoch_1000.pt"]


def test_a_report_folder_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"profile": "default", "notebooks": []}))
    assert report.main(["--profile", "smoke", "--out", str(out)]) == 1
    assert "already holds a report (default profile)" in capsys.readouterr().err
    assert report.main(["--profile", "smoke", "--out", str(out), "--only", "06"]) == 1
    assert "--only cannot continue it with --profile smoke" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["profile"] == "default"  # intact


def test_the_reader_refuses_what_the_writer_refuses(trained, tmp_path):
    dataset = trained[0]
    ctx = Ctx(dataset, tmp_path / "run", trained[2], tmp_path)
    bad = _broken_splits(ctx, lambda s: s[0]["query"].append(s[0]["train"][0]))
    from reidkit.data import Manifest

    with pytest.raises(ManifestError, match="splits.json"):
        Manifest.load(bad)


def test_overrides_may_come_before_options(trained, tmp_path):
    dataset, _, cache = trained
    ctx = Ctx(dataset, tmp_path / "run", cache, tmp_path)
    argv = ctx.train()
    assert main([argv[0], "train.epochs=1", *argv[1:]]) == 0  # later wins: train.epochs=2 from ctx.train
    assert json.loads((ctx.run / "history.json").read_text())["epochs"][-1]["epoch"] == 2


def test_clips_longer_than_the_tracklets_are_announced(trained, tmp_path):
    dataset, _, cache = trained
    ctx = Ctx(dataset, tmp_path / "run", cache, tmp_path)
    with pytest.warns(UserWarning, match=r"training tracklets are shorter than model.seq_len = 12 frames"):
        assert main(ctx.train("model.seq_len=12", "train.epochs=1")) == 0


def test_stats_with_zero_bins_is_a_usage_error(trained, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["stats", str(trained[0]), "--bins", "0"])
    assert exit_.value.code == 2 and "--bins must be >= 1, got 0" in capsys.readouterr().err


def test_cheap_refusals_come_before_the_frame_cache_is_built(trained, tmp_path, capsys):
    dataset, _, _ = trained
    ctx = Ctx(dataset, tmp_path / "run", tmp_path / "fresh_cache", tmp_path)
    for extra, message in ((("train.P=50",), "train.P=50 identities per batch"),
                           (("data.split=3",), "split 3 out of range"),
                           (("--resume",), "cannot resume")):
        assert main(ctx.train(*extra)) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "fresh_cache").exists()  # nothing was decoded


def test_damaged_cache_pixels_are_found_by_verify_cache(trained, tmp_path, capsys):
    import numpy as np

    from reidkit.data import FrameCache, Manifest

    manifest = Manifest.load(trained[0])
    cache = FrameCache.build(manifest, 32, 16, tmp_path / "cache", progress=False)
    npy = cache.path
    assert main(["verify-cache", str(tmp_path / "cache"), "--quiet"]) == 0
    assert "intact" in capsys.readouterr().out
    frames = np.load(npy, mmap_mode="r+")
    frames[5, 3, 3, 0] ^= 0xFF  # one damaged pixel, the header untouched
    frames.flush()
    del frames
    assert main(["verify-cache", str(npy), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED frame rows 0–" in out and str(int(manifest.tracklet_ids[0])) in out


def test_the_epoch_is_saved_before_a_failing_evaluation(trained, tmp_path, monkeypatch):
    from reidkit.train import Trainer

    def broken(self):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(Trainer, "evaluate", broken)
    dataset, _, cache = trained
    ctx = Ctx(dataset, tmp_path / "run", cache, tmp_path)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        main(ctx.train("train.eval_every=1", "train.epochs=1"))
    from reidkit.checkpoint import load_checkpoint

    assert load_checkpoint(ctx.run / "last.pt")["epoch"] == 1  # the epoch's work is on disk


def test_an_interrupted_ablation_keeps_finished_runs(trained, tmp_path, capsys):
    dataset, _, cache = trained
    argv = ["ablate", "--config", SMOKE, "--dataset", str(dataset), "--out", str(tmp_path / "abl"), "--variants", "cnn",
            "--seeds", "0", "--no-baselines", "train.P=2", "train.progress=false", f"data.cache_dir={cache}"]
    assert main(argv) == 0
    last = tmp_path / "abl" / "cnn" / "seed_0" / "last.pt"
    first = (_digest(last), last.stat().st_mtime_ns)
    capsys.readouterr()
    assert main(argv) == 0
    assert "kept from an earlier run" in capsys.readouterr().out
    assert (_digest(last), last.stat().st_mtime_ns) == first  # not trained again


@pytest.mark.parametrize("command", ["stats", "prepare"])
def test_passthrough_commands_name_themselves(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert capsys.readouterr().out.startswith(f"usage: reidkit {command}")
