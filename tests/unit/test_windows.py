"""Metronome's windows (document 003): any bounds are covered by whole UTC hours or days, never narrowed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.dialects.metronome import DAY, HOUR, MAX_PERIOD, Windows, make_windows
from chalicelib.errors import MeteringError

instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)).map(
    lambda moment: moment.astimezone(UTC)
)
periods = st.tuples(instants, st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=40)))


def all_bounds(windows: Windows) -> list[tuple[datetime, datetime]]:
    return [windows.bounds(index) for index in range(windows.count)]


def on_grid(moment: datetime, unit: timedelta) -> bool:
    midnight = datetime.combine(moment.date(), datetime.min.time(), UTC)
    return (moment - midnight) % unit == timedelta(0)


@given(period=periods, size=st.sampled_from(["hour", "day", "HOUR", "Day"]))
def test_windows_tile_the_hours_or_days_that_contain_the_bounds(period: tuple[datetime, timedelta], size: str) -> None:
    start, length = period
    end = start + length
    windows = make_windows(size, start, end)
    unit = HOUR if size.lower() == "hour" else DAY
    bounds = all_bounds(windows)
    assert bounds[0][0] <= start < bounds[0][1]  # the first window contains starting_on
    assert bounds[-1][0] < end <= bounds[-1][1]  # the last contains the instant before ending_before
    assert all(hi - lo == unit and on_grid(lo, unit) for lo, hi in bounds)
    assert all(a[1] == b[0] for a, b in pairwise(bounds))  # contiguous, no gap or overlap
    # bounds already on the grid are kept as they are
    assert make_windows(size, bounds[0][0], bounds[-1][1]) == windows


@given(period=periods)
def test_a_none_window_covers_exactly_the_day_windows_of_the_same_bounds(period: tuple[datetime, timedelta]) -> None:
    start, length = period
    none = make_windows("none", start, start + length)
    days = all_bounds(make_windows("day", start, start + length))
    assert none.count == 1 and none.grain == "day"
    assert all_bounds(none) == [(days[0][0], days[-1][1])]


def test_examples_of_what_the_first_and_last_windows_cover() -> None:
    def at(text: str) -> datetime:
        return datetime.fromisoformat(text).astimezone(UTC)

    days = make_windows("day", at("2026-04-14T10:30:00+00:00"), at("2026-04-16T06:00:00+00:00"))
    assert (days.start, days.end, days.count) == (at("2026-04-14T00:00:00+00:00"), at("2026-04-17T00:00:00+00:00"), 3)
    hours = make_windows("hour", at("2026-04-14T10:30:00+00:00"), at("2026-04-14T12:00:00+00:00"))
    assert (hours.start, hours.end, hours.count) == (
        at("2026-04-14T10:00:00+00:00"),
        at("2026-04-14T12:00:00+00:00"),
        2,
    )
    # 60 days of hours is no longer refused: 1,440 windows, read a page at a time
    assert make_windows("hour", at("2026-02-15T00:00:00+00:00"), at("2026-04-16T00:00:00+00:00")).count == 1440


def test_empty_too_long_or_out_of_range_periods_are_400() -> None:
    start = datetime(2026, 4, 14, tzinfo=UTC)
    for end in (start, start - timedelta(seconds=1)):
        with pytest.raises(MeteringError) as empty:
            make_windows("day", start, end)
        assert empty.value.field == "ending_before" and "after starting_on" in empty.value.message
    assert make_windows("hour", start, start + MAX_PERIOD).count == MAX_PERIOD // HOUR
    with pytest.raises(MeteringError) as too_long:
        make_windows("hour", start, start + MAX_PERIOD + timedelta(seconds=1))
    assert "3,660 days" in too_long.value.message
    with pytest.raises(MeteringError) as out_of_range:
        make_windows("day", datetime(9999, 12, 31, 1, tzinfo=UTC), datetime(9999, 12, 31, 2, tzinfo=UTC))
    assert out_of_range.value.http_status == 400
