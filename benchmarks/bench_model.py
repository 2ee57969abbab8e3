"""Forward+backward throughput (frames/s) of every variant.

    python benchmarks/bench_model.py                       # CPU: cpu config and a tiny 227×227 batch
    python benchmarks/bench_model.py --device cuda         # + bf16 autocast, 227×227, 32 clips × 6 frames
    python benchmarks/bench_model.py --device cuda --compile --channels-last
    python benchmarks/bench_model.py --json out.json       # the figures as JSON too

A step is one training step without the optimizer: one CNN pass on (N·T, 3, H, W), triplet loss
on F(x) with the batch's pids, and pair BCE on M for the mined pairs, then ``backward``.
Synthetic tensors already on the device; no data loading. DESIGN.md's reference on one H200
(bf16, 32 clips × 6 × 227×227): CaffeNet ~18k frames/s, ``all`` ~7k frames/s. On GPU the TAM's
per-step loop (T = 6 steps of small kernels) is launch-bound; the SRM's six sweeps are six
``nn.LSTM`` calls over batched sequences (cuDNN), not per-position cells.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a bare checkout: no pip install needed
from reidkit.losses import batch_hard_triplet, mine_pairs, pair_bce  # noqa: E402
from reidkit.models import VARIANTS, ModelConfig, build_model  # noqa: E402


def step(model, clips, pids):
    out = model(clips)
    loss = out.features.sum() * 0.0
    if model.has_feature_branch:
        loss = loss + batch_hard_triplet(out.features, pids)
    if model.has_metric_branch:
        idx_a, idx_b, labels = mine_pairs(out.features.detach(), pids)
        loss = loss + pair_bce(model.metric(out.pool5[idx_a], out.pool5[idx_b]), labels)
    loss.backward()


def bench(variant, config, clips_per_batch, device, steps, warmup, amp=False, compile_=False, channels_last=False):
    torch.manual_seed(0)
    model = build_model(variant, config=config).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_:
        model.cnn = torch.compile(model.cnn)  # the CNN dominates; the RNN loops compile poorly
    clips = torch.randn(clips_per_batch, config.seq_len, 3, config.height, config.width, device=device)
    # P×K-like ids: pairs of clips share an id (one clip alone gets a unique id)
    pids = torch.arange(clips_per_batch, device=device) // 2
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with autocast:
        for _ in range(warmup):
            step(model, clips, pids)
            model.zero_grad(set_to_none=True)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            step(model, clips, pids)
            model.zero_grad(set_to_none=True)
        sync()
    elapsed = time.perf_counter() - start
    return steps * clips_per_batch * config.seq_len / elapsed


def run(device, variants=VARIANTS, steps=5, cpu_batch=8, gpu_batch=32, compile_=False, channels_last=False):
    """The CLI's measurements: a list of rows {variant, setting, frames_per_s} (nothing printed).

    CPU: the cpu config at ``cpu_batch`` clips, then the paper config at 2 clips (fp32). CUDA: the
    paper config at ``gpu_batch`` clips with bf16 autocast, at least 20 timed steps."""
    device = torch.device(device)
    rows = []
    if device.type == "cpu":
        cpu, paper = ModelConfig.cpu(), ModelConfig()
        for v in variants:
            rows.append(dict(variant=v, setting=f"cpu config, {cpu_batch} clips × {cpu.seq_len}",
                             frames_per_s=bench(v, cpu, cpu_batch, device, steps, 1)))
        for v in variants:
            rows.append(dict(variant=v, setting=f"227×227, 2 clips × {paper.seq_len}",
                             frames_per_s=bench(v, paper, 2, device, max(1, steps // 2), 1)))
    else:
        paper = ModelConfig()
        for v in variants:
            fps = bench(v, paper, gpu_batch, device, max(steps, 20), 5 if not compile_ else 10,
                        amp=True, compile_=compile_, channels_last=channels_last)
            rows.append(dict(variant=v, setting=f"227×227, {gpu_batch} clips × {paper.seq_len}, bf16",
                             frames_per_s=fps))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--cpu-batch", type=int, default=8, help="clips per step for the cpu config")
    p.add_argument("--gpu-batch", type=int, default=32, help="clips per step at 227×227 on CUDA")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if device.type == "cpu":
        cpu = ModelConfig.cpu()
        header = (f"CPU, {torch.get_num_threads()} threads, fp32. cpu config: {cpu.height}×{cpu.width}, "
                  f"{cpu.cnn} ×{cpu.width_mult}, pool5 {cpu.pool5_grid}; paper config 227×227 caffenet.")
    else:
        flags = ", ".join(f for f, on in (("compile", args.compile), ("channels_last", args.channels_last)) if on)
        header = f"{torch.cuda.get_device_name(device)}, bf16 autocast, 227×227 {flags}"
    print(header)
    rows = run(device, args.variants, args.steps, args.cpu_batch, args.gpu_batch, args.compile, args.channels_last)
    width = max(len(r["setting"]) for r in rows)
    print(f"{'variant':<9} {'setting':<{width}} frames/s (forward+backward)")
    for r in rows:
        print(f"{r['variant']:<9} {r['setting']:<{width}} {r['frames_per_s']:10.1f}")
    if args.json:
        args.json.write_text(json.dumps({"device": header, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
