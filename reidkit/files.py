"""Writing result files safely: one atomic-write helper, one JSON conversion, one folder lock.

Every file reidkit writes that something else later trusts (checkpoints, manifests, the frame
cache and its index, cached test features, metrics) goes through :func:`atomic_write`: the
bytes land in a temporary file in the destination folder, which is then renamed over the
target with ``os.replace`` (atomic on POSIX). A crash mid-write leaves the previous file
intact, never a half-written one under the final name. A full disk is named as such
(:class:`DiskFullError`, also for torch's "unexpected pos" error), with the folder and what
is free there.

A command that writes into a folder (``reidkit train --out``, ``ablate``, ``ten-split``,
``report``) first claims it with :func:`hold_folder`: a lock file the kernel releases when the
process ends, however it ends, so two commands never write one run at once and a killed one
never blocks the next.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

__all__ = ["atomic_write", "remove_stale_temporaries", "remove_stale_temporaries_in", "write_text", "jsonable",
           "write_json", "DiskFullError", "is_disk_full", "disk_full_error", "check_free_space", "unreadable_torch_file",
           "hold_folder", "FolderBusyError", "LOCK_NAME", "folder_entries"]

LOCK_NAME = ".reidkit.lock"  # in a folder a command writes into (hold_folder); not part of its results


class DiskFullError(OSError):
    """The disk ran out of space while reidkit wrote a file; names the file, the folder and what is free.

    ``path``: the file being written (None: a refusal before any work); ``existed``: whether an
    earlier version of it is still there, intact."""

    def __init__(self, message: str, path: Path | None = None, existed: bool = False):
        super().__init__(errno.ENOSPC, message)
        self.path, self.existed = path, existed

    def __str__(self) -> str:
        return self.strerror


class FolderBusyError(RuntimeError):
    """Another live reidkit process holds the folder (``hold_folder``)."""


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` means the disk (or the user's quota) is full: ``OSError`` ENOSPC/EDQUOT, or
    torch's zip writer's "unexpected pos" / "file write failed" (it reports a short write so)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(error)
    return isinstance(error, RuntimeError) and ("unexpected pos" in text or "file write failed" in text)


def _free(folder: Path) -> str:
    try:
        return _size(shutil.disk_usage(folder).free)
    except OSError:
        return "an unknown amount"


def disk_full_error(path: str | os.PathLike, existed: bool,
                    advice: str = "free space there (or write elsewhere) and run again") -> DiskFullError:
    """The :class:`DiskFullError` for a write of ``path`` that ran out of space (nothing was left half-written)."""
    path = Path(path)
    kept = f"the previous {path.name} is intact" if existed else f"no {path.name} was written"
    return DiskFullError(f"out of disk space writing {path} ({_free(path.parent)} free on the disk of "
                         f"{path.parent}); {kept}: {advice}", path, existed)


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse (:class:`DiskFullError`) to start work whose ``what`` needs ``needed`` bytes in ``folder``."""
    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise DiskFullError(f"not enough disk space for {what} in {folder}: about {_size(needed)} needed, "
                            f"{_size(free)} free; free space there or write elsewhere (nothing was started)")


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
    existed = path.exists()
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
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e) and not isinstance(e, DiskFullError):
            raise disk_full_error(path, existed) from e
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


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]{8}(\.[A-Za-z0-9]+)?$")


def remove_stale_temporaries_in(folder: str | os.PathLike) -> list[Path]:
    """Like :func:`remove_stale_temporaries`, for every file of ``folder`` (e.g. a cache folder where
    a killed build of another size left its temporary): the names ``atomic_write`` gives them."""
    removed = []
    for tmp in Path(folder).glob(".*"):
        match = _TEMPORARY.match(tmp.name)
        if match and tmp.is_file() and not _alive(int(match["pid"])):
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


def unreadable_torch_file(path: str | os.PathLike, error: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in words for a user: never torch's advice
    to retry with ``weights_only=False`` (that would run whatever code the file holds)."""
    text = str(error)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return f"it cannot be read ({e.strerror})"
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # a torch zip archive, or a legacy pickle
        return f"it is not a PyTorch file (it starts with {head!r})"
    if "weights only load failed" in text.lower() or "weights_only" in text:
        return ("it holds pickled Python objects that a weights-only load refuses to run; reidkit's files never "
                "do, so this file was not written by reidkit and is not loaded")
    first = text.splitlines()[0] if text else ""
    return f"it is truncated or damaged ({type(error).__name__}: {first})"


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


# ---------------------------------------------------------------------- folder lock
_HELD: dict[Path, int] = {}  # folders this process holds, with how many nested holds


def folder_entries(folder: str | os.PathLike) -> list[Path]:
    """The entries of ``folder`` but its lock file (what a command left there), sorted; [] if absent."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.name != LOCK_NAME) if folder.is_dir() else []


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text(encoding="utf-8"))
        return (f"`{info['command']}`, pid {info['pid']} on {info['host']}, since "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(info['since']))}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet said which"


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Claim ``folder`` (created if needed) for this process while the block runs.

    The claim is an exclusive ``flock`` on ``folder/.reidkit.lock``: taken atomically, refused
    at once (:class:`FolderBusyError`, naming the command and pid holding it) while another
    process holds it, and released by the kernel when the holder ends, even by SIGKILL, so a
    stale lock never blocks. Nested holds of one folder in one process are fine. A folder this
    call created and nothing was written into is removed again. Without ``fcntl`` (Windows), or
    on a filesystem without locks (a warning says so), the folder is not locked.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield folder
        finally:
            _HELD[key] -= 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None
    lock, fd = folder / LOCK_NAME, None
    if fcntl is not None:
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderBusyError(f"{folder} is in use by another reidkit command ({_holder(lock)}): wait "
                                      f"for it to finish, or choose another folder") from None
            except OSError as e:  # a filesystem without locks (some network mounts): go on unlocked, said so
                os.close(fd)
                fd = None
                lock.unlink(missing_ok=True)
                warnings.warn(f"{folder}: cannot lock it ({e.strerror}); another reidkit command writing there at "
                              f"the same time would not be stopped", stacklevel=3)
                break
            try:  # the file may have been removed (and made again) by its last holder meanwhile
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        if fd is not None:
            info = {"command": command, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            try:  # who holds it, for the message another command gets
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(info).encode())
            except OSError:  # a full disk: the lock holds all the same
                pass
    _HELD[key] = 1
    try:
        yield folder
    finally:
        del _HELD[key]
        if fd is not None:
            lock.unlink(missing_ok=True)  # while still holding it: the next holder makes a new one
            os.close(fd)
        if created and not any(folder.iterdir()):
            folder.rmdir()
