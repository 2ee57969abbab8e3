"""Does ``torch.compile`` of the frame CNN pay on the CPU? One training step of the cpu config.

    python benchmarks/bench_compile_cpu.py [--variants cnn all] [--threads 2] [--steps 6]

For each variant: the eager step time, the first compiled step (the compile itself), and the
compiled step time; then how many steps a compile needs to pay for itself. The step is the
trainer's (``TrainingObjective`` under bf16 autocast where the CPU has it, backward outside it,
Adam), on random clips of the cpu config (32 clips × 6 frames × 128×64, channels_last). Prints
figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reidkit.config import Config  # noqa: E402
from reidkit.models import build_model  # noqa: E402
from reidkit.train import TrainingObjective, cpu_has_native_bf16  # noqa: E402


def step_times(variant: str, compile_: bool, steps: int, amp: bool) -> list[float]:
    config = Config.from_yaml(Path(__file__).resolve().parents[1] / "configs" / "cpu.yaml")
    torch.manual_seed(0)
    model = build_model(variant, config=config.model).to(memory_format=torch.channels_last)
    if compile_:
        model.cnn.compile()
    t = config.train
    objective = TrainingObjective(model, t.margin, t.triplet_weight, t.bce_weight, t.camera_balanced_pairs,
                                  t.hard_negative_fraction, torch.device("cpu"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    P, K = t.P, t.K
    clips = torch.randn(P * K, config.model.seq_len, 3, config.model.height, config.model.width)
    pids = torch.arange(P).repeat_interleave(K)
    camids = torch.arange(P * K) % 2
    times = []
    for _ in range(steps):
        tick = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            terms = objective(clips, pids, camids)
        terms[0].backward()  # the total loss; backward outside autocast, as the trainer does
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - tick)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["cnn", "all"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    amp = cpu_has_native_bf16()
    print(f"torch {torch.__version__}, {args.threads} threads, bf16 autocast: {amp}")
    for variant in args.variants:
        eager = step_times(variant, False, args.steps, amp)
        compiled = step_times(variant, True, args.steps, amp)
        e, c = min(eager[1:]), min(compiled[2:])
        first = compiled[0]
        gain = e - c
        pays = f"after {first / gain:.0f} steps" if gain > 0 else "never (no faster)"
        print(f"{variant}: eager {e * 1000:.0f} ms/step; compiled {c * 1000:.0f} ms/step ({e / c:.2f}x); "
              f"first compiled step {first:.1f} s; the compile pays {pays}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
