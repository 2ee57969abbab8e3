"""Clip loading throughput: the uint8 FrameCache against decoding image files every step.

    python benchmarks/bench_loader.py [--dataset DATASET] [--height 128 --width 64]
                                      [--P 8 --K 4 --T 6 --steps 20] [--device cpu]

Without ``--dataset`` it uses ``data_prep.synthetic.generate(tmp, "tiny")`` when that exists,
else writes a temporary manifest of a few hundred 128x64 JPEG frames with PIL.

Prints, for the same P x K x T clips (same tracklets, frames and mirror flags):
  (a) cache: gather the uint8 frames from the FrameCache, normalise and mirror them as tensors;
  (b) decode: open, decode and resize every frame with PIL, then the same normalise + mirror;
and the ratio. It also times the one-off cache build with 1 decoding thread and with several.

Then the loader's share of a training step (``--step-ms``: a simulated step that leaves the
host idle, as a GPU step does while the host waits): the milliseconds per step the training
loop waits for ``TrainClipLoader``, without and with the prefetch thread; and the host gather
alone (the work of a step when the frames do not fit the GPU): numpy fancy indexing of the
memory map (the former path) against ``FrameCache.host_gather`` into a reused buffer.
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
    ap.add_argument("--step-ms", type=float, default=60.0,
                    help="simulated training step (sleep) for the loader's share of a step; ~60 ms is "
                         "a 384-frame CaffeNet step at 227x227 on an H200")
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

        def make_loader(prefetch):
            kwargs = {} if prefetch is None else {"prefetch": prefetch}
            return TrainClipLoader(m, cache, P=args.P, K=args.K, T=args.T, steps_per_epoch=args.steps,
                                   device=args.device, **kwargs)

        try:
            make_loader(0)
            prefetches = [0, 2]
        except TypeError:  # a reidkit from before the prefetch thread: its one (serial) loader
            prefetches = [None]
        loader = make_loader(prefetches[-1])
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

        # the loader's share of a step: time the training loop waits in next(loader)
        print(f"loader share of a {args.step_ms:.0f} ms simulated step ({len(batches)} steps):")
        for prefetch in prefetches:
            ld = make_loader(prefetch)
            ld.set_epoch(1)
            alone = time.perf_counter()
            for _ in ld:
                pass
            sync()
            alone = time.perf_counter() - alone
            ld.set_epoch(1)
            waited, it = 0.0, iter(ld)
            while True:
                t0 = time.perf_counter()
                batch = next(it, None)
                sync()
                waited += time.perf_counter() - t0
                if batch is None:
                    break
                time.sleep(args.step_ms / 1e3)
            label = "serial loader" if prefetch is None else f"prefetch={prefetch}"
            ms_alone, ms_wait = 1e3 * alone / len(batches), 1e3 * waited / len(batches)
            print(f"  {label:14s}: loader alone {ms_alone:7.2f} ms/step; the loop waits {ms_wait:7.2f} ms/step "
                  f"({100 * ms_wait / (ms_wait + args.step_ms):4.1f} % of a step)")

        # the host gather alone: the former numpy fancy indexing against index_select into a buffer
        rows = [cache.rows(p, f) for p, f, _ in batches]
        t0 = time.perf_counter()
        for r in rows:
            torch.from_numpy(cache.frames[r.reshape(-1)])
        t_numpy = time.perf_counter() - t0
        line("(g0) host gather, numpy fancy index  ", t_numpy)
        if hasattr(cache, "host_gather"):
            buf = torch.empty(rows[0].shape + (H, W, 3), dtype=torch.uint8)
            t0 = time.perf_counter()
            for r in rows:
                cache.host_gather(r, out=buf)
            line("(g1) host gather, index_select to buf", time.perf_counter() - t0)

        # the host side of a GPU step when the frames stay on the host (gpu_cache=never/auto fallback):
        # formerly fancy indexing + pin_memory() (a second copy; a plain clone here, pinning needs
        # CUDA) on the loop's thread; now host_gather into reused buffers on the prefetch thread
        print(f"host side of the GPU host path, {args.step_ms:.0f} ms simulated step "
              f"({rows[0].size * H * W * 3 / 1e6:.0f} MB a step):")
        waited = 0.0
        for r in rows:
            t0 = time.perf_counter()
            torch.from_numpy(cache.frames[r.reshape(-1)]).clone()
            waited += time.perf_counter() - t0
            time.sleep(args.step_ms / 1e3)
        print(f"  former (gather + copy, loop's thread): the loop waits {1e3 * waited / len(rows):7.2f} ms/step")
        try:
            from reidkit.data import Prefetcher
        except ImportError:
            Prefetcher = None
        if Prefetcher is not None:
            bufs = [torch.empty(rows[0].shape + (H, W, 3), dtype=torch.uint8) for _ in range(2)]
            waited = 0.0
            with Prefetcher(rows, lambda r, slot: cache.host_gather(r, out=bufs[slot]), slots=2) as ahead:
                it = iter(ahead)
                while True:
                    t0 = time.perf_counter()
                    got = next(it, None)
                    waited += time.perf_counter() - t0
                    if got is None:
                        break
                    ahead.release(got[1])  # (on CUDA: after the asynchronous copy's event)
                    time.sleep(args.step_ms / 1e3)
            print(f"  now (prefetch thread, reused buffers): the loop waits {1e3 * waited / len(rows):7.2f} ms/step "
                  f"(the first step included)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
