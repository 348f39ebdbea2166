"""Revenue as the archive keeps it: an exact decimal amount and an ISO 4217 currency. Pure.

Every ingest path ends in the same two payload fields (docs/api.md, "Revenue"):

- ``revenue_amount``: the amount as a decimal string in its shortest fixed-point form
  (``"1322.22"``, ``"1500"``, ``"-4.5"``: no exponent, no ``+``, no trailing fractional
  zeros, ``"0"`` for any zero), never a float, so that DuckDB's
  ``CAST(... AS DECIMAL(38, 9))`` (``SQL_TYPE``) reads it exactly and sums stay exact;
- ``revenue_currency``: three ASCII letters, upper-cased (``"usd"`` is kept as ``"USD"``).

An amount is accepted as a JSON number or a string of one, finite, with at most
``MAX_INTEGER_DIGITS`` digits before the point and ``MAX_SCALE`` after it (trailing zeros
aside); a negative amount is a refund and is kept. The two fields go together.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from jiter import LosslessFloat

AMOUNT_FIELD, CURRENCY_FIELD = "revenue_amount", "revenue_currency"
FIELDS = frozenset((AMOUNT_FIELD, CURRENCY_FIELD))
MAX_INTEGER_DIGITS = 18
MAX_SCALE = 9
# What the planner casts the amount to: 18 + 9 digits of one amount leave 11 digits of
# headroom for a sum (10^11 events at the largest amount) before DECIMAL(38) overflows.
SQL_TYPE = f"DECIMAL(38, {MAX_SCALE})"
MAX_TEXT = 64
# A JSON number's grammar, with a leading "+" and a bare ".5" allowed in strings (what
# people type); no spaces, no NaN or Infinity, which Decimal() would read.
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
AMOUNT_RULE = (
    f"a finite decimal number (JSON number or string) with at most {MAX_INTEGER_DIGITS} digits "
    f"before the point and {MAX_SCALE} after it"
)
CURRENCY_RULE = "an ISO 4217 code: three letters, e.g. USD"


def amount(value: Any) -> str | None:
    """The canonical decimal text of an amount as sent, or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        text = str(value) if abs(value) < 10**MAX_INTEGER_DIGITS else None
    elif isinstance(value, float):
        # A float here was checked exact against its JSON text (decode.exact_number):
        # its repr is the shortest text of that number, the one sent up to spelling.
        text = repr(value)
    elif isinstance(value, LosslessFloat):
        text = bytes(value).decode()
    elif isinstance(value, str):
        text = value
    else:
        return None
    if text is None or len(text) > MAX_TEXT or not _NUMBER.fullmatch(text):
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
        return None
    if number.is_zero():
        return "0"
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite: the pattern has no NaN or Infinity
    # Trailing zeros do not count against the scale ("1.500000000000" is 1.5). The
    # coefficient is at most 64 digits: no context rounding, as normalize() would do.
    while digits[-1] == 0:
        digits, exponent = digits[:-1], exponent + 1
    if exponent < -MAX_SCALE or len(digits) + exponent > MAX_INTEGER_DIGITS:
        return None
    return format(Decimal((sign, digits, exponent)), "f")


def amount_sql(payload: str) -> str:
    """DuckDB: the exact amount of a record whose JSON payload is the expression
    ``payload`` (the caller's own column, never request text), NULL without one. A legacy
    record's amount (kept as a JSON number before this shape) is read from its text."""
    return f"TRY_CAST(json_extract_string({payload}, '$.{AMOUNT_FIELD}') AS {SQL_TYPE})"


def currency_sql(payload: str) -> str:
    """DuckDB: the record's revenue currency (upper-case code), NULL without one."""
    return f"upper(json_extract_string({payload}, '$.{CURRENCY_FIELD}'))"


def currency(value: Any) -> str | None:
    """The upper-cased ISO 4217 code of ``value``, or None when it is not three letters."""
    if isinstance(value, str) and _CURRENCY.fullmatch(value):
        return value.upper()
    return None
