"""Property: whatever the redelivery, crash points and concurrency of aggregators, every aggregation in the
rollups equals the same aggregation computed directly from the raw events, exactly, for hour, day and none
windows and per group value (issue 12). Runs on the in-memory stores; a smaller run uses the emulator."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.domain.aggregation import NO_GROUP, OTHER_GROUP, RollupState, group_text
from chalicelib.domain.ids import batch_id
from chalicelib.domain.models import Meter, UsageEvent
from chalicelib.domain.pipeline import BatchMessage, slot_for
from chalicelib.domain.usage import ApplyUnit
from chalicelib.domain.windows import Windows, days, each_day
from chalicelib.services import aggregate, queries
from chalicelib.services.ports import RollupStore
from chalicelib.storage.memory import MemoryEventStore, MemoryQueue
from chalicelib.storage.memory_rollups import MemoryRollupStore
from chalicelib.storage.rollups_repo import DynamoRollupStore

ORG = "ORG-26-090500"
LINES = ("LIN-A", "LIN-B")
NOW = datetime(2026, 4, 20, 12, tzinfo=UTC)
FIRST_DAY = date(2026, 4, 14)
METERS = {
    m.id: m
    for m in (
        Meter(id="m.sum", uuid="u1", name="Sum", unit="u", product_lines=(), description="", group_by=("k", "j")),
        Meter(id="m.count", uuid="u2", name="Count", unit="u", product_lines=(), description="", aggregation="count",
              group_by=("k",)),
        Meter(id="m.max", uuid="u3", name="Max", unit="u", product_lines=(), description="", aggregation="max",
              group_by=("k",)),
        Meter(id="m.min", uuid="u4", name="Min", unit="u", product_lines=(), description="", aggregation="min"),
        Meter(id="m.latest", uuid="u5", name="Latest", unit="u", product_lines=(), description="",
              aggregation="latest", group_by=("k",)),
        Meter(id="m.avg", uuid="u7", name="Avg", unit="u", product_lines=(), description="", aggregation="avg",
              group_by=("k",)),
        Meter(id="m.unique", uuid="u6", name="Unique", unit="u", product_lines=(), description="",
              aggregation="unique_count", value_property="user", group_by=("k",)),
    )
}  # fmt: skip
K_VALUES: list[str | int | Decimal | bool] = ["a", "b", "c", "d", "e", 7, True, Decimal("2.50")]
USERS: list[str | int | Decimal | bool] = ["u1", "u2", "u3", "u4", 5]
GROUP_BOUND = 3  # small, so that values past it (OTHER_GROUP) occur


# -- the oracle: each aggregation straight from raw events -----------------------------------------


def oracle(meter: Meter, events: Iterable[UsageEvent]) -> Decimal:
    chosen = list(events)
    if meter.aggregation == "sum":
        return sum((e.quantity for e in chosen), Decimal(0))
    if meter.aggregation == "count":
        return Decimal(len(chosen))
    if meter.aggregation == "avg":
        if not chosen:
            return Decimal(0)
        mean = sum((e.quantity for e in chosen), Decimal(0)) / len(chosen)
        return mean.quantize(Decimal("1e-9"), rounding=ROUND_HALF_EVEN)
    if not chosen:
        return Decimal(0)
    if meter.aggregation == "max":
        return max(e.quantity for e in chosen)
    if meter.aggregation == "min":
        return min(e.quantity for e in chosen)
    if meter.aggregation == "latest":
        return max(chosen, key=lambda e: (e.event_time, e.id)).quantity
    assert meter.value_property is not None
    return Decimal(
        len({group_text(e.metadata[meter.value_property]) for e in chosen if meter.value_property in e.metadata})
    )


# -- generating usage -------------------------------------------------------------------------------


@st.composite
def usage(draw: st.DrawFn) -> list[UsageEvent]:
    count = draw(st.integers(min_value=1, max_value=40))
    events = []
    for index in range(count):
        day = FIRST_DAY + timedelta(days=draw(st.integers(0, 2)))
        moment = datetime.combine(day, datetime.min.time(), UTC) + timedelta(
            hours=draw(st.sampled_from([0, 7, 23])), minutes=draw(st.sampled_from([0, 30]))
        )
        if draw(st.integers(0, 9)) == 0:  # a late report: counted on another period_date than its hour's day
            day = day + timedelta(days=1)
        metadata: dict[str, str | int | Decimal | bool] = {}
        if draw(st.booleans()) or draw(st.booleans()):
            metadata["k"] = draw(st.sampled_from(K_VALUES))
        if draw(st.booleans()):
            metadata["j"] = draw(st.sampled_from(["x", "y"]))
        metadata["user"] = draw(st.sampled_from(USERS))
        event_time = moment
        events.append(
            UsageEvent(
                id=f"USAGE-26-{index:05d}",
                organization_id=ORG,
                workspace_id="WS-1",
                service_line_id=draw(st.sampled_from(LINES)),
                meter=draw(st.sampled_from(sorted(METERS))),
                quantity=draw(st.decimals(min_value=0, max_value=1000, places=draw(st.sampled_from([0, 3, 9])))),
                unit="u",
                period_date=day,
                event_time=event_time,
                recorded_at=NOW,
                source="test",
                metadata=metadata,
                idempotency_key=None,
                payload_hash="h",
                batch_id="",
            )
        )
    return events


@dataclass
class Pipeline:
    events: MemoryEventStore
    rollups: RollupStore
    messages: list[str]


def ingest(events: list[UsageEvent], sizes: list[int], rollups: RollupStore) -> tuple[Pipeline, list[UsageEvent]]:
    """Store the events in batches (sizes cycle) and make one queue message per batch."""
    store = MemoryEventStore()
    stored: list[UsageEvent] = []
    messages = []
    position = 0
    turn = 0
    while position < len(events):
        size = sizes[turn % len(sizes)]
        turn += 1
        batch = batch_id(NOW)
        listed = []
        for event in events[position : position + size]:
            event = event.model_copy(update={"batch_id": batch})
            slot = slot_for(None, event.id)
            store.put_new(event, slot)
            stored.append(event)
            listed.append((slot, event.id))
        position += size
        message = BatchMessage(batch=batch, org=ORG, created=NOW.isoformat(), origin="ingest", events=listed)
        messages.append(message.model_dump_json())
    return Pipeline(store, rollups, messages), stored


def join_only(store: RollupStore, unit: ApplyUnit) -> None:
    """What a worker that crashed between the two steps of apply left: the unit's joins, no marker."""
    for rk, state in unit.deltas.items():
        if not state.has_joins:
            continue
        if isinstance(store, MemoryRollupStore):
            store.join(rk, state.joins(), "2026-04-20T12:00:00.000Z")
        else:
            assert isinstance(store, DynamoRollupStore)
            store._join(rk, state.joins(), NOW)


def deliver(pipeline: Pipeline, rng: random.Random, aggregators: int) -> None:
    """Every message at least once (some twice), some after a crash between the join and marker steps,
    shuffled, by `aggregators` concurrent aggregators."""
    deliveries = []
    for index, body in enumerate(pipeline.messages):
        for copy in range(rng.choice([1, 1, 2, 3])):
            deliveries.append(aggregate.Delivery(f"m{index}-{copy}", body, copy + 1))
    rng.shuffle(deliveries)
    crashed = [d for d in deliveries if rng.random() < 0.3]
    for delivery in crashed:  # a worker that joined the cells and died before the transaction
        message = BatchMessage.model_validate_json(delivery.body)
        units = aggregate.plan_units(message, pipeline.events, pipeline.rollups, METERS.get)
        for unit in units[: rng.randint(0, len(units))]:
            join_only(pipeline.rollups, unit)
    shares: list[list[aggregate.Delivery]] = [deliveries[i::aggregators] for i in range(aggregators)]
    errors: list[BaseException] = []

    def run(share: list[aggregate.Delivery]) -> None:
        try:
            for start in range(0, len(share), 3):
                result = aggregate.aggregate(
                    share[start : start + 3], pipeline.events, pipeline.rollups, MemoryQueue(), NOW, METERS.get
                )
                assert result.failed == [] and result.dead_lettered == []
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


# -- the checks -------------------------------------------------------------------------------------


def value(meter: Meter, states: dict[tuple[str, str, int], RollupState], line: str, index: int) -> Decimal:
    state = states.get((line, meter.id, index))
    return queries.value_of(meter, state) if state is not None else Decimal(0)


def check_exact(rollups: RollupStore, events: list[UsageEvent]) -> None:
    first = min(e.period_date for e in events)
    last = max(e.period_date for e in events)
    per_day = each_day(first, last)
    whole = days(first, last)
    start, end = per_day.start - timedelta(days=1), per_day.end + timedelta(days=1)
    per_hour = Windows("hour", "hour", start, end, timedelta(hours=1))
    all_hours = Windows("none", "hour", start, end, end - start)
    day_states = queries.window_states(rollups, ORG, LINES, per_day)
    whole_states = queries.window_states(rollups, ORG, LINES, whole)
    hour_states = queries.window_states(rollups, ORG, LINES, per_hour)
    all_hour_states = queries.window_states(rollups, ORG, LINES, all_hours)
    for meter in METERS.values():
        for line in LINES:
            mine = [e for e in events if e.meter == meter.id and e.service_line_id == line]
            for index in range(per_day.count):  # day windows: by period_date
                day = per_day.bounds(index)[0].date()
                assert value(meter, day_states, line, index) == oracle(meter, (e for e in mine if e.period_date == day))
            for index in range(per_hour.count):  # hour windows: by event time
                lo, hi = per_hour.bounds(index)
                assert value(meter, hour_states, line, index) == oracle(
                    meter, (e for e in mine if lo <= e.event_time < hi)
                )
            # the none window, the fold of every day and the fold of every hour: the aggregation of all
            total = oracle(meter, mine)
            assert value(meter, whole_states, line, 0) == total
            assert value(meter, all_hour_states, line, 0) == total
            for key in meter.group_by:
                check_groups(rollups, meter, line, key, mine, per_day, total)


def check_groups(
    rollups: RollupStore, meter: Meter, line: str, key: str, mine: list[UsageEvent], per_day: Windows, total: Decimal
) -> None:
    """Per day: each kept value exact, OTHER_GROUP the values past the bound, NO_GROUP the events without the
    key; at most GROUP_BOUND values kept; for sum and count the groups add up to the day's total."""
    states = queries.group_states(rollups, ORG, [line], meter.id, key, per_day)
    grand = Decimal(0)
    for index in range(per_day.count):
        day = per_day.bounds(index)[0].date()
        of_day = [e for e in mine if e.period_date == day]
        found = {gv: queries.value_of(meter, s) for (_, i, gv), s in states.items() if i == index}
        kept = {gv for gv in found if gv not in (NO_GROUP, OTHER_GROUP)}
        carried = {group_text(e.metadata[key]) for e in of_day if key in e.metadata}
        assert kept <= carried and len(kept) <= GROUP_BOUND
        assert (OTHER_GROUP in found) == bool(carried - kept)
        if len(carried) <= GROUP_BOUND:
            assert kept == carried
        for gv in kept:
            assert found[gv] == oracle(
                meter, (e for e in of_day if key in e.metadata and group_text(e.metadata[key]) == gv)
            )
        rest = [e for e in of_day if key in e.metadata and group_text(e.metadata[key]) not in kept]
        assert found.get(OTHER_GROUP, Decimal(0)) == oracle(meter, rest)
        assert found.get(NO_GROUP, Decimal(0)) == oracle(meter, (e for e in of_day if key not in e.metadata))
        if meter.aggregation in ("sum", "count"):
            assert sum(found.values(), Decimal(0)) == oracle(meter, of_day)
            grand += sum(found.values(), Decimal(0))
    if meter.aggregation in ("sum", "count"):
        assert grand == total


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    usage(), st.lists(st.integers(1, 12), min_size=1, max_size=4), st.integers(1, 3), st.randoms(use_true_random=False)
)
def test_every_aggregation_in_rollups_equals_the_raw_events(
    events: list[UsageEvent], sizes: list[int], aggregators: int, rng: random.Random
) -> None:
    store = MemoryRollupStore()
    store.max_group_values = GROUP_BOUND
    pipeline, stored = ingest(events, sizes, store)
    deliver(pipeline, rng, aggregators)
    check_exact(store, stored)
    check_recomputed(store, stored)


def check_recomputed(rollups: RollupStore, events: list[UsageEvent]) -> None:
    """What reconciliation recomputes from the raw events is, rollup by rollup, what the pipeline stored."""
    for line in LINES:
        for day in {e.period_date for e in events}:
            of_day = [e for e in events if e.service_line_id == line and e.period_date == day]
            expected = aggregate.recompute(of_day, of_day, METERS.get, rollups)
            stored = {r.key: r.state for r in rollups.rollups_of_period(ORG, line, day, with_groups=True)}
            assert stored == expected


def fixed_usage(rng: random.Random) -> list[UsageEvent]:
    """A seeded event set for the emulator run (hypothesis's examples are for the in-memory run)."""
    return [
        UsageEvent(
            id=f"USAGE-26-{i:05d}",
            organization_id=ORG,
            workspace_id="WS-1",
            service_line_id=rng.choice(LINES),
            meter=rng.choice(sorted(METERS)),
            quantity=Decimal(rng.randint(0, 10**6)) / 1000,
            unit="u",
            period_date=FIRST_DAY + timedelta(days=rng.randint(0, 1)),
            event_time=datetime.combine(FIRST_DAY, datetime.min.time(), UTC) + timedelta(hours=rng.randint(0, 47)),
            recorded_at=NOW,
            source="test",
            metadata={"k": rng.choice("abcde"), "user": rng.choice(["u1", "u2", "u3"])}
            if rng.random() < 0.8
            else {"user": "u9"},
            idempotency_key=None,
            payload_hash="h",
            batch_id="",
        )
        for i in range(30)
    ]
