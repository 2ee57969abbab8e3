"""The host path to the GPU, measured on a memory-mapped frame cache read cold from disk.

    python benchmarks/bench_host_path.py --gib 6                 # CPU: the host side of each pipeline
    python benchmarks/bench_host_path.py --gib 8 --device cuda   # + the copies, on the GPU's side stream
    python benchmarks/bench_host_path.py --json out.json         # the figures as JSON too

When the training frames do not fit the GPU (MARS at 227x227 on an 80 GB card), every step
gathers its 384 random frames (59 MB) out of the memory-mapped cache on the host; evaluation
always does so for the test frames (~105 GB for MARS). A cache larger than RAM is read by page
faults, one 154 KB frame at a time. This writes a cache of ``--gib`` GB of random 227x227 frames
(``--dir``, default the system's temp folder; removed afterwards), drops it from the page cache
before each measurement (``posix_fadvise(DONTNEED)``: every figure is a cold read unless
``--warm``) and measures, for 1 and several gather threads (``--workers``):

(a) ``gather``: one training batch (P x K x T = 16 x 4 x 6 frames, tracklets and frames drawn
    as the loader draws them) with ``FrameCache.host_gather`` into a reused buffer: ms and GB/s;
(b) ``train``: the time the training loop waits for a batch, around a simulated GPU step of
    ``--step-ms`` (the host is idle while the GPU computes): serial (gather on the loop's thread,
    one thread: the former path) against the prefetch thread with several gather threads. On the
    CPU the batch is the host gather (what the prefetch thread does for a GPU); with ``--device
    cuda`` it is ``TrainClipLoader(resident=False)`` itself (copies on the side stream, uint8 to
    the GPU, normalised there);
(c) ``eval``: evaluation's frame pipeline over test batches of 256 clips x 6 frames around a
    simulated forward of ``--eval-step-ms`` a batch: serial against prefetched; on the CPU the
    host side (``iter_test_clips``'s gather), with ``--device cuda`` ``iter_test_clips`` itself;
(d) ``upload``: ``FrameCache.upload`` of the training frames (long sequential runs) to the device: GB/s.

Figures only; nothing is asserted. ``run(...)`` returns them as a dict (``gpu_check.py``
calls it with a smaller cache).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a bare checkout: no pip install needed
from reidkit.data import FrameCache, Manifest, Prefetcher, Split, TrainClipLoader, Tracklet  # noqa: E402
from reidkit.data.cache import gather_workers  # noqa: E402
from reidkit.data.clips import _test_batches, iter_test_clips  # noqa: E402
from reidkit.data.sampling import PKSampler, train_frame_indices  # noqa: E402

FRAMES_PER_TRACKLET = 24


def write_cache(folder: Path, gib: float, height: int = 227, width: int = 227) -> tuple[Path, int]:
    """A .npy of random uint8 frames, ``gib`` GiB, written in 64 MiB blocks and synced to disk."""
    frame = height * width * 3
    total = max(8 * FRAMES_PER_TRACKLET, int(gib * 2**30) // frame // FRAMES_PER_TRACKLET * FRAMES_PER_TRACKLET)
    path = folder / f"frames_{height}x{width}.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(total, height, width, 3))
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (max(1, (64 << 20) // frame), height, width, 3), dtype=np.uint8)
    for a in range(0, total, len(block)):
        n = min(len(block), total - a)
        out[a:a + n] = block[:n]
        out[a, 0, 0, 0] = a % 251  # frames differ
    out.flush()
    del out
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return path, total


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (nothing may map it at the time)."""
    gc.collect()  # unmaps a dropped FrameCache
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def dataset(path: Path, total: int) -> tuple[Manifest, FrameCache]:
    """A manifest over the cache file: 4 tracklets a person (2 cameras x 2), the first half of
    the persons train, the rest query (camera 1) and gallery (camera 2)."""
    n = total // FRAMES_PER_TRACKLET
    tracklets = [Tracklet(tracklet_id=i, pid=1 + i // 4, camid=1 + i % 2,
                          frames=tuple(f"t{i}/{f}.jpg" for f in range(FRAMES_PER_TRACKLET))) for i in range(n)]
    ids = 1 + (n - 1) // 4
    train = [t.tracklet_id for t in tracklets if t.pid <= ids // 2]
    test = [t for t in tracklets if t.pid > ids // 2]
    split = Split(train=train, query=[t.tracklet_id for t in test if t.camid == 1],
                  gallery=[t.tracklet_id for t in test if t.camid == 2])
    manifest = Manifest("/nonexistent", tracklets, [split], {"protocol": "mars", "name": "host_path"})
    lengths = np.full(n, FRAMES_PER_TRACKLET, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return manifest, FrameCache(np.load(path, mmap_mode="c"), offsets, lengths, path)


def identities(manifest: Manifest) -> int:
    """P: 16 training persons a batch (64 clips with K = 4), fewer in a small cache."""
    return min(16, len(np.unique(manifest.pids[manifest.positions(manifest.split(0).train)])))


def train_rows(manifest: Manifest, cache: FrameCache, steps: int, K: int = 4, T: int = 6, seed: int = 0):
    """Cache rows (P*K, T) of ``steps`` training batches, drawn as TrainClipLoader draws them."""
    positions = manifest.positions(manifest.split(0).train)
    P = identities(manifest)
    sampler = PKSampler(manifest.pids[positions], P, K, seed=seed, positions=positions, steps_per_epoch=steps)
    rng = np.random.default_rng(seed)
    return [cache.rows(p, np.stack([train_frame_indices(int(manifest.lengths[q]), T, rng) for q in p]))
            for p in sampler]


def waited_per_step(batches, step_s: float, sync=lambda: None) -> tuple[float, float]:
    """(ms the loop waited for each batch, total s) while each batch is followed by ``step_s`` of idle host."""
    waited, start, n = 0.0, time.perf_counter(), 0
    it = iter(batches)
    while True:
        t = time.perf_counter()
        got = next(it, None)
        sync()
        waited += time.perf_counter() - t
        if got is None:
            break
        n += 1
        time.sleep(step_s)
    return 1e3 * waited / max(1, n), time.perf_counter() - start


def run(gib: float = 6.0, folder=None, device="cpu", workers=(1, 8), steps: int = 12, step_ms: float = 26.0,
        eval_batches: int = 8, eval_step_ms: float = 30.0, warm: bool = False, upload_gib: float = 2.0,
        height: int = 227, width: int = 227, deadline: float = float("inf")) -> dict:
    """The figures (a)-(d) of the module docstring, as a dict; parts past ``deadline`` (a
    ``time.perf_counter()`` value) are left out and named in ``"skipped"``."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    workers = sorted({int(w) for w in workers})
    tmp = Path(tempfile.mkdtemp(prefix="bench_host_path_", dir=folder))
    out = {"device": str(device), "workers": workers, "cold": not warm, "step_ms": step_ms,
           "eval_step_ms": eval_step_ms, "skipped": []}
    try:
        t = time.perf_counter()
        path, total = write_cache(tmp, gib, height, width)
        frame = height * width * 3
        out.update(cache_gib=total * frame / 2**30, frames=total, frame_bytes=frame, write_s=time.perf_counter() - t,
                   default_gather_workers=gather_workers("cuda"))

        def fresh():
            if not warm:
                evict(path)
            return dataset(path, total)

        def due(part):
            if time.perf_counter() < deadline:
                return True
            out["skipped"].append(part)
            return False

        # (a) one batch's gather, cold, per thread count
        out["gather"] = []
        for w in workers:
            if not due(f"gather workers={w}"):
                break
            m, cache = fresh()
            rows = train_rows(m, cache, steps)
            buf = torch.empty(rows[0].shape + (height, width, 3), dtype=torch.uint8)
            t = time.perf_counter()
            for r in rows:
                cache.host_gather(r, out=buf, workers=w)
            dt = time.perf_counter() - t
            out["gather"].append({"workers": w, "frames_per_batch": int(rows[0].size), "ms_per_batch": 1e3 * dt / len(rows),
                                  "gb_per_s": len(rows) * rows[0].size * frame / dt / 1e9, "batches": len(rows)})
            del m, cache, buf

        # (b) the training loop's wait for a batch around a simulated GPU step
        out["train"] = []
        for label, prefetch, w in (("serial, 1 thread (former)", 0, 1), ("prefetch, 1 thread", 2, 1),
                                   (f"prefetch, {workers[-1]} threads", 2, workers[-1])):
            if not due(f"train {label}"):
                break
            m, cache = fresh()
            if cuda:
                loader = TrainClipLoader(m, cache, P=identities(m), K=4, T=6, steps_per_epoch=steps, device=device,
                                         resident=False, prefetch=prefetch, gather_workers=w, dtype=torch.bfloat16)
                ms, total_s = waited_per_step(loader, step_ms / 1e3, sync)
            else:  # the prefetch thread's work for a GPU: the gather into reused buffers
                rows = train_rows(m, cache, steps)
                bufs = [torch.empty(rows[0].shape + (height, width, 3), dtype=torch.uint8) for _ in range(2)]
                if prefetch:
                    with Prefetcher(rows, lambda r, slot: cache.host_gather(r, out=bufs[slot], workers=w), 2) as ahead:
                        def released():
                            for got, slot in ahead:
                                yield got
                                ahead.release(slot)
                        ms, total_s = waited_per_step(released(), step_ms / 1e3)
                else:
                    ms, total_s = waited_per_step((cache.host_gather(r, out=bufs[0]) for r in rows), step_ms / 1e3)
            out["train"].append({"setting": label, "waited_ms_per_step": ms, "seconds": total_s, "steps": steps,
                                 "step_ms": step_ms})
            del m, cache

        # (c) evaluation's frame pipeline around a simulated forward per batch
        out["eval"] = []
        for label, prefetch, w in (("serial, 1 thread (former)", 0, 1), (f"prefetch, {workers[-1]} threads", 2,
                                                                          workers[-1])):
            if not due(f"eval {label}"):
                break
            m, cache = fresh()
            positions = m.positions(m.split(0).query + m.split(0).gallery)
            batch = 256
            positions = positions[:eval_batches * batch // (FRAMES_PER_TRACKLET // 6)]
            if cuda:
                clips = iter_test_clips(m, cache, positions, 6, "chunks", batch, device, prefetch=prefetch,
                                        gather_workers=w)
                ms, total_s = waited_per_step(clips, eval_step_ms / 1e3, sync)
            else:
                bufs = [torch.empty((batch, 6, height, width, 3), dtype=torch.uint8) for _ in range(2)]
                batches = list(_test_batches(m, cache, positions, 6, "chunks", batch))
                gather = lambda b, slot: cache.host_gather(b[0], out=bufs[slot][:len(b[0])], workers=w)  # noqa: E731
                if prefetch:
                    with Prefetcher(batches, gather, 2) as ahead:
                        def released():
                            for got, slot in ahead:
                                yield got
                                ahead.release(slot)
                        ms, total_s = waited_per_step(released(), eval_step_ms / 1e3)
                else:
                    ms, total_s = waited_per_step((gather(b, 0) for b in batches), eval_step_ms / 1e3)
            frames = int(m.lengths[positions].sum())
            out["eval"].append({"setting": label, "waited_ms_per_batch": ms, "seconds": total_s, "frames": frames,
                                "frames_per_s": frames / total_s, "batch_clips": batch})
            del m, cache

        # (d) the upload of the training frames
        out["upload"] = []
        for w in workers:
            if not due(f"upload workers={w}"):
                break
            m, cache = fresh()
            rows = cache.tracklet_rows(m.positions(m.split(0).train))
            rows = rows[:max(1, int(upload_gib * 2**30) // frame)]
            t = time.perf_counter()
            copy = cache.upload(device, rows, workers=w)
            sync()
            dt = time.perf_counter() - t
            out["upload"].append({"workers": w, "gib": len(rows) * frame / 2**30,
                                  "gb_per_s": len(rows) * frame / dt / 1e9, "seconds": dt})
            del copy, m, cache
            if cuda:
                torch.cuda.empty_cache()
    finally:
        gc.collect()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def summary(f: dict) -> list[str]:
    lines = [f"cache {f['cache_gib']:.1f} GiB of {f['frames']:,} frames ({f['frame_bytes']:,} B each), written in "
             f"{f['write_s']:.0f} s; {'cold' if f['cold'] else 'warm'} reads, device {f['device']}"]
    lines += [f"(a) gather a {g['frames_per_batch']}-frame batch, {g['workers']} thread(s): {g['ms_per_batch']:.0f} ms "
              f"({g['gb_per_s']:.2f} GB/s)" for g in f.get("gather", [])]
    lines += [f"(b) train, {r['setting']}: the loop waits {r['waited_ms_per_step']:.1f} ms per "
              f"{r['step_ms']:.0f} ms step" for r in f.get("train", [])]
    lines += [f"(c) eval, {r['setting']}: {r['frames_per_s']:,.0f} frames/s, the loop waits "
              f"{r['waited_ms_per_batch']:.0f} ms a batch" for r in f.get("eval", [])]
    lines += [f"(d) upload {u['gib']:.1f} GiB, {u['workers']} thread(s): {u['gb_per_s']:.2f} GB/s"
              for u in f.get("upload", [])]
    if f.get("skipped"):
        lines.append("skipped (time): " + ", ".join(f["skipped"]))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=6.0, help="size of the cache file written (GiB)")
    ap.add_argument("--dir", help="folder for the cache file (default: the system's temp folder)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 8], help="gather thread counts to compare")
    ap.add_argument("--steps", type=int, default=12, help="training batches per measurement")
    ap.add_argument("--step-ms", type=float, default=26.0,
                    help="simulated GPU training step (384 frames at ~15k frames/s: 26 ms)")
    ap.add_argument("--eval-batches", type=int, default=8, help="evaluation batches of 256 clips per measurement")
    ap.add_argument("--eval-step-ms", type=float, default=30.0, help="simulated forward of a 256-clip batch")
    ap.add_argument("--upload-gib", type=float, default=2.0)
    ap.add_argument("--height", type=int, default=227)
    ap.add_argument("--width", type=int, default=227)
    ap.add_argument("--warm", action="store_true", help="leave the file in the page cache (warm reads)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    figures = run(args.gib, args.dir, args.device, args.workers, args.steps, args.step_ms, args.eval_batches,
                  args.eval_step_ms, args.warm, args.upload_gib, args.height, args.width)
    print("\n".join(summary(figures)))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
