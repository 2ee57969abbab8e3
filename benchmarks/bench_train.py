"""End-to-end training throughput (frames/s) of the ``all`` variant, data loading included.

One timed step = gather a P×K batch of T-frame clips from the uint8 frame cache (sampling,
mirror, normalisation on the device) + forward + triplet/BCE losses + backward + clip + step,
exactly ``Trainer.train_step`` as ``Trainer.fit`` runs it, without host syncs between steps.

    python benchmarks/bench_train.py                       # CPU: configs/cpu.yaml
    python benchmarks/bench_train.py --device cuda         # 64 clips × 6 frames of 227×227, GPU cache
    python benchmarks/bench_train.py --device cuda --compile
    python benchmarks/bench_train.py --dataset DIR         # a real manifest instead of random frames

Without ``--dataset`` the frame cache is random uint8 frames built in memory (no disk, no
decoding): throughput does not depend on pixel values. Prints figures; asserts nothing.
DESIGN.md's reference on one H200: ~14.8k frames/s end to end at 64 clips (plain PyTorch).
"""

from __future__ import annotations

import argparse
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


def random_dataset(ids: int, tracklets_per_id: int, frames: int, height: int, width: int, seed: int = 0):
    """An in-memory manifest + frame cache of random frames (every tracklet in the train split)."""
    rng = np.random.default_rng(seed)
    tracklets = [Tracklet(tracklet_id=i, pid=1 + i // tracklets_per_id, camid=1 + i % 2,
                          frames=tuple(f"t{i}/{f}.jpg" for f in range(frames)))
                 for i in range(ids * tracklets_per_id)]
    split = Split(train=[t.tracklet_id for t in tracklets], query=[], gallery=[])
    manifest = Manifest("/nonexistent", tracklets, [split], {"protocol": "mars", "name": "random"})
    total = len(tracklets) * frames
    pixels = rng.integers(0, 256, size=(total, height, width, 3), dtype=np.uint8)
    lengths = np.full(len(tracklets), frames, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return manifest, FrameCache(pixels, offsets, lengths)


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
    ap.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto",
                    help="bf16 autocast: auto (CUDA, or a CPU with native bf16), bf16 (force) or off (fp32)")
    ap.add_argument("--no-amp", action="store_true", help="same as --amp off")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("overrides", nargs="*", help="config overrides section.key=value")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cuda = args.device == "cuda"
    config_path = args.config or ROOT / "configs" / ("default.yaml" if cuda else "cpu.yaml")
    overrides = [f"model.variant={args.variant}", f"train.device={args.device}", "train.progress=false",
                 f"train.compile={args.compile}", f"train.amp={'off' if args.no_amp else args.amp}",
                 f"train.channels_last={not args.no_channels_last}"]
    if cuda:
        overrides += ["train.gpu_cache=always", "train.warmup=0"]
    if args.P or cuda:
        overrides.append(f"train.P={args.P or 16}")
    if args.K or cuda:
        overrides.append(f"train.K={args.K or 4}")
    with tempfile.TemporaryDirectory() as tmp:
        overrides.append(f"train.out_dir={tmp}")
        config = Config.from_yaml(config_path, overrides + args.overrides)
        t0 = time.perf_counter()
        if args.dataset:
            manifest = Manifest.load(args.dataset)
            cache = FrameCache.build(manifest, config.model.height, config.model.width, config.data.cache_dir)
        else:
            ids = max(2 * config.train.P, 64 if cuda else 32)
            manifest, cache = random_dataset(ids, 4, 24, config.model.height, config.model.width)
        trainer = Trainer(config, manifest=manifest, cache=cache)
        setup_s = time.perf_counter() - t0
        batch_frames = trainer.loader.sampler.batch_size * config.model.seq_len
        steps = args.steps or (50 if cuda else 5)
        warmup = args.warmup if args.warmup is not None else ((30 if args.compile else 10) if cuda else 1)
        trainer.loader.steps_per_epoch = trainer.loader.sampler.steps_per_epoch = warmup + steps

        def sync():
            if cuda:
                torch.cuda.synchronize()

        it = iter(trainer.loader)
        tick = time.perf_counter()
        for _ in range(warmup):
            out = trainer.train_step(next(it), config.train.lr)
        sync()
        warm_s = time.perf_counter() - tick
        tick, cpu_tick = time.perf_counter(), time.process_time()
        for _ in range(steps):
            out = trainer.train_step(next(it), config.train.lr)
        sync()
        dt, cpu_s = time.perf_counter() - tick, time.process_time() - cpu_tick
        loss = out[0].item()

    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device        {name}")
    print(f"config        {config_path.name}: variant={config.model.variant} {config.model.cnn} "
          f"{config.model.height}x{config.model.width} T={config.model.seq_len} batch={trainer.loader.sampler.batch_size} clips "
          f"amp={trainer.amp} channels_last={config.train.channels_last} compile={config.train.compile and cuda} "
          f"gpu_cache={cuda}")
    print(f"setup         {setup_s:.1f} s (cache {cache.nbytes / 2**30:.2f} GiB); warm-up {warmup} steps {warm_s:.1f} s")
    print(f"timed         {steps} steps in {dt:.2f} s = {dt / steps * 1000:.1f} ms/step (last loss {loss:.4f})")
    print(f"throughput    {batch_frames * steps / dt:,.0f} frames/s  ({steps * trainer.loader.sampler.batch_size / dt:,.0f} clips/s)")
    if not cuda:  # on a shared machine wall time depends on the neighbours; CPU time less so
        print(f"cpu time      {cpu_s:.1f} s of process CPU time = {batch_frames * steps / cpu_s:,.0f} frames per "
              f"CPU-second (×{torch.get_num_threads()} threads ≈ {batch_frames * steps / cpu_s * torch.get_num_threads():,.0f} "
              f"frames/s if the cores were free)")
    if cuda:
        print(f"peak memory   {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
