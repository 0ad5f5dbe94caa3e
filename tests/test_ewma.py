from __future__ import annotations

import math
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.ewma import Ewma, EwmaFan

S = 1_000_000


def close(a: D, b: float, tol: float = 1e-9) -> bool:
    return abs(float(a) - b) <= tol


def test_first_value_is_first_price() -> None:
    e = Ewma(D(30))
    assert e.update(D("64000.10"), 5 * S) == D("64000.10")


def test_one_half_life_halves_the_old_weight() -> None:
    # hand computed: d = 0.5; S = 100*0.5 + 200 = 250; W = 0.5 + 1 = 1.5; value = 166.666666666667
    e = Ewma(D(1))
    e.update(D(100), 0)
    assert e.update(D(200), 1 * S) == D("166.666666666667")


def test_simultaneous_ticks_weigh_the_same() -> None:
    e = Ewma(D(10))
    e.update(D(100), 7 * S)
    assert e.update(D(103), 7 * S) == D("101.5")
    assert e.update(D(90), 6 * S) == D("97.666666666667")  # out of order: counted as simultaneous


def test_three_irregular_ticks_against_hand_computation() -> None:
    # half_life 2 s; ticks (0 s, 10), (1 s, 20), (4 s, 16)
    # d1 = 2^-0.5 = 0.70710678118654752; S1 = 7.0710678 + 20 = 27.0710678; W1 = 1.70710678
    # d2 = 2^-1.5 = 0.35355339059327376; S2 = 27.0710678*0.35355339 + 16 = 25.5710678; W2 = 1.60355339
    # value = 25.5710678118654752 / 1.60355339059327376 = 15.9465022879
    e = Ewma(D(2))
    e.update(D(10), 0)
    v1 = e.update(D(20), 1 * S)
    v2 = e.update(D(16), 4 * S)
    d1, d2 = 2 ** -0.5, 2 ** -1.5
    s1, w1 = 10 * d1 + 20, d1 + 1
    assert close(v1, s1 / w1)
    assert close(v2, (s1 * d2 + 16) / (w1 * d2 + 1))
    assert v2 == D("15.9465022879")


def test_matches_direct_weighted_mean_reference() -> None:
    ticks = [(0, 100.0), (250_000, 101.0), (1_300_000, 99.5), (1_300_000, 99.0), (9_000_000, 105.0),
             (9_000_001, 104.5), (60_000_000, 98.0)]
    h = 7.5
    e = Ewma(D("7.5"))
    for i, (t, p) in enumerate(ticks):
        v = e.update(D(str(p)), t)
        ws = [math.exp(-math.log(2) * (t - tj) / 1e6 / h) for tj, _ in ticks[: i + 1]]
        ref = sum(w * pj for w, (_, pj) in zip(ws, ticks[: i + 1], strict=True)) / sum(ws)
        assert close(v, ref, 1e-8), (i, v, ref)


def test_long_silence_lets_the_new_price_dominate() -> None:
    e = Ewma(D("0.5"))
    e.update(D(100), 0)
    assert e.update(D(50), 3600 * S) == D(50)


@pytest.mark.parametrize("bad", [D(0), D(-1), D("NaN"), D("Infinity")])
def test_bad_half_life(bad: D) -> None:
    with pytest.raises(ValueError):
        Ewma(bad)


# -- EwmaFan: shared decay, values digit for digit those of one Ewma per subscription ----------------

_price = st.decimals(min_value=D("1e-8"), max_value=D("1e7"), places=8, allow_nan=False, allow_infinity=False)
_step = st.one_of(st.just(0), st.integers(-5 * S, 5 * S), st.integers(0, 40 * 86400 * S))  # ties, disorder, gaps
_half_life = st.one_of(st.sampled_from([D("0.001"), D(1), D("7.5"), D(30 * 86400)]),
                       st.decimals(min_value=D("0.001"), max_value=D(30 * 86400), places=3))
# one event: a tick (price, step from the previous tick), a member joining, or member number n leaving
_event = st.one_of(st.tuples(st.just("tick"), _price, _step), st.tuples(st.just("join")),
                   st.tuples(st.just("leave"), st.integers(0, 20)))


@settings(max_examples=300, deadline=None)
@given(_half_life, st.lists(_event, max_size=60))
def test_fan_matches_one_ewma_per_member(half_life: D, events: list[tuple[object, ...]]) -> None:
    fan: EwmaFan[int] = EwmaFan(half_life)
    alone: dict[int, Ewma] = {}
    joined = 0
    t = 1_700_000_000 * S
    for ev in events:
        if ev[0] == "join":
            fan.join(joined)
            alone[joined] = Ewma(half_life)
            joined += 1
        elif ev[0] == "leave":
            n = ev[1]
            assert isinstance(n, int)
            fan.leave(n)
            alone.pop(n, None)
        else:
            price, step = ev[1], ev[2]
            assert isinstance(price, D) and isinstance(step, int)
            t += step
            got = {m: v for v, members in fan.update(price, t) for m in members}
            want = {m: e.update(price, t) for m, e in alone.items()}
            assert got == want
            assert all(str(got[m]) == str(want[m]) for m in want)  # the wire digits, not only equal values
        assert len(fan) == len(alone)


def test_fan_one_exp_per_tick_for_many_members(monkeypatch: pytest.MonkeyPatch) -> None:
    fan: EwmaFan[int] = EwmaFan(D(30))
    calls = 0
    inner = fan._decay

    def counting(dt: int) -> D:
        nonlocal calls
        calls += 1
        return inner(dt)

    monkeypatch.setattr(fan, "_decay", counting)
    for m in range(100):
        fan.join(m)
        fan.update(D(100 + m), m * S)  # each member its own cohort
    assert calls == 99
    assert len(fan.update(D(50), 1000 * S)) == 100
    assert calls == 100


def test_fan_members_joining_together_share_one_value() -> None:
    fan: EwmaFan[str] = EwmaFan(D(1))
    fan.join("a")
    fan.join("b")
    assert [(v, set(ms)) for v, ms in fan.update(D(100), 0)] == [(D(100), {"a", "b"})]
    fan.join("c")
    fan.leave("a")
    out = fan.update(D(200), S)
    assert [(v, set(ms)) for v, ms in out] == [(D("166.666666666667"), {"b"}), (D(200), {"c"})]
    fan.leave("b")
    fan.leave("c")
    assert fan.update(D(1), 2 * S) == [] and len(fan) == 0
