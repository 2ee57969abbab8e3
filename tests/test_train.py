"""Trainer: a few steps on a hand-made tiny dataset, callbacks, checkpoints, exact resume, NaN stop."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.checkpoint import load_checkpoint, load_model
from reidkit.config import Config, ConfigError
from reidkit.data import write_manifest
from reidkit.train import Trainer, TrainingDiverged

H, W = 64, 32  # caffenet_light gives a 4×2 pool5 grid at this size


def make_tiny_dataset(root: Path, identities: int = 8, frames: int = 7, seed: int = 0) -> Path:
    """A two-camera manifest: every identity has one tracklet per camera of coloured-block frames.

    Identities 1..n/2 train; the others are query (camera 1) and gallery (camera 2).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, tid = [], 0
    for pid in range(1, identities + 1):
        top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        for cam in (1, 2):
            names = []
            for f in range(frames):
                img = np.empty((H, W, 3), np.uint8)
                img[: H // 2], img[H // 2:] = top, bottom
                img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
                name = f"p{pid:02d}/c{cam}/{f:03d}.png"
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / name)
                names.append(name)
            rows.append({"tracklet_id": tid, "pid": pid, "camid": cam, "frames": names})
            tid += 1
    half = identities // 2
    split = {"train": [r["tracklet_id"] for r in rows if r["pid"] <= half],
             "query": [r["tracklet_id"] for r in rows if r["pid"] > half and r["camid"] == 1],
             "gallery": [r["tracklet_id"] for r in rows if r["pid"] > half and r["camid"] == 2]}
    meta = {"name": "tiny", "source": "synthetic", "protocol": "two_camera", "frame_size": [H, W], "excluded": [],
            **({"seed": seed} if seed else {})}  # as the synthetic generator records its seed
    write_manifest(root, rows, [split], meta)
    return root


TINY_MODEL = [f"model.height={H}", f"model.width={W}", "model.cnn=caffenet_light", "model.width_mult=0.125",
              "model.fc_dim=32", "model.rnn_hidden=16", "model.attention_dim=8", "model.srm_in=8",
              "model.srm_hidden=4", "model.srm_out=4", "model.seq_len=4"]


def tiny_config(dataset, out, *overrides) -> Config:
    return Config.from_dict({}, [
        f"data.dataset={dataset}", f"data.cache_dir={Path(out).parent / 'cache'}", *TINY_MODEL,
        "train.P=2", "train.K=2", "train.steps_per_epoch=2", "train.epochs=2", "train.lr=0.01",
        "train.device=cpu", "train.log_every=1", "train.progress=false", f"train.out_dir={out}",
        "train.seed=3", "train.warmup=0", "train.schedule=none", "train.optimizer=sgd", "train.eval_every=0",
        "train.keep_last=null", "train.amp=off", *overrides])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


def weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_writes_history_checkpoints_and_calls_callbacks(tiny, tmp_path):
    calls = {"step": [], "epoch": []}

    class Recorder:
        def on_epoch_end(self, trainer, epoch, logs):
            calls["epoch"].append((epoch, logs))

    # margin 2: the triplet term stays > 0 (see test_single_branch_variants_train)
    config = tiny_config(tiny, tmp_path / "run", "model.variant=all", "train.keep_last=1", "train.margin=2.0")
    before = weights(Trainer(config).model)
    trainer = Trainer(config, callbacks=[Recorder(), {"on_step_end": lambda t, s, logs: calls["step"].append((s, logs))}])
    history = trainer.fit()

    assert [s for s, _ in calls["step"]] == [1, 2, 3, 4]
    for _, logs in calls["step"]:
        assert {"loss", "triplet", "bce", "lr", "grad_norm", "frames_per_s"} <= set(logs)
        assert all(math.isfinite(v) for v in logs.values())
        assert logs["triplet"] > 0 and logs["bce"] > 0  # both branches of ``all`` are trained
    assert [e for e, _ in calls["epoch"]] == [1, 2] and len(history) == 2
    out = tmp_path / "run"
    assert sorted(p.name for p in out.glob("*.pt")) == ["epoch_002.pt", "last.pt"]  # keep_last=1
    assert len(json.loads((out / "history.json").read_text())["epochs"]) == 2
    with open(out / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    changed = [k for k, v in weights(trainer.model).items() if not torch.equal(v, before[k])]
    assert changed, "training did not change any weight"
    model, cfg = load_model(out / "last.pt")
    assert cfg.model.variant == "all" and not model.training
    for k, v in weights(model).items():
        torch.testing.assert_close(v, trainer.model.state_dict()[k])


@pytest.mark.parametrize("variant", ["cnn_tam", "cnn_srm"])
def test_single_branch_variants_train(tiny, tmp_path, variant):
    # margin 2 = the largest distance between unit vectors: the triplet term cannot reach 0, so
    # "> 0" shows it is computed (the tiny coloured-block set is otherwise solved in one step)
    config = tiny_config(tiny, tmp_path / variant, f"model.variant={variant}", "train.epochs=1", "train.margin=2.0")
    row = Trainer(config).fit()[-1]
    if variant == "cnn_tam":
        assert row["triplet"] > 0 and row["bce"] == 0
    else:
        assert row["bce"] > 0 and row["triplet"] == 0
    # the checkpoint keeps model.variant beside the ModelConfig sizes, as the checkpoints written
    # before ModelConfig had a variant field did; load_model rebuilds that variant
    path = tmp_path / variant / "last.pt"
    state = load_checkpoint(path)
    assert state["config"]["model"]["variant"] == state["variant"] == variant
    model, cfg = load_model(path)
    assert model.variant == cfg.model.variant == variant


def test_resume_is_exact(tiny, tmp_path):
    """Stopped after epoch 1 and resumed == uninterrupted (dropout, sampling, mirroring, optimiser)."""
    extra = ["model.variant=all", "train.epochs=3", "train.optimizer=adam", "train.schedule=cosine"]
    full = Trainer(tiny_config(tiny, tmp_path / "full", *extra))
    full.fit()

    def stop(trainer, epoch, logs):
        trainer.should_stop = True

    first = Trainer(tiny_config(tiny, tmp_path / "resumed", *extra), callbacks=[{"on_epoch_end": stop}])
    first.fit()
    assert first.epoch == 1
    torch.manual_seed(12345)  # disturb the global RNGs: resume must restore them
    np.random.seed(999)
    resumed = Trainer(tiny_config(tiny, tmp_path / "resumed", *extra))
    resumed.fit(resume=True)
    assert resumed.epoch == 3 and len(resumed.history) == 3
    a, b = weights(full.model), weights(resumed.model)
    for k in a:
        assert torch.allclose(a[k], b[k]), k
    assert [r["loss"] for r in full.history] == pytest.approx([r["loss"] for r in resumed.history])


def test_nan_stops_and_keeps_last_good_checkpoint(tiny, tmp_path):
    def corrupt(trainer, step, logs):
        if step == 3:  # first step of epoch 2: poison the weights
            with torch.no_grad():
                for p in trainer.model.parameters():
                    p.fill_(float("nan"))

    out = tmp_path / "nan"
    trainer = Trainer(tiny_config(tiny, out, "model.variant=cnn_tam"), callbacks=[{"on_step_end": corrupt}])
    with pytest.raises(TrainingDiverged, match=r"step 4 \(epoch 2\).*triplet"):
        trainer.fit()
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_huge_learning_rate_diverges_with_clear_message(tiny, tmp_path):
    config = tiny_config(tiny, tmp_path / "lr", "model.variant=cnn", "train.lr=1e30", "train.grad_clip=null",
                         "train.epochs=3")
    with pytest.raises(TrainingDiverged, match=r"non-finite .*train.lr"):
        Trainer(config).fit()
    assert not (tmp_path / "lr" / "last.pt").exists() or load_checkpoint(tmp_path / "lr" / "last.pt")["epoch"] >= 1


# ---------------------------------------------------------------------------- checkpoints
from reidkit.checkpoint import CheckpointError, save_checkpoint  # noqa: E402


class NotATensor:  # module level so torch.save can pickle it; weights_only=True must refuse it
    pass


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"w": torch.ones(3), "epoch": 1})

    def failing_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:  # some bytes reach the disk, then the process "dies"
            fh.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": torch.zeros(3), "epoch": 2})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_checkpoint_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"obj": NotATensor()}, unsafe)  # arbitrary pickled objects are not loaded
    with pytest.raises(CheckpointError, match="unsafe.pt") as info:
        load_checkpoint(unsafe)
    assert "not written by reidkit" in str(info.value) and "weights_only" not in str(info.value)  # no unsafe advice
    plain = tmp_path / "plain.pt"
    torch.save({"model": {}, "config": {}}, plain)  # torch.save, not save_checkpoint: no checksum
    with pytest.raises(CheckpointError, match="plain.pt has no checksum: it was not written by reidkit"):
        load_checkpoint(plain)
    text = tmp_path / "history.json"
    text.write_text('{"epochs": []}')
    with pytest.raises(CheckpointError, match=r"history.json: it is not a PyTorch file \(it starts with b'\{"):
        load_checkpoint(text)


def test_lr_schedules():
    """Linear warm-up to train.lr, then the cosine decay from train.lr towards 0, or steps of lr_gamma."""
    from types import SimpleNamespace

    def lrs(*overrides):
        config = Config.from_dict({}, ["train.lr=0.1", "train.warmup=4", "train.epochs=3", *overrides])
        trainer = SimpleNamespace(config=config, steps_per_epoch=10)
        return [Trainer.lr_at(trainer, step, step // 10 + 1) for step in range(30)]

    cosine = lrs("train.schedule=cosine")
    assert cosine[:5] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])  # warm-up, then the peak
    assert all(a > b for a, b in zip(cosine[4:], cosine[5:]))  # then only down
    assert cosine[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 25 / 26))) and cosine[-1] < 0.001
    step = lrs("train.schedule=step", "train.lr_step_epochs=1", "train.lr_gamma=0.5")
    assert step[4:] == pytest.approx([0.1] * 6 + [0.05] * 10 + [0.025] * 10)
    assert lrs("train.schedule=none")[4:] == pytest.approx([0.1] * 26)


def test_trainer_checkpoint_is_weights_only_loadable(tiny, tmp_path):
    trainer = Trainer(tiny_config(tiny, tmp_path / "w", "model.variant=cnn_diff", "train.epochs=1"))
    trainer.fit()
    state = torch.load(tmp_path / "w" / "last.pt", weights_only=True)
    assert state["config"]["model"]["variant"] == "cnn_diff"
    assert {"model", "optimizer", "rng", "history", "epoch", "step"} <= set(state)
    assert isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)


def test_eval_every_adds_metrics_to_history(tiny, tmp_path):
    config = tiny_config(tiny, tmp_path / "ev", "model.variant=cnn", "train.epochs=1", "train.eval_every=1",
                         "eval.batch_size=8")
    trainer = Trainer(config)
    row = trainer.fit()[-1]
    assert {"rank1", "rank5", "rank20", "mAP"} <= set(row) and 0 <= row["rank1"] <= 100
    assert trainer.model.training  # evaluation restores the training mode
    with open(tmp_path / "ev" / "history.csv") as f:
        assert "mAP" in next(csv.DictReader(f))


def test_training_never_reads_the_ground_truth_columns(tmp_path):
    """Visibility, occlusion and blur labels measure; they never train (ground truth is for analysis only).

    The same synthetic data with and without those columns in tracklets.csv, the same seed:
    every weight and buffer of ``all`` (attention, SRM, BatchNorm statistics) is bit-identical
    after training with frame erasing on. One thread, so the comparison is exact.
    """
    import os

    from data_prep.synthetic import generate
    from reidkit.data import Manifest

    full = tmp_path / "with_labels"
    generate(full, preset="tiny", seed=0, progress=False, workers=1)
    bare = tmp_path / "without_labels"
    bare.mkdir()
    os.symlink(full / "bbox", bare / "bbox")
    labelled = Manifest.load(full)
    write_manifest(bare, [{"tracklet_id": t.tracklet_id, "pid": t.pid, "camid": t.camid, "frames": t.frames}
                          for t in labelled.tracklets],
                   [vars(s) for s in labelled.splits], labelled.meta)
    assert Manifest.load(full).has_visibility and not Manifest.load(bare).has_visibility

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        states = []
        for root in (full, bare):
            config = tiny_config(root, tmp_path / f"run_{root.name}", "model.variant=all", "train.epochs=1",
                                 "train.steps_per_epoch=3", "train.frame_erasing=0.3", "train.margin=null",
                                 "train.optimizer=adam", "train.lr=1e-3")
            trainer = Trainer(config)
            trainer.fit()
            states.append(weights(trainer.model))
    finally:
        torch.set_num_threads(threads)
    assert states[0].keys() == states[1].keys()
    differing = [k for k in states[0] if not torch.equal(states[0][k], states[1][k])]
    assert not differing, f"weights depend on the ground-truth columns: {differing[:5]}"


def test_init_starts_from_another_runs_weights_with_a_fresh_optimiser(tiny, tmp_path):
    source = tiny_config(tiny, tmp_path / "source", "model.variant=all", "train.epochs=1")
    Trainer(source).fit()
    trained = load_checkpoint(tmp_path / "source" / "last.pt")["model"]
    tuned = Trainer(tiny_config(tiny, tmp_path / "tuned", "model.variant=all", "train.epochs=1",
                                f"train.init={tmp_path / 'source' / 'last.pt'}"))
    assert all(torch.equal(v, trained[k]) for k, v in tuned.model.state_dict().items())  # the weights
    assert tuned.step == 0 and tuned.epoch == 0 and not tuned.optimizer.state  # nothing else
    history = tuned.fit()
    assert [row["epoch"] for row in history] == [1] and tuned.step == 2
    assert load_checkpoint(tmp_path / "tuned" / "last.pt")["config"]["train"]["init"].endswith("last.pt")


def test_init_from_another_architecture_is_refused_clearly(tiny, tmp_path):
    Trainer(tiny_config(tiny, tmp_path / "cnn", "model.variant=cnn", "train.epochs=1")).fit()
    with pytest.raises(ConfigError, match=r"train.init=.*its model \(cnn.*does not fit this one \(all.*missing"):
        Trainer(tiny_config(tiny, tmp_path / "all", "model.variant=all", f"train.init={tmp_path / 'cnn' / 'last.pt'}"))
    with pytest.raises(CheckpointError, match="not found"):
        Trainer(tiny_config(tiny, tmp_path / "x", f"train.init={tmp_path / 'nowhere.pt'}"))


def test_attention_lr_scale_puts_the_attention_subnet_in_its_own_group(tmp_path, tiny):
    trainer = Trainer(tiny_config(tiny, tmp_path / "r", "model.variant=cnn_tam", "train.attention_lr_scale=10"))
    groups = trainer.optimizer.param_groups
    attention = {id(p) for p in trainer.model.temporal.attention_parameters()}
    assert len(groups) == 3 and {id(p) for p in groups[2]["params"]} == attention
    assert groups[2]["lr_scale"] == pytest.approx(10.0) and groups[1]["lr_scale"] == pytest.approx(1.0)
    assert not attention & {id(p) for g in groups[:2] for p in g["params"]}  # each weight in one group only
    assert sum(len(g["params"]) for g in groups) == len(list(trainer.model.parameters()))
    plain = Trainer(tiny_config(tiny, tmp_path / "r2", "model.variant=cnn_tam"))
    assert len(plain.optimizer.param_groups) == 2  # scale 1: the groups as before
