"""What every exchange's wire tests check alike: excerpts, exact ticks, and bad decimal strings."""

from __future__ import annotations

import json

from hypothesis import strategies as st

from kairos_core.domain import MarketTick
from kairos_core.domain.errors import EXCERPT_LIMIT
from tests.strategies import decimal_strings


def expected_excerpt(raw: bytes | str) -> str:
    text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
    return text[:EXCERPT_LIMIT]


def assert_identical(got: MarketTick, want: MarketTick) -> None:
    """Field by field, with decimals compared digit for digit (``==`` says 1.0 == 1.00)."""
    assert got == want
    assert got.price.as_tuple() == want.price.as_tuple()
    assert got.volume.as_tuple() == want.volume.as_tuple()
    assert [type(value) for value in got] == [type(value) for value in want]


def not_json(raw: bytes | str) -> bool:
    """The standard library refuses ``raw`` even with its invalid UTF-8 bytes replaced.

    Replacing keeps the verdict for syntax only: msgspec does not check the UTF-8 of fields it
    skips (an unknown key), so a bad byte there may still give a tick, and that is fine.
    """
    try:
        json.loads(raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw)
    except ValueError:
        return True
    return False


non_positive_decimals = st.one_of(
    st.sampled_from(["0", "0.00000000", "-0", "-0.0", "+0", "-1", "-58001.03000000", "-42219.9"]),
    decimal_strings().map(lambda text: "-" + text),
)
not_finite_or_not_decimal = st.sampled_from(
    [
        "NaN",
        "nan",
        "-NaN",
        "sNaN",
        "Infinity",
        "-Infinity",
        "inf",
        "",
        " ",
        "abc",
        "1.2.3",
        "--1",
        "0x10",
        "1,5",
    ]
)
