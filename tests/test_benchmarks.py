"""The benchmarks still run and print their figures (tiny sizes; the numbers are not checked)."""

from __future__ import annotations

import json
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
    ("bench_host_path.py", ["--gib", "0.01", "--height", "64", "--width", "32", "--steps", "2", "--eval-batches", "1",
                            "--upload-gib", "0.005", "--workers", "1", "2", "--threads", "1"], "(c) eval"),
])
def test_benchmark_prints_its_figures(script, args, expect, tmp_path):
    figures = tmp_path / "figures.json"
    json_args = [] if script == "bench_loader.py" else ["--json", str(figures)]
    assert expect in _run(script, *args, *json_args)
    if json_args:  # the same figures, as JSON
        assert json.loads(figures.read_text())


def test_gpu_check_smoke_runs_every_section(tmp_path):
    """``gpu_check --smoke`` on a CPU, a process per section: every section present, in order, none
    failed; the CUDA tests are found but skipped, the LSTM hooks saw all seven LSTMs run in fp32,
    the training section resumed and evaluated its checkpoint."""
    out = tmp_path / "gpu_check.json"
    _run("gpu_check.py", "--smoke", "--out", str(out))
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert list(sections) == ["environment", "training", "cuda_tests", "checks", "bench_train", "host_path",
                              "bench_model", "bench_eval", "compile"]
    assert report["finished"] and not report["failed"] and report["isolated"]
    assert {k: sections["cuda_tests"][k] for k in ("status", "why")} == {"status": "skipped", "why": "no CUDA"}
    assert "tests/test_losses.py::test_losses_do_not_sync_on_cuda" in sections["cuda_tests"]["tests"]
    assert all(s["status"] == "ok" for name, s in sections.items() if name != "cuda_tests")
    lstm = sections["checks"]["lstm_dtypes"]
    assert len(lstm["lstms"]) == 7 and lstm["all_lstms_fp32"]
    assert sections["checks"]["host_syncs"]["syncs"] == {"status": "skipped", "why": "no CUDA"}
    training = sections["training"]
    assert [e["epoch"] for e in training["epochs"]] == [1, 2] and training["resumed_fit_s"] > 0
    assert training["evaluate_from_checkpoint"]["rank1"] >= 0 and "rank1" in training["epochs"][-1]
    assert sections["bench_train"]["runs"][0]["frames_per_s"] > 0
    assert sections["compile"]["graphs_compiled_during_evaluate"] in (0, None)
    assert {g["workers"] for g in sections["host_path"]["gather"]} >= {1}
