"""The realistic workload generator (chalicelib/local/workload.py): deterministic, real-shaped, and exact
about what the service must answer for it."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal
from typing import Any
from urllib.parse import urlencode

import pytest

from chalicelib import catalog as catalog_data
from chalicelib.container import Container
from chalicelib.domain.models import Organization, Plan, ServiceLine
from chalicelib.domain.usage import (
    check_idempotency_key,
    check_metadata,
    check_period_date,
    check_quantity,
    check_source,
    decimal_places,
)
from chalicelib.local import workload as wl
from chalicelib.local.workload import Batch, GeneratedEvent, LineSpec, OrganizationSpec, Pause, Workload
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, auth
from tests.support import body, run_aggregator

NOW = datetime(2026, 5, 20, 14, 30, tzinfo=UTC)
WIDE = Context(prec=80)  # sums here never round


@pytest.fixture(scope="module")
def demo90() -> Workload:
    return wl.generate(days=90, now=NOW, seed=7)


def all_events(workload: Workload) -> list[tuple[Batch, GeneratedEvent]]:
    return [(batch, event) for batch in workload.batches for event in batch.events]


# -- determinism ---------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_stream() -> None:
    first = wl.generate(days=20, now=NOW, seed=3)
    again = wl.generate(days=20, now=NOW, seed=3)
    assert first == again
    assert [b.body() for b in first.batches] == [b.body() for b in again.batches]


def test_another_seed_gives_another_stream() -> None:
    one = wl.generate(days=20, now=NOW, seed=3)
    other = wl.generate(days=20, now=NOW, seed=4)
    assert [b.body() for b in one.batches] != [b.body() for b in other.batches]


def test_generated_organizations_are_deterministic() -> None:
    assert wl.generated_organizations(6, seed=1) == wl.generated_organizations(6, seed=1)
    assert wl.generated_organizations(6, seed=1) != wl.generated_organizations(6, seed=2)


# -- shape: days, lines, meters --------------------------------------------------------------------


def test_history_covers_the_days_asked_for(demo90: Workload) -> None:
    days = {e.event_time.date() for e in demo90.events()}
    assert demo90.start == NOW - timedelta(days=90)
    assert len(days) >= 90
    assert all(demo90.start <= e.event_time <= NOW for e in demo90.events())


def test_each_demo_organization_uses_several_lines_and_meters(demo90: Workload) -> None:
    lines: dict[str, set[str]] = defaultdict(set)
    meters: dict[str, set[str]] = defaultdict(set)
    for event in demo90.events():
        lines[event.organization_id].add(event.service_line_id)
        meters[event.organization_id].add(event.meter)
    assert len(lines["ORG-26-090500"]) == 6 and len(meters["ORG-26-090500"]) == 14
    assert len(lines["ORG-26-100200"]) == 2 and meters["ORG-26-100200"] == {"talent.hours", "talent.timesheets"}
    active = {m["id"] for m in catalog_data.read("meters") if m["status"] == "ACTIVE"}
    assert set().union(*meters.values()) == active
    aggregations = {m["aggregation"] for m in catalog_data.read("meters") if m["id"] in active}
    assert aggregations == {"sum", "count", "max", "min", "latest", "unique_count", "avg"}


def test_demo_json_lines_keep_their_rates_and_the_extra_lines_fit_the_plans() -> None:
    demo = catalog_data.read("demo")
    plans = {p["id"]: Plan.model_validate(p) for p in catalog_data.read("plans")}
    meters = {m["id"]: m for m in catalog_data.read("meters")}
    specs = wl.demo_organizations()
    in_demo_json = {raw["id"]: raw["rates"] for raw in demo["service_lines"]}
    for org in specs:
        plan = plans[org.organization.plan_id]
        assert plan.limits.active_service_lines is None or len(org.lines) <= plan.limits.active_service_lines
        for spec in org.lines:
            line = spec.line
            assert line.product_line in plan.allowed_product_lines
            for meter, rate in line.rates.items():
                assert meters[meter]["status"] == "ACTIVE" and line.product_line in meters[meter]["product_lines"]
                assert rate >= 0
            if line.id in in_demo_json:
                assert {m: str(r) for m, r in line.rates.items()} == in_demo_json[line.id]
    assert set(wl.DEFAULT_RATES) == {m for m, raw in meters.items() if raw["status"] == "ACTIVE"}


def test_every_event_is_a_line_meter_the_line_bills(demo90: Workload) -> None:
    billed = {(s.line.id, m) for org in demo90.organizations for s in org.lines for m in s.line.rates}
    owner = {s.line.id: org.organization.id for org in demo90.organizations for s in org.lines}
    for event in demo90.events():
        assert (event.service_line_id, event.meter) in billed
        assert owner[event.service_line_id] == event.organization_id


def test_every_body_is_valid_for_the_native_api_when_its_batch_is_sent(demo90: Workload) -> None:
    for batch, event in all_events(demo90):
        body = event.body()
        assert set(body) <= {"service_line_id", "meter", "quantity", "period_date", "idempotency_key"} | {
            "source",
            "metadata",
        }
        assert check_quantity(body["quantity"]) == event.quantity
        assert check_period_date(body["period_date"], batch.sent_at.date()) == event.period_date
        check_idempotency_key(body["idempotency_key"])
        check_source(body["source"])
        check_metadata(body["metadata"])


# -- shape: batches ------------------------------------------------------------------------------


def test_batches_are_per_organization_in_time_order_and_sent_after_their_events(demo90: Workload) -> None:
    sent = [b.sent_at for b in demo90.batches]
    assert sent == sorted(sent)
    assert all(sent_at <= NOW for sent_at in sent)
    for batch in demo90.batches:
        assert 1 <= len(batch.events) <= 100
        assert {e.organization_id for e in batch.events} == {batch.organization_id}
        assert all(e.event_time <= batch.sent_at for e in batch.events)
    assert max(len(b.events) for b in wl.generate(days=10, now=NOW, flush_every=timedelta(days=1)).batches) == 100


# -- shape: rhythm ---------------------------------------------------------------------------------


def test_weekdays_are_busier_than_weekends(demo90: Workload) -> None:
    per_day = Counter(e.event_time.date() for e in demo90.events() if not e.after_pause)
    weekday = [n for day, n in per_day.items() if day.weekday() < 5]
    weekend = [n for day, n in per_day.items() if day.weekday() >= 5]
    assert sum(weekday) / len(weekday) > 2.5 * sum(weekend) / len(weekend)


def test_working_hours_are_busier_than_nights(demo90: Workload) -> None:
    agents = [e for e in demo90.events() if e.meter == "agent.runs" and e.event_time.weekday() < 5]
    per_hour = Counter(e.event_time.hour for e in agents)
    working = sum(per_hour[h] for h in range(9, 17)) / 8
    night = sum(per_hour[h] for h in range(0, 6)) / 6
    assert working > 5 * night


def test_bursts_are_flagged_and_far_above_the_usual_hour(demo90: Workload) -> None:
    runs = [e for e in demo90.events() if e.meter == "agent.runs"]
    per_hour = Counter(e.event_time.replace(minute=0, second=0, microsecond=0) for e in runs)
    burst_hours = {e.event_time.replace(minute=0, second=0, microsecond=0) for e in runs if e.burst}
    ordinary = sorted(n for hour, n in per_hour.items() if hour not in burst_hours and hour.weekday() < 5)
    assert len(burst_hours) >= 5
    busiest_burst = max(per_hour[h] for h in burst_hours)
    assert busiest_burst >= 3 * ordinary[len(ordinary) // 2]
    assert any(e.quantity > 1 for e in runs if e.burst)  # a burst also reports several runs at once


# -- shape: decimals -------------------------------------------------------------------------------


def test_quantities_are_exact_decimals_of_every_scale(demo90: Workload) -> None:
    by_meter: dict[str, list[Decimal]] = defaultdict(list)
    for event in demo90.events():
        assert isinstance(event.quantity, Decimal)
        by_meter[event.meter].append(event.quantity)
    assert all(q % Decimal("0.25") == 0 and 0 < q <= 9 for q in by_meter["talent.hours"])
    assert any(decimal_places(q) == 2 for q in by_meter["talent.hours"])  # 7.25, 1.75 ...
    assert any(q >= 10_000 for q in by_meter["agent.tokens"])
    assert any(decimal_places(q) == 3 for q in by_meter["agent.run_seconds"])
    assert any(decimal_places(q) == 6 for q in by_meter["compute.vcpu_hours"])
    assert any(q <= Decimal("0.000999") for q in by_meter["storage.gb_days"])
    assert any(decimal_places(q) == 9 for q in by_meter["storage.gb_days"])
    places = {decimal_places(q) for qs in by_meter.values() for q in qs}
    assert {0, 1, 2, 3, 6, 9} <= places and max(places) <= 9


# -- shape: the meters that do not sum ------------------------------------------------------------------


def test_a_timesheet_per_talent_and_day_worked_whose_quantity_is_what_it_logs(demo90: Workload) -> None:
    line = "LIN-26-100202"
    logged: dict[tuple[str, date], Decimal] = defaultdict(Decimal)
    sheets: Counter[tuple[str, date]] = Counter()
    quantity: dict[tuple[str, date], Decimal] = {}
    for event in demo90.events():
        if event.service_line_id != line or event.retry:
            continue
        key = (dict(event.metadata)["talent_id"], event.period_date)
        if event.meter == "talent.hours":
            logged[key] += event.quantity
        elif event.meter == "talent.timesheets":
            sheets[key] += 1
            quantity[key] = event.quantity
    assert len(sheets) > 50 and set(sheets.values()) == {1}
    [pause] = demo90.pauses  # the history's start and the pause cut some days' reports in two: not those
    inside = {
        key for key in sheets if demo90.start.date() + timedelta(days=6) <= key[1] < pause.at.date() - timedelta(days=7)
    }
    assert len(inside) > 40 and inside <= set(logged)
    assert all(quantity[key] == logged[key] for key in inside)
    assert any(q != 1 for q in quantity.values())  # a count meter ignores it: its value is not their sum
    assert any(e.late for e in demo90.events() if e.meter == "talent.timesheets")


def test_the_collector_reports_storage_alike_in_each_region_and_resizes_rarely() -> None:
    region_lines = [
        LineSpec(line_spec.line, team=3)
        for org in wl.demo_organizations()
        for line_spec in org.lines
        if line_spec.line.id == "LIN-26-091200"
    ]
    org = wl.demo_organizations()[0]
    workload = wl.generate([OrganizationSpec(org.organization, org.workspaces, tuple(region_lines))], days=90, now=NOW)
    readings: dict[date, set[Decimal]] = defaultdict(set)
    regions: dict[date, set[str]] = defaultdict(set)
    fewest: list[Decimal] = []
    for event in workload.events():
        if event.meter == "compute.storage_gb" and not event.retry:
            readings[event.period_date].add(event.quantity)
            regions[event.period_date].add(dict(event.metadata)["region"])
        elif event.meter == "compute.min_replicas":
            fewest.append(event.quantity)
    assert all(len(values) == 1 for values in readings.values())  # one volume, provisioned in each region
    assert max(len(r) for r in regions.values()) == 3
    sizes = [next(iter(readings[day])) for day in sorted(readings)]
    changes = [day for day, a, b in zip(sorted(readings)[1:], sizes, sizes[1:], strict=False) if a != b]
    assert 1 <= len(changes) <= 12
    assert all(day < NOW.date() - timedelta(days=wl.GAUGE_QUIET_DAYS) for day in changes)
    assert set(fewest) <= {Decimal(1), Decimal(2), Decimal(3)} and len(set(fewest)) >= 2


def test_agent_runs_report_latency_users_from_a_bounded_population_and_hourly_peaks(demo90: Workload) -> None:
    line = "LIN-26-091500"
    events = [e for e in demo90.events() if e.service_line_id == line and not e.retry]
    runs = [e for e in events if e.meter == "agent.runs"]
    latency = [e for e in events if e.meter == "agent.latency_ms"]
    users = [dict(e.metadata)["user_id"] for e in events if e.meter == "agent.unique_users"]
    peaks = [e for e in events if e.meter == "agent.peak_concurrency"]
    assert len(latency) == len(runs) == len(users) > 100
    assert all(e.quantity > 0 and decimal_places(e.quantity) <= 1 for e in latency)
    assert 2 <= len(set(users)) <= wl.USERS_PER_AGENT * 2  # the line has 2 agents
    assert max(Counter(users).values()) > 3 * min(Counter(users).values())  # regulars and occasional users
    runs_per_hour: Counter[tuple[str, datetime]] = Counter()
    for run in runs:
        runs_per_hour[(dict(run.metadata)["agent_id"], run.event_time.replace(minute=0, second=0, microsecond=0))] += (
            int(run.quantity)
        )
    for peak in peaks:
        hour = peak.event_time.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        assert 1 <= peak.quantity <= runs_per_hour[(dict(peak.metadata)["agent_id"], hour)]
        assert peak.period_date == hour.date()
    assert any(p.quantity > 1 for p in peaks)
    # the first agent line (demo.json's) bills only the sum meters: it reports nothing else
    assert {e.meter for e in demo90.events() if e.service_line_id == "LIN-26-091100"} == {
        "agent.runs",
        "agent.tokens",
        "agent.run_seconds",
    }


def test_a_batch_never_holds_two_different_readings_of_a_gauge() -> None:
    for flush in (timedelta(hours=1), timedelta(days=1), timedelta(days=3)):
        workload = wl.generate(days=30, now=NOW, seed=4, flush_every=flush)
        for batch in workload.batches:
            readings: dict[str, set[Decimal]] = defaultdict(set)
            for event in batch.events:
                if event.meter == "compute.storage_gb":
                    readings[event.service_line_id].add(event.quantity)
            assert all(len(values) == 1 for values in readings.values())


def test_the_volume_per_scale_stays_about_what_it_was() -> None:
    # 8,681 events for these arguments before the meters of other aggregations were added
    assert 8_681 <= wl.generate(days=90, now=NOW, seed=7).event_count <= 1.15 * 8_681


# -- retries, late events, the paused line ------------------------------------------------------------------


def test_retries_resend_the_same_key_and_payload_within_minutes(demo90: Workload) -> None:
    first: dict[tuple[str, str], tuple[datetime, dict[str, Any]]] = {}
    retries = 0
    for batch, event in all_events(demo90):
        slot = (event.organization_id, event.idempotency_key)
        if not event.retry:
            assert slot not in first, "a key is reused only by a retry"
            first[slot] = (batch.sent_at, event.body())
            continue
        retries += 1
        sent_at, body = first[slot]  # a retry comes after what it retries
        assert body == event.body()
        assert timedelta(0) <= batch.sent_at - sent_at < timedelta(hours=1)
    assert retries >= 100
    assert any(b.replay for b in demo90.batches)  # whole batches sent again too


def test_late_events_count_for_days_before_they_are_reported(demo90: Workload) -> None:
    late = [e for e in demo90.events() if e.late]
    assert len(late) >= 50
    lateness = Counter((e.event_time.date() - e.period_date).days for e in late)
    assert set(lateness) <= {1, 2, 3, 4, 5} and len(lateness) == 5
    assert {e.meter for e in late} >= {"talent.hours", "ods.cycles", "storage.gb_days"}


def test_history_older_than_the_api_window_is_in_the_stream(demo90: Workload) -> None:
    oldest = min(e.period_date for e in demo90.events())
    assert (NOW.date() - oldest).days > 62


def test_the_paused_line_stops_and_what_it_sends_later_is_flagged(demo90: Workload) -> None:
    [pause] = demo90.pauses
    assert pause.service_line_id == "LIN-26-100202"
    assert demo90.start + timedelta(days=60) < pause.at < demo90.start + timedelta(days=66)
    sent_at = {id(e): b.sent_at for b, e in all_events(demo90)}
    line = [e for e in demo90.events() if e.service_line_id == pause.service_line_id]
    before = [e for e in line if sent_at[id(e)] < pause.at]
    after = [e for e in line if sent_at[id(e)] >= pause.at]
    assert len(before) > 50 and not any(e.after_pause for e in before)
    assert 1 <= len(after) <= 3 and all(e.after_pause for e in after)
    assert min(e.event_time for e in after) >= pause.at + timedelta(hours=1)


# -- expected totals, recomputed here from the stream -----------------------------------------------------

AGGREGATION = {m["id"]: m["aggregation"] for m in catalog_data.read("meters")}
Key = tuple[str, str, str, date]


def value_of(meter: str, accepted: list[tuple[datetime, int, GeneratedEvent]]) -> Decimal:
    """A meter's value over accepted events (send time, position in the stream, event), by its definition in
    the catalog, computed here without the domain's fold."""
    quantities = [e.quantity for _, _, e in accepted]
    aggregation = AGGREGATION[meter]
    if aggregation == "sum":
        return sum(quantities, Decimal(0))
    if aggregation == "count":
        return Decimal(len(quantities))
    if aggregation == "max":
        return max(quantities)
    if aggregation == "min":
        return min(quantities)
    if aggregation == "latest":
        return max(accepted, key=lambda a: (a[0], a[1]))[2].quantity
    if aggregation == "unique_count":
        return Decimal(len({dict(e.metadata)["user_id"] for _, _, e in accepted}))
    assert aggregation == "avg"
    return (sum(quantities, Decimal(0)) / len(quantities)).quantize(Decimal("1e-9"))  # half-even


def recompute(workload: Workload) -> tuple[dict[Key, list[tuple[datetime, int, GeneratedEvent]]], int, int, int]:
    """The accepted events per day and counts by another route: the first send of each key counts unless its
    line was paused (the stream's retries all follow within minutes, well inside the 48-hour window)."""
    paused_at = {(p.organization_id, p.service_line_id): p.at for p in workload.pauses}
    accepted: dict[Key, list[tuple[datetime, int, GeneratedEvent]]] = defaultdict(list)
    counted: set[tuple[str, str]] = set()
    refused = duplicate = 0
    for position, (batch, event) in enumerate(all_events(workload)):
        pause = paused_at.get((event.organization_id, event.service_line_id))
        if (event.organization_id, event.idempotency_key) in counted:
            duplicate += 1
        elif pause is not None and batch.sent_at >= pause:
            refused += 1
        else:
            counted.add((event.organization_id, event.idempotency_key))
            key = (event.organization_id, event.service_line_id, event.meter, event.period_date)
            accepted[key].append((batch.sent_at, position, event))
    return dict(accepted), len(counted), duplicate, refused


def test_expected_totals_match_a_recomputation_from_the_stream(demo90: Workload) -> None:
    exp = wl.expected(demo90)
    per_day, accepted, duplicate, refused = recompute(demo90)
    assert exp.totals == {key: value_of(key[2], events) for key, events in per_day.items()}
    assert (exp.accepted, exp.duplicate, exp.refused) == (accepted, duplicate, refused)
    assert duplicate >= 100 and refused >= 1
    assert sum(exp.accepted_by_organization.values()) == accepted
    assert exp.accepted + exp.duplicate + exp.refused == demo90.event_count


def test_expected_per_line_meter_folds_the_days_by_each_aggregation(demo90: Workload) -> None:
    exp = wl.expected(demo90)
    per_day, _, _, _ = recompute(demo90)
    org = "ORG-26-090500"
    start, end = exp.period(org)
    for first, last in ((start, end), (end - timedelta(days=20), end - timedelta(days=6)), (end, end)):
        over: dict[tuple[str, str], list[tuple[datetime, int, GeneratedEvent]]] = defaultdict(list)
        for (o, line, meter, day), events in per_day.items():
            if o == org and first <= day <= last:
                over[(line, meter)].extend(events)
        assert exp.by_line_meter(org, first, last) == {k: value_of(k[1], events) for k, events in over.items()}
    whole = exp.by_line_meter(org, start, end)
    days = [
        v for (o, line, meter, _), v in exp.totals.items() if (line, meter) == ("LIN-26-091500", "agent.unique_users")
    ]
    assert whole[("LIN-26-091500", "agent.unique_users")] < sum(days)  # the same users come back on other days
    peaks = [v for (o, line, meter, _), v in exp.totals.items() if meter == "agent.peak_concurrency"]
    assert whole[("LIN-26-091500", "agent.peak_concurrency")] == max(peaks)


def test_expected_costs_are_rate_times_value_rounded_per_line(demo90: Workload) -> None:
    exp = wl.expected(demo90)
    for org in demo90.organizations:
        start, end = exp.period(org.organization.id)
        values = exp.by_line_meter(org.organization.id, start, end)
        costs = exp.costs(org.organization.id, start, end)
        assert set(costs) == {spec.line.id for spec in org.lines}
        total = Decimal(0)
        for spec in org.lines:
            exact = sum(
                (
                    WIDE.multiply(rate, values.get((spec.line.id, meter), Decimal(0)))
                    for meter, rate in spec.line.rates.items()
                ),
                Decimal(0),
            )
            assert costs[spec.line.id] == exact.quantize(Decimal("0.01"))
            total += exact
        assert exp.total_cost(org.organization.id, "USD", start, end) == total.quantize(Decimal("0.01"))
    infra = exp.costs("ORG-26-090500")["LIN-26-091200"]
    storage = exp.by_line_meter("ORG-26-090500")[("LIN-26-091200", "compute.storage_gb")]
    assert storage in {Decimal(gb) for gb in wl.STORAGE_SIZES_GB} and infra > storage * Decimal("0.10")


def test_a_loaded_history_summarizes_to_the_expected_values_and_costs(client: Any, container: Container) -> None:
    loaded = wl.load_history(container, days=6, now=NOW, seed=5, flush_every=timedelta(hours=6))
    exp = loaded.expected
    assert loaded.as_expected
    run_aggregator(client, container)
    for org, key in (("ORG-26-090500", FULL_KEY), ("ORG-26-100200", OTHER_ORG_KEY)):
        start, end = exp.period(org)
        query = urlencode({"from": start.isoformat(), "to": end.isoformat()})
        response = client.http.get(f"/v1/usage/summary?{query}", headers=auth(key))
        assert response.status_code == 200, response.body
        summary = body(response)["data"]
        shown = {
            (line["service_line_id"], meter["meter"]): meter["quantity"]
            for line in summary["by_service_line"]
            for meter in line["meters"]
        }
        assert shown == exp.by_line_meter(org, start, end)
        assert {line["service_line_id"]: line["cost_estimate"] for line in summary["by_service_line"]} == exp.costs(
            org, start, end
        )
        assert summary["total_cost_estimate"] == exp.total_cost(org, summary["currency"], start, end)
    aggregations = {m["id"]: m["aggregation"] for m in catalog_data.read("meters")}
    assert {aggregations[meter] for (_, _, meter, _) in exp.states} == set(aggregations.values())


def test_expected_per_line_meter_adds_the_days() -> None:
    workload = wl.generate(days=10, now=NOW, seed=1)
    exp = wl.expected(workload)
    first, last = exp.period("ORG-26-090500")
    sums = exp.by_line_meter("ORG-26-090500", first, last)
    assert sums[("LIN-26-091100", "agent.tokens")] == sum(
        (q for (org, line, meter, _), q in exp.totals.items() if (line, meter) == ("LIN-26-091100", "agent.tokens")),
        Decimal(0),
    )
    one_day = exp.by_line_meter("ORG-26-090500", last, last)
    assert all(sums[k] >= q for k, q in one_day.items())


def tiny_workload(batches: list[Batch], pauses: tuple[Pause, ...] = ()) -> Workload:
    org = wl.demo_organizations()[0]
    return Workload((org,), NOW - timedelta(days=5), NOW, 0, tuple(batches), pauses)


T0 = NOW - timedelta(days=4)


def ev(key: str, quantity: str, period: date = T0.date(), line: str = "LIN-26-091100") -> GeneratedEvent:
    meter = "agent.runs" if line == "LIN-26-091100" else "talent.hours"
    return GeneratedEvent("ORG-26-090500", line, meter, Decimal(quantity), period, T0, key, "api", ())


def test_expected_applies_the_service_rules_one_by_one() -> None:
    t0, org, talent = T0, "ORG-26-090500", "LIN-26-084729"
    workload = tiny_workload(
        [
            Batch(org, t0, (ev("a", "1.5"), ev("b", "2"), ev("a", "1.50"))),  # a replay in the same batch
            Batch(org, t0 + timedelta(minutes=1), (ev("a", "1.5"), ev("b", "3"))),  # duplicate; conflict
            Batch(org, t0 + timedelta(hours=49), (ev("a", "7"), ev("p", "4", line=talent))),  # past 48 h: "a" again
            Batch(org, t0 + timedelta(hours=50), (ev("c", "1", period=T0.date() - timedelta(days=70)),)),  # too old
            Batch(
                org,
                t0 + timedelta(hours=51),  # the talent line is paused by then: only a replay is answered
                (ev("d", "4", line=talent), ev("p", "4", line=talent)),
            ),
        ],
        pauses=(Pause(org, talent, t0 + timedelta(hours=51)),),
    )
    exp = wl.expected(workload)
    assert (exp.accepted, exp.duplicate, exp.refused) == (4, 3, 3)
    assert exp.totals == {
        (org, "LIN-26-091100", "agent.runs", T0.date()): Decimal("10.5"),
        (org, talent, "talent.hours", T0.date()): Decimal("4"),
    }


def test_expected_when_everything_is_sent_now_refuses_what_is_too_old() -> None:
    workload = wl.generate(days=90, now=NOW, seed=2)
    exp = wl.expected(workload, sent_at=NOW)
    window_start = NOW.date() - timedelta(days=62)
    assert min(day for (_, _, _, day) in exp.totals) == window_start
    too_old = sum(1 for e in workload.events() if e.period_date < window_start)
    assert too_old > 1000 and exp.refused >= too_old


# -- generated organizations ---------------------------------------------------------------------------------


def test_generated_organizations_fit_their_plans() -> None:
    plans = {p["id"]: Plan.model_validate(p) for p in catalog_data.read("plans")}
    meters = {m["id"]: m for m in catalog_data.read("meters")}
    specs = wl.generated_organizations(12, seed=5)
    assert len({s.organization.id for s in specs}) == 12
    assert len({s.line.id for org in specs for s in org.lines}) == sum(len(org.lines) for org in specs)
    for spec in specs:
        plan = plans[spec.organization.plan_id]
        assert plan.status == "active"
        assert len(spec.lines) >= 2
        assert plan.limits.workspaces is None or len(spec.workspaces) <= plan.limits.workspaces
        assert plan.limits.active_service_lines is None or len(spec.lines) <= plan.limits.active_service_lines
        workspaces = {w.id for w in spec.workspaces}
        for line_spec in spec.lines:
            line = line_spec.line
            assert line.organization_id == spec.organization.id and line.workspace_id in workspaces
            assert line.product_line in plan.allowed_product_lines
            for meter in line.rates:
                assert meters[meter]["status"] == "ACTIVE" and line.product_line in meters[meter]["product_lines"]
    assert specs[0].lines[-1].pause_fraction is not None


def test_a_workload_of_generated_organizations_has_usage_for_each() -> None:
    specs = wl.generated_organizations(4, seed=9)
    workload = wl.generate(specs, days=14, now=NOW, seed=9)
    exp = wl.expected(workload)
    assert set(exp.accepted_by_organization) == {s.organization.id for s in specs}
    assert len(workload.pauses) >= 1 and exp.refused >= 1


def test_scale_for_reaches_a_target_volume() -> None:
    scale = wl.scale_for(20_000, days=30, now=NOW)
    events = wl.generate(days=30, now=NOW, scale=scale).event_count
    assert 18_000 <= events <= 22_000


def test_a_custom_line_spec_is_used_as_given() -> None:
    org = Organization(id="ORG-26-999001", name="Tiny", plan_id="plan_growth_monthly", created_at=NOW)
    line = ServiceLine(
        id="LIN-26-999101",
        organization_id=org.id,
        workspace_id="WS-26-999011",
        name="Queries",
        product_line="intelligence",
        rates={"intelligence.queries": Decimal("0.02")},
        created_at=NOW,
    )
    workload = wl.generate([OrganizationSpec(org, (), (LineSpec(line),))], days=7, now=NOW)
    assert workload.event_count > 20
    assert {e.meter for e in workload.events()} == {"intelligence.queries"}
    assert all(q.quantity == int(q.quantity) for q in workload.events())


def test_meter_usage_body_is_the_002_report() -> None:
    event = next(iter(wl.generate(days=2, now=NOW).events()))
    key, body = event.meter_usage_body()
    assert key.startswith("mu-") and len(key) <= 128
    assert body["value"] == event.quantity and body["customerId"] == event.organization_id
    assert body["meterName"] == event.meter and body["subscriptionId"] == event.service_line_id
    assert datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")) == event.event_time.replace(
        microsecond=event.event_time.microsecond // 1000 * 1000
    )
