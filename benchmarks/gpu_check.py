"""Everything that needs CUDA, in one run of at most 8 minutes, written to one JSON of figures.

    python3 benchmarks/gpu_check.py --out gpu_check.json         # on the GPU machine (--budget-s 480)
    python3 benchmarks/gpu_check.py --smoke --out /tmp/gc.json   # tiny sizes on the CPU, seconds

Sections, in this order (most important first):

1. environment      torch / CUDA / cuDNN versions, the GPU and its memory, CPUs, free disk, git commit
2. cuda_tests       the tests that skip without CUDA (found by their ``cuda.is_available`` skip
                    markers), run by pytest in a subprocess (skipped when pytest is missing)
3. checks           (a) dtypes of every nn.LSTM / nn.LSTMCell under bf16 autocast and the RNN
                    kernels the profiler sees in the metric branch and the TAM; (b) host syncs per
                    training step (loader and train_step apart, with the reidkit line that caused
                    them), in ``torch.cuda.set_sync_debug_mode("warn")``; (c) the step's peak memory
4. bench_model      forward+backward frames/s per variant: NCHW, channels_last, compiled CNN
5. bench_train      end-to-end ``Trainer`` frames/s for all and cnn: cudnn.benchmark on/off,
                    torch.compile on/off; target ≥ 20,000 frames/s for all
6. bench_eval       MARS-size evaluation with SRM re-ranking (target ≤ 60 s) and exact M pairs/s
7. medium_training  the synthetic medium preset: generation, frame cache, a short training of
                    all with configs/default.yaml, rank-1 and mAP

Each section runs in a try/except (a failure is recorded with its traceback's tail and the others
still run), has a time budget, and is skipped ("time budget") when the total ``--budget-s`` no
longer leaves it room; wall times are recorded. The JSON is rewritten after every section, and a
watchdog writes it and exits if a section hangs past ``--hard-limit-s``. Figures only: nothing is
asserted on time. Needs only python3 + torch (+ numpy, PIL, yaml); runs from a bare checkout.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # the budget counts from here, imports included

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a bare checkout: no pip install needed
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_eval  # noqa: E402
import bench_model  # noqa: E402
import bench_train  # noqa: E402

from reidkit.config import Config  # noqa: E402
from reidkit.data import FrameCache, Manifest  # noqa: E402
from reidkit.evaluate import evaluate  # noqa: E402
from reidkit.models import VARIANTS, ModelConfig, build_model  # noqa: E402
from reidkit.train import Trainer  # noqa: E402

TRAIN_TARGET_FPS = 20_000  # end-to-end training frames/s of `all` (64 clips × 6 × 227², bf16)
EVAL_TARGET_S = 60  # MARS-size evaluation with SRM re-ranking of the top-100
REFERENCE = {"srm_pairs_per_s": 150_000, "caffenet_train_step_fps_32_clips": 18_000,
             "caffenet_compiled_fps_32_clips": 26_000, "all_train_step_fps_32_clips": 7_000,
             "end_to_end_fps_64_clips": 14_800}  # DESIGN.md, one H200


@dataclasses.dataclass
class Sizes:
    """What each section measures; the defaults fit one H200 in the 480 s budget."""

    clips: int = 64  # clips per step (P × K = clips/4 × 4 in the Trainer)
    model_steps: int = 20  # timed steps per bench_model row
    train_steps: int = 50  # timed steps per bench_train run
    sync_steps: int = 10  # training steps whose host syncs are counted
    variants: tuple = VARIANTS
    compile: bool = True
    eval_scale: float = 1.0  # fraction of MARS's test set
    eval_top_k: int = 100
    srm_pairs: int = 16384
    medium_preset: str = "medium"
    medium_config: str = "configs/default.yaml"
    medium_epochs: int = 2
    medium_steps: int = 100  # per epoch
    medium_warmup: int = 20  # lr warm-up steps (default.yaml's 500 exceed the whole run)


SMOKE = Sizes(clips=4, model_steps=1, train_steps=1, sync_steps=2, compile=False, eval_scale=0.002, eval_top_k=5,
              srm_pairs=16, medium_preset="tiny", medium_config="configs/smoke.yaml", medium_epochs=1,
              medium_steps=2, medium_warmup=0)


class Run:
    """The run's settings and clock; ``deadline`` is the current section's."""

    def __init__(self, args):
        self.args, self.smoke = args, args.smoke
        self.cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.sizes = dataclasses.replace(SMOKE if args.smoke else Sizes())
        for key in ("clips", "eval_scale", "medium_preset", "medium_epochs", "medium_steps"):
            if getattr(args, key) is not None:
                setattr(self.sizes, key, getattr(args, key))
        if args.variants:
            self.sizes.variants = tuple(args.variants)
        if args.no_compile:
            self.sizes.compile = False
        self.deadline = float("inf")

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def model_config(self) -> ModelConfig:
        """The paper's sizes (227×227 CaffeNet); configs/smoke.yaml's in --smoke."""
        return Config.from_yaml(ROOT / "configs" / "smoke.yaml").model if self.smoke else ModelConfig()

    def train_config(self) -> Path:
        return ROOT / "configs" / ("smoke.yaml" if self.smoke else "default.yaml")

    def pk(self) -> tuple[int | None, int | None]:
        """P, K of the training runs (None: the config's, in --smoke)."""
        return (None, None) if self.smoke else (max(2, self.sizes.clips // 4), 4)


def skipped(why: str) -> dict:
    return {"status": "skipped", "why": why}


def attempt(fn, *args, **kwargs) -> dict:
    """``fn(...)``'s dict, or a "failed" record with the error and the traceback's tail."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 (a failing check is a finding, the others still run)
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000],
                "traceback": traceback.format_exc().splitlines()[-25:]}


def failures(d, path="") -> list[str]:
    """Paths of every nested record whose status is "failed"."""
    out = []
    if isinstance(d, dict):
        if d.get("status") == "failed" and path:
            out.append(path)
        for k, v in d.items():
            out += failures(v, f"{path}.{k}" if path else k)
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += failures(v, f"{path}[{i}]")
    return out


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def forget_compiled() -> None:
    """Drop dynamo's compiled graphs: later measurements compile their own models from scratch."""
    import torch._dynamo as dynamo

    dynamo.reset()


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


# ------------------------------------------------------------------------------ 1. environment

def environment(run: Run) -> dict:
    def git(*cmd):
        try:
            p = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10)
            return p.stdout.strip() if p.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    tmp = Path(run.args.tmp or tempfile.gettempdir())
    env = dict(python=platform.python_version(), platform=platform.platform(), torch=torch.__version__,
               numpy=np.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
               cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
               pytest=importlib.util.find_spec("pytest") is not None, cpu_count=os.cpu_count(),
               cpu_affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
               torch_threads=torch.get_num_threads(), tmp_dir=str(tmp),
               disk_free_gib=shutil.disk_usage(tmp).free / 2**30,
               repo_disk_free_gib=shutil.disk_usage(ROOT).free / 2**30,
               git_commit=git("rev-parse", "HEAD"), git_dirty=bool(git("status", "--porcelain")))
    if run.cuda:
        props = torch.cuda.get_device_properties(run.device)
        free, total = torch.cuda.mem_get_info(run.device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                   gpu_memory_total_gib=total / 2**30, gpu_memory_free_gib=free / 2**30,
                   bf16_supported=torch.cuda.is_bf16_supported(), device_count=torch.cuda.device_count(),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    gpu = (f"{env['gpu']} ({env['gpu_memory_free_gib']:.0f} of {env['gpu_memory_total_gib']:.0f} GiB free)"
           if run.cuda else "no GPU")
    env["summary"] = [f"torch {env['torch']} CUDA {env['cuda']} cuDNN {env['cudnn']}, {gpu}, {env['cpu_count']} CPUs, "
                      f"{env['disk_free_gib']:.0f} GiB free in {tmp}, commit {(env['git_commit'] or '?')[:10]}"]
    return env


# ------------------------------------------------------------------------------ 2. cuda_tests

def cuda_test_ids() -> list[str]:
    """Node ids of the tests that skip without CUDA: a ``cuda.is_available`` in the decorators
    right above ``def test_…``, or in a module-level ``pytestmark``."""
    ids = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        rel, lines = path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8").splitlines()
        if any(line.startswith("pytestmark") and "cuda.is_available" in line for line in lines):
            ids.append(rel)
            continue
        for i, line in enumerate(lines):
            m = re.match(r"def (test_\w+)", line)
            if not m:
                continue
            j = i
            while j > 0 and lines[j - 1].strip() and not lines[j - 1].startswith(("def ", "class ")):
                j -= 1  # the decorator block above
            if any("cuda.is_available" in x for x in lines[j:i]):
                ids.append(f"{rel}::{m.group(1)}")
    return ids


def cuda_tests(run: Run) -> dict:
    ids = cuda_test_ids()
    if not run.cuda:
        return {**skipped("no CUDA"), "tests": ids}
    if importlib.util.find_spec("pytest") is None:
        return {**skipped("pytest is not installed: see the checks section instead"), "tests": ids}
    if not ids:  # pytest without node ids would run the whole suite
        return {"status": "failed", "why": "no test with a cuda.is_available skip marker found in tests/"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *ids]
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                           timeout=max(10.0, run.left()))
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        rc = None
    words = r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?)"
    last = next((line for line in reversed(out.splitlines()) if re.search(words, line)), "")  # pytest's last line
    counts = {k.rstrip("s") if k in ("errors", "warnings") else k: int(n) for n, k in re.findall(words, last)}
    result = {"tests": ids, "command": " ".join(cmd[1:]), "returncode": rc, **counts,
              "output_tail": out[-4000:].splitlines()}
    bad = counts.get("failed", 0) + counts.get("error", 0)
    if rc is None or bad or rc not in (0, 5):
        result.update(status="failed", why="timed out" if rc is None else f"{bad} CUDA test(s) failed (rc {rc})")
    result["summary"] = [", ".join(f"{n} {k}" for k, n in counts.items()) or f"no summary line (rc {rc})"]
    return result


# ------------------------------------------------------------------------------ 3. checks

RNN_NAME = re.compile(r"rnn|lstm", re.I)


def profile_kernels(fn, cuda: bool, top: int = 12) -> dict:
    """Run ``fn`` under torch.profiler: the RNN/LSTM kernels (CUDA) or ops (CPU) by name, and the
    ``top`` most expensive, with call counts and total microseconds."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
    kind = DeviceType.CUDA if cuda else DeviceType.CPU
    table: dict[str, dict] = {}
    for e in prof.events():
        if getattr(e, "device_type", None) != kind:
            continue
        row = table.setdefault(e.name, {"count": 0, "us": 0.0})
        row["count"] += 1
        row["us"] += e.time_range.elapsed_us()
    source = "kernels" if cuda else "cpu ops"
    if cuda and not table:  # a profiler that keeps device events elsewhere: the averaged view
        source = "key_averages"
        for e in prof.key_averages():
            us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            if us:
                table[e.key] = {"count": e.count, "us": float(us)}
    ranked = sorted(table.items(), key=lambda kv: -kv[1]["us"])
    short = lambda name: name if len(name) <= 160 else name[:157] + "..."  # noqa: E731 (C++ template names)
    return {"source": source, "total_us": sum(r["us"] for r in table.values()), "distinct": len(table),
            "rnn": {short(k): v for k, v in ranked if RNN_NAME.search(k)},
            "top": {short(k): v for k, v in ranked[:top]}}


def lstm_dtypes(run: Run) -> dict:
    """(a) Every LSTM's input/output dtypes under bf16 autocast (hooks), and which kernels run
    the metric branch's six sweeps and the TAM's cell (profiler), forward + backward."""
    config = run.model_config()
    model = build_model("all", config=config).to(run.device).train()
    records: dict[str, dict] = {}

    def hook(name):
        def record(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            r = records.setdefault(name, {"type": type(module).__name__, "calls": 0, "input": [], "output": [],
                                          "weight": str(next(module.parameters()).dtype)})
            r["calls"] += 1
            for key, t in (("input", inputs[0]), ("output", out)):
                if str(t.dtype) not in r[key]:
                    r[key].append(str(t.dtype))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, (nn.LSTM, nn.LSTMCell))]
    amp = lambda: torch.autocast(run.device.type, dtype=torch.bfloat16)  # noqa: E731
    clips = torch.randn(8, config.seq_len, 3, config.height, config.width, device=run.device)
    try:
        with amp():
            out = model(clips)
            logits = model.metric(out.pool5[:4], out.pool5[4:])
        (out.features.float().square().mean() + logits.float().mean()).backward()
    finally:
        for h in handles:
            h.remove()
    fp32 = all(r["input"] == r["output"] == ["torch.float32"] for r in records.values())

    pairs = 256 if run.cuda else 8  # about the pairs one 64-clip batch mines
    pool5 = [torch.randn(pairs, *out.pool5.shape[1:], device=run.device, dtype=out.pool5.dtype).requires_grad_()
             for _ in range(2)]
    fc7 = torch.randn(64 if run.cuda else 4, config.seq_len, config.fc_dim, device=run.device,
                      dtype=out.pool5.dtype, requires_grad=True)

    def metric_branch():
        with amp():
            logits = model.metric(*pool5)
        logits.float().sum().backward()
        run.sync()

    def tam():
        with amp():
            feat, _ = model.temporal(fc7)
        feat.float().sum().backward()
        run.sync()

    metric_branch(), tam()  # warm-up: cuDNN plans, allocator
    metric, attention = profile_kernels(metric_branch, run.cuda), profile_kernels(tam, run.cuda)
    names = lambda d: ", ".join(k.split("(")[0][:50] for k in d["rnn"]) or "none"  # noqa: E731
    return {"lstms": records, "all_lstms_fp32": fp32, "pool5_dtype": str(out.pool5.dtype),
            "metric_branch": {"pairs": pairs, **metric}, "tam": {"clips": len(fc7), **attention},
            "summary": [f"LSTMs under bf16 autocast all fp32 in/out: {fp32} ({len(records)} modules)",
                        f"metric-branch RNN {metric['source']}: {names(metric)}",
                        f"TAM RNN {attention['source']}: {names(attention)}"]}


class SyncCounter:
    """Counts the synchronizing CUDA calls torch reports in sync-debug "warn" mode, per phase,
    with their source: the innermost reidkit frame and the innermost Python frame (the op)."""

    def __init__(self):
        self.phase, self.counts, self.sources, self.other = "", Counter(), Counter(), Counter()

    def __enter__(self):
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("always")  # every occurrence, not once per line
        warnings.showwarning = self._show  # the stack is still the caller's here
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)

    @contextlib.contextmanager
    def during(self, phase: str):
        self.phase = phase
        try:
            yield
        finally:
            self.phase = ""

    def _show(self, message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if "synchroniz" not in text.lower():
            self.other[text[:120]] += 1
            return
        ours = [f for f in traceback.extract_stack()[:-1] if "reidkit" in Path(f.filename).parts]
        where = "outside reidkit"
        if ours:
            parts = Path(ours[-1].filename).parts
            where = f"{'/'.join(parts[parts.index('reidkit'):])}:{ours[-1].lineno} ({ours[-1].name})"
        self.counts[self.phase] += 1
        self.sources[(self.phase, where, f"{_short_path(filename)}:{lineno}")] += 1


def _short_path(filename: str) -> str:
    p = Path(filename)
    for anchor in ("site-packages", "dist-packages"):
        if anchor in p.parts:
            return "/".join(p.parts[p.parts.index(anchor) + 1:])
    with contextlib.suppress(ValueError):
        return p.relative_to(ROOT).as_posix()
    return filename


def host_syncs(run: Run) -> dict:
    """(b) Host syncs per training step of `all` (paper config, random frames, GPU-resident cache),
    loader and train_step counted apart; (c) the step's peak memory; host time per phase."""
    P, K = run.pk()
    n, warmup = run.sizes.sync_steps, 1 if run.smoke else 3  # the first step picks cuDNN's kernels
    with bench_train.trainer_for(run.device.type, "all", run.train_config(), P, K) as (trainer, setup_s):
        it, lr = bench_train.batches(trainer.loader), trainer.config.train.lr
        for _ in range(warmup):
            trainer.train_step(next(it), lr)
        run.sync()
        host = Counter()
        for _ in range(n):  # host time alone (what the CPU spends issuing the step)
            t = time.perf_counter()
            batch = next(it)
            host["loader"] += time.perf_counter() - t
            t = time.perf_counter()
            trainer.train_step(batch, lr)
            host["train_step"] += time.perf_counter() - t
        run.sync()
        result = {"variant": "all", "steps": n, "batch_clips": trainer.loader.sampler.batch_size,
                  "setup_s": setup_s, "host_ms_per_step": {k: v / n * 1000 for k, v in host.items()}}
        if not run.cuda:
            return {**result, "syncs": skipped("no CUDA"), "memory": skipped("no CUDA"),
                    "summary": [f"{n} CPU steps ran; host ms/step " + ", ".join(
                        f"{k} {v:.1f}" for k, v in result["host_ms_per_step"].items())]}
        baseline = torch.cuda.memory_allocated(run.device)
        reset_peak(run.device)
        with SyncCounter() as counter:
            for _ in range(n):
                with counter.during("loader"):
                    batch = next(it)
                with counter.during("train_step"):
                    trainer.train_step(batch, lr)
        run.sync()
        sources = [{"phase": ph, "where": w, "op": op, "count": c, "per_step": c / n}
                   for (ph, w, op), c in counter.sources.most_common()]
        per_step = {ph: counter.counts[ph] / n for ph in ("loader", "train_step")}
        result["syncs"] = {"per_step": sum(per_step.values()), "loader_per_step": per_step["loader"],
                           "train_step_per_step": per_step["train_step"], "sources": sources,
                           "other_warnings": dict(counter.other)}
        result["memory"] = {"before_steps_gib": baseline / 2**30, "peak_allocated_gib": peak_gib(run.device),
                            "peak_reserved_gib": torch.cuda.max_memory_reserved(run.device) / 2**30,
                            "frame_cache_gib": trainer.cache.nbytes / 2**30}
    result["summary"] = [f"host syncs per step: {result['syncs']['per_step']:g} (loader {per_step['loader']:g}, "
                         f"train_step {per_step['train_step']:g})"]
    result["summary"] += [f"  {s['count']}× {s['phase']} {s['where']} via {s['op']}" for s in sources[:8]]
    result["summary"].append(f"peak memory {result['memory']['peak_allocated_gib']:.1f} GiB allocated "
                             f"({result['memory']['before_steps_gib']:.1f} before the steps)")
    return result


def checks(run: Run) -> dict:
    a, b = attempt(lstm_dtypes, run), attempt(host_syncs, run)
    return {"lstm_dtypes": a, "host_syncs": b, "summary": a.get("summary", [f"(a) {a.get('error')}"])
            + b.get("summary", [f"(b) {b.get('error')}"])}


# ------------------------------------------------------------------------------ 4. bench_model

def bench_model_section(run: Run) -> dict:
    config, s = run.model_config(), run.sizes
    if run.cuda:
        torch.backends.cudnn.benchmark = True
    plan = [(v, cl, False) for cl in (False, True) for v in s.variants]
    plan += [(v, True, True) for v in ("cnn", "all") if v in s.variants]
    rows, table = [], {}
    for variant, channels_last, compiled in plan:
        key = "channels_last+compile" if compiled else ("channels_last" if channels_last else "nchw")
        if compiled and not (s.compile and run.cuda):
            why = "compile: CUDA only" if s.compile else "--no-compile"
            rows.append({"variant": variant, "layout": key, **skipped(why)})
            continue
        if run.left() < (60 if compiled else 8):  # compiling takes tens of seconds
            rows.append({"variant": variant, "layout": key, **skipped("time budget")})
            continue
        reset_peak(run.device)
        t = time.perf_counter()
        row = attempt(lambda: {"frames_per_s": bench_model.bench(
            variant, config, s.clips, run.device, s.model_steps, (10 if compiled else 5) if run.cuda else 1,
            amp=run.cuda, compile_=compiled, channels_last=channels_last)})
        if compiled:
            forget_compiled()
        rows.append({"variant": variant, "layout": key, **row, "wall_s": time.perf_counter() - t,
                     "peak_memory_gib": peak_gib(run.device)})
        if "frames_per_s" in row:
            table.setdefault(variant, {})[key] = row["frames_per_s"]
    setting = (f"{config.height}×{config.width} {config.cnn}, {s.clips} clips × {config.seq_len}, "
               f"{'bf16 autocast' if run.cuda else 'fp32'}, {s.model_steps} timed steps, synthetic tensors on the device")
    return {"setting": setting, "cudnn_benchmark": torch.backends.cudnn.benchmark, "rows": rows,
            "frames_per_s": table, "reference": REFERENCE,
            "summary": [setting] + [f"{v:<8} " + "  ".join(f"{k} {x:,.0f}" for k, x in d.items())
                                    for v, d in table.items()]}


# ------------------------------------------------------------------------------ 5. bench_train

def bench_train_section(run: Run) -> dict:
    s, (P, K) = run.sizes, run.pk()
    config = Config.from_yaml(run.train_config(), [f"train.P={P}", f"train.K={K}"] if P else [])
    c = config.model
    t = time.perf_counter()
    ids = max(2 * config.train.P, 64 if run.cuda else 32)
    data = bench_train.random_dataset(ids, 4, 24, c.height, c.width)
    data_s = time.perf_counter() - t
    plan = [("all", True, False), ("all", False, False), ("cnn", True, False), ("cnn", False, False),
            ("all", True, True)]
    runs = []
    for variant, benchmark, compiled in plan:
        on = lambda flag: "on" if flag else "off"  # noqa: E731
        head = {"variant": variant, "setting": f"benchmark={on(benchmark)} compile={on(compiled)}"}
        if not run.cuda and (compiled or not benchmark):
            runs.append({**head, **skipped("no CUDA")})
            continue
        if compiled and not s.compile:
            runs.append({**head, **skipped("--no-compile")})
            continue
        if run.left() < (75 if compiled else 15):
            runs.append({**head, **skipped("time budget")})
            continue
        warmup = (30 if compiled else 10) if run.cuda else 0
        t = time.perf_counter()
        figures = attempt(bench_train.bench, run.device.type, variant, run.train_config(), P, K, s.train_steps,
                          warmup, compiled, overrides=[f"train.cudnn_benchmark={benchmark}"], data=data)
        if compiled:
            forget_compiled()
        runs.append({**head, **figures, "wall_s": time.perf_counter() - t})  # figures: what was in effect
    measured = [r for r in runs if r["variant"] == "all" and "frames_per_s" in r]
    best = max(measured, key=lambda r: r["frames_per_s"], default=None)
    target = {"frames_per_s": TRAIN_TARGET_FPS, "variant": "all", "best": best and best["frames_per_s"],
              "best_setting": best and {k: best[k] for k in ("cudnn_benchmark", "compile")},
              "met": bool(best and best["frames_per_s"] >= TRAIN_TARGET_FPS), "applies": not run.smoke}
    lines = [f"{r['variant']:<4} {r['setting']:<25} "
             + (f"{r['frames_per_s']:>9,.0f} frames/s, {r['ms_per_step']:.1f} ms/step, peak "
                f"{r['peak_memory_gib'] or 0:.1f} GiB" if "frames_per_s" in r else r.get("why") or r.get("error", ""))
             for r in runs]
    lines.append(f"target ≥ {TRAIN_TARGET_FPS:,} frames/s for all: "
                 + (f"{'met' if target['met'] else 'NOT met'} ({best['frames_per_s']:,.0f})" if best else "not measured")
                 + (" (smoke sizes: not comparable)" if run.smoke else ""))
    return {"random_data_s": data_s, "runs": runs, "target": target, "summary": lines}


# ------------------------------------------------------------------------------ 6. bench_eval

def bench_eval_section(run: Run) -> dict:
    s = run.sizes
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    small = {} if not run.smoke else dict(T=4, channels=16, grid=(3, 2), dim=32)
    ranking = bench_eval.bench_ranking(s.eval_scale, run.device, s.eval_top_k, 4096, rng, ["common", "official"],
                                       **small)
    target = {"seconds": EVAL_TARGET_S, "scale": s.eval_scale,
              "met": {r["convention"]: r["seconds"] <= EVAL_TARGET_S for r in ranking}}
    pairs = []
    for batch in (4096, s.srm_pairs) if not run.smoke else (s.srm_pairs,):
        if run.left() < 10:
            pairs.append({"pairs_per_batch": batch, **skipped("time budget")})
            continue
        pairs.append(attempt(bench_eval.srm_pair_throughput, run.device, batch, 10 if run.cuda else 2,
                             **({k: small[k] for k in ("T", "channels", "grid")} if small else {})))
    lines = [f"{r['convention']:<8} gallery {r['gallery']:>6}: {r['seconds']:.1f} s ({r['srm_pairs']:,} SRM pairs, "
             f"{r['pairs_per_s']:,.0f} pairs/s in the ranking) target ≤ {EVAL_TARGET_S} s "
             f"{'met' if r['seconds'] <= EVAL_TARGET_S else 'NOT met'}" for r in ranking]
    lines += [f"exact M, {p['pairs_per_batch']} pairs/batch: {p['pairs_per_s']:,.0f} pairs/s (reference "
              f"{REFERENCE['srm_pairs_per_s']:,}); every MARS pair: "
              + ", ".join(f"{c} {x['seconds']:,.0f} s" for c, x in p["mars_all_pairs"].items())
              for p in pairs if "pairs_per_s" in p]
    return {"ranking": ranking, "target": target, "srm_pairs": pairs, "reference": REFERENCE["srm_pairs_per_s"],
            "summary": lines}


# ------------------------------------------------------------------------------ 7. medium_training

def folder_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


def medium_training(run: Run) -> dict:
    s = run.sizes
    out = {"preset": s.medium_preset, "config": s.medium_config}
    with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=run.args.tmp) as tmp:
        data = Path(tmp) / "synthetic"
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "data_prep", "synthetic", "--out", str(data), "--preset", s.medium_preset]
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                               timeout=max(5.0, run.left() - 45))  # leave time to train
        except subprocess.TimeoutExpired:
            return {**out, **skipped(f"time budget: generating the {s.medium_preset} preset took over "
                                     f"{time.perf_counter() - t:.0f} s")}
        if p.returncode != 0:
            raise RuntimeError(f"data_prep failed (rc {p.returncode}): {(p.stdout + p.stderr)[-1500:]}")
        manifest = Manifest.load(data)
        out.update(generate_s=time.perf_counter() - t, dataset_gib=folder_gib(data), tracklets=len(manifest),
                   frames=manifest.total_frames)
        overrides = [f"data.dataset={data}", f"data.cache_dir={Path(tmp) / 'cache'}", f"train.device={run.device.type}",
                     f"train.epochs={s.medium_epochs}", f"train.steps_per_epoch={s.medium_steps}",
                     f"train.warmup={s.medium_warmup}", "train.eval_every=0", "train.progress=false",
                     "train.keep_last=1", f"train.out_dir={Path(tmp) / 'run'}", "eval.exact=false"]
        config = Config.from_yaml(ROOT / s.medium_config, overrides)
        out["overrides"] = [o for o in overrides if tmp not in o]
        t = time.perf_counter()
        cache = FrameCache.build(manifest, config.model.height, config.model.width, config.data.cache_dir,
                                 progress=False)
        out.update(cache_s=time.perf_counter() - t, cache_gib=cache.nbytes / 2**30)
        t = time.perf_counter()
        trainer = Trainer(config, manifest=manifest, cache=cache)
        out["trainer_setup_s"] = time.perf_counter() - t  # the model, and the cache copied to the GPU if it fits
        if run.cuda:
            out["gpu_memory_after_setup_gib"] = torch.cuda.memory_allocated(run.device) / 2**30
        reset_peak(run.device)
        t = time.perf_counter()
        history = trainer.fit()
        out.update(fit_s=time.perf_counter() - t, frames_per_s=[row["frames_per_s"] for row in history],
                   final_loss=history[-1]["loss"], peak_memory_gib=peak_gib(run.device))
        t = time.perf_counter()
        with torch.no_grad():
            result = evaluate(trainer.model, manifest, cache, config.eval, split=config.data.split,
                              device=trainer.device, progress=False)
        out.update(eval_s=time.perf_counter() - t, eval_seconds={k: float(v) for k, v in result.seconds.items()},
                   rank1=result.rank1, rank5=result.rank5, mAP=result.mAP, queries=result.num_queries,
                   gallery=result.num_gallery, ranking=result.ranking)
        trainer.close()
    out["summary"] = [
        f"{s.medium_preset}: {out['tracklets']} tracklets, {out['frames']:,} frames generated in {out['generate_s']:.0f} s "
        f"({out['dataset_gib']:.2f} GiB); cache {out['cache_gib']:.1f} GiB in {out['cache_s']:.0f} s",
        f"trained {s.medium_epochs}×{s.medium_steps} steps in {out['fit_s']:.0f} s: "
        + ", ".join(f"{x:,.0f}" for x in out["frames_per_s"]) + " frames/s per epoch",
        f"evaluated in {out['eval_s']:.0f} s: rank-1 {out['rank1']:.1f}, mAP {out['mAP']:.1f}"]
    return out


# ------------------------------------------------------------------------------ the run

SECTIONS = [  # name, function, budget (s), least time left to start it (s), needs CUDA outside --smoke
    ("environment", environment, 15, 0, False),
    ("cuda_tests", cuda_tests, 90, 30, True),
    ("checks", checks, 60, 20, True),
    ("bench_model", bench_model_section, 150, 30, True),
    ("bench_train", bench_train_section, 120, 30, True),
    ("bench_eval", bench_eval_section, 60, 20, True),
    ("medium_training", medium_training, 170, 90, True),
]


def write(report: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU without CUDA): the test's run")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--budget-s", type=float, default=480, help="total time; late sections are skipped past it")
    ap.add_argument("--hard-limit-s", type=float, help="watchdog: write the JSON and exit (default budget + 30)")
    ap.add_argument("--only", nargs="+", choices=[s[0] for s in SECTIONS], help="run these sections only")
    ap.add_argument("--clips", type=int, help="clips per step (default 64; 4 with --smoke)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, help="bench_model's variants (default all six)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurements")
    ap.add_argument("--eval-scale", type=float, help="bench_eval's fraction of MARS (default 1)")
    ap.add_argument("--medium-preset", choices=("tiny", "small", "medium", "large"), help="default medium")
    ap.add_argument("--medium-epochs", type=int, help="default 2")
    ap.add_argument("--medium-steps", type=int, help="steps per epoch (default 100)")
    ap.add_argument("--tmp", help="folder for the generated dataset and its cache (default: the system's)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 with --smoke on a CPU)")
    args = ap.parse_args(argv)
    run = Run(args)
    if args.threads or (run.smoke and not run.cuda):  # tiny CPU work: one thread beats busy neighbours
        torch.set_num_threads(args.threads or 1)
    start = T0
    report = {"script": "benchmarks/gpu_check.py", "mode": "smoke" if run.smoke else "full",
              "device": str(run.device), "argv": sys.argv[1:] if argv is None else list(argv),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "budget_s": args.budget_s, "sizes": dataclasses.asdict(run.sizes),
              "targets": {"train_frames_per_s": TRAIN_TARGET_FPS, "eval_seconds": EVAL_TARGET_S},
              "sections": {}, "finished": False}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    current = {"name": None}

    def watchdog():  # a hung section must not cost the figures already measured
        name = current["name"]
        if name:
            report["sections"][name] = {"status": "failed", "why": f"still running at the hard limit "
                                        f"({hard:.0f} s): the watchdog ended the run"}
        report["total_s"] = time.perf_counter() - start
        with contextlib.suppress(Exception):
            write(report, args.out)
        print(f"gpu_check: hard limit {hard:.0f} s reached in {name}; wrote {args.out}", flush=True)
        os._exit(3)

    hard = args.hard_limit_s or args.budget_s + 30
    timer = threading.Timer(hard - (time.perf_counter() - start), watchdog)
    timer.daemon = True
    timer.start()
    print(f"gpu_check ({report['mode']}, {run.device}, budget {args.budget_s:.0f} s) → {args.out}"
          + ("" if run.cuda or run.smoke else "; no CUDA: only the environment (--smoke runs tiny sizes on the CPU)"),
          flush=True)
    for name, fn, budget, least, needs_cuda in SECTIONS:
        left = args.budget_s - (time.perf_counter() - start)
        if args.only and name not in args.only:
            entry = skipped("not in --only")
        elif needs_cuda and not run.cuda and not run.smoke:
            entry = skipped("no CUDA")
        elif left < least:
            entry = skipped(f"time budget ({left:.0f} s left, needs {least} s)")
        else:
            current["name"], run.deadline = name, time.perf_counter() + min(budget, left)
            print(f"-- {name} (budget {min(budget, left):.0f} s)", flush=True)
            t = time.perf_counter()
            entry = {"status": "ok", **attempt(fn, run)}
            entry["seconds"] = time.perf_counter() - t
            entry["budget_s"] = min(budget, left)
            bad = failures({k: v for k, v in entry.items() if k != "status"})
            if bad and entry["status"] == "ok":
                entry.update(status="failed", why="failed parts: " + ", ".join(bad))
            current["name"] = None
            gc.collect()  # free what the section left on the GPU
            if run.cuda:
                torch.cuda.empty_cache()
        report["sections"][name] = entry
        report["total_s"] = time.perf_counter() - start
        write(report, args.out)
        took = f" ({entry['seconds']:.1f} s)" if "seconds" in entry else ""
        why = entry.get("why") or entry.get("error")
        print(f"== {name}: {entry['status']}{took}" + (f": {why}" if why else ""), flush=True)
        for line in entry.get("summary", []):
            print(f"   {line}", flush=True)
        if entry["status"] == "failed" and entry.get("traceback"):
            print("   " + "\n   ".join(entry["traceback"][-6:]), flush=True)
    timer.cancel()
    statuses = {n: e["status"] for n, e in report["sections"].items()}
    report.update(finished=True, total_s=time.perf_counter() - start,
                  failed=[n for n, s in statuses.items() if s == "failed"],
                  skipped=[n for n, s in statuses.items() if s == "skipped"])
    write(report, args.out)
    print(f"gpu_check done in {report['total_s']:.0f} s: " + ", ".join(f"{n} {s}" for n, s in statuses.items()))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
