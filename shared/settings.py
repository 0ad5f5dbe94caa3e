"""Settings: one TOML file, overridden by environment variables, validated once at start.

Load with ``load_settings()``; a wrong file or variable raises ``SettingsError`` whose text names the
offending key (``pairs.2.tick_size: ...``), and ``get_settings()`` turns that into a clean exit.
"""

from __future__ import annotations

import os
import sys
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from shared import names

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "config" / "config.toml"
ENV_PREFIX = "SR_"
# Short environment names users expect, mapped onto the nested keys.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "REDIS_URL": ("redis", "url"),
    "REDIS_CLUSTER": ("redis", "cluster"),
    "PORT": ("gateway", "port"),
    "JWT_SECRET": ("auth", "jwt_secret"),
    "BINANCE_WS_URL": ("binance", "ws_url"),
    "OKX_WS_URL": ("okx", "ws_url"),
    "LOG_LEVEL": ("log", "level"),
    "SR_SPACE": ("space",),
}

EXCHANGES: tuple[str, ...] = ("binance", "okx")


class SettingsError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _positive_decimal(v: Any) -> Decimal:
    if isinstance(v, float):
        raise ValueError("write decimals as strings (\"0.01\"), not floats")
    try:
        d = Decimal(str(v))
    except Exception as e:  # noqa: BLE001 - any parse failure is a config error
        raise ValueError(f"not a decimal: {v!r}") from e
    if not d.is_finite() or d <= 0:
        raise ValueError(f"must be a positive finite decimal, got {v!r}")
    return d


class Pair(_Strict):
    symbol: str = Field(pattern=r"^[A-Z0-9]{2,20}$")
    base: str = Field(pattern=r"^[A-Z0-9]{1,10}$")
    quote: str = Field(pattern=r"^[A-Z0-9]{1,10}$")
    binance: str = Field(pattern=r"^[A-Z0-9]{2,20}$")
    okx: str = Field(pattern=r"^[A-Z0-9]{1,10}-[A-Z0-9]{1,10}$")
    tick_size: Decimal
    lot_step: Decimal
    min_notional: Decimal
    maker_fee: Decimal = Decimal(0)
    taker_fee: Decimal = Decimal(0)

    @field_validator("tick_size", "lot_step", "min_notional", mode="before")
    @classmethod
    def _pos(cls, v: Any) -> Decimal:
        return _positive_decimal(v)

    @field_validator("maker_fee", "taker_fee", mode="before")
    @classmethod
    def _fee(cls, v: Any) -> Decimal:
        d = Decimal(str(v))
        if not d.is_finite() or d < 0 or d >= 1:
            raise ValueError("fee rate must be in [0, 1)")
        return d

    @model_validator(mode="after")
    def _consistent(self) -> Pair:
        if self.symbol != self.base + self.quote:
            raise ValueError(f"symbol {self.symbol} is not base+quote ({self.base}{self.quote})")
        if self.okx != f"{self.base}-{self.quote}":
            raise ValueError(f"okx symbol {self.okx} does not match {self.base}-{self.quote}")
        return self


class RedisSettings(_Strict):
    """``url`` may name several seed nodes of a cluster, comma-separated (``redis://a:7000,redis://b:7001``).
    ``cluster``: Redis Cluster mode (sharded pub/sub, slot-aware transactions); ``partitions``: how many hash tags
    market-data channels are grouped under on a cluster (every process of one system must agree)."""
    url: str = ""
    port: int = Field(default=0, ge=0, le=65535)
    appendfsync: Literal["everysec", "always", "no"] = "always"
    cluster: bool = False
    partitions: int = Field(default=16, ge=1, le=1024)
    # Ledger writes wait for this many replicas (WAIT, same round trip) before they are acknowledged: a failover
    # then loses no acknowledged order or fill. 0: asynchronous replication (a failover may lose the last writes).
    replica_acks: int = Field(default=0, ge=0, le=5)
    replica_ack_timeout_ms: int = Field(default=1000, ge=1, le=60_000)

    @property
    def keyspace(self) -> names.Keyspace:
        return names.Keyspace(self.cluster, self.partitions)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        for part in v.split(",") if v else ():
            if not part.strip().startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("must start with redis://, rediss:// or unix:// (each seed of a comma list)")
        return v


class GatewaySettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # POST /orders (and the WebSocket's place_order) waits this long for a market/IOC order's final state
    order_final_wait_s: float = Field(default=2.0, ge=0, le=30)


class AuthSettings(_Strict):
    jwt_secret: str = ""
    token_ttl_s: int = Field(default=86400, ge=60)
    bcrypt_rounds: int = Field(default=12, ge=4, le=16)
    max_concurrent_hashes: int = Field(default=0, ge=0, le=64)  # 0: one less than the CPUs (at least 1)
    # Queued hashes beyond those running; then 503 at once. Registrations may fill only half of it, so logins
    # still get a place during a registration flood.
    max_waiting_hashes: int = Field(default=16, ge=1)
    login_failures_per_user: int = Field(default=5, ge=1)
    login_failures_per_ip: int = Field(default=50, ge=1)
    login_failure_window_s: int = Field(default=300, ge=1)
    # POST /register: per client address and in all, each in its own fixed window; then 429 with Retry-After.
    registrations_per_ip: int = Field(default=10, ge=1)
    registration_ip_window_s: int = Field(default=3600, ge=1)
    registrations_global: int = Field(default=120, ge=1)
    registration_global_window_s: int = Field(default=60, ge=1)
    api_keys_per_user: int = Field(default=20, ge=1, le=1000)
    # How long a gateway keeps a user's token generation, logged-out tokens and API keys without hearing of them
    # (every change is also announced on auth:revocations, which drops the copy at once).
    state_cache_s: float = Field(default=300.0, gt=0, le=86400)


class FeedSettings(_Strict):
    stale_after_s: float = Field(default=5.0, gt=0)
    idle_timeout_s: float = Field(default=15.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    stable_after_s: float = Field(default=10.0, gt=0)


class BinanceSettings(_Strict):
    ws_url: str = "wss://stream.binance.com:9443"
    depth_levels: Literal[5, 10, 20] = 10
    max_lifetime_s: float = Field(default=82800, gt=0)
    # Binance allows 1024 streams per connection (docs/ingestor.md "Connection planning"); lower spreads pairs
    # over more connections.
    max_streams_per_connection: int = Field(default=1024, ge=3, le=1024)


class OkxSettings(_Strict):
    ws_url: str = "wss://ws.okx.com:8443/ws/v5/public"
    ping_after_s: float = Field(default=20.0, gt=0, lt=30)
    # Subscription args (channel, instId) per connection; OKX documents no limit for public channels.
    max_args_per_connection: int = Field(default=300, ge=3, le=100_000)


class IngestorSettings(_Strict):
    """Which pairs one ingestor process serves (docs/ingestor.md "Sharding"); both empty: every pair."""

    shard: str = Field(default="", pattern=r"^([1-9][0-9]*/[1-9][0-9]*)?$")  # "i/n": the i-th of n (1-based)
    pairs: tuple[str, ...] = ()  # our symbols; "BTCUSDT,ETHUSDT" in the environment
    # How long the publisher lets a batch gather after its first message (docs/ingestor.md "Publishing").
    publish_linger_ms: float = Field(default=1.0, ge=0, le=20)

    @field_validator("pairs", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(p.strip().upper() for p in v.split(",") if p.strip())
        return v

    @field_validator("shard")
    @classmethod
    def _shard(cls, v: str) -> str:
        if v:
            i, n = (int(x) for x in v.split("/"))
            if i > n:
                raise ValueError(f"shard {v}: i must be between 1 and n")
        return v


class WsSettings(_Strict):
    """The client WebSocket (``/ws``) and its market-data fan-out."""

    auth_timeout_s: float = Field(default=5.0, gt=0)
    max_subscriptions: int = Field(default=50, ge=1, le=10_000)
    max_message_bytes: int = Field(default=16384, ge=256)
    queue_max: int = Field(default=2000, ge=1)  # pending trade frames before a slow client is closed
    queue_hard_max: int = Field(default=20000, ge=1)  # pending frames of any kind
    rate_per_s: float = Field(default=100.0, gt=0)  # client messages per second (burst: 2 s worth)
    kline_history: int = Field(default=300, ge=1, le=100_000)
    kline_grace_s: float = Field(default=0.25, ge=0, lt=1)
    # "wall": a candle also closes when its time is over by this machine's clock; "trades": only when a trade of a
    # later candle comes (a replay, whose exchange times are in the past: FEED=replay sets it)
    kline_clock: Literal["wall", "trades"] = "wall"


class MetricsSettings(_Strict):
    """Prometheus endpoints of the ingestors and the matcher (the gateway serves ``/metrics`` itself); 0 = off."""

    host: str = "127.0.0.1"
    ingestor_binance_port: int = Field(default=0, ge=0, le=65535)
    ingestor_okx_port: int = Field(default=0, ge=0, le=65535)
    matcher_port: int = Field(default=0, ge=0, le=65535)

    def ingestor_port(self, exchange: str) -> int:
        return int(getattr(self, f"ingestor_{exchange}_port", 0))


class LogSettings(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_logs: bool = False


class MatcherSettings(_Strict):
    """Pairs are split over ``shards``; each shard is held by one matcher at a time (a lease renewed in Redis), any
    other matcher process stands by and takes over a dead holder's shards once its lease expires."""

    shards: int = Field(default=1, ge=1, le=64)
    lease_ms: int = Field(default=3000, ge=500, le=60_000)


def data_dir() -> Path:
    """The data directory: ``SR_DATA_DIR``, else ``./data`` of the checkout (the launcher's too)."""
    return Path(os.environ.get("SR_DATA_DIR") or ROOT / "data")


class RecordingSettings(_Strict):
    """The ingestors' recording of raw frames (docs/recording.md)."""

    enabled: bool = False
    dir: str = ""  # empty: <data>/recordings
    retention_days: float = Field(default=7.0, ge=0)  # files older than this are removed; 0: no limit
    retention_gb: float = Field(default=0.0, ge=0)  # the oldest files are removed beyond this total; 0: no limit
    queue_max: int = Field(default=100_000, ge=1, le=10_000_000)  # frames waiting for the writer, then dropped

    @property
    def path(self) -> Path:
        return Path(self.dir) if self.dir else data_dir() / "recordings"


class Settings(_Strict):
    # Every Redis key and channel of market data, orders, balances and the matcher gets this prefix
    # (``shared.names``): ``FEED=replay`` runs the system in the space ``replay``, apart from the live accounts.
    space: str = Field(default="", pattern=r"^([a-z][a-z0-9_]{0,15})?$")
    redis: RedisSettings = RedisSettings()
    matcher: MatcherSettings = MatcherSettings()
    gateway: GatewaySettings = GatewaySettings()
    auth: AuthSettings = AuthSettings()
    feeds: FeedSettings = FeedSettings()
    binance: BinanceSettings = BinanceSettings()
    okx: OkxSettings = OkxSettings()
    ws: WsSettings = WsSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    ingestor: IngestorSettings = IngestorSettings()
    recording: RecordingSettings = RecordingSettings()
    pairs: tuple[Pair, ...] = Field(min_length=1)

    @field_validator("binance", "okx")
    @classmethod
    def _ws_url(cls, v: Any) -> Any:
        if not v.ws_url.startswith(("ws://", "wss://")):
            raise ValueError(f"ws_url must start with ws:// or wss://, got {v.ws_url!r}")
        return v

    @model_validator(mode="after")
    def _unique(self) -> Settings:
        for attr in ("symbol", "binance", "okx"):
            seen = [getattr(p, attr) for p in self.pairs]
            dup = {s for s in seen if seen.count(s) > 1}
            if dup:
                raise ValueError(f"pairs: duplicate {attr} {sorted(dup)}")
        unknown = sorted(set(self.ingestor.pairs) - {p.symbol for p in self.pairs})
        if unknown:
            raise ValueError(f"ingestor.pairs: not configured pairs {unknown}")
        return self

    _by_symbol: dict[str, Pair] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        self._by_symbol.update({p.symbol: p for p in self.pairs})

    def pair(self, symbol: str) -> Pair | None:
        return self._by_symbol.get(symbol)

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(p.symbol for p in self.pairs)

    @property
    def assets(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for p in self.pairs:
            seen.setdefault(p.base)
            seen.setdefault(p.quote)
        return tuple(seen)

    def exchange_symbols(self, exchange: str) -> dict[str, str]:
        """Exchange's own symbol -> our symbol."""
        return {getattr(p, exchange): p.symbol for p in self.pairs}


def _coerce_env(raw: str) -> Any:
    """Environment values are strings; TOML-parse them when that works so numbers stay numbers."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], env: dict[str, str]) -> None:
    def put(path: tuple[str, ...], value: str, origin: str) -> None:
        node = data
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise SettingsError(f"{origin}: {'.'.join(path)} is not a section")
            node = nxt
        leaf = path[-1]
        # Strings stay strings for keys that are strings in the file (a secret like "123" must not become int).
        node[leaf] = value if isinstance(node.get(leaf), str) or leaf in {"url", "ws_url", "jwt_secret"} else _coerce_env(value)

    for name, path in ENV_ALIASES.items():
        if env.get(name, "") != "":
            put(path, env[name], name)
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and name != "SR_CONFIG" and "__" in name:
            path = tuple(p.lower() for p in name[len(ENV_PREFIX):].split("__"))
            put(path, value, name)


def load_settings(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    cfg = Path(path or env.get("SR_CONFIG") or DEFAULT_CONFIG)
    try:
        data = tomllib.loads(cfg.read_text())
    except FileNotFoundError as e:
        raise SettingsError(f"config file not found: {cfg}") from e
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{cfg}: not valid TOML: {e}") from e
    _apply_env(data, env)
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            lines.append(f"  {loc}: {err['msg']}")
        raise SettingsError(f"invalid settings in {cfg} (or the environment):\n" + "\n".join(lines)) from None


_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings; exits with a readable message when they are wrong."""
    global _settings
    if _settings is None:
        try:
            _settings = load_settings()
        except SettingsError as e:
            print(f"simple-router: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        names.set_space(_settings.space)
    return _settings
