"""The benchmarks still run and print their figures (tiny sizes; the numbers are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{script} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.mark.parametrize("script, args, expect", [
    ("bench_loader.py", ["--steps", "2", "--height", "64", "--width", "32", "--threads", "1"], "clips/s"),
    ("bench_model.py", ["--steps", "1", "--variants", "all", "--cpu-batch", "2", "--threads", "1"], "frames/s"),
    ("bench_train.py", ["--config", "configs/smoke.yaml", "--steps", "1", "--warmup", "0", "--threads", "1"],
     "throughput"),
    ("bench_eval.py", ["--scale", "0.002", "--top-k", "5", "--skip-metrics"], "rank-1"),
])
def test_benchmark_prints_its_figures(script, args, expect):
    assert expect in _run(script, *args)
