"""What every raw-layout reader shares: the manifest writer, frame-number sorting, .mat reading.

The manifest (``tracklets.csv``, ``splits.json``, ``meta.json``; docs/architecture.md section 1,
data_prep/README.md) is the only thing ``reidkit`` reads. ``write_manifest`` is the single place
that writes it, so every dataset, the synthetic benchmark included, gets the same validation.

Frame order is never the order a directory listing returns: frames are sorted by the number
parsed from the file name (``frame_number``), numerically, so ``2.png`` comes before ``10.png``.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import math
import numbers
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

FORMAT_VERSION = 1
SOURCES = ("mars", "ilidsvid", "prid2011", "synthetic")
PROTOCOLS = ("mars", "two_camera")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
CHECK_IMAGES = ("none", "ends", "all")

# Columns every tracklets.csv has, in this order; per-frame extras follow.
BASE_COLUMNS = ("tracklet_id", "pid", "camid", "num_frames", "frames", "visibility")
_SCALAR_KEYS = ("tracklet_id", "pid", "camid", "num_frames")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


class DataPrepError(ValueError):
    """A raw dataset or a manifest input is not what was expected; the message names it."""


# --------------------------------------------------------------------------- frame files


def frame_number(path: str | os.PathLike, pattern: re.Pattern | None = None) -> int:
    """The frame number in a file name: the digits ending its stem (``cam1_person001_00317.png``
    → 317, ``0001.png`` → 1), or group ``frame`` (else group 1) of ``pattern`` matched on the stem.
    """
    stem = Path(path).stem
    match = (pattern or _TRAILING_NUMBER).search(stem)
    if match is None:
        expected = pattern.pattern if pattern is not None else "a name ending in digits"
        raise DataPrepError(f"{path}: cannot parse a frame number from the name (expected {expected})")
    group = "frame" if "frame" in match.re.groupindex else 1
    return int(match.group(group))


def sort_frames(paths: Iterable[str | os.PathLike], pattern: re.Pattern | None = None) -> list:
    """``paths`` sorted by ``frame_number`` (numerically); two files with one number is an error."""
    numbered = [(frame_number(p, pattern), p) for p in paths]
    numbered.sort(key=lambda item: item[0])
    for (n_a, p_a), (n_b, p_b) in zip(numbered, numbered[1:]):
        if n_a == n_b:
            raise DataPrepError(f"{p_b}: frame number {n_b} also used by {p_a}")
    return [p for _, p in numbered]


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_frames(folder: Path, pattern: re.Pattern | None = None) -> list[Path]:
    """The image files in one tracklet folder, in temporal order (by frame number).

    Hidden files and non-image files (``Thumbs.db``...) are ignored; an image whose name does
    not parse, a missing folder, or a folder without images raises ``DataPrepError``.
    """
    if not folder.is_dir():
        raise DataPrepError(f"{folder}: tracklet folder not found")
    images = [p for p in folder.iterdir() if p.is_file() and is_image_file(p)]
    if not images:
        raise DataPrepError(f"{folder}: empty tracklet folder (no {'/'.join(IMAGE_EXTENSIONS)} files)")
    return sort_frames(images, pattern)


def numbered_subdirs(folder: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    """``(number, path)`` of the sub-folders of ``folder`` whose name fully matches ``pattern``
    (group 1 = the number), sorted by number. Hidden entries and plain files are ignored; any
    other folder name is an error (a stray folder usually means ``--src`` points at the wrong level).
    """
    if not folder.is_dir():
        raise DataPrepError(f"{folder}: folder not found")
    found: dict[int, Path] = {}
    for entry in folder.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        match = pattern.fullmatch(entry.name)
        if match is None:
            raise DataPrepError(f"{entry}: unexpected folder name (expected {pattern.pattern})")
        number = int(match.group(1))
        if number in found:
            raise DataPrepError(f"{entry}: number {number} also used by {found[number]}")
        found[number] = entry
    if not found:
        raise DataPrepError(f"{folder}: no sub-folders named like {pattern.pattern}")
    return sorted(found.items())


@functools.lru_cache(maxsize=4096)
def _relative_dir(folder: str, out_dir: str) -> str:
    # cached per folder: MARS has 1.2M frames in ~1,300 folders. realpath: the OS resolves
    # "out/../x" from where "out" really is, symlinks followed, so the relative path must too.
    try:
        rel = os.path.relpath(os.path.realpath(folder), os.path.realpath(out_dir))
    except ValueError as err:  # Windows: different drives
        raise DataPrepError(f"{folder}: cannot be reached from {out_dir} by a relative path ({err}); "
                            "put --out on the same drive as --src") from err
    return Path(rel).as_posix()


def relative_folder(folder: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """``folder`` relative to ``out_dir`` (``.`` when they are the same), ``/`` separators."""
    return _relative_dir(os.path.abspath(folder), os.path.abspath(out_dir))


def relative_frame(path: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """``path`` relative to ``out_dir`` with ``/`` separators (may hold ``..``): how the manifest
    points at frames that stay in the raw folder."""
    folder, name = os.path.split(os.path.abspath(path))
    rel = _relative_dir(folder, os.path.abspath(out_dir))
    return name if rel == "." else f"{rel}/{name}"


def check_image(path: Path) -> tuple[int, int]:
    """Decode one image fully (catches garbage and truncated files); return its (H, W)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            width, height = img.size
    except Exception as err:  # PIL raises many types: UnidentifiedImageError, OSError, SyntaxError...
        raise DataPrepError(f"{path}: unreadable image ({type(err).__name__}: {err})") from err
    return height, width


def check_tracklet_images(frame_lists: Sequence[Sequence[Path]], mode: str = "ends",
                          progress: bool = False, desc: str = "checking images") -> list[int] | None:
    """Open images of each tracklet: ``"ends"`` the first and last frame, ``"all"`` every frame,
    ``"none"`` nothing. Returns the most common [H, W] seen (None when nothing was opened)."""
    if mode not in CHECK_IMAGES:
        raise DataPrepError(f"check_images={mode!r}: expected one of {CHECK_IMAGES}")
    if mode == "none":
        return None
    from tqdm import tqdm

    sizes: Counter = Counter()
    for frames in tqdm(frame_lists, desc=desc, unit="tracklet", disable=not progress):
        chosen = frames if mode == "all" else list(dict.fromkeys([frames[0], frames[-1]]))
        for path in chosen:
            sizes[check_image(Path(path))] += 1
    if not sizes:
        return None
    return list(sizes.most_common(1)[0][0])


# --------------------------------------------------------------------------- .mat files


def load_mat(path: Path, key: str, shape: tuple | None = None, vector: bool = False) -> np.ndarray:
    """Integer array ``key`` of a MATLAB file, shape-checked.

    ``shape``: expected shape, ``None`` entries match any size. ``vector=True`` accepts
    (n,), (1, n) and (n, 1) and returns a flat (n,) array. Values must be whole numbers.
    """
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise DataPrepError(f"{path}: .mat file not found")
    try:
        contents = scipy.io.loadmat(str(path))
    except NotImplementedError as err:  # MATLAB v7.3 files are HDF5
        raise DataPrepError(f"{path}: MATLAB v7.3 (HDF5) files are not supported: {err}") from err
    except Exception as err:
        raise DataPrepError(f"{path}: cannot read as a .mat file ({type(err).__name__}: {err})") from err
    if key not in contents:
        names = sorted(k for k in contents if not k.startswith("__"))
        raise DataPrepError(f"{path}: no variable {key!r} (found {names})")
    array = np.asarray(contents[key])
    if vector:
        if array.ndim == 2 and 1 in array.shape:
            array = array.reshape(-1)
        if array.ndim != 1:
            raise DataPrepError(f"{path}: {key} has shape {array.shape}, expected a vector (1, n) or (n, 1)")
    if shape is not None:
        ok = array.ndim == len(shape) and all(e is None or e == s for e, s in zip(shape, array.shape))
        if not ok:
            want = "(" + ", ".join("n" if e is None else str(e) for e in shape) + ")"
            raise DataPrepError(f"{path}: {key} has shape {array.shape}, expected {want}")
    if not np.issubdtype(array.dtype, np.number) or (array.size and not np.all(np.mod(array, 1) == 0)):
        raise DataPrepError(f"{path}: {key} must hold whole numbers (dtype {array.dtype})")
    return array.astype(np.int64)


def read_lines(path: Path) -> list[str]:
    """Non-empty, stripped lines of a text file (e.g. MARS ``train_name.txt``)."""
    if not path.is_file():
        raise DataPrepError(f"{path}: file not found")
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


# --------------------------------------------------------------------------- the manifest


def _as_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DataPrepError(f"{what} = {value!r}: expected an int")
    return int(value)


def _format_value(value, what: str) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else format(float(value), ".6g")
    text = str(value)
    if "|" in text or "\n" in text or "\r" in text:
        raise DataPrepError(f"{what} = {text!r}: per-frame values must not contain '|' or newlines")
    return text


def _check_tracklet(t: dict, index: int) -> tuple[int, list[str], dict[str, list[str]]]:
    """Validate one tracklet dict; return (tracklet_id, frames, per-frame columns as strings)."""
    if not isinstance(t, dict):
        raise DataPrepError(f"tracklets[{index}] = {t!r}: expected a dict")
    for key in ("tracklet_id", "pid", "camid", "frames"):
        if key not in t:
            raise DataPrepError(f"tracklets[{index}]: missing {key!r}")
    tid = _as_int(t["tracklet_id"], f"tracklets[{index}].tracklet_id")
    where = f"tracklet {tid}"
    if tid < 0:
        raise DataPrepError(f"{where}: tracklet_id {tid} must be >= 0")
    pid = _as_int(t["pid"], f"{where}: pid")
    if pid < -1:
        raise DataPrepError(f"{where}: pid {pid}; expected -1 (junk), 0 (distractor) or >= 1")
    camid = _as_int(t["camid"], f"{where}: camid")
    if camid < 1:
        raise DataPrepError(f"{where}: camid {camid} must be >= 1")
    frames = t["frames"]
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Sequence):
        raise DataPrepError(f"{where}: frames must be a list of paths, got {type(frames).__name__}")
    if len(frames) == 0:
        raise DataPrepError(f"{where}: no frames")
    frames = [os.fspath(f) for f in frames]
    for f in frames:
        if not f or "|" in f or "\n" in f or "\r" in f:
            raise DataPrepError(f"{where}: frame path {f!r} is empty or contains '|' or a newline")
        if os.path.isabs(f):
            raise DataPrepError(f"{where}: frame path {f!r} must be relative to the dataset folder")
    n = len(frames)
    if "num_frames" in t and _as_int(t["num_frames"], f"{where}: num_frames") != n:
        raise DataPrepError(f"{where}: num_frames {t['num_frames']} but {n} frames")

    columns: dict[str, list[str]] = {}
    for key, values in t.items():
        if key in _SCALAR_KEYS or key == "frames":
            continue
        if key == "visibility" and values is None:
            continue
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
            raise DataPrepError(f"{where}: {key!r} = {values!r}: extra fields must be per-frame lists")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise DataPrepError(f"{where}: column name {key!r} must be an identifier")
        if len(values) != n:
            raise DataPrepError(f"{where}: {key} has {len(values)} entries for {n} frames")
        if key == "visibility":
            vis = np.asarray(values, dtype=float)
            if not np.all(np.isfinite(vis)) or vis.min() < 0 or vis.max() > 1:
                raise DataPrepError(f"{where}: visibility must be floats in [0, 1], got {list(values)[:8]}...")
            columns[key] = [format(float(v), ".6g") for v in vis]
        else:
            columns[key] = [_format_value(v, f"{where}: {key}") for v in values]
    return tid, frames, columns


def _check_splits(splits, ids_to_pid: dict[int, int]) -> list[dict]:
    if not isinstance(splits, Sequence) or isinstance(splits, (str, bytes)) or len(splits) == 0:
        raise DataPrepError(f"splits: expected a non-empty list of {{train, query, gallery}}, got {splits!r}")
    clean = []
    for i, split in enumerate(splits):
        if not isinstance(split, dict) or set(split) != {"train", "query", "gallery"}:
            keys = sorted(split) if isinstance(split, dict) else type(split).__name__
            raise DataPrepError(f"splits[{i}]: expected keys train, query, gallery; got {keys}")
        out = {}
        for part in ("train", "query", "gallery"):
            ids = [_as_int(x, f"splits[{i}].{part} entry") for x in split[part]]
            if len(set(ids)) != len(ids):
                dup = [x for x, c in Counter(ids).items() if c > 1][:5]
                raise DataPrepError(f"splits[{i}].{part}: repeated tracklet ids {dup}")
            missing = [x for x in ids if x not in ids_to_pid][:5]
            if missing:
                raise DataPrepError(f"splits[{i}].{part}: unknown tracklet ids {missing}")
            out[part] = ids
        for part in ("query", "gallery"):
            if not out[part]:
                raise DataPrepError(f"splits[{i}].{part} is empty")
        test = set(out["query"]) | set(out["gallery"])
        both = sorted(set(out["train"]) & test)[:5]
        if both:
            raise DataPrepError(f"splits[{i}]: tracklets {both} are in train and in query/gallery")
        train_pids = {ids_to_pid[x] for x in out["train"]} - {-1, 0}
        test_pids = {ids_to_pid[x] for x in test} - {-1, 0}
        shared = sorted(train_pids & test_pids)[:5]
        if shared:
            raise DataPrepError(f"splits[{i}]: identities {shared} are in train and in query/gallery")
        clean.append(out)
    return clean


def _check_meta(meta) -> dict:
    if not isinstance(meta, dict):
        raise DataPrepError(f"meta = {meta!r}: expected a dict")
    meta = dict(meta)
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        raise DataPrepError(f"meta.name = {meta.get('name')!r}: expected a non-empty string")
    if meta.get("source") not in SOURCES:
        raise DataPrepError(f"meta.source = {meta.get('source')!r}: expected one of {SOURCES}")
    if meta.get("protocol") not in PROTOCOLS:
        raise DataPrepError(f"meta.protocol = {meta.get('protocol')!r}: expected one of {PROTOCOLS}")
    size = meta.get("frame_size")
    if (not isinstance(size, Sequence) or len(size) != 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in size)):
        raise DataPrepError(f"meta.frame_size = {size!r}: expected [H, W], two positive ints")
    meta["frame_size"] = [int(s) for s in size]
    excluded = meta.get("excluded", [])
    if not isinstance(excluded, list):
        raise DataPrepError(f"meta.excluded = {excluded!r}: expected a list of {{rule, count, items}}")
    for i, entry in enumerate(excluded):
        if (not isinstance(entry, dict) or not isinstance(entry.get("rule"), str)
                or not isinstance(entry.get("items"), list)):
            raise DataPrepError(f"meta.excluded[{i}] = {entry!r}: expected {{rule: str, count: int, items: [str]}}")
        count = _as_int(entry.get("count"), f"meta.excluded[{i}].count")
        if count < len(entry["items"]):
            raise DataPrepError(f"meta.excluded[{i}]: count {count} < {len(entry['items'])} items")
    meta["excluded"] = excluded
    return meta


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_manifest(out_dir: Path, tracklets: list[dict], splits: list[dict], meta: dict,
                   check_files: bool = True) -> None:
    """Validate and write ``tracklets.csv``, ``splits.json`` and ``meta.json`` into ``out_dir``.

    ``tracklets``: dicts with ``tracklet_id``, ``pid``, ``camid``, ``frames`` (paths relative to
    ``out_dir``, temporal order), optional ``visibility`` (floats in [0, 1] or None) and any other
    per-frame list (e.g. ``occlusion``), each written as a ``|``-joined column (empty for
    tracklets without it). An optional ``num_frames`` must equal ``len(frames)``.
    ``splits``: ``[{"train": [...], "query": [...], "gallery": [...]}, ...]`` of tracklet ids.
    ``meta``: ``name``, ``source``, ``protocol``, ``frame_size``, ``excluded`` (defaults to []),
    extra keys kept; ``counts`` and ``format_version`` are computed here (given values are replaced).

    Checks: unique ids, non-empty frames, per-frame list lengths, no ``|`` in paths, split ids
    exist, no identity (pid >= 1) in both train and query/gallery, and (``check_files``) every
    frame file exists. No manifest file is written unless everything passes (``out_dir`` itself
    is created before the file check); each file is replaced
    atomically (temp file + ``os.replace``), ``meta.json`` last.
    """
    out_dir = Path(out_dir)
    if not isinstance(tracklets, Sequence) or len(tracklets) == 0:
        raise DataPrepError(f"{out_dir}: no tracklets to write")
    rows, ids_to_pid, extra_columns = [], {}, []
    for index, t in enumerate(tracklets):
        tid, frames, columns = _check_tracklet(t, index)
        if tid in ids_to_pid:
            raise DataPrepError(f"tracklet {tid}: tracklet_id used twice")
        ids_to_pid[tid] = int(t["pid"])
        for key in columns:
            if key != "visibility" and key not in extra_columns:
                extra_columns.append(key)
        rows.append((tid, int(t["pid"]), int(t["camid"]), frames, columns))
    splits = _check_splits(splits, ids_to_pid)
    meta = _check_meta(meta)

    try:  # before the file check: "out/../raw/x.jpg" only resolves once "out" exists
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataPrepError(f"{out_dir}: cannot create the output folder ({err})") from err
    if check_files:
        missing = [f for *_, frames, _ in rows for f in frames if not (out_dir / f).is_file()]
        if missing:
            raise DataPrepError(f"{out_dir}: {len(missing)} frame files not found, e.g. {out_dir / missing[0]}")

    pids = [r[1] for r in rows]
    counts = {
        "identities": len({p for p in pids if p >= 1}),
        "tracklets": len(rows),
        "frames": sum(len(r[3]) for r in rows),
        "distractor_tracklets": sum(p == 0 for p in pids),
        "junk_tracklets": sum(p == -1 for p in pids),
        "cameras": len({r[2] for r in rows}),
    }
    meta = {"format_version": FORMAT_VERSION, **{k: v for k, v in meta.items() if k != "format_version"},
            "counts": counts}

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(BASE_COLUMNS) + extra_columns)
    for tid, pid, camid, frames, columns in rows:
        per_frame = ["|".join(columns[k]) if k in columns else "" for k in ["visibility"] + extra_columns]
        writer.writerow([tid, pid, camid, len(frames), "|".join(frames)] + per_frame)
    try:
        meta_text = json.dumps(meta, indent=2, default=_json_default) + "\n"
    except TypeError as err:
        raise DataPrepError(f"meta: cannot be written as JSON ({err})") from err
    splits_text = json.dumps(splits) + "\n"

    _write_atomic(out_dir / "tracklets.csv", buf.getvalue())
    _write_atomic(out_dir / "splits.json", splits_text)
    _write_atomic(out_dir / "meta.json", meta_text)


def summary(out_dir: Path, meta: dict, splits: list[dict] | None = None) -> str:
    """A few lines describing a written manifest (what the CLI prints at the end)."""
    c = meta.get("counts", {})
    lines = [f"{meta.get('name')} ({meta.get('source')}, protocol {meta.get('protocol')}) -> {out_dir}",
             f"  identities {c.get('identities')}, tracklets {c.get('tracklets')}, frames {c.get('frames')}, "
             f"cameras {c.get('cameras')}, distractor tracklets {c.get('distractor_tracklets')}, "
             f"junk tracklets {c.get('junk_tracklets')}"]
    if splits:
        s = splits[0]
        lines.append(f"  {len(splits)} split(s); split 0: train {len(s['train'])}, query {len(s['query'])}, "
                     f"gallery {len(s['gallery'])} tracklets")
    for entry in meta.get("excluded", []):
        lines.append(f"  excluded {entry['count']}: {entry['rule']}")
    return "\n".join(lines)
