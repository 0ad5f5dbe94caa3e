"""The recorder: ``record(raw, recv_ts_us)`` on the ingestor's read path, a writer thread behind it.

``record`` only appends to a bounded deque (no lock, no wake-up): when the writer thread falls behind (a slow or
full disk) the frames that do not fit are dropped and counted, never waited for. The writer drains the deque every
``POLL_S``, writes gzip lines (``recorder.format``) into the current hour's file, makes what it wrote readable
(a gzip sync flush) every ``FLUSH_S`` together with the file's index (``<file>.idx.json``: frames, receive time
range, per pair), rotates at each hour of receive time and applies the retention limits at start and at each
rotation.
"""

from __future__ import annotations

import collections
import gzip
import logging
import os
import threading
import time
from pathlib import Path

import orjson

from recorder import format as fmt
from recorder import store
from shared.settings import Settings

log = logging.getLogger("recorder")
POLL_S = 0.05
FLUSH_S = 1.0
LOG_EVERY_S = 10.0
CHUNK = 256  # frames encoded between two writes: ~0.5 ms of Python in this thread, the read path's worst wait


class NullRecorder:
    """Recording off: ``record`` does nothing."""

    enabled = False
    recorded = dropped = errors = bytes_written = files = 0

    def record(self, raw: str | bytes, recv_ts_us: int) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 10.0) -> None:
        pass


class _Index:
    """What ``python -m recorder ls`` shows of one file, kept while writing it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frames = 0
        self.first_us = 0
        self.last_us = 0
        self.pairs: dict[str, list[int]] = {}  # venue symbol -> [frames, first_us, last_us]
        old = store.read_index(path)
        if old is not None:  # appending after a restart within the hour
            self.frames, self.first_us, self.last_us = old.frames, old.first_us, old.last_us
            self.pairs = {k: list(v) for k, v in old.pairs.items()}

    def add(self, raw: str | bytes, ts: int) -> None:
        self.frames += 1
        if not self.first_us or ts < self.first_us:
            self.first_us = ts
        if ts > self.last_us:
            self.last_us = ts
        sym = fmt.venue_symbol(raw)
        if sym is not None:
            p = self.pairs.get(sym)
            if p is None:
                self.pairs[sym] = [1, ts, ts]
            else:
                p[0] += 1
                p[2] = ts

    def save(self) -> None:
        body = {"frames": self.frames, "first_us": self.first_us, "last_us": self.last_us, "pairs": self.pairs}
        tmp = self.path.with_name(self.path.name + fmt.INDEX_SUFFIX + ".tmp")
        tmp.write_bytes(orjson.dumps(body))
        os.replace(tmp, self.path.with_name(self.path.name + fmt.INDEX_SUFFIX))


class Recorder:
    enabled = True

    def __init__(self, directory: Path, exchange: str, shard: str = "", *, queue_max: int = 100_000,
                 retention_days: float = 7.0, retention_gb: float = 0.0, compresslevel: int = 1) -> None:
        self.directory = directory
        self.exchange = exchange
        self.shard = shard
        self.queue_max = queue_max
        self.retention_days = retention_days
        self.retention_gb = retention_gb
        self.compresslevel = compresslevel
        self.recorded = 0  # frames written
        self.dropped_full = 0  # frames dropped because the writer was behind (counted by the read path)
        self.dropped_failed = 0  # frames lost to a failed write (counted by the writer thread)
        self.errors = 0  # write failures (the frames of a failed write are counted in dropped too)
        self.bytes_written = 0  # uncompressed line bytes
        self.files = 0  # files opened
        self._q: collections.deque[tuple[str | bytes, int]] = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: gzip.GzipFile | None = None
        self._hour = -1
        self._index: _Index | None = None
        self._dropped_logged = 0
        self._last_drop_log = 0.0

    # -- the ingestor's read path ------------------------------------------------------------------
    def record(self, raw: str | bytes, recv_ts_us: int) -> None:
        q = self._q
        if len(q) < self.queue_max:
            q.append((raw, recv_ts_us))
        else:
            self.dropped_full += 1

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_failed

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"recorder-{self.exchange}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, close the file; waits at most ``timeout`` for the writer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- the writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        self._retention()
        last_flush = time.monotonic()
        while True:
            stopping = self._stop.is_set()
            wrote = self._drain()
            now = time.monotonic()
            if now - last_flush >= FLUSH_S or stopping:
                self._flush()
                last_flush = now
            self._log_drops(now)
            if stopping:
                break
            if not wrote:
                self._stop.wait(POLL_S)
        self._close()
        self._log_drops(float("inf"))

    def _drain(self) -> bool:
        q = self._q
        out: list[bytes] = []
        wrote = False
        while True:
            try:
                raw, ts = q.popleft()
            except IndexError:
                break
            hour = fmt.hour_of(ts)
            if hour != self._hour:
                self._write(out)
                out = []
                self._rotate(hour)
            out.append(fmt.encode_line(raw, ts))
            if self._index is not None:
                self._index.add(raw, ts)
            if len(out) >= CHUNK:  # the GIL is let go (zlib compresses without it) at least every CHUNK frames
                self._write(out)
                out = []
            wrote = True
        self._write(out)
        return wrote

    def _write(self, lines: list[bytes]) -> None:
        if not lines:
            return
        if self._file is None:
            self.dropped_failed += len(lines)
            return
        data = b"".join(lines)
        try:
            self._file.write(data)
        except OSError as e:
            self.errors += 1
            self.dropped_failed += len(lines)
            if self.errors == 1 or self.errors % 1000 == 0:
                log.error("recorder %s: cannot write %s: %s", self.exchange, self._index and self._index.path, e)
            return
        self.recorded += len(lines)
        self.bytes_written += len(data)

    def _rotate(self, hour: int) -> None:
        self._close()
        self._hour = hour
        path = self.directory / fmt.rel_path(self.exchange, self.shard, hour)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = gzip.open(path, "ab", compresslevel=self.compresslevel)
            f.write(fmt.header(self.exchange, self.shard))
        except OSError as e:
            self.errors += 1
            log.error("recorder %s: cannot open %s: %s (frames of this hour are dropped)", self.exchange, path, e)
            self._file, self._index = None, None
            return
        self._file = f
        self._index = _Index(path)
        self.files += 1
        log.info("recorder %s: writing %s", self.exchange, path)
        self._retention()

    def _flush(self) -> None:
        if self._file is None or self._index is None:
            return
        try:
            self._file.flush()  # a gzip sync flush: everything so far can be read back
            self._index.save()
        except OSError as e:
            self.errors += 1
            log.error("recorder %s: flush failed: %s", self.exchange, e)

    def _close(self) -> None:
        if self._file is None:
            return
        try:
            self._file.close()
            if self._index is not None:
                self._index.save()
        except OSError as e:
            self.errors += 1
            log.error("recorder %s: close failed: %s", self.exchange, e)
        self._file, self._index = None, None

    def _retention(self) -> None:
        current = self._index.path if self._index is not None else None
        try:
            removed = store.apply_retention(self.directory, self.retention_days, self.retention_gb,
                                            now_us=time.time_ns() // 1000, keep=current)
        except OSError as e:
            log.warning("recorder %s: retention failed: %s", self.exchange, e)
            return
        for p in removed:
            log.info("recorder %s: removed %s (retention)", self.exchange, p)

    def _log_drops(self, now: float) -> None:
        if self.dropped != self._dropped_logged and now - self._last_drop_log >= LOG_EVERY_S:
            log.warning("recorder %s: %d recorded frames dropped so far (the writer could not keep up)",
                        self.exchange, self.dropped, extra={"fields": {
                            "event": "recorder_dropped", "exchange": self.exchange, "dropped": self.dropped}})
            self._dropped_logged = self.dropped
            self._last_drop_log = now if now != float("inf") else 0.0


def make_recorder(settings: Settings, exchange: str, shard: str = "") -> Recorder | NullRecorder:
    """The recorder ``settings.recording`` asks for (a ``NullRecorder`` when recording is off)."""
    rec = settings.recording
    if not rec.enabled:
        return NullRecorder()
    return Recorder(rec.path, exchange, shard, queue_max=rec.queue_max, retention_days=rec.retention_days,
                    retention_gb=rec.retention_gb)
