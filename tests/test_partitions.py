"""Partition hash tags for sharded pub/sub: channels grouped by ``names.partition_tags`` land evenly on the
masters (naive tags ``{0}``, ``{1}``... do not), on paper for any number of masters and on a real cluster."""

from __future__ import annotations

from collections import Counter

import pytest
from redis.crc import key_slot

from shared import names
from shared.embedded_cluster import EmbeddedCluster


def per_master(tags: list[str] | tuple[str, ...], masters: int) -> list[int]:
    """How many tags each master gets when the slots are split in equal contiguous ranges (as the cluster is
    formed, ``CLUSTER ADDSLOTSRANGE``)."""
    owner = Counter(min(key_slot(t.encode()) * masters // names.CLUSTER_SLOTS, masters - 1) for t in tags)
    return [owner.get(m, 0) for m in range(masters)]


@pytest.mark.parametrize("masters", [2, 3, 5, 6, 8])
@pytest.mark.parametrize("n", [4, 8, 16, 32, 64, 256])
def test_partition_tags_spread_evenly(n: int, masters: int) -> None:
    tags = names.partition_tags(n)
    assert len(set(tags)) == n
    counts = per_master(tags, masters)
    assert max(counts) - min(counts) <= 1, counts


def test_naive_tags_do_not() -> None:
    worst = {(n, m): per_master([str(i) for i in range(n)], m) for n in (4, 8, 16, 32) for m in (2, 3, 5, 6, 8)}
    uneven = {k: v for k, v in worst.items() if max(v) - min(v) > 1}
    assert len(uneven) >= 5, worst  # e.g. 8 naive tags on 3 masters
    print("naive tags, uneven cases (partitions, masters) -> per master:", uneven)


def test_spread_on_a_real_cluster(redis_cluster: EmbeddedCluster) -> None:
    masters = redis_cluster.masters
    tags = names.partition_tags(16 * len(masters))
    got = Counter(redis_cluster.owner_of_slot(key_slot(t.encode())).port for t in tags)
    assert sorted(got.values()) == [16] * len(masters), got


def test_keyspace_names() -> None:
    """One server: the plain names. A cluster: a pair's channels and snapshot keys share its partition's slot."""
    single, ks = names.Keyspace(), names.Keyspace(cluster=True, partitions=16)
    assert (single.md_channel("bbo", "okx", "BTCUSDT"), single.md_last_key("book", "okx", "BTCUSDT"),
            single.status_channel("okx"), single.publish) == (
        "md:bbo:okx:BTCUSDT", "md:last:book:okx:BTCUSDT", "md:status:okx", "PUBLISH")
    tag = ks.tag("BTCUSDT")
    assert tag[1:-1] in names.partition_tags(16) and ks.publish == "SPUBLISH"
    pair = [ks.md_channel(k, ex, "BTCUSDT") for k in ("bbo", "book", "trade") for ex in ("binance", "okx")]
    pair += [ks.md_last_key(k, ex, "BTCUSDT") for k in ("bbo", "book") for ex in ("binance", "okx")]
    assert pair[0] == f"md:{tag}:bbo:binance:BTCUSDT"
    assert {key_slot(n.encode()) for n in pair} == {key_slot(ks.slot_key(pair[0]).encode())}
    assert ks.slot_key(ks.status_channel("okx")) == f"md:{ks.tag('okx')}"


def test_similar_symbols_spread_over_the_partitions() -> None:
    """Symbols that differ in a digit or two still fill the partitions (CRC-32 put 12 of them in 3 of 16)."""
    ks = names.Keyspace(cluster=True, partitions=16)
    for symbols in ([f"S{i}USDT" for i in range(12)], [f"P{i}USDT" for i in range(40)]):
        used = {ks.tag(s) for s in symbols}
        assert len(used) >= min(16, len(symbols)) * 5 // 8, (len(symbols), len(used))
