"""What the lesson notebooks share: paths, opening a trained run, recording numbers.

The notebooks import this module, never the runner that executes them (``reidkit.report``).
``open_run`` is the preamble of the lessons that study a trained model (4–6): resolve the
device, load the checkpoint, read the manifest, build or open the frame cache.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import torch

from reidkit.checkpoint import load_model
from reidkit.config import Config
from reidkit.data import FrameCache, Manifest
from reidkit.files import write_json
from reidkit.models import JSTRNN
from reidkit.train import cpu_has_native_bf16, resolve_device

__all__ = ["REPO_ROOT", "Run", "open_run", "write_metrics", "key_metrics", "environment_info", "determinism_info", "git_info"]

REPO_ROOT = Path(__file__).resolve().parents[1]  # lessons' paths are relative to the repository root

PACKAGES = ("reidkit", "torch", "numpy", "scipy", "pillow", "pyyaml", "tqdm", "matplotlib", "seaborn",
            "captum", "ipywidgets", "papermill", "jupytext", "nbconvert", "nbformat", "ipykernel")


class Run(NamedTuple):
    """A trained run ready to study: the model in eval mode on ``device`` and what it was trained on."""

    model: JSTRNN
    config: Config
    manifest: Manifest
    cache: FrameCache
    device: torch.device


def open_run(run_dir: str | Path, dataset_dir: str | Path, device: str = "auto") -> Run:
    """The checkpoint ``run_dir/last.pt``, the manifest at ``dataset_dir`` and its frame cache
    at the model's input size."""
    dev = resolve_device(device)
    model, config = load_model(Path(run_dir) / "last.pt", device=dev)
    manifest = Manifest.load(dataset_dir)
    cache = FrameCache.build(manifest, config.model.height, config.model.width, progress=False)
    return Run(model, config, manifest, cache, dev)


def write_metrics(path: str | Path, metrics: Mapping) -> Path:
    """Write a notebook's numbers as JSON (numpy/torch values → Python, NaN/inf → null).

    By convention ``metrics["key"]`` holds the few scalars ``index.html`` shows.
    """
    return write_json(path, metrics)


def key_metrics(metrics: Mapping) -> dict:
    """What the report's index shows of a notebook: its ``key`` dict, else its top-level scalars."""
    src = metrics.get("key") if isinstance(metrics.get("key"), Mapping) else metrics
    return {k: v for k, v in src.items() if isinstance(v, (int, float, str, bool)) and v is not None}


def environment_info(packages: Sequence[str] = PACKAGES) -> dict:
    """Python, OS, CPU/GPU, torch's thread count and the installed versions of ``packages``."""
    info = {"python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "packages": {}}
    for name in packages:
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info["packages"][name] = None
    info["torch_threads"] = torch.get_num_threads()
    info["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def determinism_info() -> dict:
    """What decides whether a rerun is bit-identical: torch's intra-/inter-op thread counts, the
    thread variables of the environment, the deterministic-algorithm and cuDNN switches, bf16
    autocast on this CPU, and the CPU model (oneDNN picks its kernels by instruction set).

    Training is bit-reproducible for the same seed, code, versions, machine and thread count
    (``tests/test_determinism.py`` trains twice with 2 threads and compares every weight); with
    another thread count, CPU or a GPU the float sums run in another order, so runs agree only
    statistically (see docs/reproducibility.md).
    """
    cpu_model = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu_model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")},
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn": {"deterministic": torch.backends.cudnn.deterministic, "benchmark": torch.backends.cudnn.benchmark},
            "cpu_native_bf16": cpu_has_native_bf16(), "cpu_model": cpu_model}


def git_info(root: str | Path = REPO_ROOT) -> dict:
    """The commit and whether the tree has uncommitted changes; empty values without git."""

    def git(*args):
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD")}
