"""Clip loading throughput: the uint8 FrameCache against decoding image files every step.

    python benchmarks/bench_loader.py [--dataset DATASET] [--height 128 --width 64]
                                      [--P 8 --K 4 --T 6 --steps 20] [--device cpu]

Without ``--dataset`` it uses ``data_prep.synthetic.generate(tmp, "tiny")`` when that exists,
else writes a temporary manifest of a few hundred 128x64 JPEG frames with PIL.

Prints, for the same P x K x T clips (same tracklets, frames and mirror flags):
  (a) cache: gather the uint8 frames from the FrameCache, normalise and mirror them as tensors;
  (b) decode: open, decode and resize every frame with PIL, then the same normalise + mirror;
and the ratio. It also times the one-off cache build with 1 decoding thread and with several.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reidkit.data import (FrameCache, Manifest, TrainClipLoader, decode_frame, normalize_clips,  # noqa: E402
                          write_manifest)


def write_bench_manifest(root: Path, num_ids=24, length=12, size=(128, 64), seed=0) -> Path:
    """num_ids identities x 2 cameras x ``length`` JPEG frames of ``size`` (H, W): textured noise."""
    rng = np.random.default_rng(seed)
    H, W = size
    rows, tid = [], 0
    for pid in range(1, num_ids + 1):
        for cam in (1, 2):
            frames = []
            for f in range(length):
                rel = f"frames/{pid:04d}/{pid:04d}C{cam}T{tid:04d}F{f:03d}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                img = rng.integers(0, 256, (H // 4, W // 4, 3), dtype=np.uint8)
                Image.fromarray(img).resize((W, H), Image.BILINEAR).save(root / rel, quality=90)
                frames.append(rel)
            rows.append({"tracklet_id": tid, "pid": pid, "camid": cam, "frames": frames})
            tid += 1
    ids = [r["tracklet_id"] for r in rows]
    half = len(ids) // 2
    split = {"train": ids[:half], "query": ids[half::2], "gallery": ids[half + 1::2]}
    write_manifest(root, rows, [split], {"name": "bench", "source": "synthetic", "protocol": "mars",
                                         "frame_size": [H, W]})
    return root


def make_dataset(tmp: Path) -> Path:
    try:
        from data_prep.synthetic import generate  # the procedural benchmark, when it exists
        out = tmp / "synthetic_tiny"
        generate(out, "tiny")
        return out
    except Exception:  # not written yet, or failed: fall back to our own frames
        return write_bench_manifest(tmp / "bench")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--P", type=int, default=8)
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--T", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2, help="decoding threads for the cache build")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: on a shared, oversubscribed CPU more threads "
                         "make every tensor op wait for a descheduled thread)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    H, W = args.height, args.width

    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        root = args.dataset or make_dataset(tmp)
        m = Manifest.load(root)
        print(f"dataset: {m}")
        print(f"clips: P={args.P} x K={args.K} = {args.P * args.K} clips of T={args.T} frames, "
              f"{H}x{W}, device={args.device}, torch threads={torch.get_num_threads()}")

        builds = {}
        for workers in sorted({1, args.workers}):
            t0 = time.perf_counter()
            FrameCache.build(m, H, W, cache_dir=tmp / f"cache_w{workers}", progress=False, workers=workers)
            builds[workers] = time.perf_counter() - t0
            print(f"cache build, {workers} thread(s): {builds[workers]:.2f} s "
                  f"({m.total_frames / builds[workers]:.0f} frames/s)")
        t0 = time.perf_counter()
        cache = FrameCache.build(m, H, W, cache_dir=tmp / f"cache_w{args.workers}", progress=False)
        print(f"cache reuse (fingerprint check only): {time.perf_counter() - t0:.3f} s, rebuilt={cache.built}")

        loader = TrainClipLoader(m, cache, P=args.P, K=args.K, T=args.T, steps_per_epoch=args.steps,
                                 device=args.device)
        next(iter(loader))  # warm-up (page cache, allocator)
        loader.set_epoch(1)
        sync = torch.cuda.synchronize if torch.device(args.device).type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        batches = []
        for b in loader:
            batches.append((b.positions.cpu().numpy(), b.frame_idx.cpu().numpy(), b.mirrored.cpu()))
        sync()
        t_cache = time.perf_counter() - t0
        n_clips = sum(len(p) for p, _, _ in batches)

        def decode(positions, frame_idx):
            return np.stack([np.stack([decode_frame(m.root / m.tracklets[p].frames[j], H, W) for j in fi])
                             for p, fi in zip(positions, frame_idx)])

        t0 = time.perf_counter()
        for positions, frame_idx, mirrored in batches:
            raw = torch.from_numpy(decode(positions, frame_idx)).to(args.device)
            clips = normalize_clips(raw, mirrored)
        sync()
        t_decode = time.perf_counter() - t0

        # the load alone (uint8 frames of the same clips, no normalisation)
        t0 = time.perf_counter()
        for positions, frame_idx, _ in batches:
            raw = cache.gather(cache.rows(positions, frame_idx), args.device)
        sync()
        t_gather = time.perf_counter() - t0
        t0 = time.perf_counter()
        for positions, frame_idx, _ in batches:
            raw = decode(positions, frame_idx)
        t_decode_only = time.perf_counter() - t0
        del clips, raw

        def line(label, seconds):
            rate = n_clips / seconds
            print(f"{label}: {rate:9.1f} clips/s ({rate * args.T:9.0f} frames/s, "
                  f"{1e3 * seconds / len(batches):7.2f} ms/step)")
            return rate

        a = line("(a) FrameCache + normalise + mirror", t_cache)
        b = line("(b) PIL decode  + normalise + mirror", t_decode)
        print(f"ratio (a)/(b): {a / b:.1f}x over {len(batches)} steps")
        a0 = line("(a0) FrameCache gather only (uint8)", t_gather)
        b0 = line("(b0) PIL decode only        (uint8)", t_decode_only)
        print(f"ratio (a0)/(b0): {a0 / b0:.0f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
