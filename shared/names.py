"""Every Redis channel and key name, built here and nowhere else.

Channels (pub/sub, payloads are JSON from ``shared.schema``)::

    md:bbo:<exchange>:<SYMBOL>     best bid/offer of one exchange (bookTicker / bbo-tbt)
    md:book:<exchange>:<SYMBOL>    top levels of one exchange (depth10 / books5)
    md:trade:<exchange>:<SYMBOL>   trades of one exchange
    md:status:<exchange>           feed state changes (up / stale / down)
    orders:events:{u:<user_id>}        a user's order events
    auth:revocations               user ids whose tokens or API keys changed (logout, password, key deleted):
                                   every gateway drops what it cached of them

On a Redis Cluster the md channels and md:last keys carry a partition tag (``Keyspace``): ``md:{p3.17}:bbo:...``.

Keys::

    md:last:bbo:<exchange>:<SYMBOL>   latest bbo message (string, JSON)
    md:last:book:<exchange>:<SYMBOL>  latest book message (string, JSON)
    md:feed:<exchange>                hash: state, last message time, counters

Trading (every key one ledger operation touches carries the user's hash tag ``{u:<id>}``, so one
WATCH/MULTI transaction stays in one Redis Cluster slot)::

    {u:<id>}:bal             hash: t:<ASSET> total, r:<ASSET> reserved (decimal strings)
    {u:<id>}:o:<token_id>    string: the order, JSON (never deleted: token_id is unique forever)
    {u:<id>}:orders          zset: every token_id, score = creation time (us)
    {u:<id>}:open            zset: open token_ids, score = creation time (us)
    {u:<id>}:fills           list: the user's fills, JSON, oldest first

The matcher's shards (pairs split by ``matcher_shard``; one hash tag ``{m:<shard>}`` per shard)::

    matcher:{m:<n>}:intake          stream: every order change of the shard's pairs (field ``o``, the order JSON),
                                    written in the order's own transaction; consumer group ``matchers``
    matcher:{m:<n>}:open            zset: the shard's open orders ``<user_id> <token_id>``, kept by its matcher
    matcher:{m:<n>}:lease           string: the id of the matcher holding the shard (expires unless renewed)
    matcher:{m:<n>}:indexed:<count> string: the open set was built once by a full scan (start-up migration)

Users (gateway accounts)::

    user:{u:<user_id>}                hash: id, username, pw_hash (bcrypt), created_us
    user:byname:<username lowercased> string: the user id (SET NX: one owner per name, case-insensitive)
    auth:fail:user:<username lowercased>  counter of failed logins, expires with the window
    auth:fail:ip:<client ip>          counter of failed logins, expires with the window
    auth:revoked:{u:<user_id>}        hash: revoked token ids (``jti``) -> their expiry (epoch s); the key expires
                                      with the last of them (``POST /logout``)
    apikeys:{u:<user_id>}             hash: key id -> the API key's record, JSON (name, scopes, created_us,
                                      expires_us, sha256 of the secret); never the secret
    apikeys:used:{u:<user_id>}        hash: key id -> last use (us), written at most once a minute per key
    auth:reg:ip:<client ip>           counter of registrations from one address, expires with the window
    auth:reg:all                      counter of every registration, expires with the window

Operations::

    matcher:alive                     string: the matcher's last heartbeat time (us); set every second, 5 s TTL
    gateway:jwt_secret                string: the JWT secret the gateways made up when none is configured (SET NX)

``{u:<user_id>}`` is a Redis Cluster hash tag: every per-user key carries it so one user's keys share a slot.

Spaces: a process whose settings name a ``space`` (``FEED=replay`` runs everything in ``replay``) prefixes every
market-data, ledger, order-event and matcher-shard name with ``<space>:`` (``replay:md:bbo:okx:BTCUSDT``,
``replay:{u:42}:bal``), so a replay never reads or writes the live paper accounts. Users, logins, the JWT secret
and ``matcher:alive`` are shared: the same login trades in either space.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import zlib

from redis.crc import key_slot

PREFIX_MD = "md"
_space = ""  # "" or "<space>:"; set once at start (``set_space``, from the settings)
_md = PREFIX_MD


def set_space(space: str) -> None:
    """Put every name below in ``space`` ("" for the live one). Called once per process by ``get_settings``."""
    global _space, _md
    if space and not (space.isascii() and space.replace("_", "").isalnum() and space[0].isalpha()):
        raise ValueError(f"bad space name {space!r}")
    _space = f"{space}:" if space else ""
    _md = _space + PREFIX_MD


def space() -> str:
    return _space[:-1]


def md_channel(kind: str, exchange: str, symbol: str) -> str:
    return f"{_md}:{kind}:{exchange}:{symbol}"


def md_last_key(kind: str, exchange: str, symbol: str) -> str:
    return f"{_md}:last:{kind}:{exchange}:{symbol}"


def status_channel(exchange: str) -> str:
    return f"{_md}:status:{exchange}"


def status_key(exchange: str) -> str:
    return f"{_md}:feed:{exchange}"


def md_pattern(kind: str = "*", exchange: str = "*", symbol: str = "*") -> str:
    return f"{_md}:{kind}:{exchange}:{symbol}"


def user_events_channel(user_id: str) -> str:
    return f"{_space}orders:events:{user_tag(user_id)}"


# --- trading -------------------------------------------------------------------------------------

def open_scan_pattern() -> str:
    return _space + "{u:*}:open"


def user_tag(user_id: str) -> str:
    if "{" in user_id or "}" in user_id:
        raise ValueError("user id must not contain braces")
    return "{u:" + user_id + "}"


def balance_key(user_id: str) -> str:
    return f"{_space}{user_tag(user_id)}:bal"


def order_key(user_id: str, token_id: str) -> str:
    return f"{_space}{user_tag(user_id)}:o:{token_id}"


def orders_index_key(user_id: str) -> str:
    return f"{_space}{user_tag(user_id)}:orders"


def open_orders_key(user_id: str) -> str:
    return f"{_space}{user_tag(user_id)}:open"


def fills_key(user_id: str) -> str:
    return f"{_space}{user_tag(user_id)}:fills"


def user_from_open_key(key: str) -> str:
    """``{u:42}:open`` (in this space) -> ``42``."""
    head = _space + "{u:"
    if not (key.startswith(head) and key.endswith("}:open")):
        raise ValueError(f"not an open-orders key: {key!r}")
    return key[len(head):-6]


# --- partitions (Redis Cluster) ------------------------------------------------------------------------------

CLUSTER_SLOTS = 16384


@functools.cache
def partition_tags(n: int) -> tuple[str, ...]:
    """``n`` hash tags whose slots are spread evenly over the 16,384: the i-th falls in the middle half of the i-th
    of ``n`` equal slot ranges. Masters own contiguous, (near) equal ranges, so channels grouped by these tags land
    evenly on them, where naive tags (``{0}``, ``{1}``...) fall wherever CRC16 puts them."""
    if not 1 <= n <= CLUSTER_SLOTS // 4:
        raise ValueError(f"between 1 and {CLUSTER_SLOTS // 4} partitions")
    tags: list[str] = []
    for i in range(n):
        lo, hi = i * CLUSTER_SLOTS // n, (i + 1) * CLUSTER_SLOTS // n
        quarter = (hi - lo) // 4
        k = 0
        while not lo + quarter <= key_slot(f"p{i}.{k}".encode()) < hi - quarter:
            k += 1
        tags.append(f"p{i}.{k}")
    return tuple(tags)


@dataclasses.dataclass(frozen=True, slots=True)
class Keyspace:
    """Market-data channel and key names for one deployment. On one server they are the plain names above (and
    pub/sub is ``PUBLISH``/``SUBSCRIBE``). On a Redis Cluster (sharded pub/sub: ``SPUBLISH``/``SSUBSCRIBE``, no
    patterns) every channel and snapshot key of a pair carries its partition's hash tag, ``md:{<tag>}:bbo:...``:
    one pair's channels and snapshots share a slot, so the ingestor publishes a batch per partition in one call,
    and ``partitions`` tags from ``partition_tags`` spread the pairs evenly over the masters."""
    cluster: bool = False
    partitions: int = 16

    @property
    def publish(self) -> str:
        return "SPUBLISH" if self.cluster else "PUBLISH"

    def tag(self, name: str) -> str:
        """The partition hash tag of a symbol (or an exchange's status): ``{p3.17}``. By a well-mixed hash: CRC-32
        is affine, so names that differ in a character or two (``S1USDT``..``S9USDT``) share few partitions."""
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        return "{" + partition_tags(self.partitions)[int.from_bytes(digest, "big") % self.partitions] + "}"

    def md_channel(self, kind: str, exchange: str, symbol: str) -> str:
        if not self.cluster:
            return md_channel(kind, exchange, symbol)
        return f"{_md}:{self.tag(symbol)}:{kind}:{exchange}:{symbol}"

    def md_last_key(self, kind: str, exchange: str, symbol: str) -> str:
        if not self.cluster:
            return md_last_key(kind, exchange, symbol)
        return f"{_md}:{self.tag(symbol)}:last:{kind}:{exchange}:{symbol}"

    def status_channel(self, exchange: str) -> str:
        if not self.cluster:
            return status_channel(exchange)
        return f"{_md}:{self.tag(exchange)}:status:{exchange}"

    def slot_key(self, channel: str) -> str:
        """A key in ``channel``'s slot (a script that SPUBLISHes there is routed by it)."""
        if not self.cluster:
            return channel
        return channel[:channel.index("}") + 1]


SINGLE = Keyspace()


# --- the matcher's shards ---------------------------------------------------------------------------
# A shard's keys share one hash tag: its intake stream, its open-order set and its lease.

INTAKE_GROUP = "matchers"
INTAKE_MAXLEN = 100_000  # approximate (MAXLEN ~): far more than a matcher ever has pending


def matcher_shard(symbol: str, shards: int) -> int:
    """The shard a pair belongs to: stable whatever the other pairs (CRC-32 of the symbol)."""
    return zlib.crc32(symbol.encode()) % shards


def shard_tag(shard: int) -> str:
    return "{m:" + str(shard) + "}"


def intake_stream(shard: int) -> str:
    """Every order change of the shard's pairs (field ``o``: the order's JSON), read by its matcher."""
    return f"{_space}matcher:{shard_tag(shard)}:intake"


def shard_open_key(shard: int) -> str:
    """The shard's open orders (members ``<user_id> <token_id>``), kept by its matcher: its start-up reads this."""
    return f"{_space}matcher:{shard_tag(shard)}:open"


def shard_indexed_key(shard: int, shards: int) -> str:
    """Set once the shard's open set was built by a full scan (for this number of shards)."""
    return f"{_space}matcher:{shard_tag(shard)}:indexed:{shards}"


def lease_key(shard: int) -> str:
    return f"{_space}matcher:{shard_tag(shard)}:lease"


# --- users -------------------------------------------------------------------------------------------


def user_key(user_id: str) -> str:
    return f"user:{user_tag(user_id)}"


def username_key(username: str) -> str:
    return f"user:byname:{username.lower()}"


def login_fail_user_key(username: str) -> str:
    return f"auth:fail:user:{username.lower()}"


def login_fail_ip_key(ip: str) -> str:
    return f"auth:fail:ip:{ip}"


def revoked_tokens_key(user_id: str) -> str:
    return f"auth:revoked:{user_tag(user_id)}"


def api_keys_key(user_id: str) -> str:
    return f"apikeys:{user_tag(user_id)}"


def api_keys_used_key(user_id: str) -> str:
    return f"apikeys:used:{user_tag(user_id)}"


def register_ip_key(ip: str) -> str:
    return f"auth:reg:ip:{ip}"


REGISTER_ALL_KEY = "auth:reg:all"
# One channel for every gateway (on a cluster a shard channel like any other, in its own slot).
REVOCATIONS_CHANNEL = "auth:revocations"


# --- operations ----------------------------------------------------------------------------------------

MATCHER_ALIVE_KEY = "matcher:alive"
JWT_SECRET_KEY = "gateway:jwt_secret"
