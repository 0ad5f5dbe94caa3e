"""The dashboard (docs/dashboard.md) in a real headless Chromium against the whole `make run FEED=sim` stack.

One browser session walks what a trader does: register through the form, watch best-touch prices move and
candles being drawn, deposit, place a limit order that fills, one that rests (modified, then cancelled), see
a server validation error inline, and ride out a gateway restart (banner, then recovery). Screenshots of every
step go to ``test-artifacts/dashboard/`` (git-ignored).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.rest import dashboard as web
from shared.settings import ROOT
from tests.browser import browser_page, missing
from tests.launcher_helpers import Launched, launch
from tests.servers import run_gateway

ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
TICK = Decimal("0.01")


def test_static_files_and_security_headers(redis_url: str) -> None:
    import asyncio

    async def go() -> None:
        async with run_gateway(redis_url) as base, httpx.AsyncClient(base_url=base) as c:
            page = await c.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe" not in csp
            assert page.headers["x-content-type-options"] == "nosniff"
            assert '<script type="module" src="/static/app.js">' in page.text
            js = await c.get("/static/app.js")
            assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
            assert (await c.get("/static/style.css")).headers["content-type"].startswith("text/css")
            assert (await c.head("/")).status_code == 200
            for bad in ("/static/package.json", "/static/node_modules/lightweight-charts/package.json",
                        "/static/..%2fweb.py", "/static/.hidden.js", "/static/vendor/other.js", "/static/"):
                r = await c.get(bad)
                assert r.status_code == 404, bad
                assert "content-security-policy" in r.headers
            if web.VENDOR["lightweight-charts.standalone.production.mjs"].is_file():
                lib = await c.get("/static/vendor/lightweight-charts.standalone.production.mjs")
                assert lib.status_code == 200 and lib.headers["content-type"].startswith("text/javascript")
                lic = await c.get("/static/vendor/lightweight-charts.LICENSE.txt")
                assert lic.status_code == 200 and "Apache License" in lic.text
            # The API is untouched by the static mount.
            assert (await c.get("/health")).status_code == 200
            assert (await c.get("/docs")).status_code == 200
            assert (await c.get("/info")).json()["pairs"][0] == "BTCUSDT"
            assert (await c.get("/balance")).status_code == 401

    asyncio.run(go())


def test_resolve_only_known_files(tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text("")
    vendor = {"lib.mjs": tmp_path / "lib.mjs"}
    assert web.resolve("app.js", tmp_path, vendor) == tmp_path / "app.js"
    assert web.resolve("vendor/lib.mjs", tmp_path, vendor) == tmp_path / "lib.mjs"
    for bad in ("../app.js", "sub/app.js", ".env", "package.json", "vendor/x.mjs", "", "app.py", "a\\b.js"):
        assert web.resolve(bad, tmp_path, vendor) is None, bad


# ---------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    why = missing()
    if why:
        pytest.skip(why)
    with launch(tmp_path_factory.mktemp("dash")) as system:
        system.wait_health(60)
        yield system


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def text(page: Any, sel: str) -> str:
    return str(page.inner_text(sel)).strip()


def price(page: Any, sel: str, factor: str) -> str:
    return str((Decimal(text(page, sel)) * Decimal(factor)).quantize(TICK, ROUND_DOWN))


def wait_js(page: Any, expr: str, arg: Any = None, timeout: float = 30) -> None:
    page.wait_for_function(expr, arg=arg, timeout=timeout * 1000)


def gateway_pid(system: Launched) -> int:
    system.log.seek(0)
    pids = re.findall(rb"started gateway \(pid (\d+)\)", system.log.read())
    assert pids, "the launcher did not report the gateway's pid"
    return int(pids[-1])


def place(page: Any, side: str, type_: str, price_: str, qty: str) -> None:
    page.check(f"input[name=side][value={side}]")
    page.select_option("#order-type", type_)
    page.fill("#order-price", price_)
    page.fill("#order-qty", qty)
    page.click("#order-submit")


def row_changes(page: Any, sel: str, timeout: float = 30) -> None:
    before = text(page, sel)
    wait_js(page, "([sel, before]) => document.querySelector(sel).innerText.trim() !== before", [sel, before],
            timeout)


@contextlib.contextmanager
def on_failure_show(page: Any) -> Iterator[None]:
    """A failing step leaves a screenshot and what the page said."""
    try:
        yield
    except BaseException:
        shot(page, "99-failure")
        said = {sel: page.inner_text(sel) for sel in ("#banner", "#login-error", "#controls-error", "#order-error",
                                                       "#order-result", "#deposit-error", "#orders-error", "#events")}
        print(f"dashboard at failure: {said}; console: {page.errors}")
        raise


def test_trader_session_in_chromium(stack: Launched) -> None:
    with browser_page() as page, on_failure_show(page):
        page.goto(stack.url + "/")
        page.wait_for_selector("#login-form", state="visible")
        shot(page, "01-login")
        page.fill("#username", f"web{os.getpid()}")
        page.fill("#password", "correct horse battery")
        page.click("#register-btn")
        page.wait_for_selector("#app", state="visible")
        wait_js(page, "() => document.querySelector('#conn').dataset.state === 'live'")

        # Best touch per exchange and aggregated, both feeds live, the winner highlighted; prices move.
        wait_js(page, "() => document.querySelector('#touch-all .bid').innerText.trim() !== ''")
        wait_js(page, "() => document.querySelectorAll('#touch .badge.live').length === 3")
        row_changes(page, "#touch-all")
        assert page.locator("#touch td.bid.best").count() >= 1 and page.locator("#touch td.ask.best").count() >= 1
        # The depth ladder beside it: both exchanges merged by price, asks above bids, sizes per exchange.
        wait_js(page, "() => Number(document.querySelector('#ladder').dataset.levels) >= 10")
        wait_js(page, "() => [...document.querySelectorAll('#ladder td.binance')].some(td => td.innerText.trim())"
                      " && [...document.querySelectorAll('#ladder td.okx')].some(td => td.innerText.trim())")
        prices = [float(t) for t in page.locator("#ladder td.price").all_inner_texts()]
        assert prices == sorted(prices, reverse=True)

        # Candles every second with the EWMA; the tape fills.
        page.click("#intervals button[data-interval='1s']")
        wait_js(page, "() => Number(document.querySelector('#chart').dataset.candles) >= 3", timeout=30)
        assert page.locator("#chart canvas").count() > 0
        wait_js(page, "() => document.querySelectorAll('#trades tbody tr').length > 0")
        wait_js(page, "() => document.querySelector('#ewma-value').innerText.includes('half-life 30')")
        shot(page, "02-market")

        page.fill("#deposit-amount", "100000")
        page.click("#deposit-submit")
        wait_js(page, "() => document.querySelector('#bal-USDT .total')?.innerText === '100000'")

        # A limit buy above the best ask fills at the touch; balances follow without a reload.
        place(page, "buy", "limit", price(page, "#touch-all .ask", "1.01"), "0.001")
        wait_js(page, "() => document.querySelector('#bal-BTC .total')?.innerText !== '0'")
        wait_js(page, "() => Number(document.querySelector('#bal-USDT .total').innerText) < 100000")
        assert text(page, "#bal-BTC .total") == "0.001"
        wait_js(page, "() => document.querySelectorAll('#orders tbody tr').length === 0")
        shot(page, "03-filled")

        # A resting buy reserves USDT; modify its price, then cancel it.
        place(page, "buy", "limit", price(page, "#touch-all .bid", "0.9"), "0.001")
        wait_js(page, "() => document.querySelectorAll('#orders tbody tr').length === 1")
        wait_js(page, "() => document.querySelector('#bal-USDT .reserved').innerText !== '0'")
        reserved = text(page, "#bal-USDT .reserved")
        new_price = price(page, "#touch-all .bid", "0.8")
        page.click("#orders tbody tr .modify")
        page.fill("#orders tbody tr .new-price", new_price)
        page.click("#orders tbody tr .save")
        wait_js(page, "(p) => document.querySelector('#orders tbody tr .price')?.innerText === p", new_price)
        wait_js(page, "(r) => document.querySelector('#bal-USDT .reserved').innerText !== r", reserved)
        shot(page, "04-resting")
        page.click("#orders tbody tr .cancel")
        wait_js(page, "() => document.querySelectorAll('#orders tbody tr').length === 0")
        wait_js(page, "() => document.querySelector('#bal-USDT .reserved').innerText === '0'")

        # The server's validation error, inline next to the form.
        place(page, "buy", "limit", price(page, "#touch-all .bid", "0.9"), "0.0000001")
        page.wait_for_selector("#order-error[data-code='invalid_quantity']")
        assert "invalid_quantity" in text(page, "#order-error")
        assert page.locator("#order-qty.invalid").count() == 1
        shot(page, "05-invalid")
        # No CSP violation, no script error (the 422 just shown is logged by Chromium as a failed load).
        errors = [e for e in page.errors if not e.startswith("Failed to load resource")]
        assert errors == [], errors

        # The gateway dies: the banner says so; the launcher restarts it and the page recovers by itself.
        os.kill(gateway_pid(stack), signal.SIGKILL)
        page.wait_for_selector("#banner", state="visible", timeout=10_000)
        wait_js(page, "() => /reconnecting in \\d+s/.test(document.querySelector('#banner').innerText)")
        assert page.get_attribute("#conn", "data-state") in ("down", "connecting")
        shot(page, "06-disconnected")
        wait_js(page, "() => document.querySelector('#conn').dataset.state === 'live'", timeout=40)
        page.wait_for_selector("#banner", state="hidden")
        row_changes(page, "#touch-all")
        assert text(page, "#bal-BTC .total") == "0.001"
        shot(page, "07-recovered")


def test_page_without_chart_library(stack: Launched) -> None:
    with browser_page(1000, 700) as page:
        page.route("**/static/vendor/*.mjs", lambda route: route.fulfill(status=404, body="not found"))
        page.goto(stack.url + "/")
        page.fill("#username", f"nochart{os.getpid()}")
        page.fill("#password", "correct horse battery")
        page.click("#register-btn")
        page.wait_for_selector("#chart-msg", state="visible")
        assert text(page, "#chart-msg") == "chart library not installed (run make)"
        wait_js(page, "() => document.querySelector('#touch-all .bid').innerText.trim() !== ''")
        shot(page, "08-no-chart-library")


def test_exchange_filter_and_expired_session(stack: Launched) -> None:
    with browser_page(1200, 800) as page, on_failure_show(page):
        page.goto(stack.url + "/")
        page.fill("#username", f"filter{os.getpid()}")
        page.fill("#password", "correct horse battery")
        page.click("#register-btn")
        page.wait_for_selector("#app", state="visible")
        page.select_option("#exchange", "okx")
        wait_js(page, "() => document.querySelectorAll('#trades tbody tr').length >= 3")
        exchanges = page.eval_on_selector_all("#trades tbody tr td:nth-child(2)", "tds => tds.map(t => t.innerText)")
        assert set(exchanges) == {"okx"}, exchanges
        assert "okx" in page.text_content("#chart-title")
        # A half-life the server refuses is shown next to the controls.
        page.fill("#half-life", "0")
        page.press("#half-life", "Enter")
        wait_js(page, "() => document.querySelector('#controls-error').innerText.includes('bad_half_life')")
        assert page.locator("#half-life.invalid").count() == 1
        # A token the server no longer accepts: back to the login form.
        page.evaluate("sessionStorage.setItem('sr.token', 'x.eyJleHAiOjQxMDI0NDQ4MDB9.y')")
        page.reload()
        page.wait_for_selector("#login-form", state="visible")
        assert "Session expired" in text(page, "#login-error")
        shot(page, "09-session-expired")


def test_api_keys_panel_and_a_logout_that_revokes(stack: Launched) -> None:
    """Keys made and deleted in the panel work and stop working over the API; "Log out" revokes the token on the
    server, and another tab using the same token is signed out by its WebSocket's close."""
    with browser_page(1440, 1100) as page, on_failure_show(page):
        page.goto(stack.url + "/")
        page.fill("#username", f"keys{os.getpid()}")
        page.fill("#password", "correct horse battery")
        page.click("#register-btn")
        page.wait_for_selector("#app", state="visible")
        wait_js(page, "() => document.querySelector('#conn').dataset.state === 'live'")

        page.fill("#key-name", "my bot")
        page.check("#key-trade")
        page.click("#key-create")
        page.wait_for_selector("#key-new", state="visible")
        key = text(page, "#key-secret")
        assert key.startswith("srk_")
        wait_js(page, "() => document.querySelectorAll('#keys tbody tr').length === 1")
        assert text(page, "#keys tbody tr .name") == "my bot" and text(page, "#keys tbody tr .scopes") == "read, trade"
        assert httpx.get(stack.url + "/balance", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        # a refused name is said next to the form
        page.fill("#key-name", "")
        page.click("#key-create")
        wait_js(page, "() => document.querySelector('#key-error').innerText.includes('validation_error')")
        shot(page, "10-api-keys")
        page.click("#keys tbody tr .delete")
        wait_js(page, "() => document.querySelectorAll('#keys tbody tr').length === 0")
        r = httpx.get(stack.url + "/balance", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 401 and r.json()["code"] == "invalid_token"

        # a second tab with the same session
        token = page.evaluate("sessionStorage.getItem('sr.token')")
        other = page.context.new_page()
        other.goto(stack.url + "/")
        other.evaluate("([t, u]) => { sessionStorage.setItem('sr.token', t); sessionStorage.setItem('sr.user', u); }",
                       [token, "same"])
        other.reload()
        wait_js(other, "() => document.querySelector('#conn').dataset.state === 'live'")

        page.click("#logout")
        page.wait_for_selector("#login-form", state="visible")
        assert text(page, "#login-error") == "Logged out."
        r = httpx.get(stack.url + "/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and "logged out" in r.json()["detail"]
        other.wait_for_selector("#login-form", state="visible", timeout=10_000)
        assert text(other, "#login-error") == "Signed out: token revoked (logged out)."
        shot(other, "11-signed-out-elsewhere")
        errors = [e for e in page.errors if not e.startswith("Failed to load resource")]
        assert errors == [], errors
