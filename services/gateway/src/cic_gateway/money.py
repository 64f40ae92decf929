"""Money on the admin and tenant APIs: USD as JSON numbers or decimal strings in, exact integer
millionths (micro-dollars, parts per million) on the wire to billing, and back to USD out."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

MICRO = 1_000_000
BIGINT_MAX = 2**63 - 1  # what billing's bigint columns hold
_DECIMAL = re.compile(r"[0-9]{1,19}(\.[0-9]{1,30})?")


def millionths(value: object) -> int:
    """A non-negative JSON number or decimal string, times 1,000,000, exactly (a pydantic
    ``BeforeValidator``): more than 6 decimal places is refused, never rounded."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a number or a decimal string")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    text = repr(value) if isinstance(value, float) else str(value).strip()
    if isinstance(value, str) and not _DECIMAL.fullmatch(text):
        raise ValueError('must be a decimal number such as "0.15"')
    try:
        scaled = Decimal(text) * MICRO
    except InvalidOperation:
        raise ValueError("must be a number or a decimal string") from None
    if scaled < 0:
        raise ValueError("must not be negative")
    if scaled != scaled.to_integral_value():
        raise ValueError("may have at most 6 decimal places")
    return int(scaled)


def usd(micro: int) -> float:
    """Micro-dollars as USD for a JSON answer (which carries the exact integer beside it)."""
    return round(micro / MICRO, 6)
