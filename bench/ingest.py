"""Ingest throughput: recorded frames -> parse -> normalize -> publish into a real redis-server.

    python -m bench.ingest [--frames N] [--repeat R]

Binance frames come from the hftbacktest capture (``../shared/exchange-captures/hftbacktest``) when it is
there: its ``@bookTicker`` and ``@trade`` frames as recorded, and each ``@depth@100ms`` diff frame replaced by
a ``@depth10@100ms`` partial book built around the current best bid/ask (the stream we subscribe to).
Without the capture, synthetic frames of the same shapes and mix are used. OKX frames (``bbo-tbt``,
``books5``, ``trades``) are made from the same sequence, shaped as OKX's documentation shows.

Each run drives the real ``Ingestor.on_frame`` (the code the WebSocket reader calls) with the publisher's
flush task running concurrently on the same event loop, and counts until Redis acknowledged the last
batch. Prints frames/s per exchange on one core (redis-server runs as its own process).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import orjson

from ingestor.metrics import ingestor_registry
from ingestor.service import Ingestor
from shared import names
from shared.embedded_redis import EmbeddedRedis
from shared.redis_conn import connect
from shared.settings import load_settings
from shared.timeutil import now_us

CAPTURES = Path(__file__).resolve().parents[2] / "shared" / "exchange-captures" / "hftbacktest"
TARGET = 50_000
CHUNK = 64  # frames handed over between two event-loop turns, as a busy socket would deliver them
DONE = "md:bench:done"
# A consumer in its own process: PSUBSCRIBE md:* on a raw socket, count the messages until DONE.
SUBSCRIBER = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$4\r\nmd:*\r\n")
marker, done, tail, n = b"$8\r\npmessage\r\n", sys.argv[2].encode(), b"", 0
print("ready", flush=True)
while True:
    data = s.recv(1 << 20)
    if not data:
        break
    buf = tail + data
    n += buf.count(marker)
    if done in buf:
        break
    tail = buf[-(len(marker) - 1):]
    n -= tail.count(marker)
print(n - 1, flush=True)
"""


def _levels(best: Decimal, step: Decimal, sign: int, n: int, rng: random.Random) -> list[list[str]]:
    return [[str(best + sign * step * i), f"{rng.uniform(0.001, 3):.5f}"] for i in range(n)]


def capture_events() -> Iterator[tuple[str, dict]]:
    """(kind, binance payload) from the capture: bookTicker, trade, and depth placeholders."""
    files = sorted(CAPTURES.glob("btcusdt_*.gz"))
    for f in files:
        with gzip.open(f, "rb") as fh:
            for line in fh:
                _, _, raw = line.partition(b" ")
                o = orjson.loads(raw)
                stream = o.get("stream", "")
                if stream.endswith("@bookTicker"):
                    yield "bbo", o["data"]
                elif stream.endswith("@trade"):
                    yield "trade", o["data"]
                elif stream.endswith("@depth@100ms"):
                    yield "book", o["data"]


def synthetic_events(n: int, rng: random.Random) -> Iterator[tuple[str, dict]]:
    mid = Decimal("61837.63")
    tid, uid, t = 3735683259, 50093239212, 1723161255343
    for _ in range(n):
        r = rng.random()
        mid += Decimal(rng.choice((-1, 0, 0, 1))) * Decimal("0.01")
        uid += 3
        t += 7
        if r < 0.68:
            yield "bbo", {"u": uid, "s": "BTCUSDT", "b": f"{mid:.8f}", "B": f"{rng.uniform(0.01, 5):.8f}",
                          "a": f"{mid + Decimal('0.01'):.8f}", "A": f"{rng.uniform(0.01, 5):.8f}"}
        elif r < 0.92:
            tid += 1
            yield "trade", {"e": "trade", "E": t, "s": "BTCUSDT", "t": tid, "p": f"{mid:.8f}",
                            "q": f"{rng.uniform(0.0001, 1):.8f}", "T": t, "m": rng.random() < 0.5, "M": True}
        else:
            yield "book", {"e": "depthUpdate", "E": t, "s": "BTCUSDT", "u": uid}


def _okx_num(s: str) -> str:
    """Binance's 8-decimal text as OKX writes it: no trailing zeros, no trailing dot ("61834.00000000" -> "61834")."""
    return s.rstrip("0").rstrip(".") if "." in s else s


def build_frames(events: list[tuple[str, dict]], depth: int, rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    """The same market as Binance combined-stream frames and as OKX push frames."""
    bn: list[bytes] = []
    ok: list[bytes] = []
    bid, ask = Decimal("61837.63"), Decimal("61837.64")
    step = Decimal("0.01")
    okx_seq = 79706756139
    for kind, d in events:
        okx_seq += 1
        if kind == "bbo":
            bid, ask = Decimal(d["b"]), Decimal(d["a"])
            bn.append(orjson.dumps({"stream": "btcusdt@bookTicker", "data": d}))
            ts = str(int(time.time() * 1000))
            ok.append(orjson.dumps({"arg": {"channel": "bbo-tbt", "instId": "BTC-USDT"}, "data": [{
                "asks": [[_okx_num(d["a"]), _okx_num(d["A"]), "0", "3"]],
                "bids": [[_okx_num(d["b"]), _okx_num(d["B"]), "0", "5"]],
                "ts": ts, "seqId": okx_seq}]}))
        elif kind == "trade":
            bn.append(orjson.dumps({"stream": "btcusdt@trade", "data": d}))
            ok.append(orjson.dumps({"arg": {"channel": "trades", "instId": "BTC-USDT"}, "data": [{
                "instId": "BTC-USDT", "tradeId": str(d["t"]), "px": _okx_num(d["p"]),
                "sz": _okx_num(d["q"]), "side": "sell" if d["m"] else "buy", "ts": str(d["T"]),
                "count": "1", "source": "0", "seqId": okx_seq}]}))
        else:
            bids, asks = _levels(bid, step, -1, depth, rng), _levels(ask, step, 1, depth, rng)
            bn.append(orjson.dumps({"stream": f"btcusdt@depth{depth}@100ms",
                                    "data": {"lastUpdateId": d["u"], "bids": bids, "asks": asks}}))
            ok.append(orjson.dumps({"arg": {"channel": "books5", "instId": "BTC-USDT"}, "data": [{
                "asks": [[p, s, "0", "1"] for p, s in asks[:5]], "bids": [[p, s, "0", "1"] for p, s in bids[:5]],
                "instId": "BTC-USDT", "ts": str(int(time.time() * 1000)), "seqId": okx_seq}]}))
    return bn, ok


async def run_one(exchange: str, frames: list[bytes], redis_url: str, port: int) -> tuple[float, int, int]:
    sub = await asyncio.create_subprocess_exec(sys.executable, "-c", SUBSCRIBER, str(port), DONE,
                                               stdout=asyncio.subprocess.PIPE)
    assert sub.stdout is not None
    await sub.stdout.readline()
    await asyncio.sleep(0.2)
    settings = load_settings(env={"REDIS_URL": redis_url})
    redis = connect(redis_url)
    try:
        ing = Ingestor(settings, exchange, redis)
        ingestor_registry(ing)  # metrics hooked in as in `python -m ingestor` (batch-size histogram)
        # As if connected and already up: the bench measures the data path, not the feed state machine.
        ing.conn_state = "connected"
        ing.supervisor.connected_since_us = now_us() - 1
        ing.state = "up"
        flusher = asyncio.create_task(ing.publisher.run())
        await redis.ping()
        on_frame = ing.on_frame
        t0 = time.perf_counter()
        for i in range(0, len(frames), CHUNK):
            for f in frames[i:i + CHUNK]:
                on_frame(f, now_us())
            await asyncio.sleep(0)
        await ing.publisher.flush()
        elapsed = time.perf_counter() - t0
        flusher.cancel()
        assert ing.stats.rejected_total == 0, ing.stats.rejected
        assert await redis.exists(names.md_last_key("bbo", exchange, "BTCUSDT"))
        await redis.publish(DONE, b"done")
        received = int((await asyncio.wait_for(sub.stdout.readline(), 30)).strip() or 0)
        return elapsed, ing.publisher.batches, received
    finally:
        await redis.aclose()
        if sub.returncode is None:
            sub.kill()
        await sub.wait()


def stage_rates(exchange: str, frames: list[bytes]) -> str:
    """Where the time goes: parse alone, then parse + encode (no Redis)."""
    from ingestor.service import exchange_parts
    from shared.schema import encode

    parse = exchange_parts(exchange, load_settings(env={}))[0].parse
    t0 = time.perf_counter()
    for f in frames:
        parse(f, 1)
    t1 = time.perf_counter()
    for f in frames:
        for m in parse(f, 1):  # type: ignore[union-attr]
            encode(m)
    t2 = time.perf_counter()
    n = len(frames)
    return f"parse {n / (t1 - t0):,.0f} frames/s, parse + encode {n / (t2 - t1):,.0f} frames/s"


async def amain(n_frames: int, repeat: int) -> int:
    rng = random.Random(7)
    settings = load_settings(env={})
    if CAPTURES.is_dir():
        events = list(capture_events())[:n_frames]
        source = f"hftbacktest capture ({len(events)} frames)"
    else:
        events = list(synthetic_events(n_frames, rng))
        source = f"synthetic frames ({len(events)}; capture not found at {CAPTURES})"
    bn, ok = build_frames(events, settings.binance.depth_levels, rng)
    mix = {k: sum(1 for e in events if e[0] == k) for k in ("bbo", "trade", "book")}
    print(f"source: {source}; mix: {mix}")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(tmp, appendfsync="no") as srv:
        for exchange, frames in (("binance", bn), ("okx", ok)):
            print(f"{exchange:8s} stages alone: {stage_rates(exchange, frames)}")
            best = 0.0
            for r in range(repeat):
                elapsed, batches, received = await run_one(exchange, frames, srv.url, srv.port)
                rate = len(frames) / elapsed
                best = max(best, rate)
                print(f"{exchange:8s} run {r + 1}: {len(frames)} frames in {elapsed:.3f}s = {rate:,.0f} frames/s "
                      f"({batches} Redis batches, {len(frames) / batches:.0f} frames/batch; "
                      f"a subscriber process received {received} messages)")
            results[exchange] = best
    ok_all = True
    for exchange, rate in results.items():
        verdict = "OK" if rate >= TARGET else "BELOW TARGET"
        ok_all &= rate >= TARGET
        print(f"RESULT {exchange:8s} {rate:,.0f} frames/s (target {TARGET:,}): {verdict}")
    return 0 if ok_all else 1


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    raise SystemExit(asyncio.run(amain(args.frames, args.repeat)))


if __name__ == "__main__":
    main()
