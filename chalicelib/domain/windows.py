"""Windows over time: whole UTC hours or days, or one window over a period, on the grain of the rollups read.

A `hour` window counts usage by event time (hour rollups); `day` and `none` windows count it by
period_date (day rollups). Bounds off the grid widen the period to the enclosing hour or day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from chalicelib.errors import validation_error

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MAX_PERIOD = timedelta(days=3660)
WindowSize = Literal["hour", "day", "none"]
Grain = Literal["hour", "day"]


def floor_to(moment: datetime, unit: timedelta) -> datetime:
    """The start of the UTC hour (unit HOUR) or day (unit DAY) that contains the moment."""
    moment = moment.astimezone(UTC)
    if unit == DAY:
        return datetime.combine(moment.date(), time(), UTC)
    return moment.replace(minute=0, second=0, microsecond=0)


def ceil_to(moment: datetime, unit: timedelta) -> datetime:
    """The end of the UTC hour or day that contains the instant just before the moment."""
    floor = floor_to(moment, unit)
    return floor if floor == moment else floor + unit


def midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def hour_text(moment: datetime) -> str:
    """An hour as rollups name it: YYYY-MM-DDTHH (UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H")


def bucket_start(grain: Grain, text: str) -> datetime:
    """The start of a rollup's bucket: a period_date (day grain) or a YYYY-MM-DDTHH hour."""
    if grain == "day":
        return midnight(date.fromisoformat(text))
    return datetime.strptime(text, "%Y-%m-%dT%H").replace(tzinfo=UTC)


@dataclass(frozen=True)
class Windows:
    """`count` windows of `step` from `start`, the last ending at `end` (both on the grain's UTC grid).

    `grain` is the rollups read: hour rollups (by event time) for hour windows, day rollups (by
    period_date) for day and none windows.
    """

    size: WindowSize
    grain: Grain
    start: datetime
    end: datetime
    step: timedelta

    @property
    def count(self) -> int:
        return (self.end - self.start) // self.step

    def bounds(self, index: int) -> tuple[datetime, datetime]:
        lo = self.start + self.step * index
        return lo, min(lo + self.step, self.end)

    def index_of(self, moment: datetime) -> int:
        return (moment - self.start) // self.step


def make_windows(
    size: str,
    start: datetime,
    end: datetime,
    start_field: str = "starting_on",
    end_field: str = "ending_before",
    max_period: timedelta = MAX_PERIOD,
) -> Windows:
    """The windows covering [start, end) on the UTC grid of the size; 400 for an empty or too long period."""
    size = size.lower()
    if end <= start:
        raise validation_error(end_field, f"must be after {start_field}")
    grain: Grain = "hour" if size == "hour" else "day"
    unit = HOUR if grain == "hour" else DAY
    try:
        lo, hi = floor_to(start, unit), ceil_to(end, unit)
    except OverflowError:
        raise validation_error(end_field, "is out of range") from None
    if hi - lo > max_period:
        raise validation_error(
            end_field,
            f"the period may span at most {max_period.days:,} days; this one spans {(hi - lo) / DAY:,.2f}",
        )
    window_size: WindowSize = "none" if size == "none" else grain
    return Windows(window_size, grain, lo, hi, hi - lo if size == "none" else unit)


def days(first: date, last: date) -> Windows:
    """One `none` window over the period dates first..last (inclusive)."""
    lo, hi = midnight(first), midnight(last) + DAY
    return Windows("none", "day", lo, hi, hi - lo)


def each_day(first: date, last: date) -> Windows:
    """One `day` window per period date first..last (inclusive)."""
    return Windows("day", "day", midnight(first), midnight(last) + DAY, DAY)
