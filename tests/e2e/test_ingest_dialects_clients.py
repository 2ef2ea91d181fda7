"""The three ingest dialects through their own clients against the real local stack.

Metronome's SDK (`client.v1.usage.ingest`), the OpenMeter client with events built by the
`cloudevents` library, and the `stripe` library each send usage to a stack started with no setup
(the default mapping, plus the demo organization's overrides in catalog/ingest_mappings.json);
replays are sent again; then every read dialect must show exactly what was sent, once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import openmeter
import pytest
import stripe
from cloudevents.conversion import to_dict
from cloudevents.http import CloudEvent
from corehttp.exceptions import HttpResponseError
from metronome import BadRequestError, Metronome, PermissionDeniedError

from tests.conftest import FULL_KEY, OTHER_ORG_KEY, READ_KEY
from tests.e2e.localstack import request, running_stack

ORG = "ORG-26-090500"
ORG_UUID = "a6b50534-cbd6-59e4-ad5e-053883b86cc2"
AGENT = "LIN-26-091100"  # the demo organization's default (oldest active) line for the agent meters
OTHER_ORG = "ORG-26-100200"
STORM_THREADS = 12


@pytest.fixture(scope="module")
def stack() -> Iterator[str]:
    with running_stack("--schedule-every", "1") as base_url:
        yield base_url


@dataclass
class Sent:
    """What the three clients sent (replays included) and when."""

    base_url: str
    moment: datetime
    metronome: Metronome
    openmeter: openmeter.Client
    stripe: stripe.StripeClient
    first_stripe: Any
    replayed_stripe: Any

    @property
    def day(self) -> date:
        return self.moment.date()


# What the clients send: agent.runs 2 + 3 + 5 + 7, agent.tokens 480 (a mapped type), agent.run_seconds 12.
EXPECTED = {"agent.runs": Decimal(17), "agent.tokens": Decimal(480), "agent.run_seconds": Decimal(12)}
EXPECTED_BY_SOURCE = {"metronome": 2, "cloudevents": 3, "stripe": 1}  # events stored per dialect


def cloud_event(event_id: str, event_type: str, data: dict[str, Any], moment: datetime, **extra: str) -> Any:
    attributes = {"id": event_id, "source": "agent-gateway", "type": event_type, "subject": ORG, **extra}
    attributes["time"] = moment.isoformat()
    return to_dict(CloudEvent(attributes, data))


def send_all(base_url: str, moment: datetime) -> Sent:
    metronome = Metronome(bearer_token=FULL_KEY, base_url=base_url, max_retries=0)
    usage: list[Any] = [
        {
            "transaction_id": "mtr-run-1",
            "customer_id": ORG_UUID,  # Metronome's customer id: the organization's UUID
            "event_type": "agent.runs",
            "timestamp": moment.isoformat(),
            "properties": {"value": 2, "agent_id": "a1"},
        },
        {
            "transaction_id": "mtr-tokens-1",
            "customer_id": "cus_DemoEnterprise",  # an alias the organization's mapping lists
            "event_type": "llm_tokens",  # mapped to agent.tokens, the quantity in "tokens"
            "timestamp": moment.isoformat(),
            "properties": {"tokens": 480, "model": "large"},
        },
    ]
    metronome.v1.usage.ingest(usage=usage)  # 200, no body: the SDK returns None
    metronome.v1.usage.ingest(usage=usage)  # a replay: the same answer, nothing stored twice

    client = openmeter.Client(endpoint=base_url, token=FULL_KEY)
    single = cloud_event("ce-run-1", "agent.runs", {"value": 3}, moment)
    client.events.ingest_event(single)
    batch = [
        cloud_event("ce-run-2", "agent.runs", {"value": 5, "agent_id": "a2"}, moment),
        cloud_event("ce-secs-1", "agent.run_seconds", {"value": 12}, moment),
    ]
    client.events.ingest_events(batch)
    client.events.ingest_events([single, *batch])  # replays, (source, id) each: dropped

    payments = stripe.StripeClient(FULL_KEY, base_addresses={"api": base_url}, max_network_retries=0)
    params: Any = {
        "event_name": "agent.runs",
        "payload": {"stripe_customer_id": ORG, "value": "7"},
        "identifier": "stripe-run-1",
        "timestamp": int(moment.timestamp()),
    }
    first = payments.v1.billing.meter_events.create(params=params)
    saved = stripe.api_base
    stripe.api_base = base_url  # the library's module-level way, for the replay
    try:
        replayed = stripe.billing.MeterEvent.create(api_key=FULL_KEY, **params)
    finally:
        stripe.api_base = saved
    return Sent(base_url, moment, metronome, client, payments, first, replayed)


def wait_for_rollups(base_url: str, day: date, expected: dict[str, Decimal], key: str = FULL_KEY) -> None:
    url = f"{base_url}/v1/usage/summary?" + urlencode({"from": day.isoformat(), "to": day.isoformat()})
    seen: dict[str, Decimal] = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body = request(url, key=key)
        assert status == 200, body
        seen = {}
        for line in body["data"]["by_service_line"]:
            for meter in line["meters"]:
                seen[meter["meter"]] = seen.get(meter["meter"], Decimal(0)) + meter["quantity"]
        if seen == expected:
            return
        time.sleep(0.25)
    raise AssertionError(f"the rollups never showed {expected}: {seen}")


@pytest.fixture(scope="module")
def sent(stack: str) -> Sent:
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    result = send_all(stack, moment)
    wait_for_rollups(stack, result.day, EXPECTED)
    return result


def listed(base_url: str, day: date, key: str = FULL_KEY) -> list[dict[str, Any]]:
    url = f"{base_url}/v1/usage?" + urlencode({"from": day.isoformat(), "to": day.isoformat(), "limit": 100})
    status, body = request(url, key=key)
    assert status == 200, body
    assert body["meta"]["has_more"] is False
    return list(body["data"])


# -- each client's answers ---------------------------------------------------------------------


def test_stripe_answers_its_meter_event_object_and_a_replay_the_same_one(sent: Sent) -> None:
    first = sent.first_stripe
    assert first.object == "billing.meter_event"
    assert (first.event_name, first.identifier, first.livemode) == ("agent.runs", "stripe-run-1", False)
    assert first.payload.to_dict() == {"stripe_customer_id": ORG, "value": "7"}
    assert first.timestamp == int(sent.moment.timestamp())
    assert sent.replayed_stripe.to_dict() == first.to_dict()  # created included: the first event's object


def test_each_dialects_refusals_reach_its_client_as_its_own_error(sent: Sent) -> None:
    moment = sent.moment.isoformat()
    with pytest.raises(BadRequestError) as metronome_error:
        sent.metronome.v1.usage.ingest(
            usage=[
                {
                    "transaction_id": "bad-1",
                    "customer_id": "ORG-26-100200",
                    "event_type": "agent.runs",
                    "timestamp": moment,
                    "properties": {"value": 1},
                }
            ]
        )
    assert metronome_error.value.body == {
        "message": "usage[0].customer_id: no customer 'ORG-26-100200' is visible to this API key "
        "(send the organization's ORG-* id or its UUID). Nothing was stored.",
        "code": "customer_not_found",
    }
    read_only = Metronome(bearer_token=READ_KEY, base_url=sent.base_url, max_retries=0)
    with pytest.raises(PermissionDeniedError):
        read_only.v1.usage.ingest(
            usage=[{"transaction_id": "ro-1", "customer_id": ORG, "event_type": "agent.runs", "timestamp": moment}]
        )

    with pytest.raises(HttpResponseError) as problem:
        sent.openmeter.events.ingest_event(cloud_event("bad-ce", "no.such.meter", {"value": 1}, sent.moment))
    assert problem.value.status_code == 400
    response: Any = problem.value.response
    assert response.headers["Content-Type"] == "application/problem+json"
    detail = response.json()
    assert (detail["status"], detail["title"], detail["extensions"]["code"]) == (400, "Bad Request", "meter_not_found")
    assert detail["extensions"]["field"] == "event.type"

    with pytest.raises(stripe.InvalidRequestError) as invalid:
        sent.stripe.v1.billing.meter_events.create(params={"event_name": "agent.runs", "payload": {"value": "1"}})
    assert invalid.value.param == "payload[stripe_customer_id]"
    with pytest.raises(stripe.IdempotencyError):
        sent.stripe.v1.billing.meter_events.create(
            params={
                "event_name": "agent.runs",
                "payload": {"stripe_customer_id": ORG, "value": "8"},
                "identifier": "stripe-run-1",
            }
        )
    wrong_key = stripe.StripeClient("mk_wrong", base_addresses={"api": sent.base_url}, max_network_retries=0)
    with pytest.raises(stripe.AuthenticationError):
        wrong_key.v1.billing.meter_events.create(params={"event_name": "agent.runs", "payload": {"value": "1"}})


# -- every read dialect shows them, once --------------------------------------------------------


def test_the_native_listing_shows_each_event_once_with_its_dialect_as_source(sent: Sent) -> None:
    events = listed(sent.base_url, sent.day)
    by_source = {s: sum(1 for e in events if e["source"] == s) for s in EXPECTED_BY_SOURCE}
    assert by_source == EXPECTED_BY_SOURCE
    assert len(events) == sum(EXPECTED_BY_SOURCE.values())  # refusals and replays stored nothing
    assert {e["service_line_id"] for e in events} == {AGENT}  # the default line for each meter
    totals: dict[str, Decimal] = {}
    for event in events:
        totals[event["meter"]] = totals.get(event["meter"], Decimal(0)) + event["quantity"]
    assert totals == EXPECTED
    tokens = next(e for e in events if e["meter"] == "agent.tokens")
    assert tokens["metadata"] == {"model": "large"}  # the value property is the quantity, the rest metadata


def test_metronome_usage_list_reads_back_what_every_client_sent(sent: Sent) -> None:
    start = datetime.combine(sent.day, datetime.min.time(), UTC)
    rows = list(
        sent.metronome.v1.usage.list(window_size="DAY", starting_on=start, ending_before=start + timedelta(days=1))
    )
    values = {row.billable_metric_name: Decimal(str(row.value)) for row in rows if row.value}
    assert values == {"Agent Runs": 17, "Agent Tokens": 480, "Agent Run Seconds": 12}
    assert {row.customer_id for row in rows} == {ORG_UUID}


def test_scalr_counts_the_runs_and_run_seconds_every_client_sent(sent: Sent) -> None:
    day = sent.day.isoformat()
    next_day = (sent.day + timedelta(days=1)).isoformat()
    query = urlencode({"filter[date]": f"between:{day}T00:00:00Z,{next_day}T00:00:00Z", "filter[account]": ORG})
    status, body = request(f"{sent.base_url}/usage-statistics?{query}", headers={"Prefer": "profile=preview"})
    assert status == 200, body
    rows = {item["attributes"]["date"]: item["attributes"] for item in body["data"]}
    assert (rows[day]["runs-count"], rows[day]["runs-seconds"]) == (17, 12)


def test_the_meter_api_lists_the_subscription_the_events_went_to_first(sent: Sent) -> None:
    status, body = request(f"{sent.base_url}/v1/meter-subscriptions?meterName=agent.runs")
    assert status == 200, body
    assert body["subscriptions"][0]["subscriptionId"] == AGENT  # the default subscription took every event


# -- storms: one identity sent at once by many threads stores one event ---------------------------


def storm(send: Callable[[], Any]) -> list[Any]:
    """Call `send` from STORM_THREADS threads at once; every answer (or exception), in no order."""
    barrier = threading.Barrier(STORM_THREADS)
    answers: list[Any] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        try:
            answer: Any = send()
        except Exception as exc:  # an answer like any other, asserted below
            answer = exc
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=run) for _ in range(STORM_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == STORM_THREADS
    return answers


def test_a_storm_of_one_identity_per_dialect_stores_one_event_each(stack: str) -> None:
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    metronome = Metronome(bearer_token=OTHER_ORG_KEY, base_url=stack, max_retries=0)
    event: Any = {
        "transaction_id": "storm-1",
        "customer_id": OTHER_ORG,
        "event_type": "talent.hours",
        "timestamp": moment.isoformat(),
        "properties": {"value": 1, "storm": "metronome"},
    }
    assert storm(lambda: metronome.v1.usage.ingest(usage=[event])) == [None] * STORM_THREADS

    client = openmeter.Client(endpoint=stack, token=OTHER_ORG_KEY)
    cloud = cloud_event("storm-1", "talent.hours", {"value": 2, "storm": "cloudevents"}, moment, subject=OTHER_ORG)
    assert storm(lambda: client.events.ingest_event(cloud)) == [None] * STORM_THREADS

    payments = stripe.StripeClient(OTHER_ORG_KEY, base_addresses={"api": stack}, max_network_retries=0)
    params: Any = {
        "event_name": "talent.hours",
        "payload": {"stripe_customer_id": OTHER_ORG, "value": "4", "storm": "stripe"},
        "identifier": "storm-1",
        "timestamp": int(moment.timestamp()),
    }
    objects = storm(lambda: payments.v1.billing.meter_events.create(params=params))
    assert not [o for o in objects if isinstance(o, Exception)], objects
    assert len({str(o.to_dict()) for o in objects}) == 1  # every thread got the same object

    events = listed(stack, moment.date(), key=OTHER_ORG_KEY)
    assert sorted(e["metadata"]["storm"] for e in events) == ["cloudevents", "metronome", "stripe"]
    wait_for_rollups(stack, moment.date(), {"talent.hours": Decimal(7)}, key=OTHER_ORG_KEY)
