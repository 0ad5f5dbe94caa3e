from __future__ import annotations

import math
from decimal import Decimal as D

import pytest

from shared.ewma import Ewma

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
