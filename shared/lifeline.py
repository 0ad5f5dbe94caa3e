"""Children that do not outlive their parent: ``prctl(PR_SET_PDEATHSIG)`` on Linux.

The signal follows the *thread* that forked the child, so fork from a thread that lives as long as the parent
(the main thread, or the event loop's)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1
_libc: Any = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # pragma: no cover - a Linux without a loadable libc
        _libc = None


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that sends the child ``sig`` when its parent (thread) dies; None off Linux."""
    if _libc is None:
        return None
    libc = _libc
    parent_pid = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl: nobody would signal us
            os._exit(1)

    return preexec
