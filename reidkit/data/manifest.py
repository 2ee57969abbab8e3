"""The manifest: ``tracklets.csv``, ``splits.json`` and ``meta.json``, read and written by one set of rules.

The format is specified in data_prep/README.md ("The manifest format"), with examples. The
manifest is the only thing ``reidkit`` reads from a dataset. ``write_manifest`` is the only writer
(every data_prep reader and the synthetic benchmark go through it), ``Manifest.load`` the only
reader, and both apply the same rules (the ``_check_*`` functions): what the writer refuses to
write, the reader refuses to read. A broken rule raises ``ManifestError`` naming the file, the
row or split, and the offending ids or value. Besides parsing, only the version is the reader's
own check: the writer stamps ``format_version`` itself.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import numbers
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from reidkit.files import jsonable, write_text

FORMAT_VERSION = 1
SOURCES = ("mars", "ilidsvid", "prid2011", "synthetic")
PROTOCOLS = ("mars", "two_camera")
SPLIT_PARTS = ("train", "query", "gallery")
REQUIRED_COLUMNS = ("tracklet_id", "pid", "camid", "num_frames", "frames")
# Columns every written tracklets.csv has, in this order; per-frame extras follow.
BASE_COLUMNS = REQUIRED_COLUMNS + ("visibility",)
_SCALAR_KEYS = ("tracklet_id", "pid", "camid", "num_frames")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SUSPICIOUS_PATHS = re.compile(r"[|\n\r:]|\0[/\\]")  # on "\0"-joined paths: see _check_frames


class ManifestError(ValueError):
    """A manifest (or a frame it points at) is malformed; the message names file, row and value."""


# --------------------------------------------------------------------------------------------
# The data model
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
    everything it reads with the rules ``write_manifest`` applies; any problem raises
    ``ManifestError`` naming the file, the row or split and the value. The constructor does not
    validate (benchmarks build in-memory manifests with it). Frame files are not opened here (a
    million stat calls would make loading slow); ``FrameCache.build`` checks them.
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
        self.fingerprint: str | None = None  # manifest_fingerprint of the files it was loaded from

    # -- reading -------------------------------------------------------------------------
    @classmethod
    def load(cls, path) -> "Manifest":
        path = Path(path)
        root = path.parent if path.name == "tracklets.csv" else path
        if not root.is_dir():
            raise ManifestError(f"{root}: dataset folder not found")
        meta = _read_meta(root / "meta.json")
        tracklets = _read_tracklets(root / "tracklets.csv")
        splits = _read_splits(root / "splits.json", {t.tracklet_id: t.pid for t in tracklets})
        manifest = cls(root, tracklets, splits, meta)
        manifest.fingerprint = manifest_fingerprint(root)
        return manifest

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


def manifest_fingerprint(root) -> str:
    """SHA-256 of a dataset's manifest files (``tracklets.csv``, ``splits.json``, ``meta.json``):
    what a run records about the data it was made from. A moved or copied dataset keeps it (frame
    paths are relative); a regenerated (another seed or occlusion level) or re-converted one with
    other content does not. Frame pixels are not read (see ``FrameCache`` for those)."""
    h = hashlib.sha256()
    for name in ("tracklets.csv", "splits.json", "meta.json"):
        try:
            data = (Path(root) / name).read_bytes()
        except OSError as e:
            raise ManifestError(f"{Path(root) / name}: cannot be read ({e.strerror})") from None
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# The rules: one validator, called by Manifest.load and by write_manifest
# --------------------------------------------------------------------------------------------

def _check_ids(tid: int, pid: int, camid: int, where: str) -> None:
    if tid < 0:
        raise ManifestError(f"{where}: tracklet_id {tid} must be >= 0")
    if pid < -1:
        raise ManifestError(f"{where}: pid {pid}; expected -1 (junk), 0 (distractor) or >= 1")
    if camid < 1:
        raise ManifestError(f"{where}: camid {camid} must be >= 1")


def _check_unique(tid: int, seen: dict[int, str], here: str, where: str) -> None:
    """``tid`` not seen before (``seen``: id -> where it was first, e.g. "row 2"); records it."""
    if tid in seen:
        raise ManifestError(f"{where}: duplicate tracklet_id {tid} (first at {seen[tid]})")
    seen[tid] = here


def _check_frames(frames: Sequence[str], num_frames: int | None, where: str) -> None:
    """At least one frame; paths non-empty, relative, without '|' or newlines; ``num_frames`` of them."""
    if len(frames) == 0:
        raise ManifestError(f"{where}: no frames")
    # one scan of the joined paths clears the usual row (MARS: 1.2M frames) without a call per
    # path; only a suspicious row (a drive colon too) is looked at path by path
    if "" in frames or _SUSPICIOUS_PATHS.search("\0" + "\0".join(frames)):
        for f in frames:
            if not f:
                raise ManifestError(f"{where}: empty frame path in frames {'|'.join(frames)!r}")
            if "|" in f or "\n" in f or "\r" in f:
                raise ManifestError(f"{where}: frame path {f!r} contains '|' or a newline")
            if os.path.isabs(f):
                raise ManifestError(f"{where}: frame path {f!r} must be relative to the dataset folder")
    if num_frames is not None and num_frames != len(frames):
        raise ManifestError(f"{where}: num_frames {num_frames} != {len(frames)} entries in frames")


def _check_column_name(name: str, where: str) -> None:
    if not _IDENTIFIER.fullmatch(name):
        raise ManifestError(f"{where}: column name {name!r} must be an identifier")


def _check_column(name: str, values, num_frames: int, where: str) -> None:
    """A per-frame column: one value per frame; ``visibility`` values (floats) in [0, 1]."""
    if len(values) != num_frames:
        raise ManifestError(f"{where}: {name} has {len(values)} values, num_frames is {num_frames}")
    if name == "visibility":
        vis = np.asarray(values, dtype=np.float64)
        bad = ~((vis >= 0) & (vis <= 1))  # NaN is bad too
        if bad.any():
            raise ManifestError(f"{where}: visibility value {float(vis[bad][0])} is outside [0, 1]")


def _check_splits(splits, pid_of: dict[int, int], where: str) -> list[dict]:
    """The rules of ``splits.json``; returns the splits as ``{train, query, gallery}`` dicts of ints.

    Every id is a known tracklet, listed once per part; query and gallery are not empty; no
    tracklet, and no real identity (pid >= 1), is in train and in query or gallery.
    """
    if isinstance(splits, (str, bytes)) or not isinstance(splits, Sequence) or len(splits) == 0:
        raise ManifestError(f"{where}: expected a non-empty list of {{train, query, gallery}} splits, "
                            f"got {splits!r:.80}")
    clean = []
    for i, split in enumerate(splits):
        at = f"{where}, split {i}"
        if not isinstance(split, dict) or set(split) != set(SPLIT_PARTS):
            keys = sorted(split) if isinstance(split, dict) else type(split).__name__
            raise ManifestError(f"{at}: expected keys train, query, gallery; got {keys}")
        out = {}
        for part in SPLIT_PARTS:
            ids = split[part]
            if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
                raise ManifestError(f"{at}, {part}: expected a list of tracklet ids, got {type(ids).__name__}")
            for v in ids:
                if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                    raise ManifestError(f"{at}, {part}: id {v!r} is not an integer")
            ids = [int(v) for v in ids]
            repeated = sorted(v for v, c in Counter(ids).items() if c > 1)
            if repeated:
                raise ManifestError(f"{at}, {part}: tracklet ids {repeated[:5]} are listed more than once")
            unknown = [v for v in ids if v not in pid_of]
            if unknown:
                raise ManifestError(f"{at}, {part}: tracklet ids {unknown[:5]} are not in tracklets.csv")
            out[part] = ids
        for part in ("query", "gallery"):
            if not out[part]:
                raise ManifestError(f"{at}: {part} is empty")
        train = set(out["train"])
        train_pids = {pid_of[x] for x in train} - {-1, 0}  # junk and distractors have no identity
        for part in ("query", "gallery"):
            both = sorted(train & set(out[part]))
            if both:
                raise ManifestError(f"{at}: tracklet ids {both[:5]} are in train and in {part}")
            shared = sorted(train_pids & {pid_of[x] for x in out[part]})
            if shared:
                raise ManifestError(f"{at}: identities (pid) {shared[:5]} are in train and in {part}")
        clean.append(out)
    return clean


def _check_meta(meta, where: str) -> dict:
    """The rules of ``meta.json`` (but the version); returns a copy with ``frame_size`` as ints and
    ``excluded`` defaulting to []."""
    if not isinstance(meta, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    meta = dict(meta)
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        raise ManifestError(f"{where}: name {meta.get('name')!r}: expected a non-empty string")
    if meta.get("source") not in SOURCES:
        raise ManifestError(f"{where}: source {meta.get('source')!r} is not one of {SOURCES}")
    if meta.get("protocol") not in PROTOCOLS:
        raise ManifestError(f"{where}: protocol {meta.get('protocol')!r} is not one of {PROTOCOLS}")
    size = meta.get("frame_size")
    if (not isinstance(size, Sequence) or len(size) != 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ManifestError(f"{where}: frame_size {size!r}: expected [H, W], two positive ints")
    meta["frame_size"] = [int(s) for s in size]
    excluded = meta.get("excluded", [])
    if not isinstance(excluded, list):
        raise ManifestError(f"{where}: excluded {excluded!r}: expected a list of {{rule, count, items}}")
    for i, entry in enumerate(excluded):
        if (not isinstance(entry, dict) or not isinstance(entry.get("rule"), str)
                or not isinstance(entry.get("items"), list)):
            raise ManifestError(f"{where}: excluded[{i}] {entry!r}: expected {{rule: str, count: int, items: [str]}}")
        count = _as_int(entry.get("count"), f"excluded[{i}].count", where)
        if count < len(entry["items"]):
            raise ManifestError(f"{where}: excluded[{i}]: count {count} < {len(entry['items'])} items")
    meta["excluded"] = excluded
    return meta


def _check_version(meta: dict, where: str) -> None:
    """The reader's own rule: a manifest says which format it is in (the writer stamps it)."""
    version = meta.get("format_version")
    if version is None:
        raise ManifestError(f"{where}: no format_version (expected {FORMAT_VERSION}); every manifest "
                            f"written by data_prep has one: write it with reidkit.data.write_manifest")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise ManifestError(f"{where}: format_version {version!r} is not supported "
                            f"(this reidkit reads version {FORMAT_VERSION})")


def _as_int(value, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ManifestError(f"{where}: {what} {value!r} is not an integer")
    return int(value)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def _read_json(path: Path):
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: invalid JSON ({e})") from None


def _read_meta(path: Path) -> dict:
    meta = _read_json(path)
    _check_meta(meta, str(path))
    _check_version(meta, str(path))
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
        for c in extra_cols:
            _check_column_name(c, f"{path}, header")
        tracklets: list[Tracklet] = []
        seen: dict[int, str] = {}
        for row_no, row in enumerate(reader, start=1):
            where = f"{path}, row {row_no} (line {reader.line_num})"

            def as_int(col):
                value = row.get(col)
                try:
                    return int(value)
                except (TypeError, ValueError):
                    raise ManifestError(f"{where}: {col} {value!r} is not an integer") from None

            tid, pid, camid = as_int("tracklet_id"), as_int("pid"), as_int("camid")
            num_frames = as_int("num_frames")
            _check_ids(tid, pid, camid, where)
            _check_unique(tid, seen, f"row {row_no}", where)
            frames = tuple((row.get("frames") or "").split("|"))
            _check_frames(frames, num_frames, where)
            visibility = None
            vis_text = (row.get("visibility") or "").strip()
            if vis_text:
                try:
                    visibility = np.array([float(v) for v in vis_text.split("|")], dtype=np.float32)
                except ValueError:
                    raise ManifestError(f"{where}: visibility {vis_text!r} is not '|'-joined floats") from None
                _check_column("visibility", visibility, num_frames, where)
            extras = {}
            for c in extra_cols:
                text = row.get(c) or ""
                if text:
                    values = tuple(text.split("|"))
                    _check_column(c, values, num_frames, where)
                    extras[c] = values
            tracklets.append(Tracklet(tid, pid, camid, frames, visibility, extras))
    if not tracklets:
        raise ManifestError(f"{path}: no tracklets")
    return tracklets


def _read_splits(path: Path, pid_of: dict[int, int]) -> list[Split]:
    return [Split(**s) for s in _check_splits(_read_json(path), pid_of, str(path))]


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _format_value(value, what: str) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else format(float(value), ".6g")
    text = str(value)
    if "|" in text or "\n" in text or "\r" in text:
        raise ManifestError(f"{what} = {text!r}: per-frame values must not contain '|' or newlines")
    return text


def _tracklet_row(t: dict, index: int, path: Path) -> tuple[int, list[str], dict[str, list[str]]]:
    """Check one tracklet dict of ``write_manifest`` (it becomes row ``index + 1`` of ``path``);
    return (tracklet_id, frames, per-frame columns as text)."""
    where = f"{path}, row {index + 1}"
    if not isinstance(t, dict):
        raise ManifestError(f"{where}: expected a dict, got {t!r}")
    for key in ("tracklet_id", "pid", "camid", "frames"):
        if key not in t:
            raise ManifestError(f"{where}: missing {key!r}")
    tid = _as_int(t["tracklet_id"], "tracklet_id", where)
    where = f"{where} (tracklet_id {tid})"
    _check_ids(tid, _as_int(t["pid"], "pid", where), _as_int(t["camid"], "camid", where), where)
    frames = t["frames"]
    if isinstance(frames, (str, bytes)) or not isinstance(frames, Sequence):
        raise ManifestError(f"{where}: frames must be a list of paths, got {type(frames).__name__}")
    frames = [os.fspath(f) for f in frames]
    num_frames = _as_int(t["num_frames"], "num_frames", where) if "num_frames" in t else None
    _check_frames(frames, num_frames, where)

    columns: dict[str, list[str]] = {}
    for key, values in t.items():
        if key in _SCALAR_KEYS or key == "frames":
            continue
        if key == "visibility" and values is None:
            continue
        if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
            raise ManifestError(f"{where}: {key!r} = {values!r}: extra fields must be per-frame lists")
        _check_column_name(key, where)
        if key == "visibility":
            try:
                values = np.asarray(values, dtype=float)
            except (TypeError, ValueError):
                raise ManifestError(f"{where}: visibility {values!r} is not a list of floats") from None
        _check_column(key, values, len(frames), where)
        if key == "visibility":
            columns[key] = [format(float(v), ".6g") for v in values]
        else:
            columns[key] = [_format_value(v, f"{where}: {key}") for v in values]
    return tid, frames, columns


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

    The checks are the reader's (``Manifest.load``), see the ``_check_*`` functions, plus (with
    ``check_files``) that every frame file exists. No manifest file is written unless everything
    passes (``out_dir`` itself is created before the file check); each file is replaced
    atomically (temp file + ``os.replace``), ``meta.json`` last.
    """
    out_dir = Path(out_dir)
    csv_path = out_dir / "tracklets.csv"
    if not isinstance(tracklets, Sequence) or len(tracklets) == 0:
        raise ManifestError(f"{csv_path}: no tracklets to write")
    rows, pid_of, seen, extra_columns = [], {}, {}, []
    for index, t in enumerate(tracklets):
        tid, frames, columns = _tracklet_row(t, index, csv_path)
        _check_unique(tid, seen, f"row {index + 1}", f"{csv_path}, row {index + 1} (tracklet_id {tid})")
        pid_of[tid] = int(t["pid"])
        for key in columns:
            if key != "visibility" and key not in extra_columns:
                extra_columns.append(key)
        rows.append((tid, int(t["pid"]), int(t["camid"]), frames, columns))
    splits = _check_splits(splits, pid_of, str(out_dir / "splits.json"))
    meta = _check_meta(meta, str(out_dir / "meta.json"))

    try:  # before the file check: "out/../raw/x.jpg" only resolves once "out" exists
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ManifestError(f"{out_dir}: cannot create the output folder ({err})") from err
    if check_files:
        missing = [f for *_, frames, _ in rows for f in frames if not (out_dir / f).is_file()]
        if missing:
            raise ManifestError(f"{out_dir}: {len(missing)} frame files not found, e.g. {out_dir / missing[0]}")

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
        meta_text = json.dumps(jsonable(meta), indent=2) + "\n"
    except TypeError as err:
        raise ManifestError(f"{out_dir / 'meta.json'}: cannot be written as JSON ({err})") from err
    splits_text = json.dumps(splits) + "\n"

    write_text(out_dir / "tracklets.csv", buf.getvalue())
    write_text(out_dir / "splits.json", splits_text)
    write_text(out_dir / "meta.json", meta_text)
