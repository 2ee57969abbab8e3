"""Everything that needs CUDA, in one run of at most 8 minutes, written to one JSON of figures.

    python3 benchmarks/gpu_check.py --out gpu_check.json                 # on the GPU machine (--budget-s 480)
    python3 benchmarks/gpu_check.py --budget-s 240 --out gpu_check.json  # short of device time: sections 1-4
    python3 benchmarks/gpu_check.py --plan                               # which sections a budget runs
    python3 benchmarks/gpu_check.py --smoke --out /tmp/gc.json           # tiny sizes on the CPU

Sections, most important first (each one's budget counts its process's start-up; they add up
to 420 s, 60 s under the default budget):

1. environment  (10 s) torch / CUDA / cuDNN versions, TF32 flags, the GPU and its memory, CPUs,
                free disk, git commit
2. training    (120 s) end to end on CUDA: the synthetic ``small`` preset generated, its 227×227
                frame cache, ``all`` trained with configs/default.yaml for one epoch (checkpoint,
                ``Trainer.evaluate``), resumed from last.pt in a new Trainer for the second (RNG
                state, checkpoint, evaluation), then the checkpoint loaded and evaluated as
                ``reidkit evaluate`` does; ``--train-compile`` compiles the CNN here too
3. cuda_tests   (45 s) the tests that skip without CUDA, by pytest in a subprocess (skipped
                when pytest is missing)
4. checks       (35 s) (a) dtypes of every LSTM under bf16 autocast, the TF32 flags in effect
                and what TF32 would change in pool5 differences and an LSTM sweep, the RNN
                kernels; (b) host syncs per training step; (c) the step's peak memory
5. bench_train  (45 s) end-to-end ``Trainer`` frames/s: all and cnn, the frames on the GPU or
                gathered on the host (train.gpu_cache=never), cudnn.benchmark off
6. host_path    (30 s) a memory-mapped cache on disk, read cold: gather threads, the training
                loader's host path and evaluation's frame pipeline around simulated steps, upload
7. bench_model  (30 s) the trainer's step on synthetic clips per variant: NCHW, channels_last
8. bench_eval   (25 s) MARS-size ranking with SRM re-ranking (target ≤ 60 s), exact M pairs/s
9. compile      (80 s) ``all`` with train.compile (one cold compile of the Trainer's own graph),
                then ``Trainer.evaluate``: the graphs compiled during it (none expected)

Each section runs in a process of its own (``--in-process``: all in this one): a failure, a
crash, a hang or a CUDA error that poisons the context costs that section only. The section
writes its result (with the traceback's tail when it failed) before anything else touches CUDA;
a process that dies or overruns its budget by ``GRACE_S`` is killed, and its output's tail and
the figures it had noted are kept. A section starts only when the total ``--budget-s`` leaves
it the least time it needs, with its budget cut to what is left. The JSON is rewritten after
every section, and a watchdog, started before anything asks for CUDA, writes it and exits at
``--hard-limit-s``. Figures only: nothing is asserted on time. Needs only python3 + torch
(+ numpy, PIL, yaml); runs from a bare checkout.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # the budget counts from here, imports included

import argparse
import collections
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
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a bare checkout: no pip install needed
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_eval  # noqa: E402
import bench_host_path  # noqa: E402
import bench_model  # noqa: E402
import bench_train  # noqa: E402

from reidkit.checkpoint import load_model  # noqa: E402
from reidkit.config import Config  # noqa: E402
from reidkit.data import FrameCache, Manifest  # noqa: E402
from reidkit.data.cache import gather_workers  # noqa: E402
from reidkit.evaluate import evaluate  # noqa: E402
from reidkit.models import VARIANTS, ModelConfig, build_model  # noqa: E402
from reidkit.models.caffenet import cudnn_tf32  # noqa: E402
from reidkit.train import Trainer, configure_cuda_backends  # noqa: E402

DEFAULT_BUDGET_S = 480
GRACE_S = 15  # past its budget, a section's process is killed
TRAIN_TARGET_FPS = 20_000  # end-to-end training frames/s of `all` (64 clips × 6 × 227², bf16)
EVAL_TARGET_S = 60  # MARS-size evaluation with SRM re-ranking of the top-100
REFERENCE = {"srm_pairs_per_s": 150_000, "caffenet_train_step_fps_32_clips": 18_000,
             "caffenet_compiled_fps_32_clips": 26_000, "all_train_step_fps_32_clips": 7_000,
             "end_to_end_fps_64_clips": 14_800}  # docs/gpu_check.md "Reference figures", one H200


@dataclasses.dataclass
class Sizes:
    """What each section measures; the defaults fit one H100/H200 in the 480 s budget."""

    clips: int = 64  # clips per step (P × K = clips/4 × 4 in the Trainer)
    model_steps: int = 20  # timed steps per bench_model row
    train_steps: int = 50  # timed steps per bench_train run
    sync_steps: int = 10  # training steps whose host syncs are counted
    variants: tuple = VARIANTS
    compile: bool = True  # the compile section
    eval_scale: float = 1.0  # fraction of MARS's test set
    eval_top_k: int = 100
    srm_pairs: int = 16384
    train_preset: str = "small"  # the training section: synthetic preset, config, epochs × steps
    train_config: str = "configs/default.yaml"
    train_epochs: int = 2
    train_steps_per_epoch: int = 100
    train_warmup: int = 20  # lr warm-up steps (default.yaml's 500 exceed the whole run)
    train_compile: bool = False
    host_gib: float = 6.0  # the host_path section's cache file
    host_size: tuple = (227, 227)


SMOKE = Sizes(clips=4, model_steps=1, train_steps=1, sync_steps=2, eval_scale=0.002, eval_top_k=5,
              srm_pairs=16, train_preset="tiny", train_config="configs/smoke.yaml", train_epochs=2,
              train_steps_per_epoch=2, train_warmup=0, host_gib=0.01, host_size=(64, 32))


class Run:
    """The run's settings and clock; ``deadline`` is the current section's. ``note`` keeps a
    section's figures as they come (written to ``notes_path``, so a killed section keeps them)."""

    def __init__(self, args, cuda: bool | None = None):
        self.args, self.smoke = args, args.smoke
        if cuda is None:
            cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        self.cuda = cuda
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.sizes = dataclasses.replace(SMOKE if args.smoke else Sizes())
        for key in ("clips", "eval_scale", "train_preset", "train_epochs", "train_steps_per_epoch", "host_gib"):
            if getattr(args, key, None) is not None:
                setattr(self.sizes, key, getattr(args, key))
        if args.variants:
            self.sizes.variants = tuple(args.variants)
        if args.no_compile:
            self.sizes.compile = False
        if args.train_compile:
            self.sizes.train_compile = True
        self.deadline = float("inf")
        self.notes: dict = {}
        self.notes_path: Path | None = None

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def note(self, **figures) -> None:
        self.notes.update(figures)
        if self.notes_path is not None:
            with contextlib.suppress(OSError):
                write({"status": "running", **self.notes}, self.notes_path)

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
               pytest=importlib.util.find_spec("pytest") is not None,
               triton=importlib.util.find_spec("triton") is not None, cpu_count=os.cpu_count(),
               cpu_affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
               torch_threads=torch.get_num_threads(), tmp_dir=str(tmp),
               disk_free_gib=shutil.disk_usage(tmp).free / 2**30,
               repo_disk_free_gib=shutil.disk_usage(ROOT).free / 2**30,
               memory_gib=(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
                           if hasattr(os, "sysconf") else None),
               tf32_default=cudnn_tf32(), git_commit=git("rev-parse", "HEAD"),
               git_dirty=bool(git("status", "--porcelain")))
    if env["cuda_available"] and run.device.type == "cuda":
        props = torch.cuda.get_device_properties(run.device)
        free, total = torch.cuda.mem_get_info(run.device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                   gpu_memory_total_gib=total / 2**30, gpu_memory_free_gib=free / 2**30,
                   bf16_supported=torch.cuda.is_bf16_supported(), device_count=torch.cuda.device_count())
    gpu = (f"{env['gpu']} ({env['gpu_memory_free_gib']:.0f} of {env['gpu_memory_total_gib']:.0f} GiB free)"
           if "gpu" in env else "no GPU")
    env["summary"] = [f"torch {env['torch']} CUDA {env['cuda']} cuDNN {env['cudnn']}, {gpu}, {env['cpu_count']} CPUs, "
                      f"{env['disk_free_gib']:.0f} GiB free in {tmp}, commit {(env['git_commit'] or '?')[:10]}",
                      f"TF32 by default: cuDNN conv {env['tf32_default']['conv']}, rnn {env['tf32_default']['rnn']}, "
                      f"matmul {env['tf32_default']['matmul']}"]
    return env


# ------------------------------------------------------------------------------ 2. training

def folder_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


def training(run: Run) -> dict:
    """End to end on the device: generate, cache, train an epoch (checkpoint, evaluation), resume
    for the next in a new Trainer, then load the checkpoint and evaluate it as the CLI does."""
    s = run.sizes
    run.note(preset=s.train_preset, config=s.train_config, compile=bool(s.train_compile and run.cuda))
    with tempfile.TemporaryDirectory(prefix="gpu_check_", dir=run.args.tmp) as tmp:
        data, out_dir = Path(tmp) / "synthetic", Path(tmp) / "run"
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "data_prep", "synthetic", "--out", str(data), "--preset", s.train_preset]
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                               timeout=max(5.0, run.left() - 60))  # leave a minute to train
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"generating the {s.train_preset} preset took over {time.perf_counter() - t:.0f} s, "
                               f"leaving no time to train (--train-preset tiny is quicker)") from None
        if p.returncode != 0:
            raise RuntimeError(f"data_prep failed (rc {p.returncode}): {(p.stdout + p.stderr)[-1500:]}")
        manifest = Manifest.load(data)
        run.note(generate_s=time.perf_counter() - t, dataset_gib=folder_gib(data), tracklets=len(manifest),
                 frames=manifest.total_frames)

        def config_for(epochs: int) -> Config:
            overrides = [f"data.dataset={data}", f"data.cache_dir={Path(tmp) / 'cache'}",
                         f"train.device={run.device.type}", f"train.epochs={epochs}",
                         f"train.steps_per_epoch={s.train_steps_per_epoch}", f"train.warmup={s.train_warmup}",
                         "train.eval_every=1", "train.progress=false", "train.keep_last=2",
                         f"train.out_dir={out_dir}", f"train.compile={bool(s.train_compile)}", "eval.exact=false"]
            return Config.from_yaml(ROOT / s.train_config, overrides)

        config = config_for(1)
        t = time.perf_counter()
        cache = FrameCache.build(manifest, config.model.height, config.model.width, config.data.cache_dir,
                                 progress=False)
        run.note(cache_s=time.perf_counter() - t, cache_gib=cache.nbytes / 2**30)

        epochs: list[dict] = []

        def timed_trainer(config: Config) -> Trainer:
            """A Trainer whose evaluations and checkpoints are timed into ``epochs``' rows."""
            t = time.perf_counter()
            trainer = Trainer(config, manifest=manifest, cache=cache)
            setup_s = time.perf_counter() - t  # the model, and the training frames copied to the GPU
            evaluate_, save_ = trainer.evaluate, trainer.save_checkpoint
            times = {"evaluate_s": 0.0, "checkpoint_s": 0.0}

            def evaluate_timed():
                t = time.perf_counter()
                metrics = evaluate_()
                times["evaluate_s"] += time.perf_counter() - t
                return metrics

            def save_timed():
                t = time.perf_counter()
                save_()
                times["checkpoint_s"] += time.perf_counter() - t

            def on_epoch_end(trainer, epoch, row):
                epochs.append({**row, **times, "gpu_memory_peak_gib": peak_gib(run.device)})
                times.update(evaluate_s=0.0, checkpoint_s=0.0)
                run.note(epochs=epochs)

            trainer.evaluate, trainer.save_checkpoint = evaluate_timed, save_timed
            trainer.callbacks.append({"on_epoch_end": on_epoch_end})
            run.note(setup_s=[*run.notes.get("setup_s", []), setup_s])
            return trainer

        reset_peak(run.device)
        trainer = timed_trainer(config)
        if run.cuda:
            run.note(gpu_memory_after_setup_gib=torch.cuda.memory_allocated(run.device) / 2**30,
                     frames_resident=trainer.loader.resident, tf32_after_setup=cudnn_tf32())
        t = time.perf_counter()
        trainer.fit()
        run.note(first_fit_s=time.perf_counter() - t)
        trainer.close()
        del trainer
        gc.collect()
        if s.train_epochs > 1 and run.left() > 25:
            trainer = timed_trainer(config_for(s.train_epochs))
            t = time.perf_counter()
            trainer.fit(resume=True)  # the checkpoint's model, optimiser, RNG states, history
            run.note(resumed_fit_s=time.perf_counter() - t, resumed_from_epoch=1, epochs_run=trainer.epoch)
            trainer.close()
            del trainer
            gc.collect()
        elif s.train_epochs > 1:
            run.note(resume=skipped(f"time budget ({run.left():.0f} s left)"))
        if run.left() > 15:  # the checkpoint as `reidkit evaluate` reads it
            t = time.perf_counter()
            model, saved = load_model(out_dir / "last.pt")
            model.to(run.device)
            result = evaluate(model, manifest, cache, saved.eval, split=saved.data.split, device=run.device,
                              progress=False)
            run.note(checkpoint_mib=(out_dir / "last.pt").stat().st_size / 2**20,
                     evaluate_from_checkpoint={"seconds": time.perf_counter() - t, "rank1": result.rank1,
                                               "mAP": result.mAP, "queries": result.num_queries,
                                               "gallery": result.num_gallery, "ranking": result.ranking,
                                               "parts_s": {k: float(v) for k, v in result.seconds.items()}})
        else:
            run.note(evaluate_from_checkpoint=skipped(f"time budget ({run.left():.0f} s left)"))
    out = dict(run.notes)
    rows = out.get("epochs", [])
    out["summary"] = [
        f"{s.train_preset}: {out['tracklets']} tracklets, {out['frames']:,} frames generated in {out['generate_s']:.0f} s; "
        f"cache {out['cache_gib']:.2f} GiB in {out['cache_s']:.0f} s",
        *[f"epoch {r['epoch']}: {r['frames_per_s']:,.0f} frames/s, loss {r['loss']:.3f}, rank-1 {r.get('rank1', float('nan')):.1f}, "
          f"mAP {r.get('mAP', float('nan')):.1f}; evaluation {r['evaluate_s']:.1f} s, checkpoint {r['checkpoint_s']:.1f} s"
          for r in rows],
        "resumed from last.pt in a new Trainer" if "resumed_fit_s" in out else "not resumed (time budget)"]
    e = out.get("evaluate_from_checkpoint", {})
    if "rank1" in e:
        out["summary"].append(f"last.pt loaded and evaluated in {e['seconds']:.1f} s: rank-1 {e['rank1']:.1f}, "
                              f"mAP {e['mAP']:.1f}")
    return out

# ------------------------------------------------------------------------------ 3. cuda_tests

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


# ------------------------------------------------------------------------------ 4. checks

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


def tf32_effect(run: Run) -> dict:
    """What cuDNN's TF32 would change where the models compute in fp32: the relative error of a
    pool5 difference map (two similar clips, conv5/pool5 as under bf16 autocast) and of an SRM
    sweep's LSTM output, TF32 against fp32. Leaves TF32 off, as the trainer sets it."""
    if not run.cuda:
        return skipped("no CUDA")
    from reidkit.models.spatial import sweep

    config = run.model_config()
    torch.manual_seed(0)
    cnn = build_model("cnn_diff", config=config).cnn.to(run.device).eval()
    a = torch.randn(12, 3, config.height, config.width, device=run.device)
    b = a + 0.05 * torch.randn_like(a)  # the same person, slightly changed
    lstm = nn.LSTM(config.srm_in, config.srm_hidden, batch_first=True).to(run.device)
    u = torch.randn(256, config.seq_len, 6, 6, config.srm_in, device=run.device)
    out = {}
    with torch.no_grad():
        for tf32 in (True, False):
            torch.backends.cudnn.allow_tf32 = tf32
            with torch.autocast("cuda", dtype=torch.bfloat16):
                pool5 = cnn(a)[0]
                d = pool5 - cnn(b)[0]
            out[tf32] = (d.float(), sweep(lstm, u, 2).float(), pool5.float())
    torch.backends.cudnn.allow_tf32 = False
    rel = lambda x, y: float((x - y).norm() / y.norm().clamp_min(1e-30))  # noqa: E731
    return {"pool5_difference_rel_error": rel(out[True][0], out[False][0]),
            "lstm_sweep_rel_error": rel(out[True][1], out[False][1]),
            "pool5_difference_rel_size": float(out[False][0].norm() / out[False][2].norm()),
            "note": "relative L2 error of TF32 against fp32; bf16 rounding is ~4e-3"}


def lstm_dtypes(run: Run) -> dict:
    """(a) Every LSTM's input/output dtypes under bf16 autocast (hooks), the cuDNN TF32 flags
    the trainer leaves (an fp32 LSTM in TF32 is not fp32), what TF32 would change, and which
    kernels run the metric branch's six sweeps and the TAM's cell (profiler), forward + backward."""
    configure_cuda_backends(run.device)  # what a Trainer sets: cudnn.benchmark, TF32 off
    tf32 = cudnn_tf32()
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
    true_fp32 = fp32 and (tf32["rnn"] is False or not run.cuda)

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
    effect = attempt(tf32_effect, run)
    return {"lstms": records, "all_lstms_fp32": fp32, "cudnn_tf32": tf32, "lstms_true_fp32": true_fp32,
            "tf32_effect": effect, "pool5_dtype": str(out.pool5.dtype),
            "metric_branch": {"pairs": pairs, **metric}, "tam": {"clips": len(fc7), **attention},
            "summary": [f"LSTMs under bf16 autocast all fp32 in/out: {fp32} ({len(records)} modules); cuDNN TF32 "
                        f"conv {tf32['conv']}, rnn {tf32['rnn']}: true fp32 {true_fp32}",
                        *([f"TF32 would change a pool5 difference by {effect['pool5_difference_rel_error']:.1e}, "
                           f"an LSTM sweep by {effect['lstm_sweep_rel_error']:.1e} (relative)"]
                          if "pool5_difference_rel_error" in effect else []),
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


# ------------------------------------------------------------------------------ 5. bench_train

def bench_train_section(run: Run) -> dict:
    s, (P, K) = run.sizes, run.pk()
    config = Config.from_yaml(run.train_config(), [f"train.P={P}", f"train.K={K}"] if P else [])
    c = config.model
    t = time.perf_counter()
    ids = max(2 * config.train.P, 64 if run.cuda else 32)
    data = bench_train.random_dataset(ids, 4, 24, c.height, c.width)
    data_s = time.perf_counter() - t
    plan = [("all", True, "auto"), ("cnn", True, "auto"), ("all", True, "never"), ("all", False, "auto")]
    runs = []
    for variant, benchmark, gpu_cache in plan:
        on = lambda flag: "on" if flag else "off"  # noqa: E731
        head = {"variant": variant, "setting": f"benchmark={on(benchmark)} frames={'host' if gpu_cache == 'never' else 'GPU'}"}
        if not run.cuda and (gpu_cache == "never" or not benchmark or variant != "all"):
            runs.append({**head, **skipped("no CUDA")})
            continue
        if run.left() < 12:
            runs.append({**head, **skipped("time budget")})
            continue
        t = time.perf_counter()
        figures = attempt(bench_train.bench, run.device.type, variant, run.train_config(), P, K, s.train_steps,
                          10 if run.cuda else 0, overrides=[f"train.cudnn_benchmark={benchmark}"], data=data,
                          gpu_cache=gpu_cache)
        runs.append({**head, **figures, "wall_s": time.perf_counter() - t})  # figures: what was in effect
        run.note(runs=runs)
    measured = [r for r in runs if r["variant"] == "all" and "frames_per_s" in r]
    best = max(measured, key=lambda r: r["frames_per_s"], default=None)
    target = {"frames_per_s": TRAIN_TARGET_FPS, "variant": "all", "best": best and best["frames_per_s"],
              "best_setting": best and best["setting"],
              "met": bool(best and best["frames_per_s"] >= TRAIN_TARGET_FPS), "applies": not run.smoke}
    lines = [f"{r['variant']:<4} {r['setting']:<30} "
             + (f"{r['frames_per_s']:>9,.0f} frames/s, {r['ms_per_step']:.1f} ms/step, peak "
                f"{r['peak_memory_gib'] or 0:.1f} GiB" if "frames_per_s" in r else r.get("why") or r.get("error", ""))
             for r in runs]
    lines.append(f"target ≥ {TRAIN_TARGET_FPS:,} frames/s for all: "
                 + (f"{'met' if target['met'] else 'NOT met'} ({best['frames_per_s']:,.0f})" if best else "not measured")
                 + (" (smoke sizes: not comparable)" if run.smoke else ""))
    return {"random_data_s": data_s, "runs": runs, "target": target, "summary": lines}


# ------------------------------------------------------------------------------ 6. host_path

def host_path(run: Run) -> dict:
    """bench_host_path at a cache of ``--host-gib`` in ``--tmp``: cold reads, 1 and the loader's
    default number of gather threads, the real loader and test clips on CUDA."""
    s = run.sizes
    figures = bench_host_path.run(
        s.host_gib, run.args.tmp, run.device, workers=(1, gather_workers(run.device if run.cuda else "cuda")),
        steps=12 if not run.smoke else 2, eval_batches=6 if not run.smoke else 1,
        upload_gib=min(2.0, s.host_gib / 2), height=s.host_size[0], width=s.host_size[1],
        deadline=run.deadline - 5)
    return {**figures, "summary": bench_host_path.summary(figures)}


# ------------------------------------------------------------------------------ 7. bench_model

def bench_model_section(run: Run) -> dict:
    config, s = run.model_config(), run.sizes
    rows, table = [], {}
    for channels_last in (False, True):
        for variant in s.variants:
            key = "channels_last" if channels_last else "nchw"
            if run.left() < 6:
                rows.append({"variant": variant, "layout": key, **skipped("time budget")})
                continue
            reset_peak(run.device)
            t = time.perf_counter()
            row = attempt(lambda: {"frames_per_s": bench_model.bench(
                variant, config, s.clips, run.device, s.model_steps, 5 if run.cuda else 1, amp=run.cuda,
                channels_last=channels_last)})
            rows.append({"variant": variant, "layout": key, **row, "wall_s": time.perf_counter() - t,
                         "peak_memory_gib": peak_gib(run.device)})
            if "frames_per_s" in row:
                table.setdefault(variant, {})[key] = row["frames_per_s"]
            run.note(rows=rows)
    setting = (f"{config.height}×{config.width} {config.cnn}, {s.clips} clips × {config.seq_len}, "
               f"{'bf16 autocast' if run.cuda else 'fp32'}, {s.model_steps} timed steps of Trainer.train_step's "
               f"work (forward, losses, backward outside autocast, clip, Adam) on synthetic clips on the device")
    return {"setting": setting, "cudnn_benchmark": torch.backends.cudnn.benchmark, "rows": rows,
            "frames_per_s": table, "reference": REFERENCE,
            "summary": [setting] + [f"{v:<8} " + "  ".join(f"{k} {x:,.0f}" for k, x in d.items())
                                    for v, d in table.items()]}


# ------------------------------------------------------------------------------ 8. bench_eval

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




# ------------------------------------------------------------------------------ 9. compile

def compile_section(run: Run) -> dict:
    """``all`` with train.compile: the cold compile in the warm-up (the Trainer's own graph, bf16
    clips), the compiled steps, then ``Trainer.evaluate`` and the graphs compiled during it."""
    s, (P, K) = run.sizes, run.pk()
    if not s.compile:
        return skipped("--no-compile")
    config = Config.from_yaml(run.train_config(), [f"train.P={P}", f"train.K={K}"] if P else [])
    c = config.model
    ids = max(2 * config.train.P, 64 if run.cuda else 32)
    data = bench_train.random_dataset(ids, 4, 24, c.height, c.width, test_ids=8)
    figures = bench_train.bench(run.device.type, "all", run.train_config(), P, K, s.train_steps,
                                30 if run.cuda else 0, True, data=data, evaluate=True)
    summary = [f"compiled all: warm-up {figures['warmup_steps']} steps (the compile) {figures['warmup_s']:.0f} s, "
               f"then {figures['frames_per_s']:,.0f} frames/s; graphs compiled in training "
               f"{figures.get('graphs_compiled_training')}",
               f"Trainer.evaluate {figures['evaluate_s']:.1f} s, graphs compiled during it "
               f"{figures['graphs_compiled_during_evaluate']} (0 expected)"]
    if not run.cuda:
        summary.append("(no CUDA: the Trainer compiles only on CUDA; this ran uncompiled)")
    return {**figures, "summary": summary}


# ------------------------------------------------------------------------------ the run

@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    fn: Callable
    budget: float  # seconds, the section's process start-up included
    least: float  # fewest seconds left for it to start
    needs_cuda: bool  # outside --smoke


SECTIONS = [  # most important first
    Section("environment", environment, 10, 5, False),
    Section("training", training, 120, 60, True),
    Section("cuda_tests", cuda_tests, 45, 20, True),
    Section("checks", checks, 35, 15, True),
    Section("bench_train", bench_train_section, 45, 20, True),
    Section("host_path", host_path, 30, 15, True),
    Section("bench_model", bench_model_section, 30, 15, True),
    Section("bench_eval", bench_eval_section, 25, 10, True),
    Section("compile", compile_section, 80, 60, True),
]
BY_NAME = {s.name: s for s in SECTIONS}


def schedule(budget_s: float, sections=SECTIONS) -> list[dict]:
    """Which sections a ``budget_s`` run starts, and with what budget, when every section before
    uses all of its own: the worst case (``--plan`` prints it)."""
    plan, used = [], 0.0
    for s in sections:
        left = budget_s - used
        runs = left >= s.least
        given = min(s.budget, left) if runs else 0.0
        plan.append({"name": s.name, "starts_at_s": used, "budget_s": given, "full_budget": given == s.budget,
                     "runs": runs})
        used += given
    return plan


def write(report: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, path)


def finish_entry(entry: dict, seconds: float, budget: float) -> dict:
    """A section's entry with its time, and "failed" when a part inside it failed."""
    entry["seconds"], entry["budget_s"] = seconds, budget
    bad = failures({k: v for k, v in entry.items() if k != "status"})
    if bad and entry.get("status") == "ok":
        entry.update(status="failed", why="failed parts: " + ", ".join(bad))
    return entry


def run_in_process(section: Section, run: Run, budget: float, record: Callable[[dict], None]) -> str | None:
    """Run one section here: its entry goes to ``record`` (which writes the JSON) before anything
    touches CUDA again; then the memory it left is freed. Returns why CUDA is no longer usable
    (a sticky error: the freeing failed), else None."""
    run.deadline, run.notes = time.perf_counter() + budget, {}
    t = time.perf_counter()
    entry = finish_entry({"status": "ok", **attempt(section.fn, run)}, time.perf_counter() - t, budget)
    record(entry)
    try:
        gc.collect()  # free what the section left on the GPU
        if run.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except Exception as e:  # noqa: BLE001 (e.g. an illegal address: the context is lost)
        entry["cleanup_error"] = f"{type(e).__name__}: {e}"[:1000]
        record(entry)
        return f"{section.name}: {entry['cleanup_error']}"
    return None


def run_child(cmd: list[str], out_path: Path, timeout: float, echo: Callable[[str], None] = print) -> dict:
    """Run one section's process (``cmd``) for at most ``timeout`` s; returns the entry it wrote
    to ``out_path``, or, when it died, overran or wrote none, a "failed" entry with its exit
    status, its output's tail and the figures it had noted."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    tail: collections.deque = collections.deque(maxlen=60)

    def read():
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            echo(f"   | {line.rstrip()}")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    killed = False
    try:
        rc = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        killed = True
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)  # the section and its children (pytest, compile workers)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        rc = proc.returncode
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # what it left running (compile workers hold the GPU and the pipe)
    reader.join(timeout=5)
    entry = None
    with contextlib.suppress(OSError, ValueError):
        entry = json.loads(out_path.read_text())
    if isinstance(entry, dict) and entry.get("status") in ("ok", "failed", "skipped") and not killed:
        if rc:
            entry["exit_status"] = rc  # it wrote its result, then died (e.g. in CUDA's teardown)
        return entry
    why = (f"killed at its time limit ({timeout:.0f} s)" if killed else
           f"its process died (exit status {rc}) without writing a result")
    failed = {"status": "failed", "why": why, "exit_status": rc, "output_tail": list(tail)[-40:]}
    if isinstance(entry, dict):  # the figures it had noted before
        failed["noted"] = {k: v for k, v in entry.items() if k != "status"}
    return failed


def child_main(args) -> int:
    """One section in this process (``--child``): its entry is written to ``--child-out`` as soon
    as it is known, before anything else touches CUDA; then the process ends without tearing
    CUDA down (after a sticky error that could raise or hang)."""
    section = BY_NAME[args.child]
    run = Run(args)
    if args.threads or (run.smoke and not run.cuda):
        torch.set_num_threads(args.threads or 1)
    run.deadline, run.notes_path = T0 + args.section_budget, args.child_out
    t = time.perf_counter()
    entry = finish_entry({"status": "ok", **attempt(section.fn, run)}, time.perf_counter() - t, args.section_budget)
    entry["process_s"] = time.perf_counter() - T0
    write(entry, args.child_out)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def print_plan(budget_s: float) -> None:
    print(f"budget {budget_s:.0f} s; sections take at most their budget (their process's start-up included):")
    for p in schedule(budget_s):
        when = f"starts by {p['starts_at_s']:>4.0f} s, budget {p['budget_s']:>4.0f} s" if p["runs"] else "skipped"
        print(f"  {p['name']:<12} {when}{'' if p['full_budget'] or not p['runs'] else ' (cut short)'}")
    print(f"  the budgets add up to {sum(s.budget for s in SECTIONS):.0f} s")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU without CUDA): the test's run")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                    help="total time; a section that no longer fits is skipped (240: sections 1-4)")
    ap.add_argument("--hard-limit-s", type=float, help="watchdog: write the JSON and exit (default budget + 30)")
    ap.add_argument("--plan", action="store_true", help="print which sections the budget runs, and exit")
    ap.add_argument("--only", nargs="+", choices=list(BY_NAME), help="run these sections only")
    ap.add_argument("--in-process", action="store_true", help="run every section in this process")
    ap.add_argument("--clips", type=int, help="clips per step (default 64; 4 with --smoke)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, help="bench_model's variants (default all six)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile section")
    ap.add_argument("--train-compile", action="store_true", help="compile the CNN in the training section too")
    ap.add_argument("--eval-scale", type=float, help="bench_eval's fraction of MARS (default 1)")
    ap.add_argument("--train-preset", choices=("tiny", "small", "medium", "large"), help="default small")
    ap.add_argument("--train-epochs", type=int, help="default 2 (the second one resumed)")
    ap.add_argument("--train-steps-per-epoch", type=int, help="default 100")
    ap.add_argument("--host-gib", type=float, help="host_path's cache file (GiB, default 6)")
    ap.add_argument("--tmp", help="folder for the generated dataset and the caches (default: the system's)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 with --smoke on a CPU)")
    ap.add_argument("--child", choices=list(BY_NAME), help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--section-budget", type=float, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    if args.plan:
        print_plan(args.budget_s)
        return 0
    start = T0
    argv = sys.argv[1:] if argv is None else list(argv)
    report = {"script": "benchmarks/gpu_check.py", "mode": "smoke" if args.smoke else "full", "argv": argv,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "budget_s": args.budget_s, "isolated": not args.in_process,
              "targets": {"train_frames_per_s": TRAIN_TARGET_FPS, "eval_seconds": EVAL_TARGET_S},
              "plan": schedule(args.budget_s), "sections": {}, "finished": False}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    current = {"name": None}
    hard = args.hard_limit_s or args.budget_s + 30

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

    timer = threading.Timer(hard - (time.perf_counter() - start), watchdog)  # before anything asks for CUDA
    timer.daemon = True
    timer.start()
    write(report, args.out)
    # isolated: this process never touches CUDA; the environment section says whether there is one
    run = Run(args, cuda=None if args.in_process else args.device == "cuda")
    if args.in_process and (args.threads or (run.smoke and not run.cuda)):
        torch.set_num_threads(args.threads or 1)  # tiny CPU work: one thread beats busy neighbours
    report.update(device=str(run.device), sizes=dataclasses.asdict(run.sizes))
    print(f"gpu_check ({report['mode']}, budget {args.budget_s:.0f} s, "
          f"{'in one process' if args.in_process else 'a process per section'}) → {args.out}", flush=True)
    lost = None  # why CUDA is unusable in this process (in-process mode, after a sticky error)
    child_dir = Path(tempfile.mkdtemp(prefix="gpu_check_sections_"))
    try:
        for section in SECTIONS:
            name = section.name
            left = args.budget_s - (time.perf_counter() - start)
            if args.only and name not in args.only and name != "environment":  # (always: it finds the GPU)
                entry = skipped("not in --only")
            elif section.needs_cuda and not run.cuda and not run.smoke:
                entry = skipped("no CUDA")
            elif section.needs_cuda and lost:
                entry = skipped(f"CUDA unusable in this process after {lost}")
            elif left < section.least:
                entry = skipped(f"time budget ({left:.0f} s left, needs {section.least:.0f} s)")
            else:
                budget = min(section.budget, left)
                current["name"] = name
                print(f"-- {name} (budget {budget:.0f} s)", flush=True)
                if args.in_process:
                    def record(entry, name=name):
                        report["sections"][name] = entry
                        report["total_s"] = time.perf_counter() - start
                        write(report, args.out)
                    lost = run_in_process(section, run, budget, record)
                    entry = report["sections"][name]
                else:
                    out = child_dir / f"{name}.json"
                    t = time.perf_counter()
                    limit = min(budget + GRACE_S, hard - (time.perf_counter() - start) - 5)
                    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", name,
                           "--child-out", str(out), "--section-budget", str(budget)]
                    entry = run_child(cmd, out, limit)
                    entry.setdefault("seconds", time.perf_counter() - t)
                    entry.setdefault("budget_s", budget)
                    entry["wall_s"] = time.perf_counter() - t
                current["name"] = None
                if name == "environment" and not args.in_process and args.device == "auto":
                    run = Run(args, cuda=bool(entry.get("cuda_available")))  # the child saw it
                    report["device"] = str(run.device)
            report["sections"][name] = entry
            report["total_s"] = time.perf_counter() - start
            write(report, args.out)
            took = f" ({entry['seconds']:.1f} s)" if "seconds" in entry else ""
            why = entry.get("why") or entry.get("error")
            print(f"== {name}: {entry['status']}{took}" + (f": {why}" if why else ""), flush=True)
            for line in entry.get("summary", []):
                print(f"   {line}", flush=True)
            if entry["status"] == "failed" and (entry.get("traceback") or entry.get("output_tail")):
                print("   " + "\n   ".join((entry.get("traceback") or entry.get("output_tail"))[-6:]), flush=True)
    finally:
        shutil.rmtree(child_dir, ignore_errors=True)
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
