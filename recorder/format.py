"""The recording format (pure): one line per received frame, in gzip files, one per exchange per hour.

A line is ``<recv_ts_us> <kind> <payload>\\n``:

- ``recv_ts_us``: the ingestor's receive time, integer microseconds since the Unix epoch (UTC);
- ``kind`` ``t``: a text frame, ``payload`` its exact text (the usual case);
  ``T``: a text frame holding ``\\n`` or ``\\r``, ``payload`` the base64 of its UTF-8 bytes;
  ``b``: a binary frame, ``payload`` the base64 of its bytes.

Lines starting with ``#`` are comments: each writer session opens with
``#sr-recording v1 exchange=<exchange> shard=<shard>``. A file is named
``<exchange>[-<shard>]-<YYYY-MM-DD>T<HH>Z.rec.gz`` under ``<dir>/<exchange>/<YYYY-MM-DD>/``, with the hour of the
frames' receive times; a restart within the hour appends a new gzip member to the same file (gzip readers read
the members one after the other).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime

SUFFIX = ".rec.gz"
INDEX_SUFFIX = ".idx.json"
HEADER = "#sr-recording v1"
HOUR_US = 3_600_000_000
_FILE_RE = re.compile(r"^(?P<ex>[a-z]+)(?:-(?P<shard>[A-Za-z0-9_.]+))?-(?P<hour>\d{4}-\d\d-\d\dT\d\d)Z\.rec\.gz$")
# Where the pair is named near the start of a frame: Binance combined streams, OKX pushes.
_BINANCE_KEY = re.compile(rb'"stream":"([a-z0-9]+)@')
_OKX_KEY = re.compile(rb'"instId":"([A-Z0-9]+-[A-Z0-9]+)"')


class FormatError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Record:
    recv_ts_us: int
    raw: str | bytes  # str for a text frame, bytes for a binary one: as the ingestor received it


def encode_line(raw: str | bytes, recv_ts_us: int) -> bytes:
    if isinstance(raw, str):
        if "\n" in raw or "\r" in raw:
            return b"%d T %s\n" % (recv_ts_us, base64.b64encode(raw.encode("utf-8", "surrogatepass")))
        return b"%d t %s\n" % (recv_ts_us, raw.encode("utf-8", "surrogatepass"))
    return b"%d b %s\n" % (recv_ts_us, base64.b64encode(raw))


def decode_line(line: bytes) -> Record | None:
    """A line back into what was received; None for a comment or an empty line. Raises ``FormatError``."""
    line = line.rstrip(b"\n")
    if not line or line.startswith(b"#"):
        return None
    parts = line.split(b" ", 2)
    if len(parts) != 3 or not parts[0].isdigit():
        raise FormatError(f"not a recording line: {line[:80]!r}")
    ts, kind, payload = int(parts[0]), parts[1], parts[2]
    try:
        if kind == b"t":
            return Record(ts, payload.decode("utf-8", "surrogatepass"))
        if kind == b"T":
            return Record(ts, base64.b64decode(payload, validate=True).decode("utf-8", "surrogatepass"))
        if kind == b"b":
            return Record(ts, base64.b64decode(payload, validate=True))
    except (ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"bad payload in recording line: {e}") from None
    raise FormatError(f"unknown frame kind {kind!r}")


def header(exchange: str, shard: str) -> bytes:
    return f"{HEADER} exchange={exchange} shard={shard}\n".encode()


def hour_of(ts_us: int) -> int:
    """The hour bucket (µs at its start) of a receive time."""
    return ts_us - ts_us % HOUR_US


def shard_label(suffix: str) -> str:
    """A shard suffix (``1/2``, ``pairs-1a2b3c4d``) as a file-name part (``1of2``, ``pairs_1a2b3c4d``)."""
    return suffix.replace("/", "of").replace("-", "_")


def file_name(exchange: str, shard: str, hour_us: int) -> str:
    stamp = datetime.fromtimestamp(hour_us / 1e6, UTC).strftime("%Y-%m-%dT%H")
    mid = f"-{shard_label(shard)}" if shard else ""
    return f"{exchange}{mid}-{stamp}Z{SUFFIX}"


def rel_path(exchange: str, shard: str, hour_us: int) -> str:
    day = datetime.fromtimestamp(hour_us / 1e6, UTC).strftime("%Y-%m-%d")
    return f"{exchange}/{day}/{file_name(exchange, shard, hour_us)}"


@dataclass(frozen=True, slots=True)
class FileName:
    exchange: str
    shard: str
    hour_us: int


def parse_file_name(name: str) -> FileName | None:
    m = _FILE_RE.match(name)
    if m is None:
        return None
    hour = datetime.strptime(m["hour"], "%Y-%m-%dT%H").replace(tzinfo=UTC)
    return FileName(m["ex"], m["shard"] or "", int(hour.timestamp()) * 1_000_000)


def venue_symbol(raw: str | bytes) -> str | None:
    """The exchange's own symbol a frame is about (``BTCUSDT``, ``BTC-USDT``), from its first bytes; None for
    acks, pongs and anything else."""
    if isinstance(raw, str):  # the usual case, without a regex or an encode (the writer does this per frame)
        i = raw.find('"stream":"', 0, 48)
        if i >= 0:
            j = raw.find("@", i + 10, i + 64)
            if j > 0:
                return raw[i + 10:j].upper()
        i = raw.find('"instId":"', 0, 96)
        if i >= 0:
            j = raw.find('"', i + 10, i + 48)
            if j > 0:
                return raw[i + 10:j]
        return None
    head = raw[:160]
    m = _BINANCE_KEY.search(head)
    if m is not None:
        return m.group(1).decode().upper()
    m = _OKX_KEY.search(head)
    if m is not None:
        return m.group(1).decode()
    return None


def parse_time(text: str) -> int:
    """``2026-11-30T10:00`` (UTC unless an offset is given), a date, or Unix seconds -> µs."""
    text = text.strip()
    try:
        return int(float(text) * 1_000_000)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FormatError(f"not a time: {text!r} (use 2026-11-30T10:00, UTC, or Unix seconds)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


def format_time(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
