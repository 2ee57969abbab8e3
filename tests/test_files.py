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
