"""Time-decayed exponentially weighted moving average of a price, for irregularly spaced ticks.

A tick of age ``a`` seconds weighs ``w = exp(-ln2 * a / half_life)`` (it counts half as much after one
half-life); the average is the weighted mean of every tick since the start::

    S_n = S_{n-1} * d_n + p_n,   W_n = W_{n-1} * d_n + 1,   value_n = S_n / W_n,
    d_n = exp(-ln2 * (t_n - t_{n-1}) / half_life),          S_1 = p_1, W_1 = 1

so the first value is the first price, ticks at the same instant weigh the same, and a long silence
lets the next price dominate. Ticks out of order (two exchanges merged) count as simultaneous.
Exact ``Decimal`` arithmetic, no floats.
"""

from __future__ import annotations

from decimal import Context, Decimal

_CTX = Context(prec=34)
LN2 = _CTX.ln(Decimal(2))
_US = Decimal(1_000_000)
OUT_PLACES = Decimal("1e-12")


class Ewma:
    def __init__(self, half_life_s: Decimal) -> None:
        if not half_life_s.is_finite() or half_life_s <= 0:
            raise ValueError("half_life must be positive and finite")
        self._k = _CTX.divide(LN2, _CTX.multiply(half_life_s, _US))  # decay per microsecond
        self._s = Decimal(0)
        self._w = Decimal(0)
        self._t: int | None = None
        self.value: Decimal | None = None

    def update(self, price: Decimal, ts_us: int) -> Decimal:
        if self._t is None:
            self._s, self._w, self._t = price, Decimal(1), ts_us
        else:
            dt = ts_us - self._t
            if dt > 0:
                d = _CTX.exp(_CTX.minus(_CTX.multiply(self._k, Decimal(dt))))
                self._s = _CTX.multiply(self._s, d)
                self._w = _CTX.multiply(self._w, d)
                self._t = ts_us
            self._s = _CTX.add(self._s, price)
            self._w = _CTX.add(self._w, Decimal(1))
        self.value = _CTX.divide(self._s, self._w).quantize(OUT_PLACES, context=_CTX).normalize(_CTX)
        return self.value
