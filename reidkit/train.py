"""Training: one readable loop, callbacks, checkpoints, exact resume, multi-GPU.

The objective (Sec. 3.1, 4.2 of the paper) on a batch of P identities × K tracklets × T frames::

    L = triplet_weight · batch_hard_triplet(F(x), pids, margin)      feature branch
      + bce_weight     · pair_bce(M(x_a, x_b), same_person(a, b))     metric branch

Feature-only variants use the first term, metric-only variants the second, ``all`` both. M's
pairs come from the same batch (``reidkit.losses.mine_pairs``): every positive pair plus as
many negatives, ``train.hard_negative_fraction`` of them the hardest (camera-balanced), the rest
random; M re-uses the pool5 maps of the one CNN pass.

Usage::

    config = Config.from_yaml("configs/cpu.yaml", ["data.dataset=data/synthetic_small"])
    trainer = Trainer(config, callbacks=[PrintLoss()])
    history = trainer.fit()                   # or .fit(resume=True) to continue out_dir/last.pt
    model, config = checkpoint.load_model("runs/default/last.pt")

Callbacks are objects with any of the methods below, or dicts of plain callables
(``{"on_step_end": fn}``); a callback may set ``trainer.should_stop = True`` to end the run
after the current epoch::

    on_step_end(trainer, step, logs)    every ``train.log_every`` steps (and at each epoch's
                                         last step); logs = mean of loss, triplet, bce, grad_norm
                                         (+ attention_entropy, attention_grad_norm with the TAM)
                                         over those steps + lr, frames_per_s, epoch
    on_epoch_end(trainer, epoch, logs)  after the epoch's checkpoint is written; logs = the
                                         epoch's history row (+ eval metrics when evaluated)

Host syncs: the loss values stay on the device and are read every ``log_every`` steps (GPU
speed); the NaN/inf check happens then, and once more before any checkpoint is written, so a
diverged run raises ``TrainingDiverged`` and never overwrites the last good checkpoint.

Resume is exact at epoch boundaries: a checkpoint holds the model, optimiser, step counters,
the RNG states of torch (CPU, and the rank's own GPU), numpy, python and the pair-mining
generator (per rank), and the history; the clip loader is deterministic for (seed, epoch, rank).
A run may resume on a machine with another number of visible GPUs. It also records what made
the run, the config and the dataset (``dataset_record``: name, folder, manifest fingerprint),
and a resume compares both (``check_resume``). Each epoch writes ``last.pt`` and then
``epoch_XXX.pt``, atomically; a full disk is named (``files.DiskFullError``) and costs at most
the epoch being saved: ``--resume`` continues from the newest complete checkpoint.

Multi-GPU: run the same script under ``torchrun --nproc_per_node=N``. The trainer reads
RANK/WORLD_SIZE/LOCAL_RANK, makes cuda:LOCAL_RANK its current device (also when the caller
created the process group), initialises the group if needed (nccl on CUDA, gloo on CPU), wraps
the training objective in DistributedDataParallel, shards each P×K batch by identity across
ranks (P must divide by N), averages the logged metrics across ranks, and only rank 0 writes
checkpoints and history or shows progress. BatchNorm normalises each rank's shard (per-rank
statistics, as plain DDP does); the running statistics are rank 0's, broadcast at every epoch end.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import time
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from reidkit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from reidkit.config import Config, ConfigError
from reidkit.data import (FrameCache, Manifest, ManifestError, TrainClipLoader, manifest_fingerprint, plan_gpu_cache,
                          with_validation)
from reidkit.files import DiskFullError, disk_full_error, write_text
from reidkit.evaluate import evaluate
from reidkit.losses import batch_hard_triplet, mine_pairs, pair_bce
from reidkit.metrics import METRICS
from reidkit.models import TemporalAttention, build_model, load_pretrained_cnn, state_dict_differences
from reidkit.models.caffenet import disable_cudnn_tf32

__all__ = ["Trainer", "TrainingDiverged", "RunExistsError", "check_out_dir", "check_resume", "config_changes", "run_files",
           "resume_point", "dataset_record", "TrainingObjective", "cpu_has_native_bf16", "resolve_device",
           "configure_cuda_backends", "seed_everything", "use_amp"]

TERMS = ("loss", "triplet", "bce", "grad_norm")  # what a step reports (device tensors until a sync)
# and, for models with the TAM, how the attention trains: the mean normalised entropy H(ω_t)/log T
# of the batch's weights (1 = uniform) and the gradient norm reaching the attention sub-net (U, V, W, w)
ATTENTION_TERMS = ("attention_entropy", "attention_grad_norm")


# What may change between a run and its resume without changing what is trained.
RESUMABLE_CHANGES = {"data.dataset", "data.cache_dir", "train.epochs", "train.out_dir", "train.device", "train.progress",
                     "train.log_every", "train.eval_every", "train.keep_last", "train.gpu_cache", "train.compile"}


def config_changes(saved: dict, now: dict, allowed=RESUMABLE_CHANGES) -> list[str]:
    """``"section.key: old → new"`` for every setting that differs, except ``allowed`` ones.
    (``data.dataset`` may move on disk: a run records its dataset's ``manifest_fingerprint``
    instead, see :func:`check_resume`.)"""
    changes = []
    for section in sorted(set(saved) | set(now)):
        a, b = saved.get(section) or {}, now.get(section) or {}
        for key in sorted(set(a) | set(b)):
            name = f"{section}.{key}"
            if name in allowed:
                continue
            if a.get(key, "<unset>") != b.get(key, "<unset>"):
                changes.append(f"{name}: {a.get(key, '<unset>')!r} → {b.get(key, '<unset>')!r}")
    return changes


def run_files(out_dir: Path) -> tuple[Path, list[Path], list[Path]]:
    """A run folder's ``last.pt``, its ``epoch_N.pt`` sorted by N, and its history files."""
    out_dir = Path(out_dir)
    epochs = []
    for p in out_dir.glob("epoch_*.pt"):
        number = p.stem.split("_", 1)[1]
        if number.isdigit():
            epochs.append((int(number), p))
    return (out_dir / "last.pt", [p for _, p in sorted(epochs)],
            [out_dir / "history.csv", out_dir / "history.json"])


def resume_point(out_dir: Path) -> Path | None:
    """The checkpoint a resume continues: ``last.pt``, else the newest ``epoch_N.pt`` (``last.pt`` is
    written first each epoch, so an epoch file is never newer than it), else None."""
    last, epochs, _ = run_files(out_dir)
    return last if last.is_file() else (epochs[-1] if epochs else None)


def dataset_record(manifest) -> dict:
    """What a run records about its data: the manifest's name, folder and ``manifest_fingerprint``."""
    return {"name": manifest.name, "path": str(manifest.root), "fingerprint": getattr(manifest, "fingerprint", None)}


def check_resume(state: dict, path: Path, config: Config, fingerprint: str | None, force: bool,
                 model=None) -> None:
    """Refuse to continue the run in checkpoint ``state`` (read from ``path``) with ``config`` on the
    dataset of ``fingerprint``: settings that differ but for ``RESUMABLE_CHANGES``, or another
    dataset, unless ``force``; weights that do not fit ``config``'s model, even with ``force``
    (``model``: that model, built here when a ``model.*`` setting changed and it is not given)."""
    changes = config_changes(state.get("config", {}), config.to_dict())
    saved = state.get("dataset") or {}
    if fingerprint and saved.get("fingerprint") and saved["fingerprint"] != fingerprint:
        changes.append(f"data: trained on {saved.get('name')} at {saved.get('path')}, but the manifest at "
                       f"{config.data.dataset} differs (another or a regenerated dataset)")
    if model is not None or any(c.startswith("model.") for c in changes):
        if model is None:
            model = build_model(config=config.model)
        missing, unexpected, mismatched = state_dict_differences(model.state_dict(), state["model"])
        problems = [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected] + mismatched
        if problems:
            raise ConfigError(f"cannot resume from {path}: the config differs from the run's: "
                              + "; ".join(changes or ["model settings"]) + f". Its weights cannot continue as this "
                              f"model ({'; '.join(problems[:3])}{' …' if len(problems) > 3 else ''}), not even with "
                              f"--force: resume with the run's model settings, or train into another --out")
    if changes and not force:
        raise ConfigError(f"cannot resume from {path}: the config differs from the run's: "
                          + "; ".join(changes) + " (--force continues anyway)")


def check_out_dir(out_dir: Path, resume: bool, force: bool, config: Config | None = None) -> list[Path]:
    """Refuse what ``fit`` would refuse about ``out_dir``, cheaply and early (the CLI calls it
    before the frame cache is built): resuming a run that is not there (or, given ``config``,
    one of other settings or data: :func:`check_resume`), or starting a run over one that is,
    without ``force``. Returns the old run's files that starting over replaces."""
    last, epochs, history = run_files(out_dir)
    if resume:
        point = resume_point(out_dir)
        if point is None:
            raise CheckpointError(f"cannot resume: {last} does not exist (train without --resume to start a run)")
        if config is not None:
            try:
                fingerprint = manifest_fingerprint(config.data.dataset) if config.data.dataset else None
            except ManifestError:
                fingerprint = None  # Manifest.load says what is wrong with the dataset, later
            check_resume(load_checkpoint(point), point, config, fingerprint, force)
        return []
    existing = [p for p in (last, *epochs, *history) if p.exists()]
    if existing and not force:
        raise RunExistsError(
            f"{out_dir} already holds a run ({', '.join(p.name for p in existing[:4])}"
            f"{', …' if len(existing) > 4 else ''}): pass --resume to continue it, --force to replace it, "
            f"or choose another --out")
    return existing


class RunExistsError(RuntimeError):
    """``train.out_dir`` already holds a run and neither resume nor force was asked for."""


class TrainingDiverged(RuntimeError):
    """A loss term or the gradient became NaN/inf; the message names step, epoch and term."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but torch sees no CUDA device (use --device auto or cpu)")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def configure_cuda_backends(device: torch.device, cudnn_benchmark: bool = True) -> None:
    """What training sets for a CUDA ``device`` (nothing elsewhere): ``cudnn.benchmark`` (every
    step has the same shapes, so cuDNN's timed choice pays off) and cuDNN in true fp32 where the
    model computes in fp32 (conv5/pool5 and the LSTMs; ``disable_cudnn_tf32``)."""
    if torch.device(device).type != "cuda":
        return
    torch.backends.cudnn.benchmark = cudnn_benchmark
    disable_cudnn_tf32()


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX-512 BF16 or AMX flags in /proc/cpuinfo).

    There bf16 matmuls and convolutions run about twice as fast as fp32 on one thread; on other
    CPUs oneDNN emulates bf16 and it is slower than fp32. Non-Linux systems report False.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def use_amp(device: torch.device, amp: str) -> bool:
    """Whether ``train.amp`` (auto | bf16 | off) turns bf16 autocast on for ``device``."""
    if amp == "off":
        return False
    if amp == "bf16":
        return True
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrainingObjective(nn.Module):
    """The loss of one batch as a module, so DistributedDataParallel wraps the whole step."""

    def __init__(self, model, margin: float, triplet_weight: float = 1.0, bce_weight: float = 1.0,
                 camera_balanced: bool = True, hard_fraction: float = 0.5, device=None):
        super().__init__()
        self.model = model
        self.margin, self.triplet_weight, self.bce_weight = margin, triplet_weight, bce_weight
        self.camera_balanced, self.hard_fraction = camera_balanced, hard_fraction
        # the random pairs of mine_pairs, drawn on the model's device (no host round trip)
        self.generator = torch.Generator(device=device or "cpu")

    def forward(self, clips: torch.Tensor, pids: torch.Tensor, camids: torch.Tensor | None = None,
                host_pids=None, host_camids=None) -> torch.Tensor:
        """Returns a (3,) tensor: total loss, triplet term, BCE term (0 for an absent branch),
        and a 4th element, the normalised entropy of ω (detached), for models with the TAM.

        ``host_pids``/``host_camids``: the same labels as host arrays (the loader's), from which
        the pair mining counts its pairs without waiting for the GPU; else read from the tensors.
        """
        out = self.model(clips)
        zero = out.features.new_zeros((), dtype=torch.float32)
        triplet = bce = zero
        if self.model.has_feature_branch:
            triplet = batch_hard_triplet(out.features, pids, self.margin)
        if self.model.has_metric_branch:
            cams = (camids if host_camids is None else host_camids) if self.camera_balanced else None
            idx_a, idx_b, labels = mine_pairs(out.features.detach(), pids if host_pids is None else host_pids,
                                               self.generator, cams, self.hard_fraction)
            # index_select, not pool5[idx]: the backward of advanced indexing accumulates with
            # parallel float atomics on a multi-threaded CPU (order-dependent sums, so two runs
            # differ in the last bits); index_select's backward (index_add_) adds in index order
            logits = self.model.metric(out.pool5.index_select(0, idx_a), out.pool5.index_select(0, idx_b))
            bce = pair_bce(logits, labels)
        loss = self.triplet_weight * triplet + self.bce_weight * bce
        terms = [loss, triplet.float(), bce.float()]
        if out.attention is not None:
            w = out.attention.detach().float()
            t_len = w.shape[-1]
            entropy = -(w * w.clamp_min(1e-12).log()).sum(-1).mean() / math.log(t_len) if t_len > 1 else zero + 1
            terms.append(entropy)
        return torch.stack(terms)


def _eager():
    """Run ``torch.compile``d modules eagerly inside the block (``torch.compiler.set_stance``;
    a no-op on a torch without it): evaluation must not recompile the training graphs."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def _call(callbacks, name, *args):
    for cb in callbacks:
        fn = cb.get(name) if isinstance(cb, dict) else getattr(cb, name, None)
        if fn is not None:
            fn(*args)


def _rng_state(generator: torch.Generator, device=None) -> dict:
    """Every RNG the loop touches, as tensors/lists/ints (loadable with weights_only=True).

    CUDA: the state of ``device`` alone (the one this process trains on), not one per visible
    GPU, so a run resumes on a machine that sees fewer GPUs."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    cuda = device is not None and torch.device(device).type == "cuda"
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if cuda else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "mining": generator.get_state(),
    }


def _set_rng_state(state: dict, generator: torch.Generator, device=None) -> None:
    """Restore ``_rng_state``'s states; the CUDA one to ``device`` (when it is a GPU).

    Older checkpoints hold one CUDA state per GPU visible when they were written: the one of
    ``device``'s index is restored (the device this rank trained on), and none when that index
    is not in the list (said so)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = list(state.get("cuda") or [])
    if cuda and device is not None and torch.device(device).type == "cuda":
        index = 0 if len(cuda) == 1 else (torch.device(device).index or 0)
        if index < len(cuda):
            torch.cuda.set_rng_state(cuda[index].cpu(), device)
        else:
            warnings.warn(f"the checkpoint holds CUDA RNG states for {len(cuda)} GPUs, none for {device}: "
                          f"its RNG is not restored (dropout differs from an uninterrupted run)", stacklevel=3)
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    mining = state["mining"].cpu()
    if mining.numel() == generator.get_state().numel():
        generator.set_state(mining)
    else:  # written on another device type (CPU ↔ CUDA generators): reseeded, said so
        warnings.warn("the checkpoint's pair-mining generator state is for another device: reseeded", stacklevel=3)
        generator.manual_seed(int(torch.randint(0, 2**62, (1,))))


class Trainer:
    """Trains ``config.model.variant`` on ``config.data.dataset`` (see the module docstring).

    ``manifest``/``cache`` may be passed in to share a loaded manifest and frame cache (the
    ablation trains six models on one cache); otherwise they are loaded from ``config.data``.
    """

    def __init__(self, config: Config, callbacks=(), manifest=None, cache=None):
        self.config = config.validate()
        self.callbacks = list(callbacks)
        t = config.train
        self._join_processes()  # rank, world size, device (torchrun sets the variables)
        self.out_dir = Path(t.out_dir)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)

        # ---- data: the manifest, its frame cache, the P×K clip loader of the training split
        if manifest is None:
            if not config.data.dataset:
                raise ValueError("data.dataset is not set: pass --dataset DIR or data.dataset=DIR")
            manifest = Manifest.load(config.data.dataset)
        self._check_data(manifest)  # cheap checks first: decoding every frame may take hours
        self.manifest, self.cache = manifest, cache if cache is not None else self._build_cache(manifest)
        # data.val_ids: some training identities become a validation split (what eval_every scores)
        self.train_manifest, self.train_split = (
            with_validation(manifest, config.data.split, config.data.val_ids) if config.data.val_ids
            else (manifest, config.data.split))
        self.dataset = dataset_record(manifest)  # recorded in every checkpoint
        configure_cuda_backends(self.device, t.cudnn_benchmark)  # benchmark; fp32 regions in true fp32
        self.amp = use_amp(self.device, t.amp)  # bf16 autocast (CUDA, or a CPU with native bf16)
        self.loader = self._make_loader()
        self.steps_per_epoch = len(self.loader)

        # ---- model, objective, optimiser (same seed on every rank: identical initial weights)
        seed_everything(t.seed)
        self.model = self._build_model()
        tam = self.model.temporal if isinstance(self.model.temporal, TemporalAttention) else None
        self._attention_params = tam.attention_parameters() if tam else []
        self.terms = TERMS + (ATTENTION_TERMS if tam is not None else ())
        self.objective = TrainingObjective(self.model, t.margin, t.triplet_weight, t.bce_weight,
                                           t.camera_balanced_pairs, t.hard_negative_fraction, self.device)
        self.optimizer = self._make_optimizer()
        self.step_fn = self._wrap_for_processes()  # the objective, or DDP around it
        if self.device.type == "cuda" and t.compile:  # the frame CNN only: the mining, the LSTMs and the
            self.model.cnn.compile()  # generator break graphs; in place, so the state-dict keys stay the same
        # per-rank seeds for dropout and pair subsampling (the data are sharded separately)
        seed_everything(t.seed + 1000 * self.rank)
        self.objective.generator.manual_seed(t.seed + 7919 * self.rank)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps completed
        self.history: list[dict] = []  # one row per epoch
        self.step_history: list[dict] = []  # one row per on_step_end call
        self.should_stop = False

    # ------------------------------------------------------------------ setup helpers
    def _join_processes(self) -> None:
        """Rank, world size and device from torchrun's variables (one process: rank 0 of 1); makes
        this rank's GPU the current device (also when the caller created the process group) and
        initialises the group if needed (nccl on CUDA, gloo on CPU)."""
        t = self.config.train
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = resolve_device(t.device, self.local_rank)
        if self.device.type == "cuda":  # whoever made the process group: this rank's GPU, not cuda:0
            torch.cuda.set_device(self.device)
        self.distributed = self.world_size > 1
        if t.P % self.world_size or t.P // self.world_size < 2:
            raise ValueError(f"train.P={t.P} must be a multiple of the {self.world_size} processes with at least 2 "
                             f"identities per process (batch-hard mining happens inside each process's shard)")
        if self.distributed and not dist.is_initialized():
            # ranks wait in collectives while rank 0 alone builds the frame cache or evaluates
            # (MARS: tens of minutes); NCCL's default 10-minute timeout would kill the run
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", timeout=timedelta(minutes=60))
        self.is_main = self.rank == 0

    def _build_cache(self, manifest) -> FrameCache:
        """The manifest's frame cache at the model's input size. Under DDP rank 0 decodes and the
        others open its cache after it (one decode, not one per rank); a failed build on rank 0
        is raised on every rank."""
        c = self.config
        size = (manifest, c.model.height, c.model.width, c.data.cache_dir)
        if not self.distributed:
            return FrameCache.build(*size, progress=self.is_main and c.train.progress)
        error, cache = [None], None
        if self.is_main:
            try:
                cache = FrameCache.build(*size, progress=c.train.progress)
            except Exception as e:
                error = [f"{type(e).__name__}: {e}"]
                dist.broadcast_object_list(error, src=0, device=self.device)  # the others raise too
                raise
        dist.broadcast_object_list(error, src=0, device=self.device)  # waits for rank 0's build
        if error[0] is not None:
            raise ManifestError(f"rank 0 could not build the frame cache: {error[0]}")
        return cache if self.is_main else FrameCache.open(*size)

    def _make_loader(self) -> TrainClipLoader:
        """The training split's clip loader: its frames on the GPU when they fit (``_frames_fit_gpu``),
        bf16 clips under CUDA autocast; warns about tracklets shorter than ``model.seq_len``."""
        c, t, cuda = self.config, self.config.train, self.device.type == "cuda"
        positions = self.manifest.positions(self.train_manifest.split(self.train_split).train)
        loader = TrainClipLoader(
            self.train_manifest, self.cache, split=self.train_split, P=t.P, K=t.K, T=c.model.seq_len,
            steps_per_epoch=t.steps_per_epoch, seed=t.seed, device=self.device, mirror=True,
            rank=self.rank, world_size=self.world_size, resident=self._frames_fit_gpu(positions),
            frame_erasing=t.frame_erasing, dtype=torch.bfloat16 if self.amp and cuda else torch.float32,
            progress=self.is_main and t.progress)
        lengths = self.manifest.lengths[positions]
        short = lengths < c.model.seq_len
        if short.any() and self.is_main:  # padded clips repeat frames: say so, never silently
            warnings.warn(f"{int(short.sum())} of {len(lengths)} training tracklets are shorter than model.seq_len = "
                          f"{c.model.seq_len} frames (shortest {int(lengths.min())}): their clips repeat frames "
                          f"to fill T", stacklevel=3)
        return loader

    def _frames_fit_gpu(self, positions) -> bool:
        """Whether the training frames of the tracklets at ``positions`` go to the GPU: only they
        (MARS at 227x227: 78.8 of 184 GB; test frames are read from the memory map a batch at a
        time when evaluating), and a copy made by an earlier Trainer on this cache (the ablation)
        needs no new memory (``FrameCache.upload_bytes``); see ``_cache_fits``."""
        if self.device.type != "cuda":
            return False
        return self._cache_fits(self.cache.upload_bytes(self.device, self.cache.tracklet_rows(positions)))

    def _build_model(self):
        """``config.model`` on the device: with the pretrained frame CNN of ``model.pretrained`` (a
        resume then replaces it with the checkpoint's), then ``train.init``'s weights, if set."""
        c, t = self.config, self.config.train
        model = build_model(config=c.model)
        if c.model.pretrained:
            message, skipped = load_pretrained_cnn(model, c.model.pretrained)
            if self.is_main and skipped:
                warnings.warn(message, stacklevel=3)
            elif self.is_main and t.progress:
                print(message)
        model.to(self.device)
        if t.init:
            self._load_init(model, Path(t.init))
        if t.channels_last:  # NHWC convolutions and pooling: faster on CUDA and in oneDNN on CPU
            model.to(memory_format=torch.channels_last)
        return model

    def _wrap_for_processes(self):
        """The objective, wrapped in DistributedDataParallel when several processes train."""
        if not self.distributed:
            return self.objective
        # build_model creates only the modules a variant uses, but a head may still skip
        # parameters on some batches; a dry run decides whether DDP must look for them
        return DDP(self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                   find_unused_parameters=self._has_unused_parameters())

    def _check_data(self, manifest) -> None:
        """What can be refused from the manifest alone, before any frame is decoded."""
        c, t = self.config, self.config.train
        split = manifest.split(c.data.split)  # IndexError naming splits.json and how many it has
        pids = manifest.pids[manifest.positions(split.train)]
        identities = len(np.unique(pids[pids >= 1]))
        if identities < 2:
            raise ManifestError(f"split {c.data.split} of {manifest.root / 'splits.json'} has {identities} training "
                                f"identit{'y' if identities == 1 else 'ies'} (pid >= 1): training compares identities, "
                                f"so it needs at least 2; this dataset ({manifest.name} at {manifest.root}) cannot "
                                f"train a model with that split")
        if identities < t.P:
            raise ValueError(f"train.P={t.P} identities per batch, but split {c.data.split} of "
                             f"{manifest.root / 'splits.json'} has {identities} training identities: lower train.P")
    def _load_init(self, model, path: Path) -> None:
        """``train.init``: another run's model weights (and BatchNorm statistics), nothing else —
        the optimiser, schedule, step counters and history start fresh (fine-tuning, Table 3)."""
        state = load_checkpoint(path, map_location="cpu")
        if "model" not in state:
            raise CheckpointError(f"train.init={path}: not a checkpoint written by `reidkit train` (no model weights)")
        missing, unexpected, mismatched = state_dict_differences(model.state_dict(), state["model"])
        problems = [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected] + mismatched
        if problems:
            saved = (state.get("config") or {}).get("model", {})
            raise ConfigError(
                f"train.init={path}: its model ({saved.get('variant', '?')}, {saved.get('cnn', '?')}, "
                f"{saved.get('height', '?')}×{saved.get('width', '?')}) does not fit this one "
                f"({self.config.model.variant}, {self.config.model.cnn}, {self.config.model.height}×"
                f"{self.config.model.width}): {'; '.join(problems[:6])}{' …' if len(problems) > 6 else ''}. "
                f"Use the checkpoint's model settings.")
        model.load_state_dict(state["model"])

    def _cache_fits(self, needed: int) -> bool:
        """Whether ``needed`` bytes of training frames go to the GPU (``train.gpu_cache``, ``plan_gpu_cache``).

        ``always`` refuses (ConfigError) when they would not fit with headroom; ``auto`` warns
        once that batches come from the host instead, and why."""
        if self.config.train.gpu_cache == "never":
            return False
        free, _ = torch.cuda.mem_get_info(self.device)
        resident, reason = plan_gpu_cache(self.config.train.gpu_cache, needed, free)
        if reason and self.is_main:
            warnings.warn(reason, stacklevel=5)  # where the Trainer is made
        return resident

    def _make_optimizer(self):
        t = self.config.train
        # two groups: the CNN at lr × cnn_lr_scale, the temporal model and metric head at lr
        # (see JSTRNN.parameter_groups)
        params = self.model.parameter_groups(t.lr * t.cnn_lr_scale, t.lr,
                                             t.lr * t.attention_lr_scale if t.attention_lr_scale != 1 else None)
        for group in params:
            group["lr_scale"] = group["lr"] / t.lr
        fused = {"fused": True} if self.device.type == "cuda" else {}  # one kernel for all parameters
        if t.optimizer == "sgd":
            return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, **fused)
        return torch.optim.Adam(params, lr=t.lr, betas=(t.momentum, 0.999), weight_decay=t.weight_decay, **fused)

    def _has_unused_parameters(self) -> bool:
        """One dry forward/backward on a tiny random batch: does any parameter get no gradient?"""
        c, per_rank = self.config.model, self.loader.sampler.batch_size
        clips = torch.randn(per_rank, c.seq_len, 3, self.config.model.height, self.config.model.width, device=self.device)
        pids = torch.arange(per_rank, device=self.device) // self.config.train.K
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}  # BatchNorm statistics
        self.objective(clips, pids)[0].backward()
        unused = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        self.model.zero_grad(set_to_none=True)
        with torch.no_grad():  # the random batch must not leak into the running statistics
            for n, b in self.model.named_buffers():
                b.copy_(buffers[n])
        return bool(unused)

    def lr_at(self, step: int, epoch: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based) in ``epoch`` (1-based)."""
        t = self.config.train
        if step < t.warmup:
            return t.lr * (step + 1) / t.warmup
        if t.schedule == "step":
            return t.lr * t.lr_gamma ** ((epoch - 1) // t.lr_step_epochs)
        if t.schedule == "cosine":
            total = max(1, t.epochs * self.steps_per_epoch - t.warmup)
            return t.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - t.warmup) / total)))
        return t.lr

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, force: bool = False) -> list[dict]:
        """Train until ``train.epochs`` epochs are done; returns the per-epoch history.

        ``resume``: continue ``out_dir/last.pt`` (or, when it is missing, the newest epoch file:
        ``resume_point``); its config and dataset must match this one's except for bookkeeping
        (``RESUMABLE_CHANGES``) unless ``force`` (``check_resume``). Without ``resume``, an ``out_dir``
        that already holds a run is refused unless ``force`` (its run files are then removed):
        a new run never silently mixes its checkpoints and history with an old one's.
        """
        t = self.config.train
        if resume:
            point = resume_point(self.out_dir) or self.out_dir / "last.pt"
            self.resume(point, force=force)
            if point.name != "last.pt":  # last.pt was lost (a full disk, an old version): write it again
                self.save_checkpoint()
        elif self.is_main:
            self._claim_out_dir(force)
        frames_per_step = self.loader.sampler.batch_size * self.config.model.seq_len * self.world_size
        for epoch in range(self.epoch + 1, t.epochs + 1):
            self.loader.set_epoch(epoch)
            self.objective.train()
            window, sums, count = [], torch.zeros(len(self.terms), dtype=torch.float64), 0
            bar = tqdm(self.loader, total=self.steps_per_epoch, desc=f"epoch {epoch}/{t.epochs}",
                       disable=not (self.is_main and t.progress), leave=False)
            tick = epoch_start = time.perf_counter()
            for i, batch in enumerate(bar):
                lr = self.lr_at(self.step, epoch)
                window.append(self.train_step(batch, lr))
                if len(window) == t.log_every or i == self.steps_per_epoch - 1:
                    values = self._read_logged_values(window, epoch)  # (len(window), terms) floats, checked finite
                    now = time.perf_counter()
                    logs = dict(zip(self.terms, values.mean(0).tolist()))
                    logs.update(lr=lr, epoch=epoch, frames_per_s=frames_per_step * len(window) / (now - tick))
                    sums += values.sum(0)
                    count += len(window)
                    window, tick = [], now
                    self.step_history.append({"step": self.step, **logs})
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{lr:.2g}")
                    _call(self.callbacks, "on_step_end", self, self.step, logs)
            bar.close()
            self._sync_buffers()
            row = {"epoch": epoch, "step": self.step, **dict(zip(self.terms, (sums / count).tolist())), "lr": lr,
                   "frames_per_s": frames_per_step * count / (time.perf_counter() - epoch_start)}
            self.epoch = epoch
            self.history.append(row)
            self.save_checkpoint()  # before evaluating: a failing evaluation never costs the epoch
            if t.eval_every and epoch % t.eval_every == 0:
                row.update(self.evaluate())  # the same dict as in self.history
                self.save_checkpoint()
            if self.is_main and t.progress:
                tqdm.write(self._format_row(row))
            _call(self.callbacks, "on_epoch_end", self, epoch, row)
            if self.should_stop:
                break
        return self.history

    def train_step(self, batch, lr: float) -> torch.Tensor:
        """One optimizer step on a ClipBatch; returns the device tensor (loss, triplet, bce, grad_norm).

        Nothing here waits for the GPU: the values are read later, every ``log_every`` steps.
        """
        t = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            terms = self.step_fn(batch.clips, batch.pids, batch.camids, batch.host_pids, batch.host_camids)
        self.optimizer.zero_grad(set_to_none=True)
        terms[0].backward()
        extra = []
        if self._attention_params:  # before clipping: what the loss sends to the attention sub-net
            grads = [p.grad for p in self._attention_params if p.grad is not None]
            extra = [torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).float().view(1)
                     if grads else terms.new_zeros(1, dtype=torch.float32)]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), t.grad_clip if t.grad_clip is not None else float("inf"))
        self.optimizer.step()
        self.step += 1
        values = terms.detach().float()
        # order of self.terms: loss, triplet, bce, grad_norm[, attention_entropy, attention_grad_norm]
        return torch.cat([values[:3], grad_norm.detach().float().view(1), values[3:], *extra])

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics).

        DDP broadcasts them from rank 0 before each forward, but every rank then updates its own
        copy from its own shard; without this the ranks would end an epoch (and the run) with
        slightly different statistics. Parameters never differ: DDP averages the gradients.
        """
        if self.distributed:
            for b in self.model.buffers():
                torch.distributed.broadcast(b, src=0)

    def _read_logged_values(self, window: list[torch.Tensor], epoch: int) -> torch.Tensor:
        """The window's per-step values on the host, averaged over ranks; ``TrainingDiverged`` on NaN/inf."""
        values = torch.stack(window)
        if self.distributed:
            values = values.to(self.device)
            dist.all_reduce(values)  # sum over ranks, then mean
            values /= self.world_size
        values = values.cpu().double()
        bad = ~torch.isfinite(values)
        if bad.any():
            row = int(bad.any(1).nonzero()[0])
            step = self.step - len(window) + row + 1
            names = [self.terms[j] for j in range(len(self.terms)) if bad[row, j]]
            terms = [n for n in names if n != "loss"] or names
            last = self.out_dir / "last.pt"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
            raise TrainingDiverged(
                f"training diverged at step {step} (epoch {epoch}): non-finite {', '.join(terms)} "
                f"({', '.join(f'{n}={values[row, self.terms.index(n)].item()}' for n in names)}); {kept}. "
                f"Try a lower train.lr (now {self.config.train.lr}) or train.grad_clip.")
        return values

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Score the current model with ``config.eval`` (rank 0): on the validation identities when
        ``data.val_ids`` holds some out (``scored_on: "validation"``), else on the split's test
        query/gallery (``"test"``)."""
        metrics = {}
        if self.is_main:
            with _eager():  # a compiled CNN would recompile for eval mode, no_grad and the eval batch
                result = evaluate(self.model, self.train_manifest, self.cache, self.config.eval,
                                  split=self.train_split, device=self.device, progress=False)
            metrics = {k: float(getattr(result, k)) for k in METRICS}
            metrics["scored_on"] = "validation" if self.config.data.val_ids else "test"
        self.model.train()
        if self.distributed:
            dist.barrier()
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "format": "reidkit-checkpoint-v1",
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": self.step, "epoch": self.epoch},  # the lr is a function of these
            "epoch": self.epoch,
            "step": self.step,
            "config": self.config.to_dict(),
            "dataset": self.dataset,
            "variant": self.config.model.variant,
            "rng": self._gather_rng(),
            "loader": {"epoch": self.epoch + 1, "seed": self.config.train.seed, "world_size": self.world_size},
            "history": self.history,
            "step_history": self.step_history,
        }

    def _gather_rng(self) -> list[dict]:
        state = _rng_state(self.objective.generator, self.device)
        if not self.distributed:
            return [state]
        states = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states

    def save_checkpoint(self) -> None:
        """Write last.pt and epoch_XXX.pt (rank 0); refuses non-finite weights."""
        bad = [n for n, p in self.model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:  # a NaN that slipped between syncs must not replace the last good checkpoint
            raise TrainingDiverged(f"non-finite weights after epoch {self.epoch} (e.g. {bad[0]}); kept the "
                                   f"previous checkpoint in {self.out_dir}. Try a lower train.lr (now "
                                   f"{self.config.train.lr}) or train.grad_clip.")
        state = self.state_dict()  # collective in DDP: every rank takes part
        if self.is_main:
            try:  # last.pt first: an epoch file is never newer than it (resume_point)
                save_checkpoint(self.out_dir / "last.pt", state)
                save_checkpoint(self.out_dir / f"epoch_{self.epoch:03d}.pt", state)
                keep = self.config.train.keep_last
                if keep is not None:
                    for old in run_files(self.out_dir)[1][:-keep]:  # by epoch number, not by name
                        old.unlink()
                self._write_history()
            except DiskFullError as e:
                point = resume_point(self.out_dir)
                then = (f"free space there, then `reidkit train --resume` continues from {point.name}" if point
                        else "free space there and train again")
                raise disk_full_error(e.path, e.existed, f"epoch {self.epoch} is not completely saved; {then}") from e
        if self.distributed:
            dist.barrier()

    def _claim_out_dir(self, force: bool) -> None:
        for p in check_out_dir(self.out_dir, resume=False, force=force):
            p.unlink()

    def resume(self, path, force: bool = False) -> None:
        """Continue from a checkpoint written by this trainer (model, optimiser, RNG, history).

        The checkpoint's config must equal this one but for ``RESUMABLE_CHANGES``; otherwise the
        differences are listed and the resume is refused (``force``: continue anyway)."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"cannot resume: {path} does not exist (train without --resume to start a run)")
        state = load_checkpoint(path, map_location="cpu")
        check_resume(state, path, self.config, self.dataset["fingerprint"], force, model=self.model)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history, self.step_history = list(state["history"]), list(state.get("step_history", []))
        rng = state["rng"]
        if len(rng) == self.world_size:
            _set_rng_state(rng[self.rank], self.objective.generator, self.device)
        else:  # world size changed: sampling stays exact (seeded by epoch), dropout is reseeded
            seed_everything(self.config.train.seed + 1000 * self.rank + self.epoch)

    def _write_history(self) -> None:
        write_text(self.out_dir / "history.json", json.dumps({"epochs": self.history, "steps": self.step_history},
                                                             indent=1))
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=keys, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(self.history)
        write_text(self.out_dir / "history.csv", table.getvalue())

    @staticmethod
    def _format_row(row: dict) -> str:
        parts = [f"epoch {row['epoch']}"]
        parts += [f"{k} {row[k]:.4g}" for k in ("loss", "triplet", "bce", "lr", "frames_per_s", "rank1", "mAP") if k in row]
        return " | ".join(parts)

    def close(self) -> None:
        """Leave the process group (call at the end of a torchrun script)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
