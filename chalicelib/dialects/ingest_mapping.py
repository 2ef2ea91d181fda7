"""The path every ingest dialect shares: the organization's mapping, foreign events -> drafts -> ingest.

The mapping itself (what a customer, an event type, a value and a key mean) is
`chalicelib.domain.ingest_mapping`. Per-organization overrides are read from the catalog's
`ingest_mappings.json` (organization id -> `customer_aliases`, `event_types`); an organization
without an entry gets the default mapping, which needs no setup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from chalicelib import catalog as catalog_data
from chalicelib import observability
from chalicelib.container import Container
from chalicelib.domain.ingest_mapping import ForeignEvent, IngestMapping, MappedEvent, map_event, parse_mapping
from chalicelib.domain.models import Meter, ServiceLine
from chalicelib.domain.usage import UsageDraft
from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.services.ingest import IngestOutcome, ingest
from chalicelib.services.ports import CatalogReader

OVERRIDES = "ingest_mappings"


class LinesOnce:
    """The catalog as one request sees it: an organization's service lines are listed once, not once
    per event (the default line of each event's meter is picked from that list)."""

    def __init__(self, catalog: CatalogReader) -> None:
        self._catalog = catalog
        self._lines: dict[str, list[ServiceLine]] = {}

    def list_service_lines(self, organization_id: str) -> list[ServiceLine]:
        if organization_id not in self._lines:
            self._lines[organization_id] = self._catalog.list_service_lines(organization_id)
        return list(self._lines[organization_id])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._catalog, name)


@lru_cache(maxsize=1)
def overrides() -> dict[str, IngestMapping]:
    """The organizations' mapping overrides, from the catalog's ingest_mappings.json."""
    data = catalog_data.read(OVERRIDES)
    return {organization_id: parse_mapping(organization_id, entry) for organization_id, entry in data.items()}


def mapping_for(organization_id: str) -> IngestMapping:
    """The organization's mapping: its overrides, else the default one."""
    return overrides().get(organization_id) or IngestMapping(organization_id)


def prepare(
    catalog: CatalogReader, organization_id: str, events: Sequence[ForeignEvent | MeteringError], now: datetime
) -> list[MappedEvent | MeteringError]:
    """Each foreign event as a draft (or the error that says why it is none), in order; nothing is written."""
    mapping = mapping_for(organization_id)
    meters: dict[str, Meter | None] = {}
    prepared: list[MappedEvent | MeteringError] = []
    for event in events:
        if isinstance(event, MeteringError):
            prepared.append(event)
            continue
        rule = mapping.rule(event.event_type)
        if rule.meter not in meters:
            meters[rule.meter] = catalog.get_meter(rule.meter)
        try:
            prepared.append(map_event(mapping, event, meters[rule.meter], now, rule))
        except MeteringError as error:
            prepared.append(error)
    return prepared


def store(
    container: Container,
    organization_id: str,
    prepared: Sequence[MappedEvent | MeteringError],
    now: datetime,
    conflicts_are_duplicates: bool = False,
) -> list[IngestOutcome]:
    """Ingest the prepared events; one outcome per item, in order (an error item is rejected alone).

    With `conflicts_are_duplicates` (dialects that deduplicate by id alone), a known key with another
    payload is counted as a duplicate in the metrics, as the dialect answers it.

    Events whose line the organization's default rule picks and events whose mapping names a line are
    ingested as two calls (the use case takes one line rule per call).
    """
    outcomes: list[IngestOutcome | None] = [None] * len(prepared)
    snapshot = cast(CatalogReader, LinesOnce(container.catalog))
    for by_rule in (True, False):
        indexes: list[int] = []
        items: list[UsageDraft | MeteringError] = []
        for index, item in enumerate(prepared):
            if isinstance(item, MeteringError):
                outcomes[index] = IngestOutcome("rejected", error=item)
            elif item.line_by_rule == by_rule:
                indexes.append(index)
                items.append(item.draft)
        if not items:
            continue
        c = container
        answers = ingest(items, organization_id, snapshot, c.events, c.queue, now, line_by_rule=by_rule)
        for index, answer in zip(indexes, answers, strict=True):
            mapped = prepared[index]
            if answer.error is not None and isinstance(mapped, MappedEvent):
                answer = replace(answer, error=mapped.translate(answer.error))
            outcomes[index] = answer
    done = [o or IngestOutcome("rejected", error=MeteringError(ErrorCode.INTERNAL_ERROR)) for o in outcomes]
    ignored = "duplicate" if conflicts_are_duplicates else "conflict"
    observability.count_outcomes([ignored if o.status == "conflict" else o.status for o in done])
    return done


def parse_each(items: Sequence[Any], parse: Callable[[int, Any], ForeignEvent]) -> list[ForeignEvent | MeteringError]:
    """Each item of a request parsed by its index, or the error that says why it cannot be."""
    events: list[ForeignEvent | MeteringError] = []
    for index, item in enumerate(items):
        try:
            events.append(parse(index, item))
        except MeteringError as error:
            events.append(error)
    return events


def ingest_all(
    container: Container,
    organization_id: str,
    events: Sequence[ForeignEvent | MeteringError],
    name: Callable[[int], str],
) -> list[IngestOutcome]:
    """A whole request of a dialect that deduplicates by id alone: the first invalid event is raised
    (nothing written), then the events are stored and the request's failure, if any, is raised."""
    now = container.clock()
    prepared = prepare(container.catalog, organization_id, events, now)
    invalid = first_invalid(prepared, name)
    if invalid is not None:
        raise invalid
    outcomes = store(container, organization_id, prepared, now, conflicts_are_duplicates=True)
    failure = request_failure(outcomes, name, conflicts_are_duplicates=True)
    if failure is not None:
        raise failure
    return outcomes


class Refusal(MeteringError):
    """An event refused, answered with the status its dialect gives a refused event (400); the code stays."""

    def __init__(self, error: MeteringError, message: str | None = None, status: int = 400) -> None:
        super().__init__(error.error_code, message or error.message, field=error.field, details=dict(error.details))
        self.status = status

    @property
    def http_status(self) -> int:
        return self.status


def first_invalid(prepared: Sequence[MappedEvent | MeteringError], name: Callable[[int], str]) -> MeteringError | None:
    """The first event that maps to nothing, as a 400 naming it and how many others failed; None if all map."""
    failed = [(index, item) for index, item in enumerate(prepared) if isinstance(item, MeteringError)]
    if not failed:
        return None
    index, error = failed[0]
    more = f" ({len(failed) - 1} more of the {len(prepared)} events are invalid too)" if len(failed) > 1 else ""
    return Refusal(error, f"{_named(name(index), error).rstrip('.')}{more}. Nothing was stored.", status=_status(error))


def request_failure(
    outcomes: Sequence[IngestOutcome], name: Callable[[int], str], conflicts_are_duplicates: bool
) -> MeteringError | None:
    """What a request answers when some of its events were not stored; None when all were (or were replays).

    A 5xx outcome wins (a retry of the request is safe); then the first refused event, as a 400. A conflict
    (a known key with another payload) is a duplicate in dialects that deduplicate by id alone.
    """
    failures = [
        (index, outcome)
        for index, outcome in enumerate(outcomes)
        if outcome.status == "rejected" or (outcome.status == "conflict" and not conflicts_are_duplicates)
    ]
    if not failures:
        return None
    done = ("accepted", "duplicate", "conflict") if conflicts_are_duplicates else ("accepted", "duplicate")
    stored = sum(1 for outcome in outcomes if outcome.status in done)
    more = f" ({len(failures) - 1} more of its events were refused too.)" if len(failures) > 1 else ""
    after = (
        f" The {_events(stored, 'other')} of this request {'is' if stored == 1 else 'are'} stored; sending the "
        "request again stores each at most once."
        if stored
        else ""
    )
    unavailable = [(i, o) for i, o in failures if o.error is not None and o.error.http_status >= 500]
    index, outcome = (unavailable or failures)[0]
    error = outcome.error or MeteringError(ErrorCode.INTERNAL_ERROR)
    return Refusal(error, _named(name(index), error) + more + after, status=_status(error))


def _events(count: int, adjective: str) -> str:
    return f"{adjective} event" if count == 1 else f"{adjective} {count} events"


def _named(where: str, error: MeteringError) -> str:
    """The error's message, prefixed with which event it is about unless it already says so."""
    if not where or error.message.startswith(where):
        return error.message
    return f"{where}: {error.message}"


def _status(error: MeteringError) -> int:
    """A refused event is a 400 in every ingest dialect; a 5xx stays (the request may be retried as is)."""
    return error.http_status if error.http_status >= 500 else 400
