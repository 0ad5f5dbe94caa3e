"""Time-decayed exponentially weighted moving average of a price, for irregularly spaced ticks.

A tick of age ``a`` seconds weighs ``w = exp(-ln2 * a / half_life)`` (it counts half as much after one
half-life); the average is the weighted mean of every tick since the start::

    S_n = S_{n-1} * d_n + p_n,   W_n = W_{n-1} * d_n + 1,   value_n = S_n / W_n,
    d_n = exp(-ln2 * (t_n - t_{n-1}) / half_life),          S_1 = p_1, W_1 = 1

so the first value is the first price, ticks at the same instant weigh the same, and a long silence
lets the next price dominate. Ticks out of order (two exchanges merged) count as simultaneous.
Exact ``Decimal`` arithmetic, no floats.

``EwmaFan`` serves every subscription to one stream with one half-life. Subscriptions that saw their first
tick at the same moment have the same state forever, so they form one cohort (one ``Ewma``, one value per
tick); the decay ``d_n`` depends only on ``t_n - t_{n-1}`` and the half-life, so one ``exp`` per distinct
step serves every cohort. Each cohort runs exactly the recursion above, with the same operations in the same
order: its values are those of a lone ``Ewma``, digit for digit.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable
from decimal import Context, Decimal
from typing import Generic, TypeVar

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

    def decay(self, dt_us: int) -> Decimal:
        return _CTX.exp(_CTX.minus(_CTX.multiply(self._k, Decimal(dt_us))))

    def update(self, price: Decimal, ts_us: int, decay: Callable[[int], Decimal] | None = None) -> Decimal:
        """``decay`` (default ``self.decay``) gives ``d`` for a step in microseconds; ``EwmaFan`` shares one."""
        if self._t is None:
            self._s, self._w, self._t = price, Decimal(1), ts_us
        else:
            dt = ts_us - self._t
            if dt > 0:
                d = (decay or self.decay)(dt)
                self._s = _CTX.multiply(self._s, d)
                self._w = _CTX.multiply(self._w, d)
                self._t = ts_us
            self._s = _CTX.add(self._s, price)
            self._w = _CTX.add(self._w, Decimal(1))
        self.value = _CTX.divide(self._s, self._w).quantize(OUT_PLACES, context=_CTX).normalize(_CTX)
        return self.value


M = TypeVar("M", bound=Hashable)


class EwmaFan(Generic[M]):
    """Every member (a subscription) of one stream and half-life; a member's values are those of an ``Ewma``
    created when it joined."""

    def __init__(self, half_life_s: Decimal) -> None:
        self.half_life = half_life_s
        self._decay = Ewma(half_life_s).decay
        self._pending: set[M] = set()  # joined since the last tick: their first tick is the next one
        self._cohorts: dict[int, tuple[Ewma, set[M]]] = {}  # by id() of the members' set, oldest first
        self._of: dict[M, set[M]] = {}

    def __len__(self) -> int:
        return len(self._of)

    def join(self, member: M) -> None:
        if member not in self._of:
            self._pending.add(member)
            self._of[member] = self._pending

    def leave(self, member: M) -> None:
        cohort = self._of.pop(member, None)
        if cohort is not None:
            cohort.discard(member)
            if not cohort and cohort is not self._pending:
                del self._cohorts[id(cohort)]

    def update(self, price: Decimal, ts_us: int) -> list[tuple[Decimal, Collection[M]]]:
        """The new value of every cohort and its members (whose sets the caller must not change)."""
        if self._pending:
            self._cohorts[id(self._pending)] = (Ewma(self.half_life), self._pending)
            self._pending = set()
        memo: dict[int, Decimal] = {}

        def decay(dt: int) -> Decimal:
            d = memo.get(dt)
            if d is None:
                d = memo[dt] = self._decay(dt)
            return d

        return [(e.update(price, ts_us, decay), members) for e, members in self._cohorts.values()]
