"""Clips as tensors: normalisation, frame erasing, the training loader and the test clips.

Clips (N, T, 3, H, W) are gathered from the ``FrameCache`` by index, then normalised and
mirrored as tensors on the device (the GPU when there is one). Testing covers every frame of a
tracklet, T at a time (``iter_test_clips``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Iterator, NamedTuple

import numpy as np
import torch

from .cache import FrameCache, gather_workers
from .manifest import Manifest
from .prefetch import pipeline
from .sampling import PKSampler, test_frame_indices, train_frame_indices

# ImageNet RGB statistics on the 0-1 scale (what ImageNet-initialised CNNs expect).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Normalisation and augmentation (tensor ops, run wherever the clips are)
# --------------------------------------------------------------------------------------------

_SCALE_BIAS: dict = {}


def _scale_bias(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel 1/(255*std) and -mean/std, made once per device (no host copy every step)."""
    key = (str(device), dtype)
    if key not in _SCALE_BIAS:
        scale = torch.tensor([1.0 / (255.0 * s) for s in STD], dtype=dtype).view(1, 1, 3, 1, 1)
        bias = torch.tensor([-m / s for m, s in zip(MEAN, STD)], dtype=dtype).view(1, 1, 3, 1, 1)
        _SCALE_BIAS[key] = (scale.to(device), bias.to(device))
    return _SCALE_BIAS[key]


def normalize_clips(clips: torch.Tensor, mirror: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) -> ``dtype`` (N, T, 3, H, W), ImageNet-normalised, on clips' device.

    ``mirror`` (bool, shape (N,)) flips clip n left-right (the W axis) where True; all T frames
    of a clip are flipped together (paper, section 4.2: "We also implement mirror for data
    augmentation"). Pass ``mirror`` as a CPU tensor to avoid a device sync when clips are on
    the GPU.

    Computed as ``x * 1/(255*std) + (-mean/std)`` into a preallocated (N, T, 3, H, W) tensor: the
    uint8 -> float conversion and the channel permute are a single copy (several times faster
    on the CPU than permute, divide, subtract, divide, contiguous). A 16-bit ``dtype`` (bf16 on
    CUDA) is written directly by one ``addcmul`` that computes in float32 and rounds once on
    the store: no float32 batch is built and then cast.
    """
    if clips.dim() != 5 or clips.shape[-1] != 3:
        raise ValueError(f"expected uint8 clips (N, T, H, W, 3), got shape {tuple(clips.shape)}")
    N, T, H, W, _ = clips.shape
    dev = clips.device
    if mirror is not None:  # flip the uint8 frames: a quarter of the bytes of the float ones
        mirror = torch.as_tensor(mirror, dtype=torch.bool)
        if mirror.shape != (N,):
            raise ValueError(f"mirror must have shape ({N},), got {tuple(mirror.shape)}")
        if mirror.device.type == "cpu":
            idx = mirror.nonzero().view(-1).to(dev, non_blocking=True)
            if idx.numel():
                clips = clips.index_copy(0, idx, clips.index_select(0, idx).flip(3))
        else:  # flags already on the GPU: no host sync, flip all and keep where asked
            clips = torch.where(mirror.view(-1, 1, 1, 1, 1), clips.flip(3), clips)
    x = torch.empty((N, T, 3, H, W), dtype=dtype, device=dev)
    if dtype in (torch.float32, torch.float64):
        x.copy_(clips.permute(0, 1, 4, 2, 3))
        scale, bias = _scale_bias(dev, dtype)
        return x.mul_(scale).add_(bias)
    scale, bias = _scale_bias(dev, torch.float32)  # bias + uint8 * scale in float32, stored as dtype
    return torch.addcmul(bias, clips.permute(0, 1, 4, 2, 3), scale, out=x)


def erase_frames(clips: torch.Tensor, rng: np.random.Generator, p: float,
                 area: tuple[float, float] = (0.3, 0.7), frames: np.ndarray | None = None
                 ) -> tuple[torch.Tensor, np.ndarray]:
    """Frame-level random erasing: occlude whole frames of a clip batch, as a passer-by would.

    Each frame of uint8 ``clips`` (N, T, H, W, 3) is chosen with probability ``p``; a rectangle
    covering ``area`` (a fraction drawn uniformly) of it, of random aspect ratio, is replaced by
    the same rectangle of a random frame of *another* clip in the batch (another person or
    another background). Random erasing (Zhong et al., 2020) is usually applied to every image;
    here it hits single frames of a clip, so the clip's other frames stay clean and a temporal
    model can learn that some frames are less trustworthy than others. Reads no label: which
    frames of the *data* are occluded is never known to training. Returns the new clips (the
    input is not modified) and the (N, T) bool mask of erased frames. Deterministic for ``rng``.
    ``frames`` (bool (N, T)) chooses the frames instead of ``p`` (the attention lesson's probe).
    """
    N, T, H, W, _ = clips.shape
    hit = rng.random((N, T)) < p if frames is None else np.asarray(frames, bool).copy()
    if hit.shape != (N, T):
        raise ValueError(f"frames must be a ({N}, {T}) mask, got shape {hit.shape}")
    if N < 2 or not hit.any():  # one clip has no other clip to take an occluder from
        return clips, np.zeros((N, T), bool)
    out = clips.clone()
    for n, t in zip(*np.nonzero(hit)):
        frac = rng.uniform(*area)
        aspect = float(np.exp(rng.uniform(np.log(0.3), np.log(3.3))))  # height / width
        h = int(min(H, max(1, round(np.sqrt(frac * H * W * aspect)))))
        w = int(min(W, max(1, round(np.sqrt(frac * H * W / aspect)))))
        y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        src = int(rng.integers(0, N - 1))
        src += src >= n  # another clip
        out[n, t, y:y + h, x:x + w] = clips[src, int(rng.integers(0, T)), y:y + h, x:x + w]
    return out, hit


def denormalize_clips(clips: torch.Tensor) -> torch.Tensor:
    """Inverse of ``normalize_clips`` (no un-mirroring): float (..., 3, H, W) -> float RGB in [0, 1]."""
    shape = [1] * (clips.dim() - 3) + [3, 1, 1]
    mean = torch.tensor(MEAN, device=clips.device, dtype=clips.dtype).view(shape)
    std = torch.tensor(STD, device=clips.device, dtype=clips.dtype).view(shape)
    return (clips * std + mean).clamp_(0, 1)


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------

def default_prefetch(device) -> int:
    """Steps a loader prepares ahead on its thread: 2 on CUDA; on a CPU, 2 only when it has a core
    more than torch's threads (where every core computes, the thread only competes)."""
    spare_core = (os.cpu_count() or 1) > torch.get_num_threads()
    return 2 if torch.device(device).type == "cuda" or spare_core else 0


_gather_workers = gather_workers  # the loaders' parameter of the same name shadows it


class DeviceCopy:
    """uint8 host batches to ``device``; on CUDA asynchronously, on a side stream of its own.

    ``start(host)`` (any thread; ``host`` pinned) issues the copy and returns ``(tensor, event)``:
    on the side stream it overlaps the compute stream's work instead of queueing behind it, and
    the event is blocking (a thread waiting for it sleeps). ``finish(tensor, event)``, on the
    thread that uses the tensor, makes that thread's current stream wait for the copy (on the
    GPU: no host sync) and tells the allocator the tensor is used there. Elsewhere a plain copy.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def start(self, host: torch.Tensor):
        if self.stream is None:
            return host.to(self.device), None
        with torch.cuda.stream(self.stream):
            out = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event(blocking=True)
            done.record(self.stream)
        return out, done

    def finish(self, out: torch.Tensor, done) -> torch.Tensor:
        if done is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            out.record_stream(stream)
        return out


@dataclass
class ClipBatch:
    """One training batch. Tensors of N = P*K clips (per rank).

    clips (N, T, 3, H, W) float; pids, camids, tracklet_ids, positions (N,) int64; frame_idx
    (N, T) int64 (frame numbers inside each tracklet); mirrored (N,) bool; visibility (N, T)
    float with NaN where unknown, or None when the manifest has no visibility ground truth.
    """

    clips: torch.Tensor
    pids: torch.Tensor
    camids: torch.Tensor
    tracklet_ids: torch.Tensor
    positions: torch.Tensor
    frame_idx: torch.Tensor
    visibility: torch.Tensor | None = None
    mirrored: torch.Tensor | None = None
    host_pids: np.ndarray | None = None  # pids and camids as host arrays: pair mining counts
    host_camids: np.ndarray | None = None  # its pairs from them without waiting for the GPU

    def to(self, device, non_blocking: bool = False) -> "ClipBatch":
        moved = {f.name: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v)
                 for f in fields(self) for v in [getattr(self, f.name)]}
        return ClipBatch(**moved)

    def __len__(self) -> int:
        return int(self.clips.shape[0])


def clip_visibility(manifest: Manifest, positions, frame_idx) -> np.ndarray | None:
    """Ground-truth visibility (N, T) of frames ``frame_idx`` (N, T) of the tracklets at ``positions``.

    NaN where a tracklet has none; None when the manifest has no visibility at all. For
    measuring and plotting only: training never reads it.
    """
    positions, frame_idx = np.asarray(positions, dtype=np.int64), np.asarray(frame_idx, dtype=np.int64)
    if not manifest.has_visibility:
        return None
    vis = np.full(frame_idx.shape, np.nan, dtype=np.float32)
    for n, p in enumerate(positions):
        v = manifest.tracklets[p].visibility
        if v is not None:
            vis[n] = v[frame_idx[n]]
    return vis


class TrainClipLoader:
    """Training batches (``ClipBatch``) for split ``split``: P identities x K tracklets x T frames.

    Per step: ``PKSampler`` picks tracklets, ``train_frame_indices`` picks T sorted random frames
    in each, the frames are gathered from the cache, ``frame_erasing`` > 0 occludes single frames
    (``erase_frames``), then they are normalised and (with ``mirror``) flipped with probability
    1/2 per clip, on ``device``.

    Where the frames come from:
      - ``resident=True`` (the default with a CUDA device): the split's training frames are
        ``FrameCache.upload``ed to the device once (MARS at 227x227: 78.8 GB; test frames stay
        on disk), so a step gathers with one ``index_select`` there and moves only indices;
      - otherwise a step copies its uint8 frames out of the memory map into a reused buffer
        (pinned for CUDA) with ``gather_workers`` threads (default ``cache.gather_workers``:
        1 on the CPU, up to 8 for a GPU), then, on CUDA, copies them to the GPU on a side stream
        (``DeviceCopy``: the copy overlaps the training step) and normalises them on ``device``.
    With ``prefetch`` > 0 a background thread (``Prefetcher``) samples and gathers up to
    ``prefetch`` steps ahead while the training step runs, and starts their copies to the GPU;
    on the CPU it also erases and normalises there, so the training loop receives finished
    batches. The batches are bit-identical with and without it. ``prefetch=None`` (default): 2
    on CUDA, and on a CPU only when it has a core more than torch's threads; where every core
    computes, the thread only competes (measured: steps ~17 % slower on 2 cores with 2 torch
    threads), so it is 0.

    Deterministic for (seed, epoch, rank). Each full pass advances the epoch by one; call
    ``set_epoch(e)`` to choose it (e.g. when resuming).
    """

    def __init__(self, manifest: Manifest, cache: FrameCache, split: int = 0, P: int = 8, K: int = 4,
                 T: int = 6, steps_per_epoch: int | None = None, seed: int = 0, device="cpu",
                 mirror: bool = True, rank: int = 0, world_size: int = 1, resident: bool | None = None,
                 dtype: torch.dtype = torch.float32, frame_erasing: float = 0.0, prefetch: int | None = None,
                 progress: bool = False, gather_workers: int | None = None):
        if len(cache.offsets) != len(manifest.tracklets):
            raise ValueError(f"cache has {len(cache.offsets)} tracklets, manifest {len(manifest.tracklets)}")
        self.manifest, self.cache, self.T = manifest, cache, T
        self.device = torch.device(device)
        self.mirror, self.seed, self.rank, self.dtype = mirror, seed, rank, dtype
        if not 0.0 <= frame_erasing <= 1.0:
            raise ValueError(f"frame_erasing must be a probability in [0, 1], got {frame_erasing}")
        prefetch = default_prefetch(self.device) if prefetch is None else prefetch
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0 steps, got {prefetch}")
        self.frame_erasing, self.prefetch = frame_erasing, prefetch
        self.gather_workers = _gather_workers(self.device, world_size) if gather_workers is None else gather_workers
        train_pos = manifest.positions(manifest.split(split).train)
        self.sampler = PKSampler(manifest.pids[train_pos], P, K, seed=seed, rank=rank,
                                 world_size=world_size, positions=train_pos,
                                 steps_per_epoch=steps_per_epoch)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.resident = self.device.type == "cuda" if resident is None else bool(resident)
        if self.resident:
            cache.upload(self.device, cache.tracklet_rows(train_pos), progress=progress)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[ClipBatch]:
        epoch = self.epoch
        self.sampler.set_epoch(epoch)
        steps = list(self.sampler)  # positions per step: the sampler's state stays on this thread
        batches = _EpochBatches(self, epoch)
        # on the CPU the prefetch thread builds whole batches; elsewhere it draws and gathers
        yield from pipeline(steps, batches.draw, batches.assemble, self.prefetch, self.device,
                            finish_ahead=self.device.type == "cpu")
        self.epoch = epoch + 1


class _Drawn(NamedTuple):
    """A training step between ``_EpochBatches.draw`` and ``.assemble``."""

    positions: np.ndarray       # the tracklets (manifest positions)
    frame_idx: np.ndarray       # (N, T) frames in each
    flips: np.ndarray           # (N,) bool: mirror the clip
    rows: np.ndarray            # (N, T) cache rows
    host: torch.Tensor | None   # uint8 frames gathered on the host (None: the device copy holds them)
    moving: tuple | None        # ``DeviceCopy.start``'s (tensor, event): the host frames on their way to the GPU
    visibility: np.ndarray | None


class _EpochBatches:
    """One epoch of a ``TrainClipLoader``: its random streams, its reused host buffers (one per
    prefetch slot, pinned for CUDA: no allocation per step) and the two stages of a batch."""

    def __init__(self, loader: TrainClipLoader, epoch: int):
        self.loader = loader
        self.rng = np.random.default_rng([loader.seed, epoch, loader.rank, 1])
        self.erase_rng = np.random.default_rng([loader.seed, epoch, loader.rank, 2])  # erasing: its own stream
        cuda = loader.device.type == "cuda"
        self.buffers = []
        if not loader.resident:
            shape = (loader.sampler.batch_size, loader.T, loader.cache.height, loader.cache.width, 3)
            self.buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=cuda)
                            for _ in range(max(1, loader.prefetch))]
        self.copier = DeviceCopy(loader.device) if cuda and not loader.resident else None

    def draw(self, positions, slot: int) -> _Drawn:
        """The step's random draws (in the order they have always been drawn) and its host frames
        in slot ``slot``'s buffer; on CUDA their copy to the GPU is started (on the side stream)."""
        lo, m = self.loader, self.loader.manifest
        frame_idx = np.stack([train_frame_indices(int(m.lengths[p]), lo.T, self.rng) for p in positions])
        flips = self.rng.random(len(positions)) < 0.5 if lo.mirror else np.zeros(len(positions), bool)
        rows = lo.cache.rows(positions, frame_idx)
        host = None if lo.resident else lo.cache.host_gather(rows, out=self.buffers[slot], workers=lo.gather_workers)
        moving = self.copier.start(host) if self.copier is not None else None
        return _Drawn(positions, frame_idx, flips, rows, host, moving, clip_visibility(m, positions, frame_idx))

    def _frames(self, d: _Drawn):
        """The step's uint8 frames on the device (on the CPU: the host buffer itself) and the CUDA
        event after which the host buffer may be refilled (None: free now)."""
        dev = self.loader.device
        if d.host is None:
            return self.loader.cache.gather(d.rows, dev), None
        if d.moving is not None:
            return self.copier.finish(*d.moving), d.moving[1]
        return (d.host, None) if dev.type == "cpu" else (d.host.to(dev), None)

    def assemble(self, d: _Drawn) -> tuple[ClipBatch, object]:
        """The batch on the device: frames erased, normalised, mirrored; with ``_frames``' event."""
        lo, m, dev = self.loader, self.loader.manifest, self.loader.device
        raw, event = self._frames(d)
        if lo.frame_erasing > 0:  # its own stream: the clips drawn do not depend on it
            raw = erase_frames(raw, self.erase_rng, lo.frame_erasing)[0]
        clips = normalize_clips(raw, torch.from_numpy(d.flips), lo.dtype)  # CPU flags: no sync
        return ClipBatch(
            clips=clips,
            pids=_to_device(m.pids[d.positions], dev),
            camids=_to_device(m.camids[d.positions], dev),
            tracklet_ids=_to_device(m.tracklet_ids[d.positions], dev),
            positions=_to_device(d.positions, dev),
            frame_idx=_to_device(d.frame_idx, dev),
            visibility=_to_device(d.visibility, dev) if d.visibility is not None else None,
            mirrored=_to_device(d.flips, dev),
            host_pids=m.pids[d.positions],
            host_camids=m.camids[d.positions],
        ), event


def _to_device(a: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(a).to(device, non_blocking=True)


def num_test_clips(manifest: Manifest, positions, T: int, mode: str = "chunks") -> int:
    """How many clips ``iter_test_clips`` yields in total (for progress bars)."""
    lengths = manifest.lengths[np.asarray(positions, dtype=np.int64)]
    return int(np.ceil(lengths / T).sum()) if mode == "chunks" else len(lengths)


def _test_batches(manifest: Manifest, cache: FrameCache, positions, T: int, mode: str = "chunks",
                 batch_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The cache rows (B, T) and owners (B,) of each batch ``iter_test_clips`` yields."""
    owners, rows = [], []
    for p in np.asarray(positions, dtype=np.int64):
        for idx in test_frame_indices(int(manifest.lengths[p]), T, mode):
            owners.append(int(p))
            rows.append(cache.offsets[p] + idx)
            if len(rows) == batch_size:
                yield np.stack(rows), np.array(owners, dtype=np.int64)
                owners, rows = [], []
    if rows:
        yield np.stack(rows), np.array(owners, dtype=np.int64)


def iter_test_clips(manifest: Manifest, cache: FrameCache, positions, T: int, mode: str = "chunks",
                    batch_size: int = 64, device="cpu", dtype: torch.dtype = torch.float32,
                    prefetch: int | None = None, gather_workers: int | None = None
                    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Test clips of the tracklets at ``positions``: yields ``(clips, owners)``.

    ``clips`` is float (B, T, 3, H, W) on ``device`` (B <= batch_size), ``owners`` the int64
    manifest position of each clip's tracklet. With ``mode="chunks"`` every frame of every
    tracklet is covered, T at a time (see ``test_frame_indices``); a long tracklet spans several
    clips and batches, never one huge tensor. Average the features per owner to get a
    tracklet's descriptor. No mirroring.

    Frames that a copy on ``device`` holds (``FrameCache.upload``) are gathered there. The others
    (test frames: MARS reads ~105 GB of them at 227x227) are gathered as uint8 on the host into
    reused buffers (pinned for CUDA) by ``gather_workers`` threads, copied to ``device`` as uint8
    (a quarter of float32's bytes; on CUDA on a side stream, ``DeviceCopy``) and normalised
    there. ``prefetch`` batches (default as the training loader's: 2 on CUDA) are prepared
    ahead on a background thread while the model runs on the current one. The clips are the
    same with and without it.
    """
    device = torch.device(device)
    batches = _test_batches(manifest, cache, positions, T, mode, batch_size)
    prefetch = default_prefetch(device) if prefetch is None else prefetch
    workers = _gather_workers(device) if gather_workers is None else gather_workers
    stages = _TestStages(cache, device, dtype, (batch_size, T, cache.height, cache.width, 3), workers)
    # on the CPU the prefetch thread also normalises (new tensors: its buffer is free at once)
    yield from pipeline(batches, stages.gather, stages.finish, prefetch, device, finish_ahead=device.type == "cpu")


class _TestStages:
    """The two stages of ``iter_test_clips``' batches, with their reused host buffers (one per
    slot, made when first needed, pinned for CUDA)."""

    def __init__(self, cache: FrameCache, device: torch.device, dtype: torch.dtype, shape: tuple, workers: int):
        self.cache, self.device, self.dtype, self.shape, self.workers = cache, device, dtype, shape, workers
        self.copier = DeviceCopy(device) if device.type == "cuda" else None
        self.buffers: dict[int, torch.Tensor] = {}

    def gather(self, batch, slot: int):
        """``(frames, event, owners)``: the batch's uint8 frames from the device copy, or gathered
        on the host into slot ``slot``'s buffer (on CUDA: their copy started, with its event)."""
        rows, owners = batch
        if self.cache.resident_rows(rows, self.device) is not None:
            return self.cache.gather(rows, self.device), None, owners
        if slot not in self.buffers:
            self.buffers[slot] = torch.empty(self.shape, dtype=torch.uint8, pin_memory=self.copier is not None)
        raw = self.cache.host_gather(rows, out=self.buffers[slot][:len(rows)], workers=self.workers)
        if self.copier is not None:
            return *self.copier.start(raw), owners
        return raw, None, owners

    def finish(self, gathered):
        """``((clips, owners), event)``: the frames normalised on the device."""
        raw, event, owners = gathered
        if event is not None:
            raw = self.copier.finish(raw, event)
        raw = raw if raw.device == self.device else raw.to(self.device)
        return (normalize_clips(raw, None, self.dtype), owners), event


def even_frame_indices(manifest: Manifest, positions, T: int) -> np.ndarray:
    """The frame indices of each tracklet's evenly spaced T-frame clip (``test_frame_indices``
    in "even" mode): ``(T,)`` for one position, ``(N, T)`` for a sequence of them. The one way
    the lessons, figures and probes pick "a representative clip" of a tracklet."""
    if np.ndim(positions) == 0:
        return test_frame_indices(int(manifest.lengths[int(positions)]), T, "even")[0]
    return np.stack([test_frame_indices(int(manifest.lengths[p]), T, "even")[0] for p in positions]).reshape(-1, T)


def even_clip(manifest: Manifest, cache: FrameCache, position: int, T: int, device="cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One clip of T evenly spaced frames of a tracklet: float (1, T, 3, H, W), normalised.

    Handy for figures (attention weights, Grad-CAM) where one representative clip is wanted.
    """
    idx = even_frame_indices(manifest, position, T)
    raw = cache.gather((cache.offsets[position] + idx)[None], device)
    return normalize_clips(raw, None, dtype)
