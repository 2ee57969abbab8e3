"""What every raw-layout reader shares: frame-number sorting, frame listing, image checks, .mat reading.

The readers turn a raw dataset into ``(tracklets, splits, meta)`` and hand them to
``write_manifest``, which lives with the reader of the manifest in ``reidkit.data.manifest`` so
that one set of rules validates both (re-exported here for the readers). The format:
data_prep/README.md ("The manifest format").

Frame order is never the order a directory listing returns: frames are sorted by the number
parsed from the file name (``frame_number``), numerically, so ``2.png`` comes before ``10.png``.
"""
from __future__ import annotations

import functools
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from reidkit.data.manifest import ManifestError, write_manifest  # noqa: F401 (write_manifest: for the readers)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
CHECK_IMAGES = ("none", "ends", "all")

_TRAILING_NUMBER = re.compile(r"(\d+)$")


class DataPrepError(ManifestError):
    """A raw dataset is not what was expected; the message names the path or value.

    A ``ManifestError`` (and so a ``ValueError``): the manifest's own rules raise ``ManifestError``
    from ``write_manifest``, so ``except ManifestError`` catches every data_prep failure.
    """


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


# --------------------------------------------------------------------------- summary


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
