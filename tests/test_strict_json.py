from decimal import Decimal

import pytest

from gateway import jsonio as strict_json
from gateway.jsonio import BadJson


def test_numbers_keep_their_digits() -> None:
    obj = strict_json.loads(b'{"a": 0.1, "b": 10, "c": 1e400, "d": 0.30000000000000000001, "e": -0}')
    assert obj == {"a": Decimal("0.1"), "b": 10, "c": Decimal("1e400"), "d": Decimal("0.30000000000000000001"),
                   "e": 0}
    assert isinstance(obj["a"], Decimal) and str(obj["d"]) == "0.30000000000000000001"
    assert isinstance(obj["b"], int)


@pytest.mark.parametrize("raw", [
    b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b"[NaN]",
    b"{", b"", b"nope", b'{"a": 1,}', b"\xff\xfe{}",
    b"[" * 33 + b"]" * 33,
    b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"a": ' + b"9" * 5000 + b"}",
    b'{"a": "\\ud800"}', b'{"\\udfff": 1}',
])
def test_refused(raw: bytes) -> None:
    with pytest.raises(BadJson):
        strict_json.loads(raw)


def test_accepted_edge_cases() -> None:
    assert strict_json.loads(b"[" * 32 + b"]" * 32) is not None
    assert strict_json.loads(b'{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')
    assert strict_json.loads(b'{"e": "\\ud83d\\ude00"}') == {"e": "\U0001f600"}  # a valid surrogate pair
    assert strict_json.loads('{"k": "caf\u00e9"}') == {"k": "caf\u00e9"}


@pytest.mark.parametrize("raw", [b'{"asset": "USDT", "asset": "BTC"}', b'{"a": {"b": 1, "b": 1}}',
                                 b'[{"x": 1}, {"x": 2, "x": 3}]', b'{"a": 1, "\\u0061": 2}'])
def test_duplicate_keys_refused(raw: bytes) -> None:  # found by fuzzing: the last key silently won
    with pytest.raises(BadJson, match="duplicate key"):
        strict_json.loads(raw)
