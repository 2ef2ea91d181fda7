"""A seeded workload shaped like real usage, shared by the demo, the tests and the bench.

What it makes:
- organizations with their workspaces and service lines: the demo organizations (plus a few lines so
  that every active meter and a paused line appear), or generated ones on the catalog's plans;
- days of usage ending at a given instant: working hours heavier than nights, weekends light, bursts
  of agent runs, exact decimals of every scale (7.25 hours, 48213 tokens, 12.347 seconds,
  0.000001 GB-days), retries of the same idempotency key with the same payload, late events
  (a period_date days before the event), and a paused line whose later events are refused;
- every aggregation the catalog has, where a line bills it: a timesheet per talent and day worked
  (count), the provisioned storage and the fewest replicas the infrastructure collector reports
  each day (latest, min), and per agent run its latency (avg) and end user (unique_count, from a
  bounded population per line), with each agent's peak concurrency per hour (max);
- those events as native batch bodies (`POST /v1/metering/events/batch`), grouped per organization into
  batches of up to 100 in time order, each with the instant it is sent at.

`expected(workload)` replays the stream by the service's rules (a replay of a key is a duplicate, an
event for a paused line is refused) and gives the exact value of each meter under its aggregation
(folded by domain/aggregation.py, as the rollups are) and the cost a summary must show. `load_history`
feeds a workload into a container in-process, each batch at its own instant, so history older than
the 62 days the API accepts still passes.

A `latest` meter's value depends on the order events arrive in: the service orders them by event time
(for a native event, when its batch is received) and same-time events by a random id. So a batch never
carries two different readings of one line's gauge, and a gauge keeps its reading over the last
GAUGE_QUIET_DAYS days of a history, whatever order a client's threads deliver the last batches in.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Context, Decimal, localcontext
from typing import Any, Literal

from chalicelib import catalog as catalog_data
from chalicelib.container import Container
from chalicelib.domain.aggregation import EMPTY, Contribution, RollupState, aggregation_of, fold, fold_all, group_text
from chalicelib.domain.aggregation import value as aggregated_value
from chalicelib.domain.models import Meter, Organization, Plan, ServiceLine, Workspace, instant
from chalicelib.domain.money import exact_sum, line_cost, round_money
from chalicelib.domain.usage import IDEMPOTENCY_WINDOW, MAX_BATCH_EVENTS, PERIOD_DAYS_BACK, PERIOD_DAYS_FORWARD
from chalicelib.errors import MeteringError
from chalicelib.storage.catalog_repo import DynamoCatalogRepository

__all__ = [
    "Batch",
    "Expected",
    "GeneratedEvent",
    "LineSpec",
    "LoadReport",
    "OrganizationSpec",
    "Pause",
    "Workload",
    "demo_organizations",
    "expected",
    "generate",
    "generated_organizations",
    "install_catalog",
    "load",
    "load_history",
    "scale_for",
    "values_of_listed",
]

Activity = Literal["timesheets", "agent_runs", "infrastructure", "queries", "cycles"]

# How each product line is used, and the sources that report it.
ACTIVITY: dict[str, Activity] = {
    "talent": "timesheets",
    "managed_services": "timesheets",
    "agent_gateway": "agent_runs",
    "infrastructure": "infrastructure",
    "intelligence": "queries",
    "ods": "cycles",
}
SOURCE: dict[Activity, str] = {
    "timesheets": "timesheets",
    "agent_runs": "agent-gateway",
    "infrastructure": "infra-collector",
    "queries": "intelligence",
    "cycles": "ods-scheduler",
}
# Rates a generated line bills at (per unit, USD).
DEFAULT_RATES: dict[str, Decimal] = {
    "talent.hours": Decimal("95"),
    "talent.days": Decimal("760"),
    "compute.vcpu_hours": Decimal("0.045"),
    "storage.gb_days": Decimal("0.0023"),
    "agent.runs": Decimal("0.40"),
    "agent.tokens": Decimal("0.0005"),
    "agent.run_seconds": Decimal("0.002"),
    "intelligence.queries": Decimal("0.02"),
    "ods.cycles": Decimal("150"),
    "talent.timesheets": Decimal("1.50"),  # per timesheet processed
    "compute.storage_gb": Decimal("0.10"),  # per GB provisioned, as last reported
    "compute.min_replicas": Decimal("18"),  # per replica always running (the period's fewest)
    "agent.peak_concurrency": Decimal("2.50"),  # per concurrent run at the period's peak
    "agent.unique_users": Decimal("0.75"),  # per distinct end user
    "agent.latency_ms": Decimal("0"),  # reported for the dashboards, not billed
}

# Rhythm: weight of each UTC hour of a day and of each weekday (Monday = 0).
HOUR_WEIGHT: tuple[float, ...] = tuple(
    1.0 if 8 <= h <= 17 else 0.6 if h in (7, 18) else 0.25 if 19 <= h <= 22 else 0.08 for h in range(24)
)
WEEKDAY_WEIGHT: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 0.95, 0.2, 0.12)

# Rates at scale 1, per line: agent runs per working hour, queries per working hour, ODS cycles per weekday.
AGENT_RUNS_PER_HOUR = 2.0
QUERIES_PER_HOUR = 1.0
CYCLES_PER_WEEKDAY = 3.0
INFRA_REPORT_HOURS = 3  # an infrastructure collector reports vCPU-hours every 3 hours
BURST_CHANCE = 0.12  # per agent or query line and day: one hour at BURST_FACTOR
BURST_FACTOR = 6.0
LATE_CHANCE = 0.08  # a timesheet entry or ODS cycle reported 1-5 days after the day it counts for
USERS_PER_AGENT = 25  # an agent line's end users: this many per agent (a bounded population per line)
STORAGE_SIZES_GB = (128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)  # provisioned volume sizes
RESIZE_CHANCE = 0.04  # per infrastructure line and day: its storage is resized one size up or down
GAUGE_QUIET_DAYS = 10  # no resize in a history's last days: the latest reading is the same whatever the order
RETRY_CHANCE = 0.015  # an event sent again, alone, seconds to minutes later
REPLAY_CHANCE = 0.01  # a whole batch sent again (its answer was lost)
RETRY_DELAY = timedelta(minutes=5)  # the latest a retry follows its event
REPLAY_DELAY = timedelta(seconds=90)
SEND_LAG = timedelta(seconds=30)  # the latest a batch leaves after its last event
AFTER_PAUSE_EVENTS = 3  # events a paused line's source still sends before it stops
DEFAULT_FLUSH = timedelta(hours=1)  # each organization's sender flushes hourly (or at 100 events)

_GENERATED_ORG_BASE = 700000
MAX_GENERATED_ORGANIZATIONS = 2000


# -- organizations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineSpec:
    """A service line and how busy it is: `team` talents, agents or regions, `busy` times the usual rate of
    agent runs, queries or ODS cycles; paused part way if asked."""

    line: ServiceLine
    team: int = 3
    pause_fraction: float | None = None  # paused this far into the history (0..1)
    busy: float = 1.0

    @property
    def activity(self) -> Activity:
        return ACTIVITY[self.line.product_line]


@dataclass(frozen=True)
class OrganizationSpec:
    organization: Organization
    workspaces: tuple[Workspace, ...]
    lines: tuple[LineSpec, ...]


_DEMO_CREATED = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)
# Lines the demo organizations get on top of demo.json, so that the demo shows every active meter (of
# every aggregation) and a paused line. (demo.json's own lines keep their rates: tests read them.)
_DEMO_EXTRA_LINES: tuple[tuple[dict[str, Any], int, float | None, float], ...] = (  # line, team, pause, busy
    (
        {
            "id": "LIN-26-091200",
            "organization_id": "ORG-26-090500",
            "workspace_id": "WS-26-000101",
            "name": "Staging Infrastructure",
            "product_line": "infrastructure",
            "rates": {
                "compute.vcpu_hours": "0.045",
                "storage.gb_days": "0.0023",
                "compute.storage_gb": "0.10",
                "compute.min_replicas": "18",
            },
        },
        1,
        None,
        1.0,
    ),
    (
        {
            "id": "LIN-26-091500",
            "organization_id": "ORG-26-090500",
            "workspace_id": "WS-26-000101",
            "name": "Support Assistant Agents",
            "product_line": "agent_gateway",
            "rates": {
                "agent.runs": "0.40",
                "agent.peak_concurrency": "2.50",
                "agent.unique_users": "0.75",
                "agent.latency_ms": "0",
            },
        },
        2,
        None,
        0.1,
    ),
    (
        {
            "id": "LIN-26-091300",
            "organization_id": "ORG-26-090500",
            "workspace_id": "WS-26-000101",
            "name": "Developer Intelligence",
            "product_line": "intelligence",
            "rates": {"intelligence.queries": "0.02"},
        },
        1,
        None,
        1.0,
    ),
    (
        {
            "id": "LIN-26-091400",
            "organization_id": "ORG-26-090500",
            "workspace_id": "WS-26-000101",
            "name": "ODS Pilot",
            "product_line": "ods",
            "rates": {"ods.cycles": "150"},
        },
        1,
        None,
        1.0,
    ),
    (
        {
            "id": "LIN-26-100202",
            "organization_id": "ORG-26-100200",
            "workspace_id": "WS-26-000201",
            "name": "Website Refresh (ended)",
            "product_line": "talent",
            "rates": {"talent.hours": "55", "talent.timesheets": "1.50"},
        },
        2,
        0.7,
        1.0,
    ),
)
_DEMO_TEAMS = {"LIN-26-084729": 5, "LIN-26-091100": 4, "LIN-26-100201": 3}


def demo_organizations(extra_lines: bool = True) -> tuple[OrganizationSpec, ...]:
    """The organizations of demo.json; with `extra_lines`, plus an infrastructure, an intelligence, an ODS
    and a second (quieter) agent line for the enterprise organization and a talent line of the starter one
    paused 70% of the way in: between them every active meter."""
    demo = catalog_data.read("demo")
    lines = [
        LineSpec(ServiceLine.model_validate(raw), team=_DEMO_TEAMS.get(raw["id"], 3)) for raw in demo["service_lines"]
    ]
    if extra_lines:
        for raw, team, pause, busy in _DEMO_EXTRA_LINES:
            line = ServiceLine.model_validate({**raw, "created_at": _DEMO_CREATED})
            lines.append(LineSpec(line, team=team, pause_fraction=pause, busy=busy))
    specs = []
    for raw in demo["organizations"]:
        org = Organization.model_validate(raw)
        specs.append(
            OrganizationSpec(
                organization=org,
                workspaces=tuple(
                    Workspace.model_validate(w) for w in demo["workspaces"] if w["organization_id"] == org.id
                ),
                lines=tuple(s for s in lines if s.line.organization_id == org.id),
            )
        )
    return tuple(specs)


@functools.cache
def _platform_meters() -> dict[str, Meter]:
    return {m.id: m for m in (Meter.model_validate(raw) for raw in catalog_data.read("meters"))}


def _aggregation(meter_id: str) -> str:
    """A meter's aggregation (a meter the catalog lacks sums, as the query service reads it)."""
    meter = _platform_meters().get(meter_id)
    return meter.aggregation if meter is not None else "sum"


def _meters_by_product_line() -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for meter in _platform_meters().values():
        if meter.active and meter.id in DEFAULT_RATES:  # the meters the workload knows how to report
            for product_line in meter.product_lines:
                found[product_line].append(meter.id)
    return found


def generated_organizations(count: int, seed: int = 0) -> tuple[OrganizationSpec, ...]:
    """`count` organizations on the catalog's active plans, each with workspaces and 2 or more service lines
    within its plan's limits; the first has a line paused part way (others by chance)."""
    if not 0 <= count <= MAX_GENERATED_ORGANIZATIONS:
        raise ValueError(f"count must be 0 to {MAX_GENERATED_ORGANIZATIONS}")
    rng = random.Random(f"organizations-{seed}")
    plans = [p for p in (Plan.model_validate(raw) for raw in catalog_data.read("plans")) if p.status == "active"]
    meters = _meters_by_product_line()
    specs = []
    for i in range(1, count + 1):
        plan = plans[(i - 1) % len(plans)]
        org = Organization(
            id=f"ORG-26-{_GENERATED_ORG_BASE + i:06d}",
            name=f"Workload Org {i}",
            plan_id=plan.id,
            created_at=_DEMO_CREATED,
        )
        ws_limit = plan.limits.workspaces or 3
        workspaces = tuple(
            Workspace(id=f"WS-26-{_GENERATED_ORG_BASE + i * 10 + w:06d}", organization_id=org.id, name=f"Team {w}")
            for w in range(1, min(3, ws_limit) + 1)
        )
        product_lines = [p for p in plan.allowed_product_lines if meters.get(p)]
        wanted = [p for p in product_lines if rng.random() < 0.7] or product_lines[:1]
        line_limit = plan.limits.active_service_lines or 50
        if len(wanted) < 2:  # a second line of the same product line (a starter's second squad)
            wanted.append(wanted[0])
        wanted = wanted[:line_limit]
        lines = []
        for n, product_line in enumerate(wanted, start=1):
            line_meters = meters[product_line]
            chosen = [m for m in line_meters if rng.random() < 0.8] or line_meters[:1]
            factor = Decimal(rng.choice(("0.8", "0.9", "1", "1.1")))
            line = ServiceLine(
                id=f"LIN-26-{_GENERATED_ORG_BASE + i * 100 + n:06d}",
                organization_id=org.id,
                workspace_id=workspaces[(n - 1) % len(workspaces)].id,
                name=f"{product_line.replace('_', ' ').title()} {n}",
                product_line=product_line,  # type: ignore[arg-type]
                rates={m: DEFAULT_RATES[m] * factor for m in chosen},
                created_at=_DEMO_CREATED,
            )
            paused = (i == 1 and n == len(wanted)) or (i > 1 and n > 1 and rng.random() < 0.15)
            lines.append(
                LineSpec(line, team=rng.randint(1, 5), pause_fraction=rng.uniform(0.4, 0.9) if paused else None)
            )
        specs.append(OrganizationSpec(org, workspaces, tuple(lines)))
    return tuple(specs)


# -- the stream ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedEvent:
    """One reported event: what is sent, and why (a retry, a late report, after its line's pause)."""

    organization_id: str
    service_line_id: str
    meter: str
    quantity: Decimal
    period_date: date
    event_time: datetime
    idempotency_key: str
    source: str
    metadata: tuple[tuple[str, str], ...]
    retry: bool = False  # the same key and payload sent again
    burst: bool = False
    after_pause: bool = False  # its line is paused by the time it is sent: refused

    @property
    def late(self) -> bool:
        """Reported on a later day than the one it counts for."""
        return self.period_date < self.event_time.date()

    def body(self) -> dict[str, Any]:
        """The native event body (`POST /v1/metering/events` and each item of a batch)."""
        return {
            "service_line_id": self.service_line_id,
            "meter": self.meter,
            "quantity": self.quantity,
            "period_date": self.period_date.isoformat(),
            "idempotency_key": self.idempotency_key,
            "source": self.source,
            "metadata": dict(self.metadata),
        }

    def meter_usage_body(self) -> tuple[str, dict[str, Any]]:
        """The Idempotency-Key header and body of `POST /v1/meter-usage` (document 002).

        That API takes an event time, and its period_date is the time's date: a late event counts for
        the day it is reported on there. The key gets a prefix so it never meets the native one.
        """
        return f"mu-{self.idempotency_key}"[:128], {
            "value": self.quantity,
            "customerId": self.organization_id,
            "meterName": self.meter,
            "subscriptionId": self.service_line_id,
            "timestamp": _iso(self.event_time),
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class Batch:
    """Events of one organization sent together at `sent_at` (at most 100)."""

    organization_id: str
    sent_at: datetime
    events: tuple[GeneratedEvent, ...]
    replay: bool = False  # a whole batch sent again

    def body(self) -> dict[str, Any]:
        """The body of `POST /v1/metering/events/batch` (quantities are Decimal: dump with use_decimal)."""
        return {"events": [e.body() for e in self.events]}


@dataclass(frozen=True)
class Pause:
    organization_id: str
    service_line_id: str
    at: datetime


@dataclass(frozen=True)
class Workload:
    """A generated history: its organizations, the batches in the order they are sent, and the pauses."""

    organizations: tuple[OrganizationSpec, ...]
    start: datetime
    now: datetime
    seed: int
    batches: tuple[Batch, ...]
    pauses: tuple[Pause, ...]

    def events(self) -> Iterator[GeneratedEvent]:
        for batch in self.batches:
            yield from batch.events

    @property
    def event_count(self) -> int:
        return sum(len(b.events) for b in self.batches)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _compact(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%S") + f"{moment.microsecond // 1000:03d}"


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method below 30, a rounded normal above)."""
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _at(day: date, hour: int, rng: random.Random) -> datetime:
    """A random millisecond in an hour of a day."""
    start = datetime(day.year, day.month, day.day, hour, tzinfo=UTC)
    return start + timedelta(milliseconds=rng.randrange(3_600_000))


def _hour_by_rhythm(rng: random.Random, first: int = 0, last: int = 23) -> int:
    hours = list(range(first, last + 1))
    return rng.choices(hours, weights=[HOUR_WEIGHT[h] for h in hours])[0]


def _scaled(units: int, places: int) -> Decimal:
    """units x 10^-places, exactly."""
    return Decimal(units).scaleb(-places)


@dataclass
class _LineStream:
    """Builds one line's events, a day at a time."""

    spec: LineSpec
    rng: random.Random
    scale: float
    last_day: date = date.max  # the history's last day (no storage resize in its last GAUGE_QUIET_DAYS)
    seq: int = 0
    out: list[GeneratedEvent] = field(default_factory=list)
    storage_size: int | None = None  # index in STORAGE_SIZES_GB of the provisioned storage, once known

    def emit(
        self,
        when: datetime,
        meter: str,
        quantity: Decimal,
        metadata: dict[str, str],
        period: date | None = None,
        burst: bool = False,
    ) -> None:
        if not self.spec.line.permits(meter):
            return
        self.seq += 1
        line = self.spec.line
        self.out.append(
            GeneratedEvent(
                organization_id=line.organization_id,
                service_line_id=line.id,
                meter=meter,
                quantity=quantity,
                period_date=period or when.date(),
                event_time=when,
                idempotency_key=f"{SOURCE[self.spec.activity]}:{line.id}:{meter}:{_compact(when)}:{self.seq}",
                source=SOURCE[self.spec.activity],
                metadata=tuple(sorted(metadata.items())),
                burst=burst,
            )
        )

    def day(self, day: date) -> None:
        make = {
            "timesheets": self._timesheets,
            "agent_runs": self._agent_runs,
            "infrastructure": self._infrastructure,
            "queries": self._queries,
            "cycles": self._cycles,
        }[self.spec.activity]
        make(day, WEEKDAY_WEIGHT[day.weekday()])

    def _late(self, when: datetime, chance: float = LATE_CHANCE) -> datetime:
        """The instant an entry is reported: mostly when it happens, sometimes 1-5 days later in working hours."""
        if self.rng.random() >= chance:
            return when
        later = when.date() + timedelta(days=self.rng.randint(1, 5))
        return _at(later, _hour_by_rhythm(self.rng, 8, 18), self.rng)

    def _timesheets(self, day: date, weekday: float) -> None:
        for talent in range(self.spec.team):
            talent_id = f"SCR-{(int(self.spec.line.id[-6:]) * 7 + talent * 131) % 900000 + 100000}"
            works = self.rng.random() < (0.92 if weekday > 0.5 else 0.06)
            if not works:
                continue
            bills_days = talent % 3 == 2 and self.spec.line.permits("talent.days")
            if bills_days:
                quantity = Decimal(self.rng.choice(("1", "1", "1.0", "0.5")))
                when = _at(day, _hour_by_rhythm(self.rng, 16, 20), self.rng)
                self.emit(self._late(when), "talent.days", quantity, {"talent_id": talent_id}, period=day)
                self._timesheet(day, talent_id, quantity)
                continue
            logged = Decimal(0)
            for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3))):
                quantity = _scaled(self.rng.randint(1, 36), 2) * 25  # quarter hours: 0.25 to 9.00
                when = _at(day, _hour_by_rhythm(self.rng, 9, 20), self.rng)
                self.emit(self._late(when), "talent.hours", quantity, {"talent_id": talent_id}, period=day)
                logged += quantity
            self._timesheet(day, talent_id, logged)

    def _timesheet(self, day: date, talent_id: str, quantity: Decimal) -> None:
        """The day's timesheet of a talent who worked, submitted in the evening (sometimes days later); its
        quantity is what it logs (hours or days), which a count meter ignores."""
        if not self.spec.line.permits("talent.timesheets"):
            return
        when = _at(day, _hour_by_rhythm(self.rng, 17, 21), self.rng)
        self.emit(self._late(when), "talent.timesheets", quantity, {"talent_id": talent_id}, period=day)

    def _agent_runs(self, day: date, weekday: float) -> None:
        line = self.spec.line
        users = USERS_PER_AGENT * self.spec.team
        burst_hour = self.rng.randrange(24) if self.rng.random() < BURST_CHANCE else None
        for hour in range(24):
            burst = hour == burst_hour
            mean = AGENT_RUNS_PER_HOUR * self.scale * self.spec.busy * HOUR_WEIGHT[hour] * max(weekday, 0.3)
            runs_by_agent: dict[str, int] = defaultdict(int)
            for _ in range(_poisson(self.rng, mean * (BURST_FACTOR if burst else 1.0))):
                when = _at(day, hour, self.rng)
                agent = f"agt-{self.rng.randrange(self.spec.team) + 1:02d}"
                model = self.rng.choice(("large", "small", "small"))
                meta = {"agent_id": agent, "model": model}
                runs = Decimal(self.rng.randint(2, 12)) if burst and self.rng.random() < 0.3 else Decimal(1)
                runs_by_agent[agent] += int(runs)
                self.emit(when, "agent.runs", runs, meta, burst=burst)
                if line.permits("agent.tokens"):
                    tokens = self.rng.randint(800, 95_000) * (3 if model == "large" else 1)
                    self.emit(when, "agent.tokens", Decimal(tokens), meta, burst=burst)
                if line.permits("agent.run_seconds"):
                    seconds = _scaled(self.rng.randint(500, 600_000), 3)
                    self.emit(when, "agent.run_seconds", seconds, {"agent_id": agent}, burst=burst)
                if line.permits("agent.latency_ms"):  # tenths of a millisecond, a long tail; large models slower
                    typical = 1400.0 if model == "large" else 380.0
                    tenths = max(1, int(self.rng.lognormvariate(math.log(typical * 10), 0.45)))
                    self.emit(when, "agent.latency_ms", _scaled(tenths, 1), meta, burst=burst)
                if line.permits("agent.unique_users"):  # a few regulars, a long tail of occasional users
                    user = f"usr-{line.id[-6:]}-{int(users * self.rng.random() ** 2) + 1:04d}"
                    self.emit(when, "agent.unique_users", Decimal(1), {"agent_id": agent, "user_id": user}, burst=burst)
            if line.permits("agent.peak_concurrency"):  # each busy agent's peak, reported after the hour
                end = datetime(day.year, day.month, day.day, hour, tzinfo=UTC) + timedelta(hours=1)
                for agent in sorted(runs_by_agent):  # overlapping runs: each run after the first, by chance
                    peak = 1 + sum(1 for _ in range(runs_by_agent[agent] - 1) if self.rng.random() < 0.3)
                    when = end + timedelta(milliseconds=self.rng.randint(1_000, 120_000))
                    meta = {"agent_id": agent}
                    self.emit(when, "agent.peak_concurrency", Decimal(peak), meta, period=day, burst=burst)

    def _infrastructure(self, day: date, weekday: float) -> None:
        storage_gb = (
            Decimal(STORAGE_SIZES_GB[self._storage_size(day)]) if self.spec.line.permits("compute.storage_gb") else None
        )
        for region_index in range(self.spec.team):
            region = ("eu-west-1", "us-east-1", "ap-south-1", "us-west-2", "eu-central-1")[region_index % 5]
            vcpus = 8 * (region_index + 1)
            for first in range(0, 24, INFRA_REPORT_HOURS):  # vCPU-hours of each block, minutes after it ends
                hours = range(first, first + INFRA_REPORT_HOURS)
                load = sum(0.3 + 0.7 * HOUR_WEIGHT[h] * weekday for h in hours)
                micro = max(1, int(vcpus * load * self.rng.uniform(0.8, 1.2) * 1_000_000))
                end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(hours=first + INFRA_REPORT_HOURS)
                when = end + timedelta(milliseconds=self.rng.randint(60_000, 600_000))
                self.emit(when, "compute.vcpu_hours", _scaled(micro, 6), {"region": region}, period=day)
            # storage once a day for the day before: buckets from a few KB (0.000001 GB-days) to hundreds of GB
            when = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
                days=1, milliseconds=self.rng.randint(60_000, 600_000)
            )
            tiny = self.rng.random() < 0.3
            quantity = (
                _scaled(self.rng.randint(1, 999), self.rng.choice((6, 9)))
                if tiny
                else _scaled(self.rng.randint(10_000, 4_000_000), 4)
            )
            self.emit(when, "storage.gb_days", quantity, {"region": region}, period=day)
            if storage_gb is not None:  # the line's volume, provisioned alike in each region
                later = when + timedelta(milliseconds=self.rng.randint(1_000, 30_000))
                self.emit(later, "compute.storage_gb", storage_gb, {"region": region}, period=day)
            if self.spec.line.permits("compute.min_replicas"):  # the day's fewest: fewer at weekends, rare dips
                fewest = 2 + region_index % 2 - (1 if weekday < 0.5 else 0) - (1 if self.rng.random() < 0.04 else 0)
                later = when + timedelta(milliseconds=self.rng.randint(1_000, 30_000))
                self.emit(later, "compute.min_replicas", Decimal(max(1, fewest)), {"region": region}, period=day)

    def _storage_size(self, day: date) -> int:
        """The line's provisioned storage on a day: a volume size, resized a step now and then (never in the
        history's last GAUGE_QUIET_DAYS days)."""
        if self.storage_size is None:
            self.storage_size = self.rng.randrange(2, len(STORAGE_SIZES_GB) - 2)
        elif day < self.last_day - timedelta(days=GAUGE_QUIET_DAYS) and self.rng.random() < RESIZE_CHANCE:
            step = 1 if self.rng.random() < 0.6 else -1  # storage mostly grows
            self.storage_size = min(len(STORAGE_SIZES_GB) - 1, max(0, self.storage_size + step))
        return self.storage_size

    def _queries(self, day: date, weekday: float) -> None:
        burst_hour = self.rng.randrange(8, 18) if self.rng.random() < BURST_CHANCE else None
        for hour in range(24):
            burst = hour == burst_hour
            mean = QUERIES_PER_HOUR * self.scale * self.spec.busy * HOUR_WEIGHT[hour] * weekday
            mean *= BURST_FACTOR if burst else 1.0
            for _ in range(_poisson(self.rng, mean)):
                quantity = Decimal(self.rng.choice((1, 1, 1, 2, 3, 5, 20)))
                self.emit(_at(day, hour, self.rng), "intelligence.queries", quantity, {}, burst=burst)

    def _cycles(self, day: date, weekday: float) -> None:
        mean = CYCLES_PER_WEEKDAY * self.scale * self.spec.busy * (weekday if weekday > 0.5 else 0.05)
        for _ in range(_poisson(self.rng, mean)):
            when = _at(day, _hour_by_rhythm(self.rng, 8, 18), self.rng)
            quantity = Decimal(self.rng.choice(("1", "1", "0.5", "2", "0.25")))
            self.emit(self._late(when, 0.1), "ods.cycles", quantity, {}, period=day)


def generate(
    organizations: Sequence[OrganizationSpec] | None = None,
    *,
    days: int = 90,
    now: datetime | None = None,
    seed: int = 0,
    scale: float = 1.0,
    flush_every: timedelta = DEFAULT_FLUSH,
) -> Workload:
    """`days` days of usage ending at `now` (default: this second) for the organizations (default: the demo's).

    The same arguments give the same workload. `scale` multiplies the event-driven rates (agent runs,
    queries, ODS cycles); timesheets and infrastructure reports follow their team sizes. Each organization's
    sender flushes a batch at 100 events or `flush_every` after its first event.
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    orgs = tuple(organizations) if organizations is not None else demo_organizations()
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    start = now - timedelta(days=days)
    last_event = now - timedelta(minutes=1)
    span = last_event - start
    quiet = flush_every + RETRY_DELAY + REPLAY_DELAY + SEND_LAG  # nothing of a line is sent in this before its pause
    pauses: list[Pause] = []
    batches: list[Batch] = []
    for org in orgs:
        org_events: list[GeneratedEvent] = []
        for spec in org.lines:
            rng = random.Random(f"{seed}:{spec.line.id}")
            stream = _LineStream(spec, rng, scale, last_day=now.date())
            day = start.date() - timedelta(days=1)  # late reports of the day before the window land inside it
            while day <= now.date():
                stream.day(day)
                day += timedelta(days=1)
            events = [e for e in stream.out if start <= e.event_time <= last_event]
            if spec.pause_fraction is not None:
                at = (start + span * spec.pause_fraction).replace(second=0, microsecond=0)
                pauses.append(Pause(org.organization.id, spec.line.id, at))
                # the line's source falls silent shortly before the pause and sends a few more an hour after
                before = [e for e in events if e.event_time < at - quiet]
                after = [e for e in events if e.event_time >= at + timedelta(hours=1)][:AFTER_PAUSE_EVENTS]
                events = before + [replace(e, after_pause=True) for e in after]
            org_events.extend(events)
        rng = random.Random(f"{seed}:{org.organization.id}:sender")
        batches.extend(_batches(org_events, rng, flush_every, now))
    batches.sort(key=lambda b: (b.sent_at, b.organization_id))
    return Workload(
        orgs, start, now, seed, tuple(batches), tuple(sorted(pauses, key=lambda p: (p.at, p.service_line_id)))
    )


def _batches(events: list[GeneratedEvent], rng: random.Random, flush_every: timedelta, now: datetime) -> list[Batch]:
    """One organization's events (and retries) in batches in time order; some batches are sent twice.

    A batch closes early rather than carry two different readings of one line's `latest` meter: the
    service would order them by random ids (they share the batch's receive time)."""
    sends: list[tuple[datetime, GeneratedEvent]] = []
    for event in sorted(events, key=lambda e: (e.event_time, e.idempotency_key)):
        sends.append((event.event_time, event))
        if rng.random() < RETRY_CHANCE:
            delay = timedelta(milliseconds=rng.randint(2_000, int(RETRY_DELAY.total_seconds() * 1000)))
            sends.append((event.event_time + delay, replace(event, retry=True)))
    sends.sort(key=lambda s: (s[0], s[1].idempotency_key, s[1].retry))
    out: list[Batch] = []
    previous = datetime.min.replace(tzinfo=UTC)
    i = 0
    while i < len(sends):
        first = sends[i][0]
        chunk: list[tuple[datetime, GeneratedEvent]] = []
        readings: dict[tuple[str, str], Decimal] = {}
        while i < len(sends) and len(chunk) < MAX_BATCH_EVENTS and sends[i][0] <= first + flush_every:
            event = sends[i][1]
            if _aggregation(event.meter) == "latest":
                gauge = (event.service_line_id, event.meter)
                if readings.setdefault(gauge, event.quantity) != event.quantity:
                    break
            chunk.append(sends[i])
            i += 1
        lag = timedelta(milliseconds=rng.randint(200, int(SEND_LAG.total_seconds() * 1000)))
        sent_at = min(max(chunk[-1][0] + lag, previous + timedelta(milliseconds=1)), now)
        previous = sent_at
        batch = Batch(chunk[0][1].organization_id, sent_at, tuple(e for _, e in chunk))
        out.append(batch)
        if rng.random() < REPLAY_CHANCE:
            again = sent_at + timedelta(milliseconds=rng.randint(20_000, int(REPLAY_DELAY.total_seconds() * 1000)))
            replayed = tuple(replace(e, retry=True) for e in batch.events)
            out.append(Batch(batch.organization_id, min(again, now), replayed, replay=True))
    return out


def scale_for(
    target_events: int,
    organizations: Sequence[OrganizationSpec] | None = None,
    *,
    days: int = 90,
    now: datetime | None = None,
    seed: int = 0,
) -> float:
    """The `scale` at which `generate` makes about `target_events` events (events grow linearly with scale)."""
    n1 = generate(organizations, days=days, now=now, seed=seed, scale=1.0).event_count
    n2 = generate(organizations, days=days, now=now, seed=seed, scale=2.0).event_count
    per_unit = n2 - n1
    if per_unit <= 0:
        raise ValueError("these organizations have no event-driven lines to scale")
    return max(0.0, (target_events - (n1 - per_unit)) / per_unit)


# -- what a summary must show ------------------------------------------------------------------------

TotalsKey = tuple[str, str, str, date]  # organization, service line, meter, period_date
_WIDE = Context(prec=80)  # sums of valid quantities never round in it


@dataclass(frozen=True)
class LineTerms:
    """What a summary prices a line's usage with."""

    organization_id: str
    rates: dict[str, Decimal]
    currency: str


@dataclass(frozen=True)
class Expected:
    """What the service must answer for a workload: the rollup state of the accepted events per organization,
    line, meter and period_date (folded as the aggregator folds them), each meter's value under its
    aggregation, the costs, and the counts."""

    states: dict[TotalsKey, RollupState]
    accepted: int
    duplicate: int
    refused: int
    accepted_by_organization: dict[str, int]
    lines: dict[str, LineTerms] = field(default_factory=dict)

    @functools.cached_property
    def totals(self) -> dict[TotalsKey, Decimal]:
        """Each day's value of a line's meter under the meter's aggregation (for a sum meter, the exact sum)."""
        return {key: aggregated_value(_aggregation(key[2]), state) for key, state in self.states.items()}

    def by_line_meter(
        self, organization_id: str, start: date | None = None, end: date | None = None
    ) -> dict[tuple[str, str], Decimal]:
        """An organization's value per (service line, meter) over period dates start..end (inclusive): the
        days' states folded, then valued (the days' values are not added: a maximum, a unique count, a mean
        or a latest reading over days is not the sum of the days')."""
        folded: dict[tuple[str, str], RollupState] = {}
        for (org, line, meter, day), state in self.states.items():
            if org == organization_id and (start is None or day >= start) and (end is None or day <= end):
                folded[(line, meter)] = fold(folded.get((line, meter), EMPTY), state)
        return {(line, meter): aggregated_value(_aggregation(meter), s) for (line, meter), s in folded.items()}

    def costs(self, organization_id: str, start: date | None = None, end: date | None = None) -> dict[str, Decimal]:
        """The cost estimate of each of an organization's lines over the period, as the summary shows it: rate x
        value per meter, added exactly, rounded half-even to the line's currency (0 for a line without usage)."""
        values: dict[str, dict[str, Decimal]] = defaultdict(dict)
        for (line, meter), quantity in self.by_line_meter(organization_id, start, end).items():
            values[line][meter] = quantity
        return {
            line_id: round_money(line_cost(terms.rates, values.get(line_id, {})), terms.currency)
            for line_id, terms in self.lines.items()
            if terms.organization_id == organization_id
        }

    def total_cost(
        self, organization_id: str, currency: str, start: date | None = None, end: date | None = None
    ) -> Decimal:
        """The summary's total: the exact costs of the lines billed in `currency`, rounded once."""
        values: dict[str, dict[str, Decimal]] = defaultdict(dict)
        for (line, meter), quantity in self.by_line_meter(organization_id, start, end).items():
            values[line][meter] = quantity
        return round_money(
            exact_sum(
                line_cost(terms.rates, values.get(line_id, {}))
                for line_id, terms in self.lines.items()
                if terms.organization_id == organization_id and terms.currency == currency
            ),
            currency,
        )

    def period(self, organization_id: str) -> tuple[date, date]:
        """The first and last period_date with accepted usage for an organization."""
        days = [day for (org, _, _, day) in self.states if org == organization_id]
        return min(days), max(days)


def _payload(event: GeneratedEvent) -> tuple[Any, ...]:
    return (
        event.service_line_id,
        event.meter,
        event.quantity.normalize(),
        event.period_date,
        event.source,
        event.metadata,
    )


def _contribution(meter_id: str, quantity: Decimal, order: str, metadata: Mapping[str, Any]) -> RollupState:
    """One event's contribution under its meter's aggregation, by the domain's own rules (as rolling up)."""
    meter = _platform_meters().get(meter_id)
    unique = None
    if meter is not None and meter.value_property is not None and meter.value_property in metadata:
        unique = group_text(metadata[meter.value_property])
    return aggregation_of(_aggregation(meter_id)).contribution(Contribution(quantity, order, unique))


def expected(workload: Workload, sent_at: datetime | None = None, days_back: int = PERIOD_DAYS_BACK) -> Expected:
    """Replay the stream by the service's rules: the exact rollup states, values and counts it must produce.

    In the order ingest applies them: a period_date outside the window around the send time is refused;
    a key stored within the last 48 hours answers for itself (the same payload is a duplicate, another one
    is refused), even once its line is paused; otherwise an event of a line paused at or before its batch
    is sent is refused, and any other is accepted. `sent_at` pretends every batch is sent at that one
    instant (a client replaying the workload now, over HTTP); pauses still take effect in stream order.

    An accepted event's event time is its batch's send time (a native event's is when it is received);
    events of one time are ordered as sent, which is how a client sending the batches one after another
    sees them (the service's own tie-break, a random id, never decides: see `_batches`).
    """
    pauses = sorted(workload.pauses, key=lambda p: p.at)
    paused: set[tuple[str, str]] = set()
    stored: dict[tuple[str, str], tuple[tuple[Any, ...], datetime]] = {}
    contributions: dict[TotalsKey, list[RollupState]] = defaultdict(list)
    per_org: dict[str, int] = defaultdict(int)
    accepted = duplicate = refused = 0
    for number, batch in enumerate(workload.batches):
        while pauses and pauses[0].at <= batch.sent_at:
            pause = pauses.pop(0)
            paused.add((pause.organization_id, pause.service_line_id))
        when = sent_at or batch.sent_at
        earliest = when.date() - timedelta(days=days_back)
        latest = when.date() + timedelta(days=PERIOD_DAYS_FORWARD)
        for index, event in enumerate(batch.events):
            if not earliest <= event.period_date <= latest:
                refused += 1
                continue
            slot = (batch.organization_id, event.idempotency_key)
            seen = stored.get(slot)
            if seen is not None and when - seen[1] < IDEMPOTENCY_WINDOW:
                if seen[0] == _payload(event):
                    duplicate += 1
                else:
                    refused += 1
                continue
            if (batch.organization_id, event.service_line_id) in paused:
                refused += 1
                continue
            stored[slot] = (_payload(event), when)
            accepted += 1
            per_org[batch.organization_id] += 1
            key = (batch.organization_id, event.service_line_id, event.meter, event.period_date)
            order = f"{instant(when)}#{number:09d}.{index:03d}"
            contributions[key].append(_contribution(event.meter, event.quantity, order, dict(event.metadata)))
    states = {key: _wide_fold(parts) for key, parts in contributions.items()}
    lines = {
        spec.line.id: LineTerms(org.organization.id, dict(spec.line.rates), spec.line.currency)
        for org in workload.organizations
        for spec in org.lines
    }
    return Expected(states, accepted, duplicate, refused, dict(per_org), lines)


def _wide_fold(states: Iterable[RollupState]) -> RollupState:
    """fold_all with sums that never round (a day of one line's meter stays far inside 80 digits)."""
    with localcontext(_WIDE):
        return fold_all(states)


def values_of_listed(events: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Decimal]:
    """The value per (service line, meter) of native events as `GET /v1/usage` lists them, under each meter's
    aggregation: what a summary over the same period must show. A native event's event time is when it
    was recorded, so they are ordered by (recorded_at, id), as rolling up orders them."""
    states: dict[tuple[str, str], RollupState] = {}
    for event in events:
        meter = str(event["meter"])
        order = f"{event['recorded_at']}#{event['id']}"
        part = _contribution(meter, Decimal(str(event["quantity"])), order, event.get("metadata") or {})
        key = (str(event["service_line_id"]), meter)
        with localcontext(_WIDE):
            states[key] = fold(states.get(key, EMPTY), part)
    return {key: aggregated_value(_aggregation(key[1]), state) for key, state in states.items()}


# -- loading into a running container --------------------------------------------------------------------


def install_catalog(
    catalog: DynamoCatalogRepository, organizations: Iterable[OrganizationSpec], since: datetime
) -> None:
    """Write the organizations, workspaces and (active) service lines; a line created after `since` is
    dated back to it, since it has usage from then on. Existing items are overwritten."""
    for spec in organizations:
        org = spec.organization
        catalog.put_organization(org.model_copy(update={"created_at": min(org.created_at, since)}))
        for ws in spec.workspaces:
            catalog.put_workspace(ws)
        for line_spec in spec.lines:
            line = line_spec.line
            catalog.put_service_line(
                line.model_copy(update={"status": "active", "created_at": min(line.created_at, since)})
            )
        catalog.recount_active_lines(org.id)
        catalog.recount_workspaces(org.id)
    catalog.clear_cache()


@dataclass(frozen=True)
class LoadReport:
    """What loading a workload did, and what it should have done."""

    accepted: int
    duplicate: int
    refused: int
    seconds: float
    workload: Workload
    expected: Expected

    @property
    def events(self) -> int:
        return self.accepted + self.duplicate + self.refused

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    @property
    def as_expected(self) -> bool:
        e = self.expected
        return (self.accepted, self.duplicate, self.refused) == (e.accepted, e.duplicate, e.refused)


def load(container: Container, workload: Workload, install: bool = True) -> LoadReport:
    """Ingest a workload through the ingest use case, each batch at its own send time.

    The time is handed to validation and ingest directly (not through `container.clock`), so requests
    served meanwhile keep the real time. Pauses are applied through the service-line use case before the
    first batch sent at or after them. Rolling up is left to the aggregator (the queue holds one message
    per batch).
    """
    from chalicelib.api.usage_events import draft_from_body
    from chalicelib.domain.usage import UsageDraft
    from chalicelib.services import service_lines
    from chalicelib.services.ingest import ingest

    days_back = container.settings.period_days_back

    started = time.perf_counter()
    if install:
        install_catalog(container.catalog, workload.organizations, workload.start - timedelta(days=1))
    pauses = sorted(workload.pauses, key=lambda p: p.at)
    counts = {"accepted": 0, "duplicate": 0, "refused": 0}
    for batch in workload.batches:
        while pauses and pauses[0].at <= batch.sent_at:
            pause = pauses.pop(0)
            service_lines.set_status(container.catalog, pause.organization_id, pause.service_line_id, "paused")
        items: list[UsageDraft | MeteringError] = []
        for index, event in enumerate(batch.events):
            try:
                items.append(
                    draft_from_body(event.body(), batch.sent_at, prefix=f"events[{index}]", days_back=days_back)
                )
            except MeteringError as error:
                items.append(error)
        outcomes = ingest(
            items, batch.organization_id, container.catalog, container.events, container.queue, batch.sent_at
        )
        for outcome in outcomes:
            status = outcome.status if outcome.status in ("accepted", "duplicate") else "refused"
            counts[status] += 1
    for pause in pauses:  # pauses after the last batch still leave the line paused
        service_lines.set_status(container.catalog, pause.organization_id, pause.service_line_id, "paused")
    return LoadReport(
        accepted=counts["accepted"],
        duplicate=counts["duplicate"],
        refused=counts["refused"],
        seconds=time.perf_counter() - started,
        workload=workload,
        expected=expected(workload, days_back=days_back),
    )


def load_history(
    container: Container,
    days: int = 30,
    now: datetime | None = None,
    *,
    organizations: Sequence[OrganizationSpec] | None = None,
    seed: int = 0,
    scale: float = 1.0,
    flush_every: timedelta = DEFAULT_FLUSH,
) -> LoadReport:
    """Generate `days` days of usage ending at `now` (default: the container's clock) for the organizations
    (default: the demo's, with their extra lines) and ingest it; see `load`."""
    workload = generate(
        organizations,
        days=days,
        now=now or container.clock(),
        seed=seed,
        scale=scale,
        flush_every=flush_every,
    )
    return load(container, workload)
