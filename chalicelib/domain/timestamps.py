"""The one timestamp parser: RFC 3339 date-times for query bounds, ISO-8601 instants for reported usage.

Both answer an aware UTC datetime or raise TimestampError (a ValueError saying why); each surface
turns that into its own error shape.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+\- ])(\d{2}):(\d{2}))",
    re.ASCII,
)
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class TimestampError(ValueError):
    """Text that is not a timestamp of the expected form; `reason` is the message for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_rfc3339(text: str, space_is_plus: bool = False) -> datetime:
    """An RFC 3339 date-time with a zone (Z or ±hh:mm, up to 9 fraction digits) as UTC.

    With space_is_plus, a space before the offset reads as "+" (an unencoded "+" in a query string
    arrives decoded as a space). The fraction is kept to the microsecond (truncated).
    """
    match = _RFC3339.fullmatch(text)
    if match is None or (match[9] == " " and not space_is_plus):
        raise TimestampError("is not an RFC 3339 date-time with a time zone")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        offset = timedelta(0)
        if not zulu:
            if int(off_h) > 23 or int(off_m) > 59:
                raise ValueError("offset out of range")
            offset = timedelta(hours=int(off_h), minutes=int(off_m))
            if sign == "-":
                offset = -offset
        micro = int((fraction or "").ljust(6, "0")[:6])
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=timezone(offset)
        )
    except ValueError:
        raise TimestampError("is not a real date and time") from None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise TimestampError("is out of range") from None


def parse_iso8601(text: str) -> datetime:
    """An ISO-8601 instant with a zone (Z accepted; a bare date is that day's start in UTC), as UTC."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimestampError("must be an ISO-8601 timestamp") from None
    if _DATE_ONLY.fullmatch(text):
        parsed = parsed.replace(tzinfo=UTC)
    if parsed.tzinfo is None:
        raise TimestampError("must carry a time zone (for example Z)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 or 9999-12-31T23:59:59-01:00 has no UTC instant
        raise TimestampError("is out of range") from None


def rfc3339(moment: datetime) -> str:
    """A UTC instant to the second, as rows show window bounds: 2026-04-01T00:00:00Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
