"""The recorder: line format, writer thread (rotation, index, bounded queue, failures), retention, reading back
and ``python -m recorder ls``."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder import format as fmt
from recorder import store
from recorder.writer import Recorder
from shared.settings import ROOT

H = fmt.HOUR_US
T0 = 1_780_000_000_000_000 - 1_780_000_000_000_000 % H  # the start of an hour


@given(st.one_of(st.text(), st.binary()), st.integers(min_value=0, max_value=2**62))
@settings(max_examples=300, deadline=None)
def test_line_round_trip_is_exact(raw: str | bytes, ts: int) -> None:
    line = fmt.encode_line(raw, ts)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    rec = fmt.decode_line(line)
    assert rec is not None and rec.recv_ts_us == ts and rec.raw == raw and type(rec.raw) is type(raw)


def test_line_kinds_and_bad_lines() -> None:
    assert fmt.encode_line('{"a":1}', 5) == b'5 t {"a":1}\n'
    assert fmt.encode_line("a\nb", 5).startswith(b"5 T ")
    assert fmt.encode_line(b"\x00\xff", 5).startswith(b"5 b ")
    assert fmt.decode_line(b"#sr-recording v1 exchange=okx shard=\n") is None
    assert fmt.decode_line(b"\n") is None
    for bad in (b"x t {}", b"5 z {}", b"5 b !!!", b"5"):
        with pytest.raises(fmt.FormatError):
            fmt.decode_line(bad)


def test_file_names_and_times() -> None:
    assert fmt.rel_path("binance", "", T0).startswith("binance/")
    name = fmt.file_name("okx", "1/2", T0)
    assert name.startswith("okx-1of2-") and name.endswith("Z.rec.gz")
    parsed = fmt.parse_file_name(name)
    assert parsed == fmt.FileName("okx", "1of2", T0)
    assert fmt.parse_file_name("okx-2026.rec.gz") is None
    assert fmt.parse_file_name(fmt.file_name("okx", "pairs-1a2b", T0)) == fmt.FileName("okx", "pairs_1a2b", T0)
    assert fmt.parse_time("2026-11-30T10:00") == fmt.parse_time("2026-11-30T10:00:00Z") == 1_796_032_800_000_000
    assert fmt.parse_time("1796032800") == 1_796_032_800_000_000
    with pytest.raises(fmt.FormatError):
        fmt.parse_time("yesterday")
    assert fmt.venue_symbol('{"stream":"btcusdt@trade","data":{}}') == "BTCUSDT"
    assert fmt.venue_symbol(b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[]}') == "BTC-USDT"
    assert fmt.venue_symbol('{"result":null,"id":1}') is None


def _frames(n: int, start: int, step: int) -> list[tuple[str | bytes, int]]:
    out: list[tuple[str | bytes, int]] = []
    for i in range(n):
        sym = "btcusdt" if i % 2 else "ethusdt"
        out.append((f'{{"stream":"{sym}@trade","data":{{"i":{i}}}}}', start + i * step))
    out.append((b"\x00binary", start + n * step))
    out.append(("line\nbreak", start + n * step))
    return out


def test_writer_rotates_hourly_and_reads_back_exactly(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, "binance", "1/2", retention_days=0)
    frames = _frames(1000, T0 + H - 500 * 1000, 1000)  # half in one hour, half in the next
    rec.start()
    for raw, ts in frames:
        rec.record(raw, ts)
    rec.stop()
    files = store.recording_files(tmp_path)
    assert [f.name for f in files] == [fmt.file_name("binance", "1of2", T0), fmt.file_name("binance", "1of2", T0 + H)]
    back = [(r.raw, r.recv_ts_us) for f in files for r in store.read_records(f)]
    assert back == frames
    assert rec.recorded == len(frames) and rec.dropped == 0 and rec.errors == 0 and rec.files == 2
    idx = store.read_index(files[0])
    assert idx is not None and idx.frames == 500 and idx.first_us == frames[0][1]
    assert set(idx.pairs) == {"BTCUSDT", "ETHUSDT"} and sum(v[0] for v in idx.pairs.values()) == 500
    assert store.scan(files[1]) == store.read_index(files[1])
    # a restart within the hour appends a member to the same file; the index carries on
    again = Recorder(tmp_path, "binance", "1/2", retention_days=0)
    again.start()
    again.record('{"stream":"btcusdt@trade","data":{"late":1}}', frames[-1][1] + 1)
    again.stop()
    assert [r.raw for r in store.read_records(files[1])][-1] == '{"stream":"btcusdt@trade","data":{"late":1}}'
    idx1 = store.read_index(files[1])
    assert idx1 is not None and idx1.frames == 503


def test_a_full_queue_drops_recorded_frames_never_blocks(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, "okx", queue_max=10, retention_days=0)  # the writer is not running: as a disk that stopped
    for i in range(100):
        rec.record(f'{{"i":{i}}}', T0 + i)
    assert rec.dropped == 90
    rec.start()
    rec.stop()
    assert rec.recorded == 10
    assert [r.raw for r in store.read_records(store.recording_files(tmp_path)[0])] == [f'{{"i":{i}}}' for i in range(10)]


def test_a_directory_that_cannot_be_written_counts_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rec = Recorder(blocker, "okx")
    rec.start()
    for i in range(5):
        rec.record("x", T0 + i)
    rec.stop()
    assert rec.recorded == 0 and rec.dropped == 5 and rec.errors >= 1


def test_a_cut_file_reads_up_to_its_last_whole_line(tmp_path: Path) -> None:
    path = tmp_path / fmt.file_name("okx", "", T0)
    data = gzip.compress(b"".join(fmt.encode_line(f"frame {i}", T0 + i) for i in range(100)))
    path.write_bytes(data[: len(data) // 2])
    got = [r.raw for r in store.read_records(path)]
    assert got == [f"frame {i}" for i in range(len(got))]


def test_retention_by_age_and_size(tmp_path: Path) -> None:
    paths = []
    for h in range(5):
        p = tmp_path / fmt.rel_path("okx", "", T0 + h * H)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * 1000)
        store.index_path(p).write_text("{}")
        paths.append(p)
    now = T0 + 5 * H
    removed = store.apply_retention(tmp_path, 2.5 / 24, 0, now_us=now)  # older than 2.5 hours
    assert removed == paths[:2] and not store.index_path(paths[0]).exists()
    removed = store.apply_retention(tmp_path, 0, 2000 / 1024 ** 3, now_us=now, keep=paths[2])
    assert removed == [paths[3]]  # the oldest, except the file being written
    assert store.recording_files(tmp_path) == [paths[2], paths[4]]


def test_ls_lists_exchanges_pairs_ranges_and_sizes(tmp_path: Path) -> None:
    for ex in ("binance", "okx"):
        rec = Recorder(tmp_path, ex, retention_days=0)
        rec.start()
        for raw, ts in _frames(10, T0 + 60_000_000, 1_000_000):
            rec.record(raw if ex == "binance" else raw.replace("stream", "other") if isinstance(raw, str) else raw, ts)
        if ex == "okx":
            rec.record('{"arg":{"channel":"trades","instId":"SOL-USDT"},"data":[]}', T0 + 90_000_000)
        rec.stop()
    out = subprocess.run([sys.executable, "-m", "recorder", "ls", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, env={**os.environ})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "binance: 1 file(s)" in text and "okx: 1 file(s)" in text
    assert "pairs: BTCUSDT, ETHUSDT" in text and "pairs: SOLUSDT" in text  # our symbols
    assert fmt.format_time(T0 + 60_000_000) in text and " KB" in text or " B " in text
    js = subprocess.run([sys.executable, "-m", "recorder", "ls", "--json", str(tmp_path)], capture_output=True,
                        text=True, cwd=ROOT, timeout=60)
    assert js.returncode == 0 and len(js.stdout.splitlines()) == 2
    bad = subprocess.run([sys.executable, "-m", "recorder", "ls", str(tmp_path / "nope")], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert bad.returncode == 2 and "no such file" in bad.stderr
