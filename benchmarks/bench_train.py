"""End-to-end training throughput (frames/s) of the ``all`` variant, data loading included.

One timed step = gather a P×K batch of T-frame clips from the uint8 frame cache (sampling,
mirror, normalisation on the device) + forward + triplet/BCE losses + backward + clip + step,
exactly ``Trainer.train_step`` as ``Trainer.fit`` runs it, without host syncs between steps.

    python benchmarks/bench_train.py                       # CPU: configs/cpu.yaml
    python benchmarks/bench_train.py --device cuda         # 64 clips × 6 frames of 227×227, GPU cache
    python benchmarks/bench_train.py --device cuda --gpu-cache never   # the host path (frames gathered on the host)
    python benchmarks/bench_train.py --device cuda --compile
    python benchmarks/bench_train.py --dataset DIR         # a real manifest instead of random frames
    python benchmarks/bench_train.py --json out.json       # the figures as JSON too

Without ``--dataset`` the frame cache is random uint8 frames built in memory (no disk, no
decoding): throughput does not depend on pixel values. ``--gpu-cache`` is ``train.gpu_cache``
(default auto: on the GPU when it fits; never: every step gathers on the host, copies on the
side stream). ``--evaluate`` then times ``Trainer.evaluate`` on a few random test persons and
counts the graphs torch.compile made during it (none expected). Prints figures; asserts nothing.
``bench(...)`` returns them as a dict (``benchmarks/gpu_check.py`` calls it).
Reference (docs/gpu_check.md, "Reference figures") on one H200: ~14.8k frames/s end to end at 64 clips (plain PyTorch).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reidkit.config import Config  # noqa: E402
from reidkit.data import FrameCache, Manifest, Split, Tracklet  # noqa: E402
from reidkit.train import Trainer  # noqa: E402


def random_dataset(ids: int, tracklets_per_id: int, frames: int, height: int, width: int, seed: int = 0,
                   test_ids: int = 0):
    """An in-memory manifest + frame cache of random frames: ``ids`` training persons and
    ``test_ids`` more whose camera-1 tracklets are queries and camera-2 ones the gallery."""
    rng = np.random.default_rng(seed)
    tracklets = [Tracklet(tracklet_id=i, pid=1 + i // tracklets_per_id, camid=1 + i % 2,
                          frames=tuple(f"t{i}/{f}.jpg" for f in range(frames)))
                 for i in range((ids + test_ids) * tracklets_per_id)]
    test = [t for t in tracklets if t.pid > ids]
    split = Split(train=[t.tracklet_id for t in tracklets if t.pid <= ids],
                  query=[t.tracklet_id for t in test if t.camid == 1], gallery=[t.tracklet_id for t in test if t.camid == 2])
    manifest = Manifest("/nonexistent", tracklets, [split], {"protocol": "mars", "name": "random"})
    total = len(tracklets) * frames
    pixels = rng.integers(0, 256, size=(total, height, width, 3), dtype=np.uint8)
    lengths = np.full(len(tracklets), frames, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return manifest, FrameCache(pixels, offsets, lengths)


def batches(loader):
    """The loader's batches, epoch after epoch, without end."""
    while True:
        yield from loader


def config_file(device, config_path=None) -> Path:
    """``config_path``, or configs/default.yaml on CUDA and configs/cpu.yaml on the CPU."""
    return Path(config_path) if config_path else ROOT / "configs" / ("default.yaml" if device == "cuda" else "cpu.yaml")


@contextlib.contextmanager
def trainer_for(device="cpu", variant="all", config_path=None, P=None, K=None, compile_=False, amp="auto",
                channels_last=True, overrides=(), dataset=None, data=None, gpu_cache="auto"):
    """A ``Trainer`` as the CLI sets it up, its out_dir a temporary folder: yields (trainer, setup_s).

    ``data``: an in-memory (manifest, cache) to reuse; else ``dataset`` (a manifest folder) or
    random frames (with a few test persons). CUDA: ``train.gpu_cache=gpu_cache`` (auto: the
    frames on the GPU when they fit), no lr warm-up, P×K = 16×4 by default."""
    cuda = device == "cuda"
    settings = [f"model.variant={variant}", f"train.device={device}", "train.progress=false",
                f"train.compile={compile_}", f"train.amp={amp}", f"train.channels_last={channels_last}"]
    if cuda:
        settings += [f"train.gpu_cache={gpu_cache}", "train.warmup=0"]
    if P or cuda:
        settings.append(f"train.P={P or 16}")
    if K or cuda:
        settings.append(f"train.K={K or 4}")
    with tempfile.TemporaryDirectory() as tmp:
        config = Config.from_yaml(config_file(device, config_path), [*settings, f"train.out_dir={tmp}", *overrides])
        t0 = time.perf_counter()
        if data is not None:
            manifest, cache = data
        elif dataset:
            manifest = Manifest.load(dataset)
            cache = FrameCache.build(manifest, config.model.height, config.model.width, config.data.cache_dir)
        else:
            ids = max(2 * config.train.P, 64 if cuda else 32)
            manifest, cache = random_dataset(ids, 4, 24, config.model.height, config.model.width, test_ids=8)
        trainer = Trainer(config, manifest=manifest, cache=cache)
        yield trainer, time.perf_counter() - t0


def measure(trainer, steps, warmup) -> dict:
    """Time ``steps`` training steps after ``warmup`` untimed ones: wall and process CPU time."""
    cuda = trainer.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    lr = trainer.config.train.lr
    it = batches(trainer.loader)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    tick = time.perf_counter()
    for _ in range(warmup):
        out = trainer.train_step(next(it), lr)
    sync()
    warm_s = time.perf_counter() - tick
    tick, cpu_tick = time.perf_counter(), time.process_time()
    for _ in range(steps):
        out = trainer.train_step(next(it), lr)
    sync()
    dt, cpu_s = time.perf_counter() - tick, time.process_time() - cpu_tick
    clips = trainer.loader.sampler.batch_size
    frames = clips * trainer.config.model.seq_len * steps
    return dict(warmup_steps=warmup, warmup_s=warm_s, steps=steps, seconds=dt, ms_per_step=dt / steps * 1000,
                last_loss=out[0].item(), frames_per_s=frames / dt, clips_per_s=clips * steps / dt, cpu_s=cpu_s,
                frames_per_cpu_s=frames / max(cpu_s, 1e-9),
                peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None)


def compiled_graphs() -> int | None:
    """Graphs torch.compile has made in this process (dynamo's counter), None where unreadable."""
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 (a private counter: a figure, never a failure)
        return None


def time_evaluation(trainer) -> dict:
    """``Trainer.evaluate`` timed, with the graphs compiled during it (a compiled CNN: none expected)."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    before, t = compiled_graphs(), time.perf_counter()
    metrics = trainer.evaluate()
    sync()
    after = compiled_graphs()
    return {"evaluate_s": time.perf_counter() - t, "evaluate_rank1": metrics.get("rank1"),
            "graphs_compiled_during_evaluate": None if before is None or after is None else after - before}


def bench(device="cpu", variant="all", config_path=None, P=None, K=None, steps=None, warmup=None, compile_=False,
          amp="auto", channels_last=True, overrides=(), dataset=None, data=None, gpu_cache="auto",
          evaluate=False) -> dict:
    """End-to-end training frames/s and what was measured, as a dict (see ``trainer_for``, ``measure``;
    ``evaluate``: then ``time_evaluation``)."""
    cuda = device == "cuda"
    steps = steps or (50 if cuda else 5)
    warmup = warmup if warmup is not None else ((30 if compile_ else 10) if cuda else 1)
    with trainer_for(device, variant, config_path, P, K, compile_, amp, channels_last, overrides, dataset,
                     data, gpu_cache) as (trainer, setup_s):
        c = trainer.config
        figures = dict(
            device=torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)",
            config=config_file(device, config_path).name, variant=c.model.variant, cnn=c.model.cnn, height=c.model.height,
            width=c.model.width, T=c.model.seq_len, batch_clips=trainer.loader.sampler.batch_size,
            amp=trainer.amp, channels_last=c.train.channels_last, compile=c.train.compile and cuda,
            cudnn_benchmark=c.train.cudnn_benchmark and cuda, gpu_cache=trainer.loader.resident, setup_s=setup_s,
            gather_workers=trainer.loader.gather_workers, cache_gib=trainer.cache.nbytes / 2**30,
            threads=torch.get_num_threads())
        graphs = compiled_graphs()
        figures.update(measure(trainer, steps, warmup))
        if compile_ and graphs is not None:
            figures["graphs_compiled_training"] = compiled_graphs() - graphs
        if evaluate:
            figures.update(time_evaluation(trainer))
    return figures


def print_figures(f: dict) -> None:
    print(f"device        {f['device']}")
    print(f"config        {f['config']}: variant={f['variant']} {f['cnn']} {f['height']}x{f['width']} T={f['T']} "
          f"batch={f['batch_clips']} clips amp={f['amp']} channels_last={f['channels_last']} compile={f['compile']} "
          f"cudnn_benchmark={f['cudnn_benchmark']} gpu_cache={f['gpu_cache']}")
    print(f"setup         {f['setup_s']:.1f} s (cache {f['cache_gib']:.2f} GiB); warm-up {f['warmup_steps']} steps "
          f"{f['warmup_s']:.1f} s")
    print(f"timed         {f['steps']} steps in {f['seconds']:.2f} s = {f['ms_per_step']:.1f} ms/step "
          f"(last loss {f['last_loss']:.4f})")
    print(f"throughput    {f['frames_per_s']:,.0f} frames/s  ({f['clips_per_s']:,.0f} clips/s)")
    if "evaluate_s" in f:
        print(f"evaluate      {f['evaluate_s']:.1f} s, graphs compiled during it: {f['graphs_compiled_during_evaluate']}")
    if not f["gpu_cache"]:  # on a shared machine wall time depends on the neighbours; CPU time less so
        per_cpu, n = f["frames_per_cpu_s"], f["threads"]
        print(f"cpu time      {f['cpu_s']:.1f} s of process CPU time = {per_cpu:,.0f} frames per CPU-second "
              f"(×{n} threads ≈ {per_cpu * n:,.0f} frames/s if the cores were free)")
    if f["peak_memory_gib"] is not None:
        print(f"peak memory   {f['peak_memory_gib']:.1f} GiB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", type=Path, help="default: configs/cpu.yaml on CPU, configs/default.yaml on CUDA")
    ap.add_argument("--variant", default="all")
    ap.add_argument("--dataset", help="a manifest folder (default: random in-memory frames)")
    ap.add_argument("--P", type=int, help="identities per batch (CUDA default 16)")
    ap.add_argument("--K", type=int, help="tracklets per identity (CUDA default 4 → 64 clips)")
    ap.add_argument("--steps", type=int, help="timed steps (default 5 on CPU, 50 on CUDA)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 1 on CPU, 10 on CUDA; more with --compile)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training step")
    ap.add_argument("--gpu-cache", choices=("auto", "always", "never"), default="auto",
                    help="train.gpu_cache on CUDA (never: the host path)")
    ap.add_argument("--evaluate", action="store_true", help="then time Trainer.evaluate (random test persons)")
    ap.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                    help="bf16 autocast: auto (CUDA, or a CPU with native bf16), bf16 (force) or off (fp32)")
    ap.add_argument("--no-amp", action="store_true", help="same as --amp off")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("overrides", nargs="*", help="config overrides section.key=value")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = bench(args.device, args.variant, args.config, args.P, args.K, args.steps, args.warmup, args.compile,
                    "off" if args.no_amp else args.amp, not args.no_channels_last, args.overrides, args.dataset,
                    gpu_cache=args.gpu_cache, evaluate=args.evaluate)
    print_figures(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
