"""Exact numbers: every quantity, price and fraction is a ``Decimal``, converted without a float
round trip, written one way, and bounded before it is expanded.

A number from outside is checked on its digits and exponent *before* anything writes it out:
``1E+100000000`` is twelve characters and a gigabyte once formatted, ``1e-400`` a quantity of
402 characters. ``bounded_decimal`` refuses both cheaply (``Decimal.adjusted`` reads the exponent
without expanding anything).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

# Longer than any number a trading request needs (15 significant digits, a sign, a point, an
# exponent), short enough that parsing it costs nothing.
MAX_NUMBER_TEXT = 40
# Powers of ten a number from outside may span: 1e-20 .. 1e20 covers every quantity, price and
# fraction we take, and keeps a written-out number under 45 characters.
MAX_DECIMAL_EXPONENT = 20


def to_decimal(value: Any, field: str = "value") -> Decimal:
    """Exact conversion: a float goes through its shortest repr (0.1 -> Decimal('0.1'))."""
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool):
        raise ValueError(f"{field} must be a number, got a bool")
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float | str):
        try:
            result = Decimal(repr(value) if isinstance(value, float) else value.strip())
        except InvalidOperation:
            raise ValueError(f"{field} must be a number, got {value!r}") from None
    else:
        raise ValueError(f"{field} must be a number, got {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"{field} must be finite, got {value!r}")
    return result


def bounded_decimal(value: Any, field: str, max_significant_digits: int | None = None) -> Decimal:
    """``to_decimal`` for a number from outside: the text at most ``MAX_NUMBER_TEXT`` characters,
    the magnitude within 10^±``MAX_DECIMAL_EXPONENT``, checked before the number is expanded;
    optionally at most ``max_significant_digits`` (trailing zeros do not count)."""
    if isinstance(value, str) and len(value.strip()) > MAX_NUMBER_TEXT:
        raise ValueError(f"{field} is longer than {MAX_NUMBER_TEXT} characters")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 80:
        raise ValueError(f"{field} is out of range (at most 1e{MAX_DECIMAL_EXPONENT})")
    number = to_decimal(value, field)
    if number.is_zero():
        return Decimal(0)
    if not -MAX_DECIMAL_EXPONENT <= number.adjusted() <= MAX_DECIMAL_EXPONENT:
        raise ValueError(
            f"{field} is out of range (between 1e-{MAX_DECIMAL_EXPONENT} and 1e{MAX_DECIMAL_EXPONENT})"
        )
    if max_significant_digits is not None:
        digits = len(number.normalize().as_tuple().digits)
        if digits > max_significant_digits:
            raise ValueError(f"{field} has more than {max_significant_digits} significant digits: {value}")
    return number


def canonical_decimal(value: Decimal) -> str:
    """One spelling per number ('10', not '10.0' or '1E+1'), for keys and documents. Never rounds."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
