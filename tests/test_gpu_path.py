"""The CUDA code paths' decisions, checked on the CPU: the RNG state per device, the device each
rank and the prefetch thread select, cuDNN's TF32 flags, evaluation of a compiled CNN without
recompiling, and the GPU check's budget and failure records (``torch.cuda`` monkeypatched where
the decision calls it)."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from reidkit import train as train_mod
from reidkit.data import FrameCache, Manifest, Prefetcher, TrainClipLoader, iter_test_clips, normalize_clips
from reidkit.data import cache as cache_mod
from reidkit.data.sampling import test_frame_indices
from reidkit.models.caffenet import cudnn_tf32, disable_cudnn_tf32
from reidkit.train import Trainer, _rng_state, _set_rng_state, configure_cuda_backends
from test_train import make_tiny_dataset, tiny_config  # tests/ is on sys.path (pytest rootdir import mode)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))


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


# ------------------------------------------------------------------------------ the host path

@pytest.fixture
def dataset(make_manifest):
    root = make_manifest(num_ids=8, tracklets_per_cam=2, distractors=2, length_range=(2, 30))
    m = Manifest.load(root)
    return m, FrameCache.build(m, 12, 6, progress=False)


def test_host_gather_threads_give_the_same_frames(dataset, monkeypatch):
    """Several threads: reads of the cache file (runs of consecutive rows in one read, long runs
    split), or for a cache held in memory, index_select in parts."""
    m, cache = dataset
    monkeypatch.setattr(cache_mod, "READ_ROWS", 3)
    reads = []
    preadv = cache_mod.os.preadv
    monkeypatch.setattr(cache_mod.os, "preadv", lambda fd, bufs, offset: reads.append(offset) or preadv(fd, bufs, offset))
    rng = np.random.default_rng(0)
    runs = np.concatenate([np.arange(5, 13), [40, 2, 3], np.arange(20, 27)[::-1], [len(cache) - 1, 0]])
    in_memory = FrameCache(np.array(cache.frames), cache.offsets, cache.lengths)
    assert cache._file is not None and in_memory._file is None
    for rows in (rng.integers(0, len(cache), (7, 5)), runs, runs[None].repeat(2, 0)):
        expected = cache.frames[rows]
        for workers in (1, 2, 3, 8):
            reads.clear()
            np.testing.assert_array_equal(cache.host_gather(rows, workers=workers).numpy(), expected)
            assert bool(reads) == (workers > 1 and rows.size >= 8)
            np.testing.assert_array_equal(in_memory.host_gather(rows, workers=workers).numpy(), expected)
    reads.clear()
    cache.host_gather(runs, workers=2)
    assert len(reads) == 3 + 1 + 1 + 7 + 2  # 8 consecutive rows: reads of 3, 3, 2; 40; 2-3 in one; 7 descending; 2
    buf = torch.empty((7, 5, 12, 6, 3), dtype=torch.uint8)
    rows = rng.integers(0, len(cache), (7, 5))
    assert cache.host_gather(rows, out=buf, workers=4) is buf
    np.testing.assert_array_equal(buf.numpy(), cache.frames[rows])


def test_upload_in_chunks_through_two_buffers_keeps_every_row(dataset, monkeypatch):
    m, cache = dataset
    monkeypatch.setattr(cache_mod, "UPLOAD_CHUNK_BYTES", 7 * cache.frame_bytes)  # 7 frames a chunk
    rows = cache.tracklet_rows(m.positions(m.split(0).train))
    assert len(rows) > 3 * 7
    copy = cache.upload("cpu", rows, workers=3)
    np.testing.assert_array_equal(copy.numpy(), cache.frames[rows])


@pytest.mark.parametrize("prefetch", [0, 2])
def test_train_loader_with_gather_threads_is_bit_identical(dataset, prefetch):
    m, cache = dataset
    make = lambda workers: TrainClipLoader(m, cache, P=2, K=3, T=5, seed=4, steps_per_epoch=3,  # noqa: E731
                                           resident=False, prefetch=prefetch, gather_workers=workers)
    assert make(None).gather_workers == 1  # the CPU's cores compute
    for a, b in zip(make(1), make(3)):
        assert torch.equal(a.clips, b.clips) and torch.equal(a.positions, b.positions)


def test_test_clips_are_the_same_prefetched_and_gathered_by_threads(dataset):
    m, cache = dataset
    positions = m.positions(m.split(0).query + m.split(0).gallery)
    T, batch = 4, 5
    rows, owners = [], []
    for p in positions:  # the reference: every chunk, in order, normalised from the map
        for idx in test_frame_indices(int(m.lengths[p]), T, "chunks"):
            rows.append(cache.offsets[p] + idx)
            owners.append(p)
    expected = normalize_clips(torch.from_numpy(cache.frames[np.stack(rows)]))
    for prefetch in (0, 1, 2):
        for workers in (1, 3):
            got = list(iter_test_clips(m, cache, positions, T, batch_size=batch, prefetch=prefetch,
                                       gather_workers=workers))
            assert all(len(c) <= batch for c, _ in got)
            assert torch.equal(torch.cat([c for c, _ in got]), expected), (prefetch, workers)
            assert np.concatenate([o for _, o in got]).tolist() == owners
    cache.upload("cpu", cache.tracklet_rows(positions))  # frames held by a device copy come from there
    assert torch.equal(torch.cat([c for c, _ in iter_test_clips(m, cache, positions, T, batch_size=batch,
                                                                prefetch=2)]), expected)


def test_abandoned_test_clips_stop_their_thread(dataset):
    m, cache = dataset
    positions = m.positions(m.split(0).query + m.split(0).gallery)
    clips = iter_test_clips(m, cache, positions, 2, batch_size=2, prefetch=2)
    next(clips)
    clips.close()
    assert not [t for t in threading.enumerate() if t.name == "reidkit-prefetch" and t.is_alive()]


@pytest.mark.parametrize("device, expected", [("cuda:1", [torch.device("cuda", 1)]), ("cuda", [torch.device("cuda", 2)]),
                                              ("cpu", []), (None, [])])
def test_prefetch_thread_selects_the_loaders_gpu(monkeypatch, device, expected):
    chosen = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)  # the creating thread's GPU
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append((torch.device(d),
                                                                            threading.current_thread().name)))
    with Prefetcher(range(3), lambda item, slot: item, 2, device=device) as ahead:
        for item, slot in ahead:
            ahead.release(slot)
    assert chosen == [(d, "reidkit-prefetch") for d in expected]


# ------------------------------------------------------------------------------ bench_model's step

def test_bench_model_times_the_trainers_step(monkeypatch):
    """The backward runs outside autocast and the pairs are mined from host pids, as in
    ``Trainer.train_step``; the optimiser steps."""
    import bench_model  # benchmarks/ is put on sys.path below

    from reidkit.models import ModelConfig

    backward_under_autocast, mined_from = [], []
    original_backward, original_mine = torch.Tensor.backward, train_mod.mine_pairs

    def backward(self, *args, **kwargs):
        backward_under_autocast.append(torch.is_autocast_enabled("cpu"))
        return original_backward(self, *args, **kwargs)

    def mine_pairs(features, pids, *args, **kwargs):
        mined_from.append(type(pids))
        return original_mine(features, pids, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", backward)
    monkeypatch.setattr(train_mod, "mine_pairs", mine_pairs)
    config = ModelConfig.cpu()
    objective, optimizer, batch = bench_model.setup("all", config, 8, torch.device("cpu"), amp=True)
    before = [p.detach().clone() for p in objective.model.parameters()]
    bench_model.train_step(objective, optimizer, *batch, amp=True)
    assert backward_under_autocast == [False]
    assert mined_from == [np.ndarray]
    assert any(not torch.equal(a, b) for a, b in zip(before, objective.model.parameters())), "no optimiser step"
    assert bench_model.bench("all", config, 4, "cpu", steps=1, warmup=0, amp=True) > 0
    assert backward_under_autocast == [False, False]


# ------------------------------------------------------------------------------ the GPU check

@pytest.fixture
def gpu_check():
    import gpu_check

    return gpu_check


def test_gpu_check_budgets_fit_the_default_total_with_room(gpu_check):
    total = sum(s.budget for s in gpu_check.SECTIONS)
    assert total <= 0.9 * gpu_check.DEFAULT_BUDGET_S, total
    names = [s.name for s in gpu_check.SECTIONS]
    assert names[:2] == ["environment", "training"], "the end-to-end training runs first"
    assert all(p["runs"] and p["full_budget"] for p in gpu_check.schedule(gpu_check.DEFAULT_BUDGET_S))
    short = {p["name"]: p for p in gpu_check.schedule(240)}  # the line for short device time
    assert all(short[n]["runs"] and short[n]["full_budget"] for n in ("environment", "training", "cuda_tests", "checks"))
    assert not short["compile"]["runs"]
    assert all(s.least <= s.budget for s in gpu_check.SECTIONS)


def test_gpu_check_writes_a_failed_section_before_cuda_is_touched_again(gpu_check, tmp_path, monkeypatch):
    out = tmp_path / "report.json"
    seen_on_disk = []

    def illegal_address():  # the context is lost in the section "broken"
        written = json.loads(out.read_text())["sections"]
        if "broken" in written:
            seen_on_disk.append(written["broken"])  # what was on disk by then
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def broken(run):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (in the section)")

    def after(run):
        raise AssertionError("a CUDA section ran on a lost context")

    monkeypatch.setattr(torch.cuda, "synchronize", illegal_address)
    monkeypatch.setattr(torch.cuda, "empty_cache", illegal_address)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("asked for CUDA: --device cuda was given"))
    monkeypatch.setattr(gpu_check, "SECTIONS", [gpu_check.Section("environment", lambda run: {"ok": 1}, 10, 1, False),
                                                gpu_check.Section("broken", broken, 10, 1, True),
                                                gpu_check.Section("after", after, 10, 1, True)])
    assert gpu_check.main(["--in-process", "--device", "cuda", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    entry = report["sections"]["broken"]
    assert seen_on_disk and seen_on_disk[0]["status"] == "failed" and "illegal memory access" in seen_on_disk[0]["error"]
    assert any(line.strip().endswith("in broken") for line in seen_on_disk[0]["traceback"])  # its own frame
    assert "illegal memory access" in entry["cleanup_error"]
    assert report["sections"]["after"] == {"status": "skipped", "why": "CUDA unusable in this process after "
                                                                       f"broken: {entry['cleanup_error']}"}
    assert report["finished"] and report["failed"] == ["broken"]


def test_gpu_check_watchdog_starts_before_cuda_is_asked_for(gpu_check, tmp_path, monkeypatch):
    timers = []

    def is_available():
        timers.append(any(isinstance(t, threading.Timer) and t.is_alive() for t in threading.enumerate()))
        return False

    monkeypatch.setattr(torch.cuda, "is_available", is_available)
    monkeypatch.setattr(gpu_check, "SECTIONS", [gpu_check.Section("environment", lambda run: {}, 10, 1, False)])
    assert gpu_check.main(["--in-process", "--out", str(tmp_path / "r.json")]) == 0
    assert timers and all(timers)


def _child(tmp_path, code: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(code)
    return [sys.executable, str(script)]


def test_gpu_check_keeps_what_a_dying_or_hanging_section_left(gpu_check, tmp_path):
    out = tmp_path / "section.json"
    lines = []
    died = gpu_check.run_child(_child(tmp_path, "import os, traceback\n"
                                                "try:\n    1 / 0\nexcept Exception:\n    traceback.print_exc()\n"
                                                "os._exit(6)\n"), out, 30, lines.append)
    assert died["status"] == "failed" and died["exit_status"] == 6 and "without writing a result" in died["why"]
    assert any("ZeroDivisionError" in line for line in died["output_tail"]) and lines

    hung = gpu_check.run_child(_child(tmp_path, f"import json, time\nopen({str(out)!r}, 'w').write("
                                                "json.dumps({'status': 'running', 'epochs': [1]}))\n"
                                                "print('noted', flush=True)\ntime.sleep(60)\n"), out, 3, lines.append)
    assert hung["status"] == "failed" and "killed at its time limit" in hung["why"]
    assert hung["noted"] == {"epochs": [1]} and "noted" in hung["output_tail"]

    done = gpu_check.run_child(_child(tmp_path, f"import json\nopen({str(out)!r}, 'w').write("
                                                "json.dumps({'status': 'ok', 'figure': 2}))\n"), out, 30, lines.append)
    assert done == {"status": "ok", "figure": 2}


# ------------------------------------------------------------------------------ on a GPU (gpu_check runs these)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by benchmarks/gpu_check)")
def test_cuda_host_path_gives_the_resident_batches_and_test_clips(dataset, monkeypatch):
    m, cache = dataset
    make = lambda **kw: TrainClipLoader(m, cache, P=2, K=2, T=4, seed=1, steps_per_epoch=3, device="cuda",  # noqa: E731
                                        **kw)
    resident = list(make())
    for prefetch in (0, 2):
        for workers in (1, 4):
            host = list(make(resident=False, prefetch=prefetch, gather_workers=workers))
            for a, b in zip(host, resident):
                assert torch.equal(a.clips, b.clips) and torch.equal(a.frame_idx, b.frame_idx), (prefetch, workers)
    positions = m.positions(m.split(0).query + m.split(0).gallery)
    expected = torch.cat([c for c, _ in iter_test_clips(m, cache, positions, 4, batch_size=5)])
    for prefetch in (0, 2):
        for workers in (1, 3):
            got = torch.cat([c.cpu() for c, _ in iter_test_clips(m, cache, positions, 4, batch_size=5, device="cuda",
                                                                 prefetch=prefetch, gather_workers=workers)])
            torch.testing.assert_close(got, expected)
    monkeypatch.setattr(cache_mod, "UPLOAD_CHUNK_BYTES", 7 * cache.frame_bytes)
    rows = cache.tracklet_rows(positions)
    np.testing.assert_array_equal(cache.upload("cuda", rows, workers=3).cpu().numpy(), cache.frames[rows])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by benchmarks/gpu_check)")
def test_cuda_trainer_device_precision_rng_and_resume(tmp_path, cudnn_flags):
    data = make_tiny_dataset(tmp_path / "tiny")
    config = tiny_config(data, tmp_path / "run", "train.device=cuda", "train.epochs=1", "train.amp=auto")
    trainer = Trainer(config)
    assert trainer.device == torch.device("cuda", 0) and torch.cuda.current_device() == 0
    assert cudnn_tf32()["conv"] is False and cudnn_tf32()["rnn"] is False
    trainer.fit()
    rng = trainer.state_dict()["rng"]
    assert len(rng) == 1 and len(rng[0]["cuda"]) == 1  # the training GPU's state, whatever is visible
    resumed = Trainer(tiny_config(data, tmp_path / "run", "train.device=cuda", "train.epochs=2", "train.amp=auto"))
    resumed.fit(resume=True)
    assert resumed.epoch == 2 and len(resumed.history) == 2
