"""The CUDA code paths' decisions, checked on the CPU: the RNG state per device, the device each
rank and the prefetch thread select, cuDNN's TF32 flags, evaluation of a compiled CNN without
recompiling, and the GPU check's budget and failure records (``torch.cuda`` monkeypatched where
the decision calls it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

from reidkit import train as train_mod
from reidkit.models.caffenet import cudnn_tf32, disable_cudnn_tf32
from reidkit.train import Trainer, _rng_state, _set_rng_state, configure_cuda_backends
from test_train import make_tiny_dataset, tiny_config  # tests/ is on sys.path (pytest rootdir import mode)


class Stop(Exception):
    """Ends a constructor at the call under test."""


@pytest.fixture
def cudnn_flags():
    """Restore cuDNN's global flags after a test that sets them."""
    benchmark, tf32 = torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = benchmark, tf32


# ------------------------------------------------------------------------------ RNG per device

def test_checkpoint_rng_holds_the_training_gpus_state_only(monkeypatch):
    def every_gpu():
        raise AssertionError("get_rng_state_all: one state per visible GPU")

    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_gpu)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: torch.tensor([torch.device(device).index]))
    state = _rng_state(torch.Generator(), torch.device("cuda", 3))
    assert [s.tolist() for s in state["cuda"]] == [[3]]
    assert _rng_state(torch.Generator(), torch.device("cpu"))["cuda"] == []


@pytest.mark.parametrize("saved, device, restored", [
    (8, 0, 0),  # trained on 8 visible GPUs (an older checkpoint: one state each), resumed on 1
    (8, 3, 3),  # an older DDP checkpoint: rank 3's own GPU
    (1, 5, 0),  # this format: the rank's one state, whatever its index now
    (2, 4, None),  # no state for that GPU: not restored, and said so
])
def test_resume_restores_the_cuda_rng_of_the_device_it_runs_on(monkeypatch, saved, device, restored):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device=None: calls.append((int(s[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("set_rng_state_all"))
    state = _rng_state(torch.Generator())
    state["cuda"] = [torch.tensor([i], dtype=torch.uint8) for i in range(saved)]
    dev = torch.device("cuda", device)
    if restored is None:
        with pytest.warns(UserWarning, match="not restored"):
            _set_rng_state(state, torch.Generator(), dev)
        assert calls == []
    else:
        _set_rng_state(state, torch.Generator(), dev)
        assert calls == [(restored, dev)]


# ------------------------------------------------------------------------------ set_device

@pytest.mark.parametrize("world, group_exists", [(1, False), (2, False), (2, True)])
def test_trainer_selects_its_gpu_whoever_made_the_process_group(tmp_path, monkeypatch, world, group_exists):
    chosen = []

    def set_device(device):
        chosen.append(torch.device(device))
        raise Stop

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(dist, "is_initialized", lambda: group_exists)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("group initialised first"))
    for key, value in {"RANK": str(world - 1), "LOCAL_RANK": str(world - 1), "WORLD_SIZE": str(world)}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(Stop):
        Trainer(tiny_config(tmp_path / "data", tmp_path / "run", "train.P=4", "train.device=cuda"))
    assert chosen == [torch.device("cuda", world - 1)]


# ------------------------------------------------------------------------------ TF32

def test_cuda_backends_turn_cudnn_tf32_off(cudnn_flags):
    torch.backends.cudnn.allow_tf32 = True  # torch's default
    configure_cuda_backends(torch.device("cpu"), True)
    assert cudnn_tf32()["conv"] and cudnn_tf32()["rnn"]  # nothing set for a CPU
    configure_cuda_backends(torch.device("cuda", 0), False)
    assert cudnn_tf32() == {"conv": False, "rnn": False, "matmul": cudnn_tf32()["matmul"]}
    assert torch.backends.cudnn.allow_tf32 is False  # the older flag agrees: readable, no error
    assert torch.backends.cudnn.benchmark is False
    disable_cudnn_tf32()  # again: no warning, no error
    assert not cudnn_tf32()["conv"]


def test_trainer_configures_the_backends_of_its_device(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(train_mod, "configure_cuda_backends", lambda device, benchmark: seen.append((device, benchmark)))
    data = make_tiny_dataset(tmp_path / "tiny")
    Trainer(tiny_config(data, tmp_path / "run", "train.cudnn_benchmark=false"))
    assert seen == [(torch.device("cpu"), False)]


# ------------------------------------------------------------------------------ compiled evaluation

def test_evaluation_does_not_recompile_the_compiled_cnn(tmp_path):
    pytest.importorskip("torch._dynamo")
    if not hasattr(torch.compiler, "set_stance"):
        pytest.skip("torch without torch.compiler.set_stance")
    graphs = []

    def backend(gm, example_inputs):  # counts what dynamo compiles; runs the graph as it is
        graphs.append(len(example_inputs))
        return gm.forward

    torch._dynamo.reset()
    data = make_tiny_dataset(tmp_path / "tiny")
    trainer = Trainer(tiny_config(data, tmp_path / "run", "model.variant=cnn"))
    trainer.model.cnn.compile(backend=backend)
    try:
        trainer.train_step(next(iter(trainer.loader)), 0.01)
        trained = len(graphs)
        assert trained >= 1
        trainer.evaluate()  # eval mode, no_grad, another batch size: eagerly, not a new graph
        assert len(graphs) == trained
        trainer.train_step(next(iter(trainer.loader)), 0.01)  # training still runs the compiled graph
        assert len(graphs) == trained
    finally:
        torch._dynamo.reset()
