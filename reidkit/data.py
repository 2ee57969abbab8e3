"""Manifest reading, the uint8 frame cache, clip sampling and clip loaders.

The data path (see ``docs/architecture.md``):

    manifest (tracklets.csv, splits.json, meta.json)
        -> FrameCache: every frame decoded once, resized to H x W, stored as uint8 .npy
        -> clips (N, T, 3, H, W): gathered from the cache by index, normalised and mirrored
           as tensors on the device (the GPU when there is one).

Decoding JPEG/PNG costs ~1.5 ms a frame per core; a GPU trains on ~10^4 frames/s. So frames are
decoded once, and a training step only moves indices and uint8 pixels.

Sampling follows Zhou et al. (CVPR 2017), section 4.2: "The length of an image sequence is
experimentally set to 6. The image sequence is randomly selected in a track-let." We read that
as T distinct frames drawn at random and kept in temporal order (see ``train_frame_indices``);
identities are drawn P at a time with K tracklets each (``PKSampler``) so batch-hard mining of
the triplet loss always finds positives and negatives. Testing uses every frame, in chunks of T
(``test_frame_indices``, ``iter_test_clips``); the evaluator averages the chunk features.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = [
    "MEAN", "STD", "ManifestError", "Tracklet", "Split", "Manifest", "load_manifest",
    "decode_frame", "erase_frames", "clip_visibility", "FrameCache", "train_frame_indices",
    "test_frame_indices", "PKSampler",
    "normalize_clips", "denormalize_clips", "ClipBatch", "TrainClipLoader", "iter_test_clips",
    "num_test_clips", "even_clip",
]

# ImageNet RGB statistics on the 0-1 scale (what ImageNet-initialised CNNs expect).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

PROTOCOLS = ("mars", "two_camera")
REQUIRED_COLUMNS = ("tracklet_id", "pid", "camid", "num_frames", "frames")
CACHE_VERSION = 1  # bump when the decode/resize recipe changes: old caches are then rebuilt


class ManifestError(ValueError):
    """A manifest (or a frame it points at) is malformed; the message names file, row and value."""


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Tracklet:
    """One row of ``tracklets.csv``.

    ``frames`` are paths relative to the dataset root, in temporal order. ``visibility`` is the
    optional per-frame ground truth (float32, values in [0, 1]) or None. ``extras`` holds any
    further per-frame columns (e.g. the synthetic benchmark's ``occlusion`` labels) as tuples of
    strings, one per frame.
    """

    tracklet_id: int
    pid: int
    camid: int
    frames: tuple[str, ...]
    visibility: np.ndarray | None = None
    extras: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return len(self.frames)


@dataclass
class Split:
    """One protocol split: tracklet ids of the train, query and gallery sets."""

    train: list[int]
    query: list[int]
    gallery: list[int]


class Manifest:
    """A dataset as ``reidkit`` sees it: tracklets, protocol splits and metadata.

    ``Manifest.load(path)`` accepts the dataset folder (or its ``tracklets.csv``) and validates
    everything it reads; any problem raises ``ManifestError`` naming the file, the row and the
    value. Frame files are not opened here (a million stat calls would make loading slow);
    ``FrameCache.build`` checks them.
    """

    def __init__(self, root, tracklets: list[Tracklet], splits: list[Split], meta: dict):
        self.root = Path(root)
        self.tracklets = list(tracklets)
        self.splits = list(splits)
        self.meta = dict(meta)
        self.protocol = self.meta.get("protocol", "mars")
        self._pos = {t.tracklet_id: i for i, t in enumerate(self.tracklets)}
        self.pids = np.array([t.pid for t in self.tracklets], dtype=np.int64)
        self.camids = np.array([t.camid for t in self.tracklets], dtype=np.int64)
        self.tracklet_ids = np.array([t.tracklet_id for t in self.tracklets], dtype=np.int64)
        self.lengths = np.array([t.num_frames for t in self.tracklets], dtype=np.int64)

    # -- reading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path) -> "Manifest":
        path = Path(path)
        root = path.parent if path.name == "tracklets.csv" else path
        if not root.is_dir():
            raise ManifestError(f"{root}: dataset folder not found")
        meta = _read_meta(root / "meta.json")
        tracklets = _read_tracklets(root / "tracklets.csv")
        splits = _read_splits(root / "splits.json", {t.tracklet_id for t in tracklets})
        return cls(root, tracklets, splits, meta)

    # -- lookups -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tracklets)

    def __repr__(self) -> str:
        return (f"Manifest({str(self.root)!r}, {len(self.tracklets)} tracklets, "
                f"{int(self.lengths.sum())} frames, {len(self.splits)} split(s), "
                f"protocol={self.protocol!r})")

    @property
    def name(self) -> str:
        return str(self.meta.get("name", self.root.name))

    @property
    def total_frames(self) -> int:
        return int(self.lengths.sum())

    @property
    def has_visibility(self) -> bool:
        return any(t.visibility is not None for t in self.tracklets)

    def index(self, tracklet_id: int) -> int:
        """Position of ``tracklet_id`` in ``self.tracklets``."""
        try:
            return self._pos[int(tracklet_id)]
        except KeyError:
            raise KeyError(f"tracklet_id {tracklet_id} is not in {self.root / 'tracklets.csv'}") from None

    def positions(self, ids: Sequence[int]) -> np.ndarray:
        """Positions (int64 array) of a list of tracklet ids, in the given order."""
        return np.array([self.index(i) for i in ids], dtype=np.int64)

    def split(self, i: int = 0) -> Split:
        if not 0 <= i < len(self.splits):
            raise IndexError(f"split {i} out of range: {self.root / 'splits.json'} has {len(self.splits)}")
        return self.splits[i]

    def frame_paths(self, position: int) -> list[Path]:
        """Absolute paths of a tracklet's frames, in temporal order."""
        return [self.root / f for f in self.tracklets[position].frames]


load_manifest = Manifest.load


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    protocol = meta.get("protocol")
    if protocol not in PROTOCOLS:
        raise ManifestError(f"{path}: protocol {protocol!r} is not one of {PROTOCOLS}")
    return meta


def _read_tracklets(path: Path) -> list[Tracklet]:
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: tolerate a spreadsheet's BOM
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing} (header: {columns})")
        extra_cols = [c for c in columns if c not in REQUIRED_COLUMNS and c != "visibility"]
        tracklets: list[Tracklet] = []
        seen: dict[int, int] = {}
        for row_no, row in enumerate(reader, start=1):
            where = f"{path}, row {row_no} (line {reader.line_num})"

            def as_int(col, lo):
                value = row.get(col)
                try:
                    v = int(value)
                except (TypeError, ValueError):
                    raise ManifestError(f"{where}: {col} {value!r} is not an integer") from None
                if v < lo:
                    raise ManifestError(f"{where}: {col} {v} must be >= {lo}")
                return v

            tid, pid = as_int("tracklet_id", 0), as_int("pid", -1)
            camid, num_frames = as_int("camid", 1), as_int("num_frames", 1)
            if tid in seen:
                raise ManifestError(f"{where}: duplicate tracklet_id {tid} (first at row {seen[tid]})")
            seen[tid] = row_no
            frames = tuple((row.get("frames") or "").split("|"))
            if any(not fr for fr in frames):
                raise ManifestError(f"{where}: empty frame path in frames {row.get('frames')!r}")
            if len(frames) != num_frames:
                raise ManifestError(f"{where}: num_frames {num_frames} != {len(frames)} entries in frames")
            visibility = None
            vis_text = (row.get("visibility") or "").strip()
            if vis_text:
                try:
                    visibility = np.array([float(v) for v in vis_text.split("|")], dtype=np.float32)
                except ValueError:
                    raise ManifestError(f"{where}: visibility {vis_text!r} is not '|'-joined floats") from None
                if len(visibility) != num_frames:
                    raise ManifestError(f"{where}: visibility has {len(visibility)} values, "
                                        f"num_frames is {num_frames}")
                bad = ~((visibility >= 0) & (visibility <= 1))
                if bad.any():
                    raise ManifestError(f"{where}: visibility value {float(visibility[bad][0])} "
                                        f"is outside [0, 1]")
            extras = {}
            for c in extra_cols:
                text = row.get(c) or ""
                if text:
                    values = tuple(text.split("|"))
                    if len(values) != num_frames:
                        raise ManifestError(f"{where}: column {c} has {len(values)} values, "
                                            f"num_frames is {num_frames}")
                    extras[c] = values
            tracklets.append(Tracklet(tid, pid, camid, frames, visibility, extras))
    if not tracklets:
        raise ManifestError(f"{path}: no tracklets")
    return tracklets


def _read_splits(path: Path, known_ids: set[int]) -> list[Split]:
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, list) or not data:
        raise ManifestError(f"{path}: expected a non-empty JSON list of splits")
    splits = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ManifestError(f"{path}, split {i}: expected an object, got {type(entry).__name__}")
        parts = {}
        for key in ("train", "query", "gallery"):
            ids = entry.get(key)
            if not isinstance(ids, list):
                raise ManifestError(f"{path}, split {i}: '{key}' missing or not a list")
            for v in ids:
                if not isinstance(v, int) or isinstance(v, bool):
                    raise ManifestError(f"{path}, split {i}, {key}: id {v!r} is not an integer")
                if v not in known_ids:
                    raise ManifestError(f"{path}, split {i}, {key}: tracklet_id {v} is not in tracklets.csv")
            parts[key] = list(ids)
        splits.append(Split(**parts))
    return splits


# --------------------------------------------------------------------------------------------
# Frame cache
# --------------------------------------------------------------------------------------------

def _device(device) -> torch.device:
    """torch.device with the index filled in ("cuda" -> "cuda:0"), so device keys compare equal."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def decode_frame(path, height: int, width: int) -> np.ndarray:
    """Decode one image file to uint8 (height, width, 3) RGB, resized with PIL's bilinear filter.

    This is the one decode recipe: the cache uses it, and so does anything that compares against
    the cache. Raises ``ManifestError`` naming the file when it cannot be read.
    """
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (width, height):
                im = im.resize((width, height), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise ManifestError(f"{path}: frame file not found") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ManifestError(f"{path}: cannot decode image ({e})") from None


class FrameCache:
    """Every frame of a manifest decoded once: uint8 ``(total_frames, H, W, 3)``.

    Stored as ``frames_{H}x{W}.npy`` (opened as a memory map, so a cache larger than RAM works)
    plus ``frames_{H}x{W}.json`` (per-tracklet offsets and lengths, and a fingerprint), by default
    in ``DATASET/.cache/``. Tracklet ``p``'s frames are rows ``offsets[p] : offsets[p] + lengths[p]``.

    Fingerprint: SHA-256 of the bytes of ``tracklets.csv``, the target size, ``CACHE_VERSION``
    and, for every frame file, its relative path, size and modification time (one ``stat`` per
    frame: seconds for MARS's million frames, no reading). If it matches, the cache is reused
    without decoding anything; otherwise it is rebuilt. The build writes to a temporary name and
    then ``os.replace``s it into place, so an interrupted build never leaves a half-written cache
    that looks valid; processes building the same cache at once (e.g. DDP ranks) each write
    their own temporary file and the last replace wins (wasteful, never corrupt: build on rank 0
    first, then on the others, to decode once).
    """

    def __init__(self, frames: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                 path: Path | None = None, fingerprint: str = "", built: bool = False):
        self.frames = frames
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.height, self.width = int(frames.shape[1]), int(frames.shape[2])
        self.path = path
        self.fingerprint = fingerprint
        self.built = built  # True when this call decoded the frames, False when it reused them
        self._tensors: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __repr__(self) -> str:
        return (f"FrameCache({len(self)} frames of {self.height}x{self.width}, "
                f"{len(self.offsets)} tracklets, {self.nbytes / 2**20:.1f} MiB, path={str(self.path)!r})")

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.frames.shape))

    # -- building ------------------------------------------------------------------------
    @staticmethod
    def paths_for(manifest: Manifest, height: int, width: int, cache_dir=None) -> tuple[Path, Path]:
        d = Path(cache_dir) if cache_dir is not None else manifest.root / ".cache"
        stem = f"frames_{height}x{width}"
        return d / f"{stem}.npy", d / f"{stem}.json"

    @staticmethod
    def fingerprint_of(manifest: Manifest, height: int, width: int) -> str:
        """The cache fingerprint (see the class docstring); raises ManifestError for a missing frame."""
        h = hashlib.sha256()
        h.update((manifest.root / "tracklets.csv").read_bytes())
        h.update(f"v{CACHE_VERSION} {height}x{width}\n".encode())
        for t in manifest.tracklets:
            for rel in t.frames:
                try:
                    st = os.stat(manifest.root / rel)
                except OSError:
                    raise ManifestError(f"{manifest.root / rel}: frame file not found "
                                        f"(tracklet_id {t.tracklet_id} in "
                                        f"{manifest.root / 'tracklets.csv'})") from None
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()

    @classmethod
    def build(cls, manifest: Manifest, height: int, width: int, cache_dir=None,
              progress: bool = True, workers: int | None = None) -> "FrameCache":
        """Open the cache for ``manifest`` at ``height x width``, decoding the frames if needed.

        ``workers`` threads decode in parallel (PIL releases the GIL while decoding and
        resizing); default ``min(8, os.cpu_count())``.
        """
        npy_path, json_path = cls.paths_for(manifest, height, width, cache_dir)
        fingerprint = cls.fingerprint_of(manifest, height, width)
        lengths = manifest.lengths.copy()
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        total = int(lengths.sum())

        if npy_path.is_file() and json_path.is_file():
            try:
                index = json.loads(json_path.read_text())
            except (OSError, json.JSONDecodeError):
                index = {}
            if index.get("fingerprint") == fingerprint:
                try:  # copy-on-write map: a writable view (torch.from_numpy wants one), disk untouched
                    frames = np.load(npy_path, mmap_mode="c")
                except (OSError, ValueError):
                    frames = None  # truncated or corrupt: rebuild below
                if (frames is not None and frames.shape == (total, height, width, 3)
                        and frames.dtype == np.uint8):
                    return cls(frames, offsets, lengths, npy_path, fingerprint, built=False)

        npy_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = npy_path.with_name(f"{npy_path.stem}.tmp{os.getpid()}.npy")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(total, height, width, 3))
        try:
            cls._decode_all(manifest, out, offsets, height, width, progress, workers)
            out.flush()
            del out
            json_path.unlink(missing_ok=True)  # the old index must never vouch for the new pixels
            os.replace(tmp, npy_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        index = {"format_version": CACHE_VERSION, "height": height, "width": width, "total": total,
                 "fingerprint": fingerprint, "tracklet_ids": manifest.tracklet_ids.tolist(),
                 "offsets": offsets.tolist(), "lengths": lengths.tolist()}
        tmp_json = json_path.with_name(f"{json_path.stem}.tmp{os.getpid()}.json")
        tmp_json.write_text(json.dumps(index))
        os.replace(tmp_json, json_path)
        frames = np.load(npy_path, mmap_mode="c")
        return cls(frames, offsets, lengths, npy_path, fingerprint, built=True)

    @staticmethod
    def _decode_all(manifest, out, offsets, height, width, progress, workers):
        from tqdm.auto import tqdm

        workers = workers or min(8, os.cpu_count() or 1)

        def decode_tracklet(p: int) -> int:
            t = manifest.tracklets[p]
            for j, rel in enumerate(t.frames):
                try:
                    out[offsets[p] + j] = decode_frame(manifest.root / rel, height, width)
                except ManifestError as e:
                    raise ManifestError(f"{e} (tracklet_id {t.tracklet_id})") from None
            return t.num_frames

        bar = tqdm(total=int(out.shape[0]), unit="frame", disable=not progress,
                   desc=f"decoding frames to {height}x{width}")
        with bar:
            if workers <= 1:
                for p in range(len(manifest.tracklets)):
                    bar.update(decode_tracklet(p))
                return
            with ThreadPoolExecutor(workers) as pool:
                futures = [pool.submit(decode_tracklet, p) for p in range(len(manifest.tracklets))]
                try:
                    for fut in as_completed(futures):
                        bar.update(fut.result())
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise

    # -- reading -------------------------------------------------------------------------
    def clip(self, position: int, frame_idx) -> np.ndarray:
        """uint8 (T, H, W, 3) frames ``frame_idx`` of the tracklet at ``position``."""
        idx = np.asarray(frame_idx, dtype=np.int64)
        n = int(self.lengths[position])
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"frame index out of range for a tracklet of {n} frames: {idx.tolist()}")
        return np.asarray(self.frames[self.offsets[position] + idx])

    def rows(self, positions, frame_idx) -> np.ndarray:
        """Global cache rows (N, T) for per-clip ``frame_idx`` (N, T) of tracklets ``positions`` (N,)."""
        return self.offsets[np.asarray(positions, dtype=np.int64)][:, None] + np.asarray(frame_idx, np.int64)

    def tensor(self, device=None) -> torch.Tensor:
        """The whole cache as a uint8 tensor (total, H, W, 3).

        On the CPU (``device`` None or "cpu") it shares memory with the memory map (no copy).
        On another device (e.g. "cuda") the cache is copied there once, in chunks, and kept: a
        GPU-resident cache makes gathering a batch a single ``index_select``.
        """
        dev = _device(device)
        key = str(dev)
        if key not in self._tensors:
            host = torch.from_numpy(self.frames)
            if dev.type == "cpu":
                self._tensors[key] = host
            else:
                t = torch.empty(tuple(host.shape), dtype=torch.uint8, device=dev)
                step = max(1, (256 << 20) // max(1, self.height * self.width * 3))  # ~256 MiB chunks
                for a in range(0, len(self), step):
                    t[a:a + step].copy_(host[a:a + step])
                self._tensors[key] = t
        return self._tensors[key]

    def gather(self, rows: np.ndarray, device=None) -> torch.Tensor:
        """uint8 frames at global ``rows`` (any shape S) -> tensor (*S, H, W, 3) on ``device``.

        Uses a resident copy on ``device`` when ``tensor(device)`` was called before; otherwise
        gathers on the CPU from the memory map and moves only the gathered frames.
        """
        rows = np.asarray(rows, dtype=np.int64)
        dev = _device(device)
        shape = rows.shape + (self.height, self.width, 3)
        resident = self._tensors.get(str(dev))
        if resident is not None:
            idx = torch.from_numpy(rows.reshape(-1)).to(dev, non_blocking=True)
            return resident.index_select(0, idx).view(shape)
        out = torch.from_numpy(self.frames[rows.reshape(-1)]).view(shape)
        if dev.type == "cuda":
            out = out.pin_memory().to(dev, non_blocking=True)
        elif dev.type != "cpu":
            out = out.to(dev)
        return out


# --------------------------------------------------------------------------------------------
# Frame sampling
# --------------------------------------------------------------------------------------------

def _pad_in_order(idx: np.ndarray, T: int) -> np.ndarray:
    """Stretch ``len(idx) < T`` indices to T by repeating each in temporal order.

    Element ``k`` of the result is ``idx[floor(k * L / T)]``: every frame is kept, each repeated
    ``T/L`` times (rounded), order preserved, e.g. [0, 1, 2] with T=6 -> [0, 0, 1, 1, 2, 2].
    """
    L = len(idx)
    return idx[(np.arange(T) * L) // T]


def train_frame_indices(num_frames: int, T: int, rng: np.random.Generator) -> np.ndarray:
    """Frame indices (int64, shape (T,)) of one training clip.

    Paper, section 4.2: "The image sequence is randomly selected in a track-let." We choose T
    *distinct* frames uniformly at random and sort them, so the RNN sees them in temporal order
    (the whole tracklet's span is reachable, not just a contiguous window). A tracklet shorter
    than T is used whole, each frame repeated in order: 3 frames, T=6 -> [0, 0, 1, 1, 2, 2]
    (no randomness in that case).
    """
    if num_frames < 1 or T < 1:
        raise ValueError(f"need num_frames >= 1 and T >= 1, got {num_frames}, {T}")
    if num_frames < T:
        return _pad_in_order(np.arange(num_frames, dtype=np.int64), T)
    return np.sort(rng.choice(num_frames, size=T, replace=False)).astype(np.int64)


def test_frame_indices(num_frames: int, T: int, mode: str = "chunks") -> list[np.ndarray]:
    """Frame indices of the test clips of one tracklet, a list of int64 arrays of shape (T,).

    ``"chunks"``: all frames, in consecutive chunks of T (frames 0..T-1, T..2T-1, ...); the last
    chunk, if shorter, is padded by repeating its own frames in order (``[6, 7]`` with T=6 ->
    ``[6, 6, 6, 7, 7, 7]``). Every frame appears in exactly one chunk. The evaluator averages the
    chunk features of a tracklet, so long tracklets never go through the network at once.

    ``"even"``: one clip of T evenly spaced frames (the centres of T equal segments); a tracklet
    shorter than T is padded in order as in ``train_frame_indices``.
    """
    if num_frames < 1 or T < 1:
        raise ValueError(f"need num_frames >= 1 and T >= 1, got {num_frames}, {T}")
    if mode == "even":
        return [((2 * np.arange(T, dtype=np.int64) + 1) * num_frames) // (2 * T)]
    if mode == "chunks":
        chunks = []
        for start in range(0, num_frames, T):
            idx = np.arange(start, min(start + T, num_frames), dtype=np.int64)
            chunks.append(idx if len(idx) == T else _pad_in_order(idx, T))
        return chunks
    raise ValueError(f"mode must be 'chunks' or 'even', got {mode!r}")


test_frame_indices.__test__ = False  # a library function, not a test: tell pytest not to collect it


# --------------------------------------------------------------------------------------------
# P x K identity sampler
# --------------------------------------------------------------------------------------------

class PKSampler:
    """Batches of P identities x K tracklets each, for batch-hard triplet mining.

    ``pids[i]`` is the identity of item i; iteration yields ``positions`` of the chosen items
    (``positions`` defaults to ``arange(len(pids))``, pass the manifest positions of the train
    split to get manifest positions back). Only real identities (pid >= 1) are sampled: junk (-1)
    and distractors (0) have no positives. An identity with fewer than K tracklets is sampled
    with replacement.

    Identities are visited in shuffled order, epoch after epoch, so every identity appears about
    equally often; a batch never holds an identity twice. The default epoch length is
    ``ceil(number of real-identity items / (P*K))`` steps. Everything is drawn from
    ``np.random.default_rng([seed, epoch])``: deterministic for a seed and epoch.

    Distributed training: every rank computes the same global batch and keeps identities
    ``rank*P/world_size : (rank+1)*P/world_size`` (P must divide by ``world_size``), so each rank
    yields ``(P/world_size)*K`` positions, the shards are disjoint and together form the batch.
    Mining then happens per rank on whole identities.
    """

    def __init__(self, pids, P: int, K: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 positions=None, steps_per_epoch: int | None = None):
        pids = np.asarray(pids, dtype=np.int64)
        positions = np.arange(len(pids)) if positions is None else np.asarray(positions, dtype=np.int64)
        if len(positions) != len(pids):
            raise ValueError(f"{len(positions)} positions for {len(pids)} pids")
        if P < 1 or K < 1:
            raise ValueError(f"P and K must be >= 1, got P={P}, K={K}")
        if world_size < 1 or not 0 <= rank < world_size or P % world_size:
            raise ValueError(f"P={P} must divide by world_size={world_size} and 0 <= rank={rank} < world_size")
        real = pids >= 1
        self.identities = np.unique(pids[real])
        if len(self.identities) < P:
            raise ValueError(f"P={P} identities per batch but only {len(self.identities)} "
                             f"identities with pid >= 1")
        self.items = [positions[real & (pids == pid)] for pid in self.identities]
        self.P, self.K, self.seed = P, K, seed
        self.rank, self.world_size = rank, world_size
        self.num_items = int(real.sum())
        self.steps_per_epoch = steps_per_epoch or math.ceil(self.num_items / (P * K))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def batch_size(self) -> int:
        """Items per yielded batch on this rank."""
        return self.P // self.world_size * self.K

    def global_batches(self, epoch: int | None = None) -> np.ndarray:
        """All global batches of an epoch: positions, shape (steps, P, K) (row = one identity)."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        n_ids = len(self.identities)
        queue: deque[int] = deque()
        out = np.empty((self.steps_per_epoch, self.P, self.K), dtype=np.int64)
        for s in range(self.steps_per_epoch):
            chosen: list[int] = []
            deferred: list[int] = []
            while len(chosen) < self.P:
                if not queue:
                    queue.extend(rng.permutation(n_ids).tolist())
                i = queue.popleft()
                (deferred if i in chosen else chosen).append(i)
            queue.extendleft(reversed(deferred))  # seen again first in the next batch
            for p, i in enumerate(chosen):
                items = self.items[i]
                out[s, p] = rng.choice(items, size=self.K, replace=len(items) < self.K)
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        per_rank = self.P // self.world_size
        lo = self.rank * per_rank
        for batch in self.global_batches():
            yield batch[lo:lo + per_rank].reshape(-1)


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
    on the CPU than permute, divide, subtract, divide, contiguous).
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
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    x = torch.empty((N, T, 3, H, W), dtype=work, device=dev)
    x.copy_(clips.permute(0, 1, 4, 2, 3))
    scale, bias = _scale_bias(dev, work)
    x.mul_(scale).add_(bias)
    return x if x.dtype == dtype else x.to(dtype)


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
    1/2 per clip, on ``device``. With a CUDA device the whole uint8
    cache is made resident on the GPU by default (``resident=True``; MARS at 256x128 is 50 GB),
    so a step moves only indices; with ``resident=False`` the gather happens on the CPU and only
    the batch's uint8 frames cross to the GPU.

    Deterministic for (seed, epoch, rank). Each full pass advances the epoch by one; call
    ``set_epoch(e)`` to choose it (e.g. when resuming).
    """

    def __init__(self, manifest: Manifest, cache: FrameCache, split: int = 0, P: int = 8, K: int = 4,
                 T: int = 6, steps_per_epoch: int | None = None, seed: int = 0, device="cpu",
                 mirror: bool = True, rank: int = 0, world_size: int = 1, resident: bool | None = None,
                 dtype: torch.dtype = torch.float32, frame_erasing: float = 0.0):
        if len(cache.offsets) != len(manifest.tracklets):
            raise ValueError(f"cache has {len(cache.offsets)} tracklets, manifest {len(manifest.tracklets)}")
        self.manifest, self.cache, self.T = manifest, cache, T
        self.device = torch.device(device)
        self.mirror, self.seed, self.rank, self.dtype = mirror, seed, rank, dtype
        if not 0.0 <= frame_erasing <= 1.0:
            raise ValueError(f"frame_erasing must be a probability in [0, 1], got {frame_erasing}")
        self.frame_erasing = frame_erasing
        train_pos = manifest.positions(manifest.split(split).train)
        self.sampler = PKSampler(manifest.pids[train_pos], P, K, seed=seed, rank=rank,
                                 world_size=world_size, positions=train_pos,
                                 steps_per_epoch=steps_per_epoch)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        if resident is None:
            resident = self.device.type == "cuda"
        if resident:
            cache.tensor(self.device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[ClipBatch]:
        epoch = self.epoch
        self.sampler.set_epoch(epoch)
        rng = np.random.default_rng([self.seed, epoch, self.rank, 1])
        erase_rng = np.random.default_rng([self.seed, epoch, self.rank, 2])
        m = self.manifest
        for positions in self.sampler:
            frame_idx = np.stack([train_frame_indices(int(m.lengths[p]), self.T, rng) for p in positions])
            flips = rng.random(len(positions)) < 0.5 if self.mirror else np.zeros(len(positions), bool)
            raw = self.cache.gather(self.cache.rows(positions, frame_idx), self.device)
            if self.frame_erasing > 0:  # its own stream: the clips drawn do not depend on it
                raw = erase_frames(raw, erase_rng, self.frame_erasing)[0]
            mirrored = torch.from_numpy(flips)
            clips = normalize_clips(raw, mirrored, self.dtype)  # flags stay on the CPU: no sync
            vis = clip_visibility(m, positions, frame_idx)
            to_dev = lambda a: torch.from_numpy(a).to(self.device, non_blocking=True)  # noqa: E731
            yield ClipBatch(
                clips=clips,
                pids=to_dev(m.pids[positions]),
                camids=to_dev(m.camids[positions]),
                tracklet_ids=to_dev(m.tracklet_ids[positions]),
                positions=to_dev(positions),
                frame_idx=to_dev(frame_idx),
                visibility=to_dev(vis) if vis is not None else None,
                mirrored=to_dev(flips),
            )
        self.epoch = epoch + 1


def num_test_clips(manifest: Manifest, positions, T: int, mode: str = "chunks") -> int:
    """How many clips ``iter_test_clips`` yields in total (for progress bars)."""
    lengths = manifest.lengths[np.asarray(positions, dtype=np.int64)]
    return int(np.ceil(lengths / T).sum()) if mode == "chunks" else len(lengths)


def iter_test_clips(manifest: Manifest, cache: FrameCache, positions, T: int, mode: str = "chunks",
                    batch_size: int = 64, device="cpu", dtype: torch.dtype = torch.float32
                    ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Test clips of the tracklets at ``positions``: yields ``(clips, owners)``.

    ``clips`` is float (B, T, 3, H, W) on ``device`` (B <= batch_size), ``owners`` the int64
    manifest position of each clip's tracklet. With ``mode="chunks"`` every frame of every
    tracklet is covered, T at a time (see ``test_frame_indices``); a long tracklet spans several
    clips and batches, never one huge tensor. Average the features per owner to get a
    tracklet's descriptor. No mirroring.
    """
    device = torch.device(device)
    owners, rows = [], []

    def flush():
        clips = normalize_clips(cache.gather(np.stack(rows), device), None, dtype)
        out = (clips, np.array(owners, dtype=np.int64))
        owners.clear()
        rows.clear()
        return out

    for p in np.asarray(positions, dtype=np.int64):
        for idx in test_frame_indices(int(manifest.lengths[p]), T, mode):
            owners.append(int(p))
            rows.append(cache.offsets[p] + idx)
            if len(rows) == batch_size:
                yield flush()
    if rows:
        yield flush()


def even_clip(manifest: Manifest, cache: FrameCache, position: int, T: int, device="cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One clip of T evenly spaced frames of a tracklet: float (1, T, 3, H, W), normalised.

    Handy for figures (attention weights, Grad-CAM) where one representative clip is wanted.
    """
    idx = test_frame_indices(int(manifest.lengths[position]), T, "even")[0]
    raw = cache.gather((cache.offsets[position] + idx)[None], device)
    return normalize_clips(raw, None, dtype)
