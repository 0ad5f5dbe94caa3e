"""One launcher per data directory: an advisory lock (``flock``) on ``<data>/launcher.lock``.

The kernel releases the lock when its holder dies, however it dies (kill -9 included), so a stale lock never
blocks a restart. The pid written into the file is only there to name the holder in the refusal."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "launcher.lock"


class AlreadyRunning(Exception):
    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"another launcher ({who}) is running on data directory {data_dir}; stop it first")


def _holder(fd: int) -> int | None:
    """The holder's pid; it writes it just after locking, so wait a moment for it."""
    for _ in range(25):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.02)
    return None


@contextlib.contextmanager
def hold(data_dir: Path) -> Iterator[Path]:
    """Hold the data directory's lock for the ``with`` block, or raise :class:`AlreadyRunning` at once."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children (PEP 446)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(data_dir.resolve(), _holder(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock
