"""Two-process DistributedDataParallel training on the CPU (gloo): ranks must end identical,
and only rank 0 decodes the frame cache."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from reidkit.train import Trainer
from test_train import make_tiny_dataset, tiny_config  # tests/ is on sys.path (pytest rootdir import mode)

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    sys.path.insert(0, {tests!r})
    from test_train import tiny_config
    from reidkit.train import Trainer

    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    config = tiny_config({dataset!r}, {out!r}, "model.variant=all", "train.P=4", "train.epochs=2",
                         "train.steps_per_epoch=2")
    trainer = Trainer(config)
    history = trainer.fit()
    positions = sorted(next(iter(trainer.loader)).positions.tolist())
    torch.save({{k: v.detach().clone() for k, v in trainer.model.state_dict().items()}},
               os.path.join({out!r}, f"weights_rank{{rank}}.pt"))
    with open(os.path.join({out!r}, f"rank{{rank}}.json"), "w") as f:
        json.dump({{"history": history, "positions": positions, "world": trainer.world_size,
                   "backend": torch.distributed.get_backend(), "built": trainer.cache.built}}, f)
    trainer.close()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_ranks(tmp_path, dataset, out) -> list[tuple[int, str]]:
    """Run WORKER as ranks 0 and 1 of a gloo group; returns each one's (exit status, output)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(ROOT / "tests"), dataset=str(dataset), out=str(out)))
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=180)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return [(p.returncode, log) for p, log in zip(procs, logs)]


def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "tiny")
    out = tmp_path / "run"
    out.mkdir()
    for rank, (code, log) in enumerate(_run_two_ranks(tmp_path, dataset, out)):
        assert code == 0, f"rank {rank} failed:\n{log[-3000:]}"

    w0 = torch.load(out / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(out / "weights_rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ in {k}"
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["world"] == r1["world"] == 2 and r0["backend"] == "gloo"
    assert r0["built"] and not r1["built"], "rank 0 decodes the frames, rank 1 opens its cache"
    assert len(list((tmp_path / "cache").glob("frames_*.npy"))) == 1
    strip = lambda h: [{k: v for k, v in row.items() if k != "frames_per_s"} for row in h]  # noqa: E731
    assert strip(r0["history"]) == strip(r1["history"])  # logged metrics are averaged over the ranks
    assert not set(r0["positions"]) & set(r1["positions"])  # each rank trains on its own shard
    assert len(r0["positions"]) == 2 * 2  # P/world identities × K tracklets
    # only rank 0 writes checkpoints and history
    assert (out / "last.pt").exists() and (out / "history.csv").exists()
    saved = torch.load(out / "last.pt", weights_only=True)
    assert len(saved["rng"]) == 2  # per-rank RNG states for an exact resume
    for k in w0:
        assert torch.equal(saved["model"][k], w0[k])


def test_a_failed_cache_build_on_rank_0_stops_every_rank(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "tiny")
    bad = sorted(dataset.glob("p01/c1/*.png"))[2]
    bad.write_bytes(b"not a png")
    out = tmp_path / "run"
    out.mkdir()
    (code0, log0), (code1, log1) = _run_two_ranks(tmp_path, dataset, out)  # within the timeout: no hang
    assert code0 != 0 and code1 != 0
    assert "cannot decode" in log0 and "p01/c1/002.png" in log0
    assert "rank 0 could not build the frame cache" in log1 and "p01/c1/002.png" in log1


def test_process_group_timeout_outlasts_an_evaluation(tmp_path, monkeypatch):
    """The other ranks wait in a collective while rank 0 builds the cache or evaluates (MARS: tens
    of minutes): the group's timeout must be far above NCCL's default 10 minutes."""
    seen = {}

    class Stop(Exception):
        pass

    def init_process_group(backend, **kwargs):
        seen.update(kwargs, backend=backend)
        raise Stop

    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(Stop):
        Trainer(tiny_config(tmp_path / "data", tmp_path / "run", "train.P=4"))
    assert seen["backend"] == "gloo" and seen["timeout"] >= timedelta(minutes=60)
