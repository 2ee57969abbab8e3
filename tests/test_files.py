"""reidkit.files: atomic writes leave either the old file or the new one, with the user's umask."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from reidkit.files import atomic_write, jsonable, write_json, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "b.txt", "x")
        assert (path.stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)


def test_jsonable_and_write_json(tmp_path):
    value = {"a": np.float32(1.5), "b": np.arange(3), "c": (Path("x/y"), math.nan), "d": np.bool_(True)}
    assert jsonable(value) == {"a": 1.5, "b": [0, 1, 2], "c": ["x/y", None], "d": True}
    assert json.loads(write_json(tmp_path / "c.json", value).read_text()) == jsonable(value)


def test_temporaries_of_dead_writers_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    stale = tmp_path / f".frames.npy.{pid}.abc123.npy"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".frames.npy.{os.getpid()}.def456.npy"  # this process: still writing
    live.write_bytes(b"y")
    write_text(tmp_path / "frames.npy", "new")
    assert not stale.exists() and live.exists() and (tmp_path / "frames.npy").read_text() == "new"


def test_a_full_disk_is_named_and_the_old_file_kept(tmp_path):
    import errno

    from reidkit.files import DiskFullError

    path = write_text(tmp_path / "a.json", "old")
    for error in (OSError(errno.ENOSPC, "No space left on device"),
                  RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4058")):
        with pytest.raises(DiskFullError, match=f"out of disk space writing {path} .*the previous a.json is intact"):
            with atomic_write(path):
                raise error
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_hold_folder_is_exclusive_reentrant_and_leaves_nothing(tmp_path):
    import fcntl

    from reidkit.files import LOCK_NAME, FolderBusyError, hold_folder

    folder = tmp_path / "new"
    with hold_folder(folder, "reidkit train"):
        with hold_folder(folder, "reidkit train"):  # the same process may nest holds
            assert (folder / LOCK_NAME).is_file()
    assert not folder.exists()  # made by the hold, nothing written: removed again
    folder.mkdir()
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT)  # another holder (its own open file)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"command": "reidkit ablate", "pid": 77, "host": "h", "since": 0}).encode())
    with pytest.raises(FolderBusyError, match=r"in use by another reidkit command \(`reidkit ablate`, pid 77 on h"):
        with hold_folder(folder, "reidkit train"):
            pass
    os.close(fd)  # released, its file still there (as a killed holder leaves it)
    with hold_folder(folder, "reidkit train"):
        (folder / "last.pt").write_bytes(b"x")
    assert [p.name for p in folder.iterdir()] == ["last.pt"]


def test_stale_temporaries_of_every_file_in_a_folder_are_removed(tmp_path):
    import subprocess
    import sys

    from reidkit.files import remove_stale_temporaries_in

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".frames_16x8.npy.{int(dead.stdout)}.abcd_123.npy"
    live = tmp_path / f".frames_32x16.npy.{os.getpid()}.efgh_456.npy"
    other = tmp_path / ".notes.txt"
    for p in (stale, live, other):
        p.write_bytes(b"x")
    assert remove_stale_temporaries_in(tmp_path) == [stale]
    assert live.exists() and other.exists()
