"""How long evaluation takes: CMC/mAP on large matrices, and a MARS-sized ranking with SRM re-scoring.

    python benchmarks/bench_eval.py                 # CPU: --scale 0.02 by default (the SRM is slow on CPU)
    python benchmarks/bench_eval.py --scale 1       # full MARS size (on a GPU when there is one)

(a) ``cmc_map`` on a random 2,000 × 10,000 distance matrix and on a MARS-shaped 1,980 × 9,330 one
    (plus ``cmc_map_official`` on 1,980 × 12,180, the official gallery with the queries).
(b) ``evaluate_features`` for a synthetic MARS-sized test set: 12,180 tracklets, 1,980 queries
    (times ``--scale``), features of identity centroids plus noise, random pool5 maps of the
    paper's size (T=6, 256 × 6 × 6) and a real, untrained ``SpatialRecurrentModel`` re-scoring the
    top-100 of the feature ranking with S of Eq. 2. The size used is printed; nothing is
    extrapolated. Target on one H200 at full size: ≤ 60 s.
(c) with ``--extract-clips N``: forward throughput of a real ``build_model("all")`` on random clips
    (feature extraction's cost per frame), printed in frames/s.
(d) with ``--srm-pairs N``: exact M scoring of N pairs per batch by the paper-sized SRM (pairs/s),
    and the time that would take for every MARS query × gallery pair.

Figures only: nothing here asserts on time. Each part returns its figures (``--json PATH``
writes them; ``benchmarks/gpu_check.py`` calls the functions).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a bare checkout: no pip install needed
from reidkit.data import Manifest, Split, Tracklet  # noqa: E402
from reidkit.evaluate import TrackletFeatures, evaluate_features  # noqa: E402
from reidkit.metrics import cmc_map, cmc_map_official  # noqa: E402
from reidkit.config import EvalConfig  # noqa: E402
from reidkit.models import SpatialRecurrentModel, build_model, pair_score  # noqa: E402

MARS = dict(tracklets=12_180, queries=1_980, identities=626, junk=870, distractors=1_500)
MARS_GALLERY = {"common": 9_330, "official": 12_180}  # gallery sizes of the two conventions


def mars_labels(num_q, num_g, num_ids, junk, distractors, rng):
    """Query and gallery pids/camids shaped like MARS's test set (6 cameras, junk and distractors)."""
    q_pids = rng.integers(1, num_ids + 1, num_q)
    g_pids = rng.integers(1, num_ids + 1, num_g)
    g_pids[:junk] = -1
    g_pids[junk:junk + distractors] = 0
    g_pids = rng.permutation(g_pids)
    return q_pids, g_pids, rng.integers(1, 7, num_q), rng.integers(1, 7, num_g)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_metrics(rng):
    print("(a) cmc_map on random matrices (numpy, one process)")
    rows = []
    for name, (q, g), fn in (("random", (2_000, 10_000), cmc_map),
                             ("MARS-shaped, common", (1_980, 9_330), cmc_map),
                             ("MARS-shaped, official (queries in the gallery)", (1_980, 12_180),
                              cmc_map_official)):
        dist = rng.random((q, g), dtype=np.float32)
        labels = mars_labels(q, g, MARS["identities"], MARS["junk"], MARS["distractors"], rng)
        t = time.perf_counter()
        cmc, mAP = fn(dist, *labels)
        seconds = time.perf_counter() - t
        print(f"    {q:>5} x {g:<6} {name:<48} {seconds:6.2f} s"
              f"   (rank-1 {100 * cmc[0]:.2f}, mAP {100 * mAP:.2f}: chance level)")
        rows.append(dict(matrix=name, queries=q, gallery=g, seconds=seconds))
    return rows


class SRMOnly(nn.Module):
    """The ranking interface of JSTRNN around a bare SpatialRecurrentModel (variant "all")."""

    def __init__(self, channels, seq_len, grid):
        super().__init__()
        self.head = SpatialRecurrentModel(channels, seq_len, grid, 64, 32, 32, dropout=0.5)
        self.ranking, self.has_metric_branch, self.variant = "similarity", True, "all"
        self.config = SimpleNamespace(lam=1.0, seq_len=seq_len)

    def metric(self, a, b):
        return self.head(a, b)

    def pair_score(self, fa, fb, logits=None, kind=None):
        return pair_score(kind or self.ranking, fa, fb, logits, self.config.lam)


def bench_ranking(scale, device, top_k, pair_batch, rng, conventions, dim=1024, T=6, channels=256, grid=(6, 6)):
    n = max(int(round(MARS["tracklets"] * scale)), 20)
    num_q = max(int(round(MARS["queries"] * scale)), 5)
    num_ids = max(int(round(MARS["identities"] * scale)), 3)
    junk, distractors = int(round(MARS["junk"] * scale)), int(round(MARS["distractors"] * scale))
    q_pids, g_pids, q_cams, g_cams = mars_labels(num_q, n - num_q, num_ids, junk, distractors, rng)
    pids, cams = np.concatenate([q_pids, g_pids]), np.concatenate([q_cams, g_cams])
    tracklets = [Tracklet(i, int(p), int(c), ("frame.png",)) for i, (p, c) in enumerate(zip(pids, cams))]
    ids = list(range(n))
    manifest = Manifest(".", tracklets, [Split([], ids[:num_q], ids[num_q:])],
                        {"protocol": "mars", "name": "synthetic MARS-shaped"})
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    centroids = torch.randn(num_ids + 2, dim, generator=gen)
    feats = (centroids[torch.from_numpy(pids + 1)] + 4.0 * torch.randn(n, dim, generator=gen)).to(device)
    pool5 = torch.randn(n, T, channels, *grid, generator=gen).to(device, dtype)
    model = SRMOnly(channels, T, grid).to(device)
    table = TrackletFeatures(np.arange(n), feats, pool5, T)

    print(f"(b) MARS-shaped evaluation on {device}: {n} tracklets ({num_q} queries, {junk} junk, "
          f"{distractors} distractors, {num_ids} identities), features {dim}-d, pool5 "
          f"{T}x{channels}x{grid[0]}x{grid[1]} {str(dtype).split('.')[-1]} "
          f"({pool5.numel() * pool5.element_size() / 2**30:.2f} GiB), SRM re-scoring top-{top_k}")
    rows = []
    for convention in conventions:
        # warm-up on a few queries (kernels, allocator), then the timed run
        warm = Manifest(".", tracklets, [Split([], ids[:2], ids[num_q:])], manifest.meta)
        eval_cfg = EvalConfig(convention=convention, rerank_top_k=top_k)
        evaluate_features(model, warm, table, eval_cfg, pair_batch=pair_batch, progress=False)
        sync(device)
        t = time.perf_counter()
        r = evaluate_features(model, manifest, table, eval_cfg, pair_batch=pair_batch, progress=False)
        sync(device)
        total = time.perf_counter() - t
        pairs = r.num_queries * min(top_k, r.num_gallery)
        print(f"    {convention:<8} gallery {r.num_gallery:>6}: {total:6.2f} s in all "
              f"(ranking incl. {pairs} SRM pairs {r.seconds['ranking']:.2f} s = "
              f"{pairs / max(r.seconds['ranking'], 1e-9):,.0f} pairs/s; metrics + per-query "
              f"{r.seconds['metrics']:.2f} s)  rank-1 {r.rank1:.1f} mAP {r.mAP:.1f}")
        rows.append(dict(convention=convention, scale=scale, device=str(device), tracklets=n, queries=r.num_queries,
                         gallery=r.num_gallery, top_k=top_k, srm_pairs=pairs, seconds=total,
                         ranking_s=r.seconds["ranking"], metrics_s=r.seconds["metrics"],
                         pairs_per_s=pairs / max(r.seconds["ranking"], 1e-9), rank1=r.rank1, mAP=r.mAP))
    return rows


@torch.no_grad()
def bench_extraction(num_clips, device, batch_size):
    config = dict(height=227, width=227) if device.type == "cuda" else dict(
        height=128, width=64, cnn="caffenet_light", width_mult=0.25, fc_dim=256, rnn_hidden=128,
        attention_dim=64, srm_in=32, srm_hidden=16, srm_out=16)
    model = build_model("all", **config).to(device).eval()
    T = model.config.seq_len
    clips = torch.randn(batch_size, T, 3, config["height"], config["width"], device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with amp:
        model.features(clips)  # warm-up
    sync(device)
    steps = max(1, num_clips // batch_size)
    t = time.perf_counter()
    for _ in range(steps):
        with amp:
            model.features(clips)
    sync(device)
    dt = time.perf_counter() - t
    print(f"(c) features() of build_model('all', {config['height']}x{config['width']}) on {device}: "
          f"{steps * batch_size} clips of {T} frames in {dt:.2f} s = {steps * batch_size * T / dt:,.0f} frames/s")
    return dict(height=config["height"], width=config["width"], clips=steps * batch_size, T=T, seconds=dt,
                frames_per_s=steps * batch_size * T / dt)


@torch.no_grad()
def srm_pair_throughput(device, pairs=4096, repeats=10, table=2048, T=6, channels=256, grid=(6, 6)):
    """(d) M's logits for ``pairs`` random (query, gallery) pairs per batch, as evaluation scores them:
    pool5 rows gathered from a cached table (bf16 on CUDA), the paper-sized SRM in eval mode under
    autocast. Returns pairs/s and the extrapolated time for every MARS query × gallery pair."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pool5 = torch.randn(table, T, channels, *grid, device=device).to(dtype)
    model = SRMOnly(channels, T, grid).to(device).eval()
    a = torch.randint(0, table, (pairs,), device=device)
    b = torch.randint(0, table, (pairs,), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def score():
        with amp:
            return model.metric(pool5[a], pool5[b]).float()

    score()  # warm-up
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        score()
    sync(device)
    dt = time.perf_counter() - t
    rate = pairs * repeats / dt
    all_pairs = {c: MARS["queries"] * g for c, g in MARS_GALLERY.items()}
    print(f"(d) exact M on {device}: {pairs} pairs per batch × {repeats} in {dt:.2f} s = {rate:,.0f} pairs/s; every "
          + ", ".join(f"{c} MARS pair ({n:,}) {n / rate:,.0f} s" for c, n in all_pairs.items()))
    return dict(pairs_per_batch=pairs, repeats=repeats, seconds=dt, pairs_per_s=rate,
                mars_all_pairs={c: dict(pairs=n, seconds=n / rate) for c, n in all_pairs.items()})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--scale", type=float, default=None,
                   help="fraction of MARS's test set (default: 1 on GPU, 0.02 on CPU)")
    p.add_argument("--conventions", default=None,
                   help="comma-separated (default: common,official on GPU, common on CPU)")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--pair-batch", type=int, default=4096)
    p.add_argument("--extract-clips", type=int, default=None,
                   help="clips for (c); 0 skips it (default: 4096 GPU, 0 CPU)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--srm-pairs", type=int, default=None,
                   help="pairs per batch for (d); 0 skips it (default: 16384 GPU, 0 CPU)")
    p.add_argument("--skip-metrics", action="store_true", help="skip (a)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    scale = args.scale if args.scale is not None else (1.0 if gpu else 0.02)
    conventions = (args.conventions or ("common,official" if gpu else "common")).split(",")
    extract = args.extract_clips if args.extract_clips is not None else (4096 if gpu else 0)
    srm_pairs = args.srm_pairs if args.srm_pairs is not None else (16384 if gpu else 0)
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    figures = {"device": str(device)}
    if not args.skip_metrics:
        figures["metrics"] = bench_metrics(rng)
    figures["ranking"] = bench_ranking(scale, device, args.top_k, args.pair_batch, rng, conventions)
    if extract:
        figures["extraction"] = bench_extraction(extract, device, args.batch_size)
    if srm_pairs:
        figures["srm_pairs"] = srm_pair_throughput(device, srm_pairs)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
