"""The uint8 frame cache: every frame of a manifest decoded once, resized to H x W, kept as .npy.

Decoding JPEG/PNG costs ~1.5 ms a frame per core; a GPU trains on ~10^4 frames/s. So frames are
decoded once (``decode_frame``, the one decode recipe), and a training step only moves indices
and uint8 pixels (``FrameCache.gather``).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from reidkit.files import atomic_write, write_text

from .manifest import Manifest, ManifestError

CACHE_VERSION = 1  # bump when the decode/resize recipe changes: old caches are then rebuilt


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


CHUNK_FRAMES = 1024  # frames per checksum: damage is located to about a thousand frames


def chunk_checksums(frames: np.ndarray, chunk: int = CHUNK_FRAMES, progress: bool = False) -> list[str]:
    """SHA-256 of each run of ``chunk`` frame rows of a uint8 frame array (memory-mapped is fine)."""
    out = []
    for start in tqdm(range(0, len(frames), chunk), disable=not progress, desc="checksums", unit="chunk"):
        out.append(hashlib.sha256(np.ascontiguousarray(frames[start:start + chunk]).tobytes()).hexdigest())
    return out


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
        try:
            npy_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ManifestError(f"cannot create the frame-cache folder {npy_path.parent} ({e.strerror}); set "
                                f"data.cache_dir (or --cache-dir) to a writable folder") from None
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

        with atomic_write(npy_path, suffix=".npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(total, height, width, 3))
            cls._decode_all(manifest, out, offsets, height, width, progress, workers)
            out.flush()
            checksums = chunk_checksums(out)
            del out
            json_path.unlink(missing_ok=True)  # the old index must never vouch for the new pixels
        index = {"format_version": CACHE_VERSION, "height": height, "width": width, "total": total,
                 "fingerprint": fingerprint, "tracklet_ids": manifest.tracklet_ids.tolist(),
                 "offsets": offsets.tolist(), "lengths": lengths.tolist(),
                 "chunk_frames": CHUNK_FRAMES, "chunk_sha256": checksums}
        write_text(json_path, json.dumps(index))
        frames = np.load(npy_path, mmap_mode="c")
        return cls(frames, offsets, lengths, npy_path, fingerprint, built=True)

    @staticmethod
    def verify(npy_path: str | Path, progress: bool = False) -> list[tuple[int, int]]:
        """Re-hash a built cache and compare with the checksums its index recorded at build time.

        Returns the damaged frame-row ranges ``[(start, stop), ...]`` (empty: intact). Reads the
        whole file once (about a minute per 50 GB on one core); ``reidkit cache verify`` runs it.
        Raises ``ManifestError`` when the index is missing or was written without checksums.
        """
        npy_path = Path(npy_path)
        json_path = npy_path.with_suffix(".json")
        try:
            index = json.loads(json_path.read_text())
        except (OSError, ValueError):
            raise ManifestError(f"{json_path}: no readable cache index beside {npy_path.name}") from None
        if "chunk_sha256" not in index:
            raise ManifestError(f"{json_path}: the cache was built without checksums (an older reidkit); "
                                f"delete it to have it rebuilt")
        frames = np.load(npy_path, mmap_mode="r")
        size = int(index["chunk_frames"])
        now = chunk_checksums(frames, size, progress)
        if len(now) != len(index["chunk_sha256"]):
            return [(0, len(frames))]
        return [(i * size, min((i + 1) * size, len(frames)))
                for i, (a, b) in enumerate(zip(now, index["chunk_sha256"])) if a != b]

    @staticmethod
    def _decode_all(manifest, out, offsets, height, width, progress, workers):

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
