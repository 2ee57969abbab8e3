"""Mistakes a careless (or unlucky) user makes, as two tables: MISTAKES, each row the mistake,
the refusal it must meet and what must still be intact afterwards; RECOVERIES, each row a
mistake or accident (a full disk, Ctrl-C, a killed process) and the exact recovery it must end
in, with nothing lost. The next mistake found is one more row.

All rows share one trained run (the smoke config, two epochs on the hand-made tiny dataset)
and one ablation of it; a row gets a fresh copy of them in its own folder, so rows cannot
disturb each other.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from reidkit import files, report
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


def _ablate_argv(dataset, out, cache, *extra: str, config: str | None = SMOKE) -> list[str]:
    return ["ablate", *(["--config", config] if config else []), "--dataset", str(dataset), "--out", str(out),
            "--variants", "cnn", "--seeds", "0", "--no-baselines", "train.epochs=2", "train.P=2", "train.progress=false",
            f"data.cache_dir={cache}", *extra]


@pytest.fixture(scope="module")
def ablated(trained, tmp_path_factory):
    """A finished ablation (one variant, one seed) of the trained run's dataset."""
    dataset, _, cache = trained
    out = tmp_path_factory.mktemp("ablation") / "abl"
    assert main(_ablate_argv(dataset, out, cache)) == 0
    return out


@dataclass
class Ctx:
    dataset: Path
    run: Path
    cache: Path
    tmp: Path
    request: pytest.FixtureRequest | None = None
    before: dict = field(default_factory=dict)

    def train(self, *extra: str, dataset: Path | None = None, out: Path | None = None) -> list[str]:
        return ["train", "--config", SMOKE, "--dataset", str(dataset or self.dataset), "--out", str(out or self.run),
                "--variant", "cnn", "train.epochs=2", "train.P=2", "train.progress=false",
                f"data.cache_dir={self.cache}", *extra]

    def abl(self) -> Path:
        """A copy of the finished ablation, made on first use (its run's digests in ``before``)."""
        out = self.tmp / "abl"
        if not out.exists():
            shutil.copytree(self.request.getfixturevalue("ablated"), out)
            self.before.update({f"abl/{p.name}": _digest(p) for p in (out / "cnn" / "seed_0").iterdir()})
        return out

    def ablate(self, *extra: str, dataset: Path | None = None, config: str | None = SMOKE) -> list[str]:
        return _ablate_argv(dataset or self.dataset, self.abl(), self.cache, *extra, config=config)

    def other(self) -> Path:
        """Another dataset: the tiny one generated again with another seed (other frames, and a
        manifest that records the seed, as the synthetic generator's does)."""
        other = self.tmp / "other"
        return other if other.exists() else make_tiny_dataset(other, seed=1)


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


def _ablation_unchanged(ctx: Ctx) -> bool:
    run = ctx.abl() / "cnn" / "seed_0"
    return all(_digest(run / name) == ctx.before[f"abl/{name}"] for name in ("last.pt", "eval.json"))


def _edited_settings(ctx: Ctx) -> Path:
    """last.pt with a stored setting changed after it was written (its checksum left as it was)."""
    import torch

    state = torch.load(ctx.run / "last.pt", weights_only=True)
    state["config"]["train"]["lr"] = 0.5
    edited = ctx.tmp / "edited.pt"
    torch.save(state, edited)
    return edited


def _duplicate_key_yaml(ctx: Ctx) -> Path:
    path = ctx.tmp / "dup.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n  epochs: 2\n  lr: 5.0\n")
    return path


def _duplicate_section_yaml(ctx: Ctx) -> Path:
    path = ctx.tmp / "dup_section.yaml"
    path.write_text(Path(SMOKE).read_text() + "train:\n  lr: 5.0\n")  # a second train: section
    return path


def _ten_split_folder(ctx: Ctx) -> Path:
    """What `reidkit ten-split` leaves: run.json and a trained run per split."""
    ts = ctx.tmp / "ts"
    (ts / "split_0").mkdir(parents=True)
    shutil.copy(ctx.run / "last.pt", ts / "split_0" / "last.pt")
    (ts / "run.json").write_text(json.dumps({"kind": "reidkit ten-split", "dataset": {}, "config": {}}))
    return ts


def _report_on(ctx: Ctx, dataset: str | None) -> Path:
    """A smoke-profile report made on ``dataset`` (None: the synthetic benchmark it generated)."""
    rep = ctx.tmp / "rep"
    rep.mkdir()
    (rep / "run.json").write_text(json.dumps({"kind": "reidkit report", "profile": "smoke", "notebooks": [],
                                              "dataset": {"path": dataset, "fingerprint": None}}))
    ctx.before["report run.json"] = _digest(rep / "run.json")
    return rep


def _regenerated_at_the_recorded_path(ctx: Ctx) -> Path:
    """A checkpoint trained on ctx.tmp/data, whose dataset was then generated again there with
    another seed."""
    from reidkit.checkpoint import load_checkpoint, save_checkpoint

    data = ctx.tmp / "data"
    shutil.copytree(ctx.dataset, data)
    state = load_checkpoint(ctx.run / "last.pt")
    state["config"]["data"]["dataset"] = state["dataset"]["path"] = str(data)
    save_checkpoint(ctx.tmp / "trained_on_data.pt", state)
    shutil.rmtree(data)
    make_tiny_dataset(data, seed=1)
    return ctx.tmp / "trained_on_data.pt"


def _one_training_identity(s: list) -> None:
    s[0]["train"] = s[0]["train"][:2]  # pid 1's two tracklets


class _HeldLock:
    """The lock another live `reidkit train` holds on a folder (an flock of its own open file)."""

    def __init__(self, folder: Path):
        import fcntl

        self.fd = os.open(folder / files.LOCK_NAME, os.O_RDWR | os.O_CREAT)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(self.fd, json.dumps({"command": "reidkit train", "pid": 4242, "host": "here", "since": 0}).encode())


def _held(ctx: Ctx, folder: Path) -> Path:
    ctx.before["lock"] = _HeldLock(folder)  # released when the row's context goes
    return folder


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
    # ---- the new commands, under a careless user
    Mistake("ablate again on its --out with another setting",
            lambda c: c.ablate("train.lr=0.5"), "holds an ablation of other settings: train.lr: 0.001 → 0.5",
            _ablation_unchanged),
    Mistake("ablate again on its --out without --config (the 60-epoch 227×227 defaults)",
            lambda c: c.ablate(config=None), "model.cnn: 'caffenet_light' → 'caffenet'", _ablation_unchanged),
    Mistake("ablate again on its --out with fewer epochs",
            lambda c: c.ablate("train.epochs=1"), "train.epochs: 2 → 1 (it may only grow)", _ablation_unchanged),
    Mistake("ablate again on its --out with the same settings on another dataset",
            lambda c: c.ablate(dataset=c.other()), "holds an ablation on another dataset (tiny at", _ablation_unchanged),
    Mistake("ablate on another dataset into an ablation folder whose run.json was lost",
            lambda c: (c.abl() / "run.json").unlink() or c.ablate(dataset=c.other()),
            "holds a run of other settings or data: trained on tiny at", _ablation_unchanged),
    Mistake("report --force --out naming a ten-split output",
            lambda c: ["report", "--profile", "smoke", "--force", "--out", str(_ten_split_folder(c))],
            "holds a reidkit ten-split run, not a report",
            lambda c: (c.tmp / "ts" / "split_0" / "last.pt").is_file(), exit_code=1),
    Mistake("report --force --out naming a training run (no run.json)",
            lambda c: ["report", "--profile", "smoke", "--force", "--out", str(c.run)],
            "is not empty and holds no report", _last_unchanged, exit_code=1),
    Mistake("report --only 03 --dataset OTHER on a report of the generated benchmark",
            lambda c: ["report", "--profile", "smoke", "--only", "03", "--dataset", str(c.other()),
                       "--out", str(_report_on(c, None))],
            "holds a report on the synthetic benchmark it generated; --only cannot continue it on",
            lambda c: _digest(c.tmp / "rep" / "run.json") == c.before["report run.json"], exit_code=1),
    Mistake("report --only 03 --dataset OTHER on a report of another dataset",
            lambda c: ["report", "--profile", "smoke", "--only", "03", "--dataset", str(c.other()),
                       "--out", str(_report_on(c, str(c.dataset.resolve())))],
            "/tiny; --only cannot continue it on",
            lambda c: _digest(c.tmp / "rep" / "run.json") == c.before["report run.json"], exit_code=1),
    Mistake("convert-caffemodel onto a trained checkpoint",
            lambda c: ["convert-caffemodel", str(c.run / "history.json"), str(c.run / "last.pt")],
            "exists and is not an earlier output of convert-caffemodel", _last_unchanged),
    Mistake("train --resume on another dataset",
            lambda c: c.train("--resume", dataset=c.other()), "data: trained on tiny at", _last_unchanged),
    Mistake("train into a folder another train is writing",
            lambda c: c.train("--force", out=_held(c, c.run)),
            "is in use by another reidkit command (`reidkit train`, pid 4242", _last_unchanged),
    Mistake("a YAML config giving train.lr twice",
            lambda c: ["train", "--config", str(_duplicate_key_yaml(c)), "--dataset", str(c.dataset)],
            "dup.yaml, line 4, column 3: not valid YAML (key 'lr' given twice (lines 2 and 4)", _last_unchanged),
    Mistake("a YAML config with a second train: section appended",
            lambda c: ["train", "--config", str(_duplicate_section_yaml(c)), "--dataset", str(c.dataset)],
            "not valid YAML (key 'train' given twice (lines ", _last_unchanged),
    Mistake("evaluate a checkpoint whose dataset was regenerated at the recorded path",
            lambda c: ["evaluate", "--checkpoint", str(_regenerated_at_the_recorded_path(c)), "--quiet"],
            "but the manifest there has changed since (regenerated or re-converted)", _last_unchanged),
    Mistake("evaluate a checkpoint whose stored settings were edited after writing",
            lambda c: ["evaluate", "--checkpoint", str(_edited_settings(c)), "--quiet"],
            "is damaged: its contents do not match the checksum", _last_unchanged),
    Mistake("resume as another variant with --force, as the refusal once advised",
            lambda c: [*c.train("--resume", "--force"), "--variant", "all"],
            "cannot continue as this model (missing", _last_unchanged),
    Mistake("train --init naming a run's history.json",
            lambda c: c.train("--force", "--init", str(c.run / "history.json")),
            "history.json: it is not a PyTorch file (it starts with b'{", _last_unchanged),
    Mistake("a split with one training identity",
            lambda c: c.train("--force", dataset=_broken_splits(c, _one_training_identity)),
            "has 1 training identity (pid >= 1): training compares identities, so it needs at least 2; this "
            "dataset (tiny at", _last_unchanged),
]


MISTAKES = [m for m in MISTAKES if m is not None]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.name for m in MISTAKES])
def test_mistake_is_refused_and_nothing_is_lost(mistake, trained, tmp_path, capsys, request):
    dataset, run, cache = trained
    ctx = Ctx(dataset, tmp_path / "run", cache, tmp_path, request)
    shutil.copytree(run, ctx.run)
    ctx.before = {p.name: _digest(p) for p in ctx.run.iterdir() if p.is_file()}
    argv = mistake.argv(ctx)
    capsys.readouterr()
    assert main(argv) == mistake.exit_code
    err = capsys.readouterr().err
    assert mistake.refusal in err, err
    assert "Traceback" not in err and "weights_only" not in err
    assert mistake.intact(ctx), f"{mistake.name}: something was lost"


# ---------------------------------------------------------------------- recoveries
def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)  # a process that has exited


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob(".*") if p.name != ".cache"]


def _full_disk_saving_a_checkpoint(ctx: Ctx, monkeypatch, capsys) -> None:
    """torch's zip writer fails on the epoch-2 save of last.pt, as it does on a full disk: the disk
    is named, epoch 1 stays whole, and --resume continues from it once there is room."""
    import torch

    from reidkit.checkpoint import load_checkpoint

    out, real, calls = ctx.tmp / "fresh", torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 3:  # epoch 1: last.pt, epoch_001.pt; epoch 2: last.pt
            Path(f).write_bytes(b"PK\x03\x04 a part")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4058")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(ctx.train(out=out)) == 2
    err = capsys.readouterr().err
    assert f"out of disk space writing {out / 'last.pt'}" in err and "the previous last.pt is intact" in err, err
    assert "epoch 2 is not completely saved; free space there, then `reidkit train --resume` continues from last.pt" in err
    assert "Traceback" not in err and _no_temporaries(out)
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert main(ctx.train("--resume", out=out)) == 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


def _last_checkpoint_lost(ctx: Ctx, monkeypatch, capsys) -> None:
    """A run whose last.pt is gone but epoch_002.pt is whole (an older reidkit wrote the epoch file
    first and then met a full disk): a plain run points to --resume, and --resume continues it."""
    from reidkit.checkpoint import load_checkpoint

    (ctx.run / "last.pt").unlink()
    assert main(ctx.train()) == 2
    assert "already holds a run (epoch_002.pt" in capsys.readouterr().err
    assert main(ctx.train("--resume", "train.epochs=3")) == 0
    assert load_checkpoint(ctx.run / "last.pt")["epoch"] == 3
    assert [r["epoch"] for r in json.loads((ctx.run / "history.json").read_text())["epochs"]] == [1, 2, 3]


def _full_disk_writing_an_evaluation(ctx: Ctx, monkeypatch, capsys) -> None:
    """evaluate --out: a disk without room for the result is refused before the evaluation; one
    that fills up meanwhile is named, and an earlier result stays whole."""
    from types import SimpleNamespace

    result = ctx.tmp / "result.json"
    argv = ["evaluate", "--checkpoint", str(ctx.run / "last.pt"), "--quiet", "--out", str(result)]
    real_usage = files.shutil.disk_usage
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: SimpleNamespace(free=10_000, used=0, total=10_000))
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "not enough disk space for the result --out" in captured.err and "rank-1" not in captured.out
    monkeypatch.setattr(files.shutil, "disk_usage", real_usage)
    assert main(argv) == 0  # an earlier result
    before = _digest(result)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "open", full, raising=False)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "rank-1" in captured.out  # the metrics, printed before the write
    assert f"out of disk space writing {result}" in captured.err and "the previous result.json is intact" in captured.err
    assert _digest(result) == before and _no_temporaries(ctx.tmp)


def _synthetic(ctx: Ctx) -> tuple[Path, dict]:
    from data_prep.synthetic import generate

    out = generate(ctx.tmp / "pairs", "pairs_tiny", seed=0, progress=False)
    return out, {p.name: _digest(p) for p in out.iterdir() if p.is_file()}


def _generator_left_it_intact(out: Path, before: dict) -> bool:
    after = {p.name: _digest(p) for p in out.iterdir() if p.is_file()}
    return after == before and not list(out.parent.glob(f".{out.name}.*"))


def _full_disk_generating_a_dataset(ctx: Ctx, monkeypatch, capsys) -> None:
    from PIL import Image

    out, before = _synthetic(ctx)
    real, saved = Image.Image.save, []

    def save(self, fp, *args, **kwargs):
        saved.append(fp)
        if len(saved) > 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    assert main(["prepare", "synthetic", "--preset", "pairs_tiny", "--seed", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"out of disk space writing the synthetic pairs_tiny dataset for {out}" in err, err
    assert f"the dataset already in {out} is intact" in err and _generator_left_it_intact(out, before)


def _interrupted_generating_a_dataset(ctx: Ctx, monkeypatch, capsys) -> None:
    import importlib

    module = importlib.import_module("data_prep.synthetic.generate")
    out, before = _synthetic(ctx)
    real, jobs = module._render_job, []

    def render(job):
        jobs.append(job)
        if len(jobs) == 3:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(module, "_render_job", render)
    assert main(["prepare", "synthetic", "--preset", "pairs_tiny", "--seed", "1", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted: the partial dataset was removed and the dataset already in {out} is intact" in err, err
    assert "Traceback" not in err and _generator_left_it_intact(out, before)
    monkeypatch.undo()
    assert main(["prepare", "synthetic", "--preset", "pairs_tiny", "--seed", "1", "--out", str(out)]) == 0
    assert json.loads((out / "meta.json").read_text())["generator"]["seed"] == 1  # replaced once complete


def _killed_cache_build(ctx: Ctx, monkeypatch, capsys) -> None:
    """A cache build killed by SIGKILL leaves its full-size temporary; the next use of that cache
    folder (at any size) deletes it. A live writer's temporary is left alone."""
    from reidkit.data import FrameCache, Manifest

    cache = ctx.tmp / "cache"
    shutil.copytree(ctx.cache, cache)
    stale = cache / f".frames_128x64.npy.{_dead_pid()}.k1ll3d_1.npy"
    stale.write_bytes(b"\0" * 100_000)
    live = cache / f".frames_128x64.npy.{os.getpid()}.wr1t1ng_.npy"
    live.write_bytes(b"\0")
    built = FrameCache.build(Manifest.load(ctx.dataset), 64, 32, cache, progress=False)
    assert not built.built and not stale.exists() and live.exists()


def _zeroed_cache_rows(ctx: Ctx, monkeypatch, capsys) -> None:
    """Frame rows of the cache zeroed after the build: training rebuilds it (and says so) instead
    of training on black frames."""
    import numpy as np

    cache = ctx.tmp / "cache"
    shutil.copytree(ctx.cache, cache)
    npy = next(cache.glob("frames_*.npy"))
    frames = np.load(npy, mmap_mode="r")
    start, row = frames.offset, frames[0].nbytes
    del frames
    with open(npy, "r+b") as f:
        f.seek(start)
        f.write(b"\0" * 3 * row)
    with pytest.warns(UserWarning, match=r"frame rows 0–\d+ were written to since the cache was built .*rebuilding it"):
        assert main(ctx.train("--force", "train.epochs=1", f"data.cache_dir={cache}")) == 0
    assert main(["verify-cache", str(cache), "--quiet"]) == 0


def _frame_replaced_in_place(ctx: Ctx, monkeypatch, capsys) -> None:
    """A frame overwritten with bytes of the same size, its modification time set back: the cache
    fingerprint (sizes and times, no reading) cannot see it, as documented; deleting the cache is
    the remedy, and the rebuild then reads the file (here: names it, as it is not an image)."""
    from reidkit.data import FrameCache, Manifest

    data, cache = ctx.tmp / "data", ctx.tmp / "cache"
    shutil.copytree(ctx.dataset, data)
    manifest = Manifest.load(data)
    FrameCache.build(manifest, 64, 32, cache, progress=False)
    frame = manifest.frame_paths(0)[0]
    st = frame.stat()
    frame.write_bytes(b"\x89garbage" * (st.st_size // 8) + b"!" * (st.st_size % 8))
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not FrameCache.build(manifest, 64, 32, cache, progress=False).built  # trusted: the documented limit
    shutil.rmtree(cache)  # the remedy the FrameCache docstring gives
    with pytest.raises(ManifestError, match=f"{frame}: cannot decode image"):
        FrameCache.build(manifest, 64, 32, cache, progress=False)


def _two_trains_into_one_folder(ctx: Ctx, monkeypatch, capsys) -> None:
    """Another process holds the run folder: a second train is refused before any work; once the
    holder is killed (SIGKILL: no chance to clean up), its lock no longer blocks anyone."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom reidkit.files import hold_folder\n"
         f"with hold_folder({str(ctx.run)!r}, 'reidkit train'):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(ctx.train("--force")) == 2
        err = capsys.readouterr().err
        assert f"is in use by another reidkit command (`reidkit train`, pid {holder.pid}" in err, err
        assert _last_unchanged(ctx)
    finally:
        holder.kill()
        holder.wait()
    assert main(ctx.train("--force", "train.epochs=1")) == 0
    assert not (ctx.run / files.LOCK_NAME).exists()


def _report_only_later_lessons(ctx: Ctx, monkeypatch, capsys) -> None:
    """report --only 04,05,06 on a report whose lessons 01-03 ran: the index lists all six."""
    rep = ctx.tmp / "rep"
    rep.mkdir()
    first = [report.NotebookResult(n, "ok", 1.0, f"{n}.ipynb", f"{n}.html") for n in report.NOTEBOOKS[:3]]
    later = [report.NotebookResult(n, "ok", 1.0, f"{n}.ipynb", f"{n}.html") for n in report.NOTEBOOKS[3:]]
    report.claim_out_dir(rep, "smoke", only=False, force=False)
    for r in first + later:
        (rep / r.ipynb).write_text("{}")
    report.write_index(rep, first, profile="smoke")
    report.claim_out_dir(rep, "smoke", only=True, force=False)
    report.write_index(rep, later, profile="smoke")
    record = json.loads((rep / "run.json").read_text())
    assert [n["name"] for n in record["notebooks"]] == list(report.NOTEBOOKS)
    assert record["kind"] == "reidkit report" and record["dataset"] == {"path": None, "fingerprint": None}
    index = (rep / "index.html").read_text()
    assert "6/6 notebooks ran" in index and all(name in index for name in report.NOTEBOOKS)


def _evaluate_on_another_dataset_on_purpose(ctx: Ctx, monkeypatch, capsys) -> None:
    """--dataset naming another dataset is the user's choice: evaluated, with a note."""
    assert main(["evaluate", "--checkpoint", str(ctx.run / "last.pt"), "--quiet", "--dataset", str(ctx.other())]) == 0
    captured = capsys.readouterr()
    assert "is not the dataset" in captured.err and "rank-1" in captured.out


@dataclass
class Recovery:
    name: str
    run: Callable  # (ctx, monkeypatch, capsys): makes the mistake, asserts the recovery and what is intact


RECOVERIES = [
    Recovery("a full disk while saving a checkpoint, then --resume", _full_disk_saving_a_checkpoint),
    Recovery("a run whose last.pt was lost to a full disk", _last_checkpoint_lost),
    Recovery("a full disk while writing evaluate --out", _full_disk_writing_an_evaluation),
    Recovery("a full disk while generating a synthetic dataset over an earlier one", _full_disk_generating_a_dataset),
    Recovery("Ctrl-C while generating a synthetic dataset over an earlier one", _interrupted_generating_a_dataset),
    Recovery("a cache build killed by SIGKILL", _killed_cache_build),
    Recovery("zeroed rows in the frame cache", _zeroed_cache_rows),
    Recovery("a frame replaced by same-size bytes, its mtime restored", _frame_replaced_in_place),
    Recovery("two trains into one --out at once", _two_trains_into_one_folder),
    Recovery("report --only 04,05,06 after 01-03", _report_only_later_lessons),
    Recovery("evaluate --dataset OTHER on purpose", _evaluate_on_another_dataset_on_purpose),
]


@pytest.mark.parametrize("recovery", RECOVERIES, ids=[r.name for r in RECOVERIES])
def test_accident_ends_in_an_exact_recovery(recovery, trained, tmp_path, monkeypatch, capsys, request):
    dataset, run, cache = trained
    ctx = Ctx(dataset, tmp_path / "run", cache, tmp_path, request)
    shutil.copytree(run, ctx.run)
    ctx.before = {p.name: _digest(p) for p in ctx.run.iterdir() if p.is_file()}
    capsys.readouterr()
    recovery.run(ctx, monkeypatch, capsys)


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


def test_an_ablation_run_again_keeps_its_runs(ablated, trained, tmp_path, capsys):
    """Run again (after an interruption, or to score it otherwise): the same settings or other eval
    settings keep every finished run (evaluated again); more epochs resume it."""
    from reidkit.checkpoint import load_checkpoint

    dataset, _, cache = trained
    out = tmp_path / "abl"
    shutil.copytree(ablated, out)
    last = out / "cnn" / "seed_0" / "last.pt"
    first = (_digest(last), last.stat().st_mtime_ns)
    for extra in ((), ("eval.rerank_top_k=5",)):
        capsys.readouterr()
        assert main(_ablate_argv(dataset, out, cache, *extra)) == 0
        assert "kept from an earlier run" in capsys.readouterr().out
        assert (_digest(last), last.stat().st_mtime_ns) == first  # not trained again
    assert main(_ablate_argv(dataset, out, cache, "train.epochs=3")) == 0
    assert load_checkpoint(last)["epoch"] == 3
    assert [r["epoch"] for r in json.loads((last.parent / "history.json").read_text())["epochs"]] == [1, 2, 3]


def test_a_full_disk_anywhere_else_is_named_in_one_line(monkeypatch, capsys):
    """A write that does not go through reidkit.files (a figure, a library's file) on a full disk."""
    import reidkit.cli as cli

    def plot(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/abl/cmc.png")

    monkeypatch.setattr(cli, "cmd_verify_cache", plot)
    assert main(["verify-cache", "anything"]) == 2
    err = capsys.readouterr().err
    assert "reidkit: error: out of disk space writing /runs/abl/cmc.png" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["stats", "prepare"])
def test_passthrough_commands_name_themselves(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert capsys.readouterr().out.startswith(f"usage: reidkit {command}")
