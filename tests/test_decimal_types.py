from decimal import Decimal

import pytest
from pydantic import ValidationError

from gateway.services.decimals import Dec, NonNegativeDec, PositiveDec, decimal_type, to_decimal
from gateway.services.requests import StrictModel


class M(StrictModel):
    amount: PositiveDec
    any_: Dec = Decimal(0)
    nonneg: NonNegativeDec = Decimal(0)


@pytest.mark.parametrize("given,expected", [
    (Decimal("0.1"), "0.1"), ("0.1", "0.1"), (1, "1"), ("  2.50 ", "2.50"), ("1e3", "1E+3"),
    (0.1, "0.1"), ("0.000000000000000001", "1E-18"), ("999999999999999.9", "999999999999999.9"),
])
def test_accepts_exactly(given: object, expected: str) -> None:
    assert str(M(amount=given).amount) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [
    True, None, "", " ", "abc", "1_000", "0x10", "1.2.3", "\u0661", "NaN", "nan", "Infinity", "-inf", "inf",
    float("nan"), float("inf"), Decimal("NaN"), Decimal("Infinity"), Decimal("1e400"), "1e400", 10**15,
    "1e15", "0.0000000000000000001", Decimal("1e-400"), [], {}, "1" * 65, "0", 0, "-1", Decimal("-0.5"),
    "12345678901234.1234567890123456",  # 30 significant digits
])
def test_refuses(bad: object) -> None:
    with pytest.raises(ValidationError):
        M(amount=bad)  # type: ignore[arg-type]


def test_variants_and_serialisation() -> None:
    m = M(amount="0.00010", any_="-3", nonneg=0)
    assert m.model_dump(mode="json") == {"amount": "0.00010", "any_": "-3", "nonneg": "0"}
    assert m.model_dump()["amount"] == Decimal("0.00010")
    with pytest.raises(ValidationError):
        M(amount=1, nonneg="-0.1")
    with pytest.raises(ValidationError):
        M(amount=1, unknown=1)  # type: ignore[call-arg]
    assert M(amount=1, nonneg="-0.00").nonneg == 0

    class Price(StrictModel):
        p: decimal_type(gt=0, le=100, max_places=2)  # type: ignore[valid-type]

    assert Price(p="99.990").p == Decimal("99.990")
    for bad in ("100.01", "0.001", "0"):
        with pytest.raises(ValidationError):
            Price(p=bad)


def test_to_decimal_big_json_number_is_refused_fast() -> None:
    with pytest.raises(ValueError):
        to_decimal(Decimal("1." + "0" * 60000 + "1"))
    assert to_decimal(Decimal("1." + "0" * 100)) == 1
