"""Same seed, same code, same machine, same thread count → the same trained model, bit for bit.

Trains a few steps at the cpu config twice with 2 threads and compares every weight, buffer
and logged loss exactly. Before the fix the metric branch's pair gather (``pool5[idx]``) summed
its gradient with parallel float atomics, and 2-thread runs differed after the first step.
"""

from __future__ import annotations

import pytest
import torch

from conftest import write_tiny_manifest
from reidkit.config import Config
from reidkit.train import Trainer


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def train_once(dataset, out):
    config = Config.from_yaml("configs/cpu.yaml", [
        f"data.dataset={dataset}", f"data.cache_dir={out.parent / 'cache'}", f"train.out_dir={out}",
        "train.epochs=1", "train.steps_per_epoch=4", "train.log_every=1", "train.progress=false"])
    trainer = Trainer(config)
    history = trainer.fit()
    return ({k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            [row["loss"] for row in trainer.step_history], history)


def test_cpu_training_is_bitwise_reproducible_with_two_threads(tmp_path, two_threads):
    dataset = write_tiny_manifest(tmp_path / "data", num_ids=18, length_range=(6, 9), frame_size=(128, 64))
    a, losses_a, _ = train_once(dataset, tmp_path / "a")
    b, losses_b, _ = train_once(dataset, tmp_path / "b")
    assert losses_a == losses_b
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} weights/buffers differ, e.g. {differ[:3]}"
