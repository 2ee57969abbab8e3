"""Training-step throughput (frames/s) of every variant, without data loading.

    python benchmarks/bench_model.py                       # CPU: cpu config and a tiny 227×227 batch
    python benchmarks/bench_model.py --device cuda         # + bf16 autocast, 227×227, 32 clips × 6 frames
    python benchmarks/bench_model.py --device cuda --compile --channels-last
    python benchmarks/bench_model.py --json out.json       # the figures as JSON too

A step is the step ``Trainer.train_step`` takes: ``TrainingObjective`` (one CNN pass on
(N·T, 3, H, W), triplet loss on F(x) with the batch's pids, pair BCE on M for the pairs mined
from the host copy of the pids, as the loader hands them) under bf16 autocast on CUDA, then the
backward outside autocast, gradient clipping and the optimiser step (Adam, fused on CUDA).
Synthetic clips already on the device, bf16 on CUDA as the loader makes them; no data loading
(``bench_train.py`` adds it). Reference (docs/gpu_check.md) on one H200 (bf16, 32 clips × 6 × 227×227):
CaffeNet ~18k frames/s, ``all`` ~7k frames/s. On GPU the TAM's
per-step loop (T = 6 steps of small kernels) is launch-bound; the SRM's six sweeps are six
``nn.LSTM`` calls over batched sequences (cuDNN), not per-position cells.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a bare checkout: no pip install needed
from reidkit.models import VARIANTS, ModelConfig, build_model  # noqa: E402
from reidkit.train import TrainingObjective, configure_cuda_backends  # noqa: E402


def train_step(objective, optimizer, clips, pids, camids, host_pids, host_camids, amp: bool, grad_clip: float = 5.0):
    """One optimiser step as ``Trainer.train_step`` takes it: forward and losses under bf16
    autocast (``amp``), the backward outside it (autocast has recorded each op's dtype),
    gradient clipping, the optimiser step. Returns the (device) loss terms; nothing syncs."""
    with torch.autocast(clips.device.type, dtype=torch.bfloat16, enabled=amp):
        terms = objective(clips, pids, camids, host_pids, host_camids)
    optimizer.zero_grad(set_to_none=True)
    terms[0].backward()
    torch.nn.utils.clip_grad_norm_(objective.model.parameters(), grad_clip)
    optimizer.step()
    return terms


def setup(variant, config, clips_per_batch, device, amp=False, compile_=False, channels_last=False, lr=3e-4):
    """The model, objective, optimiser and one synthetic batch as the Trainer would have them
    (configs/default.yaml's margin, Adam, weight decay; P×K ids with K = 4, two cameras)."""
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    configure_cuda_backends(device)  # cudnn.benchmark, cuDNN TF32 off: as the Trainer sets them
    model = build_model(variant, config=config).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_:
        model.cnn.compile()  # in place, the frame CNN only, as the Trainer compiles it
    objective = TrainingObjective(model, 0.3, device=device)
    optimizer = torch.optim.Adam(model.parameter_groups(lr, lr), lr=lr, betas=(0.9, 0.999), weight_decay=5e-4,
                                 **({"fused": True} if cuda else {}))
    dtype = torch.bfloat16 if amp and cuda else torch.float32  # what the loader hands the step
    clips = torch.randn(clips_per_batch, config.seq_len, 3, config.height, config.width, device=device).to(dtype)
    k = 4 if clips_per_batch >= 8 else 2
    host_pids = np.arange(clips_per_batch, dtype=np.int64) // k
    host_camids = 1 + np.arange(clips_per_batch, dtype=np.int64) % 2
    batch = (clips, torch.from_numpy(host_pids).to(device), torch.from_numpy(host_camids).to(device),
             host_pids, host_camids)
    return objective, optimizer, batch


def bench(variant, config, clips_per_batch, device, steps, warmup, amp=False, compile_=False, channels_last=False):
    """Frames/s of ``train_step`` after ``warmup`` untimed steps."""
    device = torch.device(device)
    objective, optimizer, batch = setup(variant, config, clips_per_batch, device, amp, compile_, channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        train_step(objective, optimizer, *batch, amp=amp)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(objective, optimizer, *batch, amp=amp)
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
    print(f"{'variant':<9} {'setting':<{width}} frames/s (training step)")
    for r in rows:
        print(f"{r['variant']:<9} {r['setting']:<{width}} {r['frames_per_s']:10.1f}")
    if args.json:
        args.json.write_text(json.dumps({"device": header, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
