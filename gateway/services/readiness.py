"""Readiness: the pure rule (``feed_check``, ``readiness``) and the one Redis round trip feeding it (``probe``).

A feed's state comes from the newest of two sources: the ``md:feed:<ex>`` hash the ingestor rewrites every
second, and the ``md:status:<ex>`` heartbeats this process already follows for best touch. A state older than
``feeds.stale_after_s`` counts as ``down`` whatever it says (its ingestor died without a word).
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from pydantic import BaseModel, Field

from shared import names
from shared.redis_conn import Client
from shared.timeutil import now_us

PROBE_TIMEOUT_S = 0.5
ReadyStatus = Literal["ready", "degraded", "not_ready"]


class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class RedisCheck(BaseModel):
    ok: bool
    latency_ms: float | None = Field(None, description="round trip of the readiness probe")
    error: str | None = None


class MatcherCheck(BaseModel):
    alive: bool = Field(description=f"`{names.MATCHER_ALIVE_KEY}` present (set every second, 5 s expiry)")
    heartbeat_age_s: float | None = None


class FeedCheck(BaseModel):
    state: Literal["up", "stale", "down", "unknown"] = Field(
        description="as reported, except `down` when the report is older than `feeds.stale_after_s`")
    live: bool = Field(description="state is `up`: the exchange counts for best touch and matching")
    reason: str = ""
    connection: str | None = Field(None, description="the ingestor's connection state, from `md:feed:<ex>`")
    heartbeat_age_s: float | None = Field(None, description="seconds since the last feed state report")
    data_age_s: float | None = Field(None, description="seconds since the ingestor last received market data")


class ReadyOut(BaseModel):
    status: ReadyStatus = Field(description="`ready`: everything up; `degraded`: Redis and matcher up, some "
                                            "exchange feed not live (still 200); `not_ready` (503): Redis "
                                            "unreachable, matcher not alive, or no live feed at all")
    redis: RedisCheck
    matcher: MatcherCheck
    feeds: dict[str, FeedCheck]
    problems: list[str] = Field(default_factory=list, description="one sentence per problem found")

    model_config = {"json_schema_extra": {"examples": [{
        "status": "ready", "redis": {"ok": True, "latency_ms": 0.4, "error": None},
        "matcher": {"alive": True, "heartbeat_age_s": 0.3},
        "feeds": {"binance": {"state": "up", "live": True, "reason": "receiving market data",
                              "connection": "connected", "heartbeat_age_s": 0.2, "data_age_s": 0.01},
                  "okx": {"state": "up", "live": True, "reason": "receiving market data",
                          "connection": "connected", "heartbeat_age_s": 0.6, "data_age_s": 0.02}},
        "problems": []}]}}


def _age(now: int, ts: int) -> float:
    return round(max(0, now - ts) / 1e6, 3)


def feed_check(fields: dict[str, str], heard: tuple[str, int] | None, now: int, stale_after_us: int) -> FeedCheck:
    """``fields``: the ``md:feed:<ex>`` hash (maybe empty); ``heard``: (state, local time) of the last heartbeat."""
    candidates: list[tuple[int, str]] = []
    hash_ts = int(fields.get("updated_us") or 0)
    if hash_ts and fields.get("state"):
        candidates.append((hash_ts, fields["state"]))
    if heard is not None:
        candidates.append((heard[1], heard[0]))
    last_msg = int(fields.get("last_msg_us") or 0)
    data_age = _age(now, last_msg) if last_msg else None
    connection = fields.get("connection") or None
    if not candidates:
        return FeedCheck(state="unknown", live=False, reason="no feed state reported yet", connection=connection,
                         data_age_s=data_age)
    ts, state = max(candidates)
    reason = fields.get("reason", "") if fields.get("state") == state else ""
    if now - ts > stale_after_us:
        state, reason = "down", f"no feed state reported for {_age(now, ts)}s (ingestor not running?)"
    if state not in ("up", "stale", "down"):
        state = "unknown"
    return FeedCheck(state=state, live=state == "up", reason=reason, connection=connection,
                     heartbeat_age_s=_age(now, ts), data_age_s=data_age)


def readiness(redis: RedisCheck, matcher: MatcherCheck, feeds: dict[str, FeedCheck]) -> ReadyOut:
    problems: list[str] = []
    if not redis.ok:
        problems.append(f"redis unreachable: {redis.error}")
    if redis.ok and not matcher.alive:
        problems.append("matcher not alive: no heartbeat in the last 5 s")
    for ex, f in sorted(feeds.items()):
        if not f.live:
            problems.append(f"{ex}: feed is {f.state}" + (f" ({f.reason})" if f.reason else ""))
    live = [ex for ex, f in feeds.items() if f.live]
    if not redis.ok or not matcher.alive or not live:
        status: ReadyStatus = "not_ready"
    elif len(live) < len(feeds):
        status = "degraded"
    else:
        status = "ready"
    return ReadyOut(status=status, redis=redis, matcher=matcher, feeds=feeds, problems=problems)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


async def probe(redis: Client, exchanges: tuple[str, ...], heard: dict[str, tuple[str, int]],
                stale_after_s: float) -> tuple[RedisCheck, MatcherCheck, dict[str, FeedCheck]]:
    """One pipelined round trip (feed hashes + matcher heartbeat), bounded by ``PROBE_TIMEOUT_S``."""
    stale_us = int(stale_after_s * 1_000_000)
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            pipe = redis.pipeline(transaction=False)
            for ex in exchanges:
                pipe.hgetall(names.status_key(ex))
            pipe.get(names.MATCHER_ALIVE_KEY)
            res = await pipe.execute()
    except TimeoutError:
        err = f"no answer within {PROBE_TIMEOUT_S}s"
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable"; the reason is reported
        err = f"{type(e).__name__}: {e}"[:200]
    else:
        now = now_us()
        rcheck = RedisCheck(ok=True, latency_ms=round((time.perf_counter() - t0) * 1000, 3))
        beat = res[-1]
        beat_s = _s(beat) if beat is not None else ""
        matcher = MatcherCheck(alive=beat is not None,
                               heartbeat_age_s=_age(now, int(beat_s)) if beat_s.isdigit() else None)
        feeds = {ex: feed_check({_s(k): _s(v) for k, v in fields.items()}, heard.get(ex), now, stale_us)
                 for ex, fields in zip(exchanges, res[:-1], strict=True)}
        return rcheck, matcher, feeds
    now = now_us()
    return (RedisCheck(ok=False, error=err), MatcherCheck(alive=False),
            {ex: feed_check({}, heard.get(ex), now, stale_us) for ex in exchanges})
