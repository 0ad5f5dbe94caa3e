"""The data directory's lock (``launcher/lock.py``) between real processes: one holder at a time, the holder
named in the refusal, released on exit and when the holder is killed (kill -9 never leaves a stale lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher import lock
from shared.settings import ROOT

HOLDER = """
import sys
from pathlib import Path
from launcher import lock
with lock.hold(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock on ``tmp_path / "data"``."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "data")], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def test_a_second_holder_is_refused_with_the_first_ones_pid(holder: subprocess.Popen[str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert (data / lock.LOCK_NAME).read_text() == f"{holder.pid}\n"
    with pytest.raises(lock.AlreadyRunning) as e, lock.hold(data):
        pass
    assert e.value.pid == holder.pid
    assert str(e.value) == (f"another launcher (pid {holder.pid}) is running on data directory {data.resolve()}; "
                            "stop it first")
    assert (data / lock.LOCK_NAME).read_text() == f"{holder.pid}\n"  # the refused one changed nothing


def test_released_when_the_holder_exits(holder: subprocess.Popen[str], tmp_path: Path) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(10) == 0
    with lock.hold(tmp_path / "data") as path:
        assert path.read_text() == f"{os.getpid()}\n"
    assert path.read_text() == ""  # released: no pid left behind


def test_kill_9_of_the_holder_leaves_no_stale_lock(holder: subprocess.Popen[str], tmp_path: Path) -> None:
    holder.send_signal(signal.SIGKILL)
    assert holder.wait(10) == -signal.SIGKILL
    data = tmp_path / "data"
    assert (data / lock.LOCK_NAME).read_text() == f"{holder.pid}\n"  # the dead one's pid is still written...
    with lock.hold(data) as path:  # ...but the kernel released its lock
        assert path.read_text() == f"{os.getpid()}\n"


def test_one_process_holds_it_once(tmp_path: Path) -> None:
    with lock.hold(tmp_path / "data"), pytest.raises(lock.AlreadyRunning), lock.hold(tmp_path / "data"):
        pass
    with lock.hold(tmp_path / "data"):
        pass
