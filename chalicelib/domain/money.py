"""Money: exact decimals, rounded half-even to the currency's minor unit only at the edge.

Python's default decimal context keeps 28 significant digits and rounds silently
beyond them, which is too narrow for rate x quantity. Every money operation here
runs in its own context, wide enough for the largest valid value (derived below),
and an inexact cost raises `decimal.Inexact` instead of being rounded.

How wide (the limits are the API's, see README "Limits and rules"):

- granularity: a rate has at most 9 decimals, a quantity (an event's, or a
  rollup's sum of events) at most 9, so every product and every sum of products
  is an exact multiple of 10^-18;
- magnitude: a rate is at most 10^9; a stored quantity has at most 38
  significant digits (DynamoDB's limit) of which 9 may be decimals, so it is
  below 10^29; one product is below 10^38;
- a sum of fewer than 10^19 such products is below 10^57, and a multiple of
  10^-18 below 10^57 has at most 57 + 18 = 75 significant digits.

So MONEY_PRECISION = 75 holds every valid cost exactly, with 10^19 products of
headroom for sums (a summary adds a handful of meters over at most a few
hundred days of rollups per line). Rounding such a value to 3 minor digits needs
at most 57 + 3 = 60 digits, so `round_money` never runs out of digits either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)

# ISO 4217 minor units that are not 2 (the common case).
_MINOR_UNITS = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3}

AMOUNT_DECIMALS = 18  # 9 decimals of a rate + 9 of a quantity
MAX_AMOUNT_EXPONENT = 57  # every valid sum of fewer than 10^19 products of 10^9 x 10^29 is below 10^57
MONEY_PRECISION = MAX_AMOUNT_EXPONENT + AMOUNT_DECIMALS  # 75 significant digits

# Exact arithmetic: any result that would lose a digit raises instead of rounding.
_EXACT = Context(
    prec=MONEY_PRECISION,
    rounding=ROUND_HALF_EVEN,
    traps=[Inexact, InvalidOperation, DivisionByZero, Overflow],
)
# Rounding to a minor unit is the one place digits are meant to go; running out of digits still raises.
_ROUNDING = Context(
    prec=MONEY_PRECISION,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)


def minor_unit(currency: str) -> int:
    """Digits after the decimal point in the currency's smallest unit (USD 2, JPY 0, BHD 3)."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def exact_sum(amounts: Iterable[Decimal]) -> Decimal:
    """The exact sum of decimals (costs or quantities); raises `decimal.Inexact` rather than round."""
    total = Decimal(0)
    for amount in amounts:
        total = _EXACT.add(total, amount)
    return total


def line_cost(rates: Mapping[str, Decimal], quantities: Mapping[str, Decimal]) -> Decimal:
    """Exact sum of rate x quantity per meter; a meter without a rate costs 0. Unrounded."""
    return exact_sum(_EXACT.multiply(rates.get(meter, Decimal(0)), q) for meter, q in quantities.items())


def round_money(amount: Decimal, currency: str) -> Decimal:
    """Round an exact amount half-even to the currency's minor unit (2.005 USD -> 2.00, 2.015 -> 2.02)."""
    return _ROUNDING.quantize(amount, Decimal(1).scaleb(-minor_unit(currency)))
