from decimal import Decimal
from pathlib import Path

import pytest

from shared.settings import DEFAULT_CONFIG, SettingsError, load_settings


def test_default_config_is_valid() -> None:
    s = load_settings(env={})
    assert len(s.pairs) >= 5
    btc = s.pair("BTCUSDT")
    assert btc is not None and btc.okx == "BTC-USDT" and btc.tick_size == Decimal("0.01")
    assert "USDT" in s.assets and "BTC" in s.assets
    assert s.exchange_symbols("okx")["ETH-USDT"] == "ETHUSDT"
    assert s.binance.ws_url.startswith("wss://stream.binance.com")
    assert s.okx.ws_url == "wss://ws.okx.com:8443/ws/v5/public"


def test_env_overrides() -> None:
    s = load_settings(env={"REDIS_URL": "redis://127.0.0.1:7777/0", "PORT": "9000",
                           "SR_FEEDS__STALE_AFTER_S": "2.5", "OKX_WS_URL": "ws://127.0.0.1:1/ws/v5/public"})
    assert s.redis.url == "redis://127.0.0.1:7777/0"
    assert s.gateway.port == 9000
    assert s.feeds.stale_after_s == 2.5
    assert s.okx.ws_url == "ws://127.0.0.1:1/ws/v5/public"


def _write(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_CONFIG.read_text()
    assert old in text
    p = tmp_path / "c.toml"
    p.write_text(text.replace(old, new, 1))
    return p


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('tick_size = "0.01"', 'tick_size = "-1"', "pairs.0.tick_size"),
        ('tick_size = "0.01"', "tick_size = 0.01", "pairs.0.tick_size"),
        ('okx = "BTC-USDT"', 'okx = "BTCUSDT"', "pairs.0.okx"),
        ('stale_after_s = 5.0', 'stale_after_s = "soon"', "feeds.stale_after_s"),
        ('ping_after_s = 20.0', 'ping_after_s = 45', "okx.ping_after_s"),
        ('[gateway]', '[gateway]\nbogus = 1', "gateway.bogus"),
    ],
)
def test_bad_file_names_the_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    with pytest.raises(SettingsError) as e:
        load_settings(_write(tmp_path, old, new), env={})
    assert key in str(e.value)


def test_bad_env_names_the_key() -> None:
    with pytest.raises(SettingsError) as e:
        load_settings(env={"PORT": "eighty"})
    assert "gateway.port" in str(e.value)


def test_not_toml(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[[pairs]\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(p, env={})
