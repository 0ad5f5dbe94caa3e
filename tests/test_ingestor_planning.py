"""Connection planning and sharding (pure): hundreds of pairs within each exchange's per-connection limits."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from ingestor import binance, okx
from ingestor.connection import Pacer
from ingestor.planning import (
    ConnectionPlan,
    Shard,
    feed_status_key,
    parse_shard,
    select_pairs,
    split_evenly,
    status_suffix,
)
from shared.settings import SettingsError, load_settings
from tests.ingestor_helpers import doc_settings, many_pairs_settings, many_pairs_toml


def url_streams(url: str) -> list[str]:
    return parse_qs(urlsplit(url).query)["streams"][0].split("/")


def binance_streams(plan: ConnectionPlan) -> list[str]:
    """Every stream one planned connection ends up with: the URL's, then each SUBSCRIBE's."""
    out = url_streams(plan.url)
    for frame in plan.subscribe:
        req = orjson.loads(frame)
        assert req["method"] == "SUBSCRIBE" and isinstance(req["id"], int)
        out += req["params"]
    return out


# --- sharding ----------------------------------------------------------------------------------------------


def test_parse_shard() -> None:
    assert parse_shard("2/3") == Shard(2, 3) and str(Shard(2, 3)) == "2/3"
    assert parse_shard("") is None and parse_shard("  ") is None
    for bad in ("0/2", "3/2", "1", "a/b", "1/0", "-1/2"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_shards_are_disjoint_cover_every_pair_and_ignore_the_file_order(tmp_path: Path) -> None:
    s = many_pairs_settings(tmp_path, 300)  # the file lists P299USDT first
    for n in (1, 2, 3, 7):
        shards = [select_pairs(s.pairs, Shard(i, n)) for i in range(1, n + 1)]
        symbols = [p.symbol for sh in shards for p in sh]
        assert sorted(symbols) == sorted(s.symbols) and len(set(symbols)) == 300
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # every n-th by symbol, starting at the i-th
    assert [p.symbol for p in select_pairs(s.pairs, Shard(2, 3))][:3] == ["P001USDT", "P004USDT", "P007USDT"]
    # the same shard whatever the order of the file
    forward = tmp_path / "forward.toml"
    forward.write_text("\n".join(reversed(many_pairs_toml(300).split("\n\n"))))
    fwd = load_settings(forward, env={})
    assert fwd.pairs[0].symbol == "P000USDT" and s.pairs[0].symbol == "P299USDT"
    assert select_pairs(fwd.pairs, Shard(1, 2)) == select_pairs(s.pairs, Shard(1, 2))


def test_unsharded_keeps_the_configured_order_and_an_explicit_list_narrows(tmp_path: Path) -> None:
    s = doc_settings(tmp_path)
    assert [p.symbol for p in select_pairs(s.pairs)] == ["BTCUSDT", "BNBUSDT", "BNBBTC"]
    assert [p.symbol for p in select_pairs(s.pairs, only=["BNBBTC", "BTCUSDT"])] == ["BTCUSDT", "BNBBTC"]
    assert [p.symbol for p in select_pairs(s.pairs, Shard(2, 2), only=["BNBBTC", "BTCUSDT"])] == ["BTCUSDT"]
    with pytest.raises(ValueError, match="ETHUSDT"):
        select_pairs(s.pairs, only=["ETHUSDT"])


def test_status_names_of_shards_never_collide() -> None:
    assert feed_status_key("binance", status_suffix(None)) == "md:feed:binance"  # unchanged for one process
    assert status_suffix(Shard(1, 1)) == ""
    keys = {feed_status_key("binance", status_suffix(Shard(i, 3))) for i in (1, 2, 3)}
    assert keys == {"md:feed:binance:1/3", "md:feed:binance:2/3", "md:feed:binance:3/3"}
    a, b = status_suffix(None, ["BTCUSDT", "ETHUSDT"]), status_suffix(None, ["ETHUSDT", "BTCUSDT"])
    assert a == b and a.startswith("pairs-") and a != status_suffix(None, ["BTCUSDT"])


def test_shard_settings_from_the_environment(tmp_path: Path) -> None:
    s = many_pairs_settings(tmp_path, 10, SR_INGESTOR__SHARD="2/3", SR_INGESTOR__PAIRS="p001usdt, P002USDT")
    assert s.ingestor.shard == "2/3" and s.ingestor.pairs == ("P001USDT", "P002USDT")
    for env in ({"SR_INGESTOR__SHARD": "4/3"}, {"SR_INGESTOR__SHARD": "x"}, {"SR_INGESTOR__PAIRS": "NOPEUSDT"}):
        with pytest.raises(SettingsError):
            many_pairs_settings(tmp_path, 10, **env)


# --- splitting ---------------------------------------------------------------------------------------------


def test_split_evenly() -> None:
    assert split_evenly([], 3) == []
    assert split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly(list(range(6)), 3) == [[0, 1, 2], [3, 4, 5]]
    assert split_evenly(list(range(400)), 341) == [list(range(200)), list(range(200, 400))]
    with pytest.raises(ValueError):
        split_evenly([1], 0)


# --- Binance -----------------------------------------------------------------------------------------------


def test_binance_few_pairs_one_connection_everything_in_the_url(tmp_path: Path) -> None:
    s = doc_settings(tmp_path)
    [plan] = binance.plan_connections(s, s.pairs)
    assert plan.subscribe == () and plan.in_url == 9 and plan.url == binance.build_url(s)


@pytest.mark.parametrize("n_pairs, max_streams, connections", [
    (300, 1024, 1), (341, 1024, 1), (342, 1024, 2), (1000, 1024, 3), (300, 300, 3), (300, 3, 300)])
def test_binance_plan_respects_every_limit(tmp_path: Path, n_pairs: int, max_streams: int, connections: int) -> None:
    s = many_pairs_settings(tmp_path, n_pairs, SR_BINANCE__MAX_STREAMS_PER_CONNECTION=str(max_streams))
    plans = binance.plan_connections(s, s.pairs)
    assert len(plans) == connections == -(-n_pairs // (max_streams // 3))
    everything: list[str] = []
    for i, plan in enumerate(plans):
        assert plan.index == i
        streams = binance_streams(plan)
        assert streams == list(plan.keys) and len(streams) == len(set(streams))
        assert len(streams) <= max_streams <= binance.MAX_STREAMS
        assert len(plan.url) <= binance.MAX_URL_CHARS and plan.in_url == len(url_streams(plan.url))
        assert all(len(orjson.loads(f)["params"]) <= binance.SUBSCRIBE_MAX_PARAMS for f in plan.subscribe)
        # whole pairs: a pair's three streams are on the same connection
        assert len(streams) == 3 * len(plan.symbols)
        # SUBSCRIBE frames paced under 3/s: with a pong in the same second, still under 5 messages/s
        if plan.subscribe:
            assert plan.subscribe_pace_s >= 1 / 3
            per_second = 1 + int(1 / plan.subscribe_pace_s)
            assert per_second + 1 <= binance.MAX_INCOMING_PER_S
        everything += streams
    table = binance.stream_table(s)
    assert sorted(everything) == sorted(table)  # every stream of every pair, once


def test_binance_300_pairs_fill_one_connection_partly_by_subscribe(tmp_path: Path) -> None:
    s = many_pairs_settings(tmp_path, 300)
    [plan] = binance.plan_connections(s, s.pairs)
    assert len(plan.keys) == 900 and 100 < plan.in_url < 900
    assert len(plan.subscribe) == -(-(900 - plan.in_url) // binance.SUBSCRIBE_MAX_PARAMS)
    # the subscription ids count from 1 on every connection
    assert [orjson.loads(f)["id"] for f in plan.subscribe] == list(range(1, len(plan.subscribe) + 1))


# --- OKX ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_pairs, max_args, connections", [(3, 300, 1), (300, 300, 3), (300, 900, 1),
                                                            (1000, 300, 10), (301, 300, 4)])
def test_okx_plan_respects_every_limit(tmp_path: Path, n_pairs: int, max_args: int, connections: int) -> None:
    s = many_pairs_settings(tmp_path, n_pairs, SR_OKX__MAX_ARGS_PER_CONNECTION=str(max_args))
    plans = okx.plan_connections(s, s.pairs)
    assert len(plans) == connections
    seen: list[tuple[str, str]] = []
    for plan in plans:
        assert plan.url == s.okx.ws_url
        args = []
        for i, frame in enumerate(plan.subscribe):
            assert len(frame.encode()) <= okx.REQUEST_BYTES_BUDGET < okx.MAX_REQUEST_BYTES
            req = orjson.loads(frame)
            assert req["op"] == "subscribe" and req["id"] == str(i + 1)
            assert len({a["channel"] for a in req["args"]}) == 1  # one channel per request
            args += [(a["channel"], a["instId"]) for a in req["args"]]
        assert len(args) <= max_args and len(args) == 3 * len(plan.symbols)
        assert len(plan.subscribe) <= okx.MAX_REQUESTS_PER_HOUR
        assert plan.subscribe_pace_s >= 1 / okx.CONNECTS_PER_S
        assert [f"{c}:{i}" for c, i in args] == list(plan.keys)
        seen += args
    assert sorted(seen) == sorted((c, p.okx) for c in okx.CHANNELS for p in s.pairs)
    assert okx.CONNECT_INTERVAL_S >= 1 / okx.CONNECTS_PER_S


def test_okx_requests_are_split_by_size(tmp_path: Path) -> None:
    s = many_pairs_settings(tmp_path, 300, SR_OKX__MAX_ARGS_PER_CONNECTION="900")
    [plan] = okx.plan_connections(s, s.pairs, budget=2048)
    assert len(plan.subscribe) > 3 and all(len(f) <= 2048 for f in plan.subscribe)
    [one] = okx.plan_connections(s, s.pairs)
    assert len(one.subscribe) == 3  # 300 args of one channel fit in 16 KB


# --- pacing ------------------------------------------------------------------------------------------------


def test_pacer_spaces_every_caller() -> None:
    now = [100.0]
    p = Pacer(0.35, clock=lambda: now[0])
    assert [round(p.reserve(), 2) for _ in range(4)] == [0.0, 0.35, 0.7, 1.05]
    now[0] = 110.0  # long after: no wait
    assert p.reserve() == 0.0
