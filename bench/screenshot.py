"""The README's dashboard picture: the whole `make run FEED=sim` stack, a trader in headless Chromium.

    python -m bench.screenshot                     # -> docs/img/dashboard.png, about a minute
    python -m bench.screenshot --seconds 90 --out /tmp/dash.png

Registers a user through the form, deposits, lets the 1 s candles build for ``--seconds``, places one order that
fills and one that rests, then saves a screenshot. Needs /usr/bin/chromium and playwright (``make venv``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

from bench.simulator import describe
from shared.settings import ROOT
from tests.browser import browser_page, missing
from tests.launcher_helpers import launch


def _price(page: object, sel: str, factor: str) -> str:
    value = Decimal(page.inner_text(sel).strip()) * Decimal(factor)  # type: ignore[attr-defined]
    return str(value.quantize(Decimal("0.01"), ROUND_DOWN))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.screenshot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    ap.add_argument("--seconds", type=float, default=45.0, help="how long the candles build before the picture")
    args = ap.parse_args(argv)
    why = missing()
    if why:
        print(f"screenshot: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sr-shot-") as tmp, launch(Path(tmp)) as system:
        system.wait_health(60)
        with browser_page(1440, 900) as page:
            page.goto(system.url + "/")
            page.fill("#username", f"trader{os.getpid()}")
            page.fill("#password", "correct horse battery")
            page.click("#register-btn")
            page.wait_for_selector("#app", state="visible")
            page.click("#intervals button[data-interval='1s']")
            page.fill("#half-life", "10")
            page.press("#half-life", "Enter")
            page.fill("#deposit-amount", "25000")
            page.click("#deposit-submit")
            page.wait_for_function("() => document.querySelector('#touch-all .bid').innerText.trim() !== ''")
            t0 = time.monotonic()
            # `make run FEED=sim` starts the simulator without --rate: x1, the captures' flow.
            print(f"simulator at rate x1 ({describe(1.0)}); candles building for {args.seconds:.0f}s ...")
            time.sleep(max(0.0, args.seconds - 10))
            for side, sel, factor, qty in (("buy", "#touch-all .ask", "1.002", "0.05"),
                                           ("sell", "#touch-all .ask", "1.003", "0.02"),
                                           ("buy", "#touch-all .bid", "0.998", "0.1")):
                page.check(f"input[name=side][value={side}]")
                page.fill("#order-price", _price(page, sel, factor))
                page.fill("#order-qty", qty)
                page.click("#order-submit")
                page.wait_for_timeout(1500)
            page.wait_for_timeout(max(0.0, args.seconds - (time.monotonic() - t0)) * 1000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
