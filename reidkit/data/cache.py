"""The uint8 frame cache: every frame of a manifest decoded once, resized to H x W, kept as .npy.

Decoding JPEG/PNG costs ~1.5 ms a frame per core; a GPU trains on ~10^4 frames/s. So frames are
decoded once (``decode_frame``, the one decode recipe), and a training step only moves indices
and uint8 pixels (``FrameCache.gather``).

Sizes (H x W x 3 bytes a frame). MARS has 1,191,003 frames, 509,914 of them in training:

    size       a frame     whole cache on disk        training frames (GPU copy)
    227x227    154,587 B   184.1 GB (171.5 GiB)       78.8 GB (73.4 GiB)
    128x64      24,576 B    29.3 GB  (27.3 GiB)       12.5 GB (11.7 GiB)

The disk must hold the whole cache (``check_disk_space`` refuses a build that would not fit);
a GPU holds only the training frames (``FrameCache.upload``); test frames are read from the
memory map a batch at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from reidkit.config import ConfigError
from reidkit.files import atomic_write, remove_stale_temporaries_in, write_text

from .manifest import Manifest, ManifestError

CACHE_VERSION = 1  # bump when the decode/resize recipe changes: old caches are then rebuilt
# GPU memory kept free beside the resident frames: the model, its activations at a P x K batch,
# the optimiser and an evaluation batch (CaffeNet at 227x227 needs a few GB; 16 GiB is generous)
GPU_HEADROOM = 16 << 30
INDEX_BYTES = 1 << 20  # disk asked for beside the frames: the .npy header and the JSON index
UPLOAD_CHUNK_BYTES = 256 << 20  # frames per host buffer when copying the cache to a GPU
READ_ROWS = 64  # most frames one read of the file asks for: threads share long runs of rows


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_disk_space(folder, needed: int, free: int) -> None:
    """Refuse (``ManifestError``) to build a cache of ``needed`` bytes in ``folder`` with ``free`` bytes free.

    Writing a memory map past the end of a full disk kills the process (SIGBUS) hours into a
    decode; refusing first names the folder, both sizes and the setting that moves the cache.
    """
    if needed > free:
        raise ManifestError(f"the frame cache needs {_gb(needed)} ({needed} bytes) in {folder}, but only "
                            f"{_gb(free)} are free there; free space, or set data.cache_dir=DIR (or "
                            f"--cache-dir DIR) to a folder on a disk with room")


def plan_gpu_cache(setting: str, needed: int, free: int, headroom: int = GPU_HEADROOM) -> tuple[bool, str]:
    """Whether ``needed`` bytes of training frames go to a GPU with ``free`` bytes free (``train.gpu_cache``).

    Returns ``(resident, reason)``: ``reason`` is "" when nothing needs saying, else why the
    frames stay on the host (``auto``: the caller warns). ``always`` with too little memory
    raises ``ConfigError`` instead of running out of memory mid-upload.
    """
    if setting not in ("auto", "always", "never"):
        raise ConfigError(f"train.gpu_cache: expected auto, always or never, got {setting!r}")
    if setting == "never":
        return False, ""
    if needed + headroom <= free:
        return True, ""
    why = (f"the training frames ({_gb(needed)}) plus {_gb(headroom)} of headroom for the model do not fit "
           f"the {_gb(free)} free on the GPU")
    if setting == "always":
        raise ConfigError(f"train.gpu_cache=always: {why}; set train.gpu_cache=auto (gather batches on the "
                          f"host when the frames do not fit) or train.gpu_cache=never, or train at a "
                          f"smaller model.height x model.width")
    return False, (f"train.gpu_cache=auto: {why}; batches are gathered from the memory-mapped cache on the "
                   f"host instead (slower; train.gpu_cache=never silences this)")


def gather_workers(device, world_size: int = 1) -> int:
    """Threads that gather host frames for ``device``: 1 for the CPU (its cores compute), else
    up to 8, sharing the cores among ``world_size`` processes."""
    if torch.device(device).type == "cpu":
        return 1
    return max(1, min(8, (os.cpu_count() or 1) // max(1, world_size)))


def _mapped_file(frames) -> tuple[str, int] | None:
    """(path, byte offset of row 0) when ``frames`` is a C-contiguous memory map of a whole file
    (a cache's .npy: its header, then the frames), else None."""
    name, offset = getattr(frames, "filename", None), getattr(frames, "offset", None)
    if not isinstance(frames, np.memmap) or not name or offset is None or not frames.flags.c_contiguous:
        return None
    try:
        whole = os.path.getsize(name) == int(offset) + frames.nbytes
    except OSError:
        return None
    return (str(name), int(offset)) if whole else None


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


def _stat(path: Path) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


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
    then ``os.replace``s it into place (fsynced), so an interrupted build never leaves a
    half-written cache that looks valid, and the temporary a killed build leaves (of any size in
    the folder) is deleted by the next build or reuse there; processes building the same cache at
    once each write their own temporary file and the last replace wins (wasteful, never corrupt).
    DDP training builds on rank 0 and the other ranks ``open`` the result: one decode, not one per rank.

    The index also records the ``.npy`` file's size and modification time: a cache written to
    since it was built (rows zeroed or overwritten) is re-hashed against the checksums of the
    build before it is reused, and rebuilt, with a warning, when any chunk differs.

    What the fingerprint cannot see: a frame file replaced by other bytes of the same size with
    its modification time set back (a restored backup, a ``touch -r``). After such a change,
    delete the cache (``DATASET/.cache/frames_HxW.*``, or the ``data.cache_dir`` folder) and it
    is rebuilt from the files.

    Reading: ``gather`` serves rows from a copy ``upload``ed to a device when it holds them all
    (one ``index_select``), else from the memory map on the host.
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
        self._host = torch.from_numpy(frames)  # shares memory with the map: no copy
        self._pool: ThreadPoolExecutor | None = None  # host_gather's threads (made on first use)
        self._pool_size = 0
        self._file = _mapped_file(frames)  # (path, offset of row 0) when the frames map a whole .npy
        # device -> (frames there, remap): remap[cache row] = row there, -1 if absent; None = all rows
        self._resident: dict[str, tuple[torch.Tensor, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __repr__(self) -> str:
        return (f"FrameCache({len(self)} frames of {self.height}x{self.width}, "
                f"{len(self.offsets)} tracklets, {self.nbytes / 2**20:.1f} MiB, path={str(self.path)!r})")

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * 3

    @property
    def nbytes(self) -> int:
        return len(self) * self.frame_bytes

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
    def open(cls, manifest: Manifest, height: int, width: int, cache_dir=None) -> "FrameCache":
        """Open the built cache for ``manifest`` at ``height x width`` without decoding anything.

        Raises ``ManifestError`` naming the file when there is no cache there or it is stale
        (another manifest, size or frame files). DDP ranks other than 0 open what rank 0 built.
        """
        npy_path, _ = cls.paths_for(manifest, height, width, cache_dir)
        cache = cls._open_existing(manifest, height, width, cache_dir, cls.fingerprint_of(manifest, height, width))
        if cache is None:
            raise ManifestError(f"{npy_path}: no up-to-date frame cache for {manifest.root} at {height}x{width} "
                                f"(missing, damaged or built from other frames): build it with FrameCache.build")
        return cache

    @classmethod
    def _open_existing(cls, manifest, height, width, cache_dir, fingerprint) -> "FrameCache | None":
        """The cache on disk when its index vouches for ``fingerprint`` and its shape is right, else None."""
        npy_path, json_path = cls.paths_for(manifest, height, width, cache_dir)
        if not (npy_path.is_file() and json_path.is_file()):
            return None
        try:
            index = json.loads(json_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if index.get("fingerprint") != fingerprint:
            return None
        try:  # copy-on-write map: a writable view (torch.from_numpy wants one), disk untouched
            frames = np.load(npy_path, mmap_mode="c")
        except (OSError, ValueError):
            return None  # truncated or corrupt
        lengths = manifest.lengths.copy()
        if frames.shape != (int(lengths.sum()), height, width, 3) or frames.dtype != np.uint8:
            return None
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return cls(frames, offsets, lengths, npy_path, fingerprint, built=False)

    @classmethod
    def build(cls, manifest: Manifest, height: int, width: int, cache_dir=None,
              progress: bool = True, workers: int | None = None) -> "FrameCache":
        """Open the cache for ``manifest`` at ``height x width``, decoding the frames if needed.

        ``workers`` threads decode in parallel (PIL releases the GIL while decoding and
        resizing); default ``min(8, os.cpu_count())``. Before decoding, the free disk space of
        the cache folder is checked against the cache's size (``check_disk_space``).
        """
        npy_path, json_path = cls.paths_for(manifest, height, width, cache_dir)
        try:
            npy_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ManifestError(f"cannot create the frame-cache folder {npy_path.parent} ({e.strerror}); set "
                                f"data.cache_dir (or --cache-dir) to a writable folder") from None
        remove_stale_temporaries_in(npy_path.parent)  # a killed build (of any size) left its temporary
        fingerprint = cls.fingerprint_of(manifest, height, width)
        existing = cls._open_existing(manifest, height, width, cache_dir, fingerprint)
        if existing is not None:
            damaged = cls._changed_since_built(npy_path, progress)
            if not damaged:
                return existing
            del existing
            warnings.warn(f"{npy_path}: frame rows {', '.join(f'{a}–{b - 1}' for a, b in damaged[:5])} were "
                          f"written to since the cache was built (their checksums differ): rebuilding it", stacklevel=2)

        lengths = manifest.lengths.copy()
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        total = int(lengths.sum())
        with atomic_write(npy_path, suffix=".npy", durable=True) as tmp:
            check_disk_space(npy_path.parent, total * height * width * 3 + INDEX_BYTES,
                             shutil.disk_usage(npy_path.parent).free)
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(total, height, width, 3))
            cls._decode_all(manifest, out, offsets, height, width, progress, workers)
            out.flush()
            checksums = chunk_checksums(out)
            del out
            json_path.unlink(missing_ok=True)  # the old index must never vouch for the new pixels
        index = {"format_version": CACHE_VERSION, "height": height, "width": width, "total": total,
                 "fingerprint": fingerprint, "tracklet_ids": manifest.tracklet_ids.tolist(),
                 "offsets": offsets.tolist(), "lengths": lengths.tolist(),
                 "chunk_frames": CHUNK_FRAMES, "chunk_sha256": checksums, "npy_stat": _stat(npy_path)}
        write_text(json_path, json.dumps(index))
        frames = np.load(npy_path, mmap_mode="c")
        return cls(frames, offsets, lengths, npy_path, fingerprint, built=True)

    @classmethod
    def _changed_since_built(cls, npy_path: Path, progress: bool) -> list[tuple[int, int]]:
        """The damaged row ranges of a cache whose ``.npy`` changed on disk since its build (size or
        modification time differ from the index's): re-hashed (:meth:`verify`). [] when unchanged,
        intact (the index then records the new time) or built without checksums."""
        json_path = npy_path.with_suffix(".json")
        try:
            index = json.loads(json_path.read_text())
        except (OSError, ValueError):
            return []
        if index.get("npy_stat") == _stat(npy_path) or "chunk_sha256" not in index:
            return []
        damaged = cls.verify(npy_path, progress)
        if not damaged:
            write_text(json_path, json.dumps({**index, "npy_stat": _stat(npy_path)}))
        return damaged

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

    def tracklet_rows(self, positions) -> np.ndarray:
        """Every cache row (int64, ascending within a tracklet) of the tracklets at ``positions``."""
        positions = np.asarray(positions, dtype=np.int64)
        if not len(positions):
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(self.offsets[p], self.offsets[p] + self.lengths[p]) for p in positions])

    def tensor(self, device=None) -> torch.Tensor:
        """The whole cache as a uint8 tensor (total, H, W, 3).

        On the CPU (``device`` None or "cpu") it shares memory with the memory map (no copy).
        On another device (e.g. "cuda") it is ``upload``ed there once (every row) and kept.
        """
        dev = _device(device)
        if dev.type == "cpu":
            return self._host
        return self.upload(dev)

    def upload(self, device, rows=None, progress: bool = False, workers: int | None = None) -> torch.Tensor:
        """Copy the frames at cache ``rows`` (default: all) to ``device`` and keep them there.

        ``gather`` then serves any batch whose rows are all in the copy with one
        ``index_select`` on the device; other rows (e.g. test frames) still come from the host.
        Training uploads only its split's frames (MARS at 227x227: 78.8 GB, not 184). The copy
        goes in ~256 MiB chunks through two reused host buffers (pinned, on CUDA): ``workers``
        threads (default ``gather_workers()``) gather one chunk out of the memory map while the
        previous one is copied to the GPU asynchronously; a tqdm bar shows it. A copy already on
        ``device`` that holds every row asked for is reused; otherwise it is dropped before the
        new one is made (never two at once). Returns the device tensor (row i = the i-th of ``rows``).
        """
        dev = _device(device)
        rows = np.arange(len(self), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"cache rows out of range for a cache of {len(self)} frames")
        key = str(dev)
        if key in self._resident:
            frames, remap = self._resident[key]
            if remap is None or (remap[rows] >= 0).all():
                return frames
            del self._resident[key], frames  # free it before allocating the new copy
        out = torch.empty((len(rows), self.height, self.width, 3), dtype=torch.uint8, device=dev)
        cuda = dev.type == "cuda"
        step = max(1, min(UPLOAD_CHUNK_BYTES // self.frame_bytes, len(rows)))
        bufs = [torch.empty((step, self.height, self.width, 3), dtype=torch.uint8, pin_memory=cuda)
                for _ in range(2 if cuda and len(rows) > step else 1)]
        done: list = [None] * len(bufs)  # per buffer: the event of its last copy to the GPU
        workers = gather_workers(dev) if workers is None else workers
        bar = tqdm(total=len(rows), unit="frame", unit_scale=True, disable=not progress,
                   desc=f"frames to {dev} ({len(rows) * self.frame_bytes / 1e9:.1f} GB)")
        with bar:
            for i, a in enumerate(range(0, len(rows), step)):
                k, chunk = i % len(bufs), rows[a:a + step]
                if done[k] is not None:
                    done[k].synchronize()  # that buffer's copy has finished: refill it
                part = self.host_gather(chunk, out=bufs[k][:len(chunk)], workers=workers)
                out[a:a + len(chunk)].copy_(part, non_blocking=cuda)
                if cuda:
                    done[k] = torch.cuda.Event(blocking=True)  # waited on by sleeping, not spinning
                    done[k].record()
                bar.update(len(chunk))
            for event in done:
                if event is not None:
                    event.synchronize()
        whole = len(rows) == len(self) and bool((rows == np.arange(len(self))).all())
        remap = None
        if not whole:
            remap = np.full(len(self), -1, dtype=np.int64)
            remap[rows] = np.arange(len(rows))
        self._resident[key] = (out, remap)
        return out

    def upload_bytes(self, device, rows) -> int:
        """Device memory ``upload(device, rows)`` would allocate: 0 when a copy there holds them all."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        return 0 if self.resident_rows(rows, device) is not None else len(rows) * self.frame_bytes

    def resident_rows(self, rows: np.ndarray, device) -> np.ndarray | None:
        """``rows`` as row numbers of the copy on ``device`` when it holds them all, else None."""
        held = self._resident.get(str(_device(device)))
        if held is None:
            return None
        remap = held[1]
        if remap is None:
            return rows
        local = remap[rows]
        return local if (local >= 0).all() else None

    def host_gather(self, rows: np.ndarray, out: torch.Tensor | None = None, pin: bool = False,
                    workers: int = 1) -> torch.Tensor:
        """uint8 frames at cache ``rows`` (any shape S) -> CPU tensor (*S, H, W, 3), one copy out of the map.

        Fills ``out`` (a reused, possibly pinned, buffer of that shape) when given, else a new
        tensor (``pin``: in pinned memory, so the copy to a GPU can be asynchronous). ``workers``
        > 1 splits the rows between that many threads, each reading its rows from the cache file
        with ``os.preadv``, one read per run of consecutive rows: a cache larger than RAM is
        otherwise read by page faults, a few pages at a time, and one thread waits for each in
        turn (measured on a cold 6 GiB cache: 0.3 GB/s by page faults from 8 threads, 1 GB/s by
        reads). The file holds what the map shows: nothing writes to a cache's frames.
        """
        rows = np.asarray(rows, dtype=np.int64)
        shape = rows.shape + (self.height, self.width, 3)
        if out is None:
            out = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)
        elif tuple(out.shape) != shape or out.dtype != torch.uint8:
            raise ValueError(f"out must be uint8 {shape}, got {out.dtype} {tuple(out.shape)}")
        flat = out.view(-1, self.height, self.width, 3)
        index = torch.from_numpy(rows.reshape(-1))
        parts = max(1, min(int(workers), len(index) // 4))  # a few frames a thread at least
        if parts == 1:
            torch.index_select(self._host, 0, index, out=flat)
            return out
        if self._pool is None or self._pool_size < parts:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool, self._pool_size = ThreadPoolExecutor(parts, thread_name_prefix="reidkit-gather"), parts
        if self._file is not None and hasattr(os, "preadv"):
            rows = rows.reshape(-1)
            starts = np.flatnonzero(np.diff(rows, prepend=rows[0] - 2) != 1)  # runs of consecutive rows
            ends = np.append(starts[1:], len(rows))
            pieces = [(a, min(a + READ_ROWS, b)) for start, b in zip(starts, ends) for a in range(start, b, READ_ROWS)]
            target = flat.numpy().reshape(len(rows), -1)
            jobs = [self._pool.submit(self._read, [pieces[i] for i in part], rows, target)
                    for part in np.array_split(np.arange(len(pieces)), parts) if len(part)]
        else:
            bounds = np.linspace(0, len(index), parts + 1).astype(np.int64)
            jobs = [self._pool.submit(torch.index_select, self._host, 0, index[a:b], out=flat[a:b])
                    for a, b in zip(bounds[:-1], bounds[1:])]
        for job in jobs:
            job.result()  # raises a thread's error here
        return out

    def _read(self, pieces, rows: np.ndarray, target: np.ndarray) -> None:
        """Fill ``target[a:b]`` with cache rows ``rows[a] ...`` (consecutive) for each (a, b) of ``pieces``."""
        path, base = self._file
        fd = os.open(path, os.O_RDONLY)
        try:
            for a, b in pieces:
                view = memoryview(target[a:b]).cast("B")
                offset, done = base + int(rows[a]) * self.frame_bytes, 0
                while done < len(view):
                    n = os.preadv(fd, [view[done:]], offset + done)
                    if n <= 0:
                        raise ManifestError(f"{path}: the cache file ends before frame row {int(rows[a])} "
                                            f"(truncated while open?)")
                    done += n
        finally:
            os.close(fd)

    def gather(self, rows: np.ndarray, device=None) -> torch.Tensor:
        """uint8 frames at cache ``rows`` (any shape S) -> tensor (*S, H, W, 3) on ``device``.

        From the copy on ``device`` when ``upload`` put every one of ``rows`` there (one
        ``index_select``, nothing crosses the bus); otherwise gathered on the host from the
        memory map (into pinned memory for a GPU) and only the gathered frames are moved.
        """
        rows = np.asarray(rows, dtype=np.int64)
        dev = _device(device)
        shape = rows.shape + (self.height, self.width, 3)
        local = self.resident_rows(rows, dev)
        if local is not None:
            idx = torch.from_numpy(np.ascontiguousarray(local).reshape(-1)).to(dev, non_blocking=True)
            return self._resident[str(dev)][0].index_select(0, idx).view(shape)
        out = self.host_gather(rows, pin=dev.type == "cuda")
        if dev.type != "cpu":
            out = out.to(dev, non_blocking=dev.type == "cuda")
        return out
