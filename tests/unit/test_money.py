"""Money: rate x quantity is exact at every valid size, rounded half-even to the minor unit only at the edge."""

from __future__ import annotations

from decimal import Decimal, Inexact, InvalidOperation, localcontext
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.domain.money import MONEY_PRECISION, exact_sum, line_cost, minor_unit, round_money


def nanos(n: int) -> Decimal:
    """n x 10^-9, exactly (Decimal.scaleb would round to the default 28-digit context)."""
    return Decimal(f"{n}E-9")


NANO = nanos(1)
MAX_RATE = Decimal(10) ** 9  # 0..10^9, at most 9 decimals
MAX_EVENT_QUANTITY = Decimal(10) ** 12  # 0..10^12, at most 9 decimals
# The largest quantity DynamoDB can store with 9 decimals: 38 significant digits.
MAX_STORED_QUANTITY = nanos(10**38 - 1)
LARGEST_RATE_9DP = Decimal("999999999.999999999")


def half_even(value: Fraction, places: int) -> Fraction:
    """The reference: round an exact fraction half-even to `places` decimals."""
    scaled = value * 10**places
    floor = scaled.numerator // scaled.denominator
    rest = scaled - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1):
        floor += 1
    return Fraction(floor, 10**places)


def test_the_reported_product_rounds_to_19_cents_not_18() -> None:
    cost = line_cost({"m": LARGEST_RATE_9DP}, {"m": Decimal("923814999953.885316332")})
    assert cost == Decimal("923814999953885315408.185000046114683668")
    assert str(round_money(cost, "USD")) == "923814999953885315408.19"


def test_a_narrow_caller_context_does_not_change_the_result() -> None:
    with localcontext() as ctx:
        ctx.prec = 6
        cost = line_cost({"m": LARGEST_RATE_9DP}, {"m": Decimal("923814999953.885316332")})
        rounded = round_money(cost, "USD")
    assert str(rounded) == "923814999953885315408.19"


def test_largest_rate_times_largest_event_quantity() -> None:
    cost = line_cost({"m": MAX_RATE}, {"m": MAX_EVENT_QUANTITY})
    assert cost == Decimal(10) ** 21
    cost = line_cost({"m": LARGEST_RATE_9DP}, {"m": MAX_EVENT_QUANTITY - NANO})
    assert Fraction(cost) == Fraction(LARGEST_RATE_9DP) * Fraction(MAX_EVENT_QUANTITY - NANO)


def test_largest_rate_times_largest_storable_quantity_is_exact() -> None:
    cost = line_cost({"m": LARGEST_RATE_9DP}, {"m": MAX_STORED_QUANTITY})
    assert Fraction(cost) == Fraction(LARGEST_RATE_9DP) * Fraction(MAX_STORED_QUANTITY)
    assert len(cost.as_tuple().digits) > 28  # beyond what the default context would keep
    expected = half_even(Fraction(cost), 3)
    assert Fraction(round_money(cost, "BHD")) == expected


def test_bhd_at_1e25_and_beyond_rounds_instead_of_failing() -> None:
    cost = line_cost({"m": Decimal(1000)}, {"m": Decimal(10) ** 22})
    assert cost == Decimal(10) ** 25
    assert str(round_money(cost, "BHD")) == "10000000000000000000000000.000"
    # half a fils on top of 10^25, and far beyond: half-even still decides
    assert str(round_money(Decimal("10000000000000000000000000.0005"), "BHD")) == "10000000000000000000000000.000"
    assert str(round_money(Decimal("10000000000000000000000000.0015"), "BHD")) == "10000000000000000000000000.002"
    huge = line_cost({"m": MAX_RATE}, {"m": MAX_STORED_QUANTITY})
    assert round_money(huge, "BHD") == huge  # already a whole number of fils
    assert round_money(huge, "BHD").as_tuple().exponent == -3


def test_jpy_rounds_to_whole_yen_half_even() -> None:
    assert minor_unit("JPY") == 0 and minor_unit("jpy") == 0
    assert str(round_money(Decimal("0.5"), "JPY")) == "0"
    assert str(round_money(Decimal("1.5"), "JPY")) == "2"
    assert str(round_money(Decimal("2.5"), "JPY")) == "2"
    assert str(round_money(Decimal("2.500000000000000001"), "JPY")) == "3"
    cost = line_cost({"m": LARGEST_RATE_9DP}, {"m": MAX_STORED_QUANTITY})
    assert Fraction(round_money(cost, "JPY")) == half_even(Fraction(cost), 0)


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("2.005", "USD", "2.00"),
        ("2.015", "USD", "2.02"),
        ("2.025", "USD", "2.02"),
        ("2.0050000000000000001", "USD", "2.01"),
        ("0.0005", "BHD", "0.000"),
        ("0.0015", "BHD", "0.002"),
        ("99999999999999999999999999999999999.995", "USD", "100000000000000000000000000000000000.00"),
        ("99999999999999999999999999999999999.985", "USD", "99999999999999999999999999999999999.98"),
        ("0", "KWD", "0.000"),
    ],
)
def test_half_even_at_half_a_minor_unit(amount: str, currency: str, expected: str) -> None:
    assert str(round_money(Decimal(amount), currency)) == expected


def test_meters_without_a_rate_cost_nothing() -> None:
    assert line_cost({"a": Decimal(2)}, {"a": Decimal(3), "b": MAX_STORED_QUANTITY}) == Decimal(6)
    assert line_cost({}, {}) == 0


def test_sums_of_many_maximal_products_are_exact() -> None:
    meters = {f"m{i}": LARGEST_RATE_9DP for i in range(9)}
    quantities = {m: MAX_STORED_QUANTITY for m in meters}
    line = line_cost(meters, quantities)
    assert Fraction(line) == 9 * Fraction(LARGEST_RATE_9DP) * Fraction(MAX_STORED_QUANTITY)
    # a total over 10,000 such lines (and a quantity summed over 400 stored day rollups)
    total = exact_sum([line] * 10_000)
    assert Fraction(total) == 10_000 * Fraction(line)
    summed_quantity = exact_sum([MAX_STORED_QUANTITY] * 400)
    assert Fraction(summed_quantity) == 400 * Fraction(MAX_STORED_QUANTITY)
    cost = line_cost({"m": LARGEST_RATE_9DP}, {"m": summed_quantity})
    assert Fraction(cost) == Fraction(LARGEST_RATE_9DP) * 400 * Fraction(MAX_STORED_QUANTITY)
    assert Fraction(round_money(total, "BHD")) == half_even(Fraction(total), 3)


def test_a_cost_that_cannot_be_exact_raises_instead_of_rounding() -> None:
    # far outside the limits: 80 significant digits times a 9-decimal rate
    too_precise = nanos(int("1" * 80))
    with pytest.raises(Inexact):
        line_cost({"m": LARGEST_RATE_9DP}, {"m": too_precise})
    with pytest.raises(Inexact):
        exact_sum([Decimal("1E+70"), NANO])


def test_rounding_beyond_the_precision_raises_instead_of_returning_a_wrong_amount() -> None:
    with pytest.raises(InvalidOperation):
        round_money(Decimal(10) ** MONEY_PRECISION, "USD")


def without_trailing_zeros(value: Decimal) -> Decimal:
    """The same value spelled with the fewest digits (1.500000000 -> 1.5, 1000 -> 1E+3), exactly."""
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    while len(digits) > 1 and digits[-1] == 0:
        digits, exponent = digits[:-1], exponent + 1
    return Decimal((sign, digits, exponent))


rates = st.integers(min_value=0, max_value=10**18).map(nanos)
stored = st.integers(min_value=0, max_value=10**38 - 1).map(nanos)
# the same values spelled differently: exponents must not matter
stored_quantities = st.one_of(stored, stored.map(without_trailing_zeros))


@given(
    st.dictionaries(st.sampled_from([f"m{i}" for i in range(9)]), st.tuples(rates, stored_quantities)),
    st.sampled_from(["USD", "JPY", "BHD", "EUR", "KWD"]),
)
def test_cost_matches_exact_fraction_arithmetic(lines: dict[str, tuple[Decimal, Decimal]], currency: str) -> None:
    cost = line_cost({m: r for m, (r, _) in lines.items()}, {m: q for m, (_, q) in lines.items()})
    expected = sum((Fraction(r) * Fraction(q) for r, q in lines.values()), Fraction(0))
    assert Fraction(cost) == expected
    rounded = round_money(cost, currency)
    assert Fraction(rounded) == half_even(expected, minor_unit(currency))
    assert rounded.as_tuple().exponent == -minor_unit(currency)


@given(st.lists(st.tuples(rates, stored_quantities), max_size=50))
def test_total_over_lines_matches_exact_fractions(products: list[tuple[Decimal, Decimal]]) -> None:
    costs = [line_cost({"m": r}, {"m": q}) for r, q in products]
    assert Fraction(exact_sum(costs)) == sum((Fraction(r) * Fraction(q) for r, q in products), Fraction(0))
