"""Writing result files safely: one atomic-write helper and one JSON conversion.

Every file reidkit writes that something else later trusts (checkpoints, manifests, the frame
cache and its index, cached test features, metrics) goes through :func:`atomic_write`: the
bytes land in a temporary file in the destination folder, which is then renamed over the
target with ``os.replace`` (atomic on POSIX). A crash mid-write leaves the previous file
intact, never a half-written one under the final name.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

__all__ = ["atomic_write", "remove_stale_temporaries", "write_text", "jsonable", "write_json"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp", durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    Whatever the block writes to the yielded path becomes ``path`` only if the block finishes;
    on any exception the temporary file is removed and ``path`` is untouched. ``suffix`` is the
    temporary name's ending (``np.save``/``open_memmap`` want ``.npy``). ``durable`` also fsyncs
    the file and its folder, so the rename survives a power cut (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results follow the user's umask like any file
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        try:
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:  # some filesystems do not allow fsync on a folder
            pass


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that ``atomic_write`` left for ``path`` in processes that no longer
    run (a build killed by SIGKILL leaves its full-size temporary behind). A temporary's name holds
    its writer's pid; those of live processes, this one included, are kept."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` (no newline translation) to ``path``."""
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return Path(path)


def jsonable(x: Any) -> Any:
    """Plain JSON values from numpy/torch scalars and arrays, tuples, paths and dataclasses;
    NaN and ±inf become ``None`` (JSON has no such numbers)."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return x.as_posix()
    if hasattr(x, "__dataclass_fields__") and not isinstance(x, type):
        return jsonable({k: getattr(x, k) for k in x.__dataclass_fields__})
    if hasattr(x, "tolist"):  # numpy and torch scalars and arrays
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Atomically write ``jsonable(obj)`` as JSON (strict: no NaN) to ``path``."""
    return write_text(path, json.dumps(jsonable(obj), indent=indent, allow_nan=False) + "\n")
