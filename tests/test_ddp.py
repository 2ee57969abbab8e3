"""Two-process DistributedDataParallel training on the CPU (gloo): ranks must end identical."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from test_train import make_tiny_dataset  # tests/ is on sys.path (pytest rootdir import mode)

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
                   "backend": torch.distributed.get_backend()}}, f)
    trainer.close()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    dataset = make_tiny_dataset(tmp_path / "tiny")
    out = tmp_path / "run"
    out.mkdir()
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
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-3000:]}"

    w0 = torch.load(out / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(out / "weights_rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks differ in {k}"
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["world"] == r1["world"] == 2 and r0["backend"] == "gloo"
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
