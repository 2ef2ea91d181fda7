"""Property tests of the ingest endpoints: any body gets an answer, never a 5xx, and a refusal writes nothing.

Each test function builds the emulator once (the function-scoped fixtures) and posts every generated
example to it, so examples share state: idempotency keys come from a small pool and repeat, which
exercises replays and conflicts as well as first acceptances.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import simplejson
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from chalicelib.container import Container
from chalicelib.services.ingest import UNPENDED_DAYS_BACK
from chalicelib.storage import clients
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, auth
from tests.support import take_queued_messages

NOW = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)
EVENTS = "/v1/metering/events"
BATCH = "/v1/metering/events/batch"

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    # Examples share one emulator and each costs a few requests: report the first failure as found
    # rather than spend minutes shrinking it (tests/e2e/test_ingest_api.py has the minimal cases).
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies ------------------------------------------------------------------------

TRICKY_STRINGS = [
    "",
    " ",
    "abc\n",
    "\ud800",
    "\x00",
    "1.5",
    "NaN",
    "ключ",
    "x" * 129,
    "x" * 300,
    "2026-05-10",
    "talent.hours",
    "LIN-26-084729",
]

texts = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=2),  # lone surrogates
    st.sampled_from(TRICKY_STRINGS),
)

numbers = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    st.decimals(allow_nan=True, allow_infinity=True),
    st.builds(lambda m, e: Decimal(m).scaleb(e), st.integers(-(10**6), 10**6), st.integers(-400, 400)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            Decimal("0e200"),
            Decimal("0E-30"),
            Decimal("0.00000000000"),
            Decimal("-0.0"),
            Decimal("1." + "0" * 40),
            Decimal("1000000000000.000000000"),
            Decimal("1000000000000.000000001"),
            Decimal("0.000000001"),
            Decimal("1E+12"),
            10**12,
            10**12 + 1,
        ]
    ),
)

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, texts),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(texts, children, max_size=3)),
    max_leaves=8,
)

# The quantities a caller may send, spelled every way JSON allows (some beyond DynamoDB's number range).
valid_quantities = st.one_of(
    st.integers(min_value=0, max_value=10**12),
    st.decimals(min_value=0, max_value=10**12, places=9),
    st.builds(lambda m, e: Decimal(m).scaleb(e), st.integers(0, 10**6), st.integers(-9, 6)),
    st.sampled_from(
        [
            Decimal("0e200"),
            Decimal("0E-30"),
            Decimal("0.00000000000"),
            Decimal("1." + "0" * 40),
            Decimal("2.50"),
            Decimal("1000000000000.000000000"),
            Decimal("0.000000001"),
            Decimal("1E+12"),
        ]
    ),
)
# (line, meter) pairs: permitted for the first organization, refused for one reason or another, the other's.
LINE_METERS = [
    ("LIN-26-084729", "talent.hours"),
    ("LIN-26-084729", "talent.days"),
    ("LIN-26-091100", "agent.runs"),
    ("LIN-26-091100", "agent.tokens"),
    ("LIN-26-091100", "agent.run_seconds"),
    ("LIN-26-100201", "talent.hours"),
    ("LIN-26-084729", "agent.runs"),
    ("LIN-26-091100", "intelligence.legacy_reports"),
    ("LIN-26-091100", "no.such_meter"),
    ("LIN-26-999999", "talent.hours"),
]
metadata_keys = st.one_of(
    st.sampled_from(["talent_id", "n", "region", "a.b:c-d_e"]),
    st.sampled_from(["talent_id", "n", "region", "a.b:c-d_e"]),
    st.sampled_from(["a\n", "bad key", "", "k" * 65]),
    texts,
)
metadata_values = st.one_of(st.booleans(), st.integers(-1000, 1000), valid_quantities, texts)

# Each field: anything JSON can carry, and invalid values near the valid ones.
ANY_VALUE: dict[str, st.SearchStrategy[Any]] = {
    "service_line_id": st.one_of(json_values, st.sampled_from(["", "LIN-26-084729 ", "lin-26-084729"])),
    "meter": st.one_of(json_values, st.sampled_from(["", "TALENT.HOURS", "talent.hours\n"])),
    "quantity": st.one_of(numbers, json_values, st.sampled_from(["1", "1.5", True, False, None, -1])),
    "period_date": st.one_of(
        json_values, st.sampled_from(["2026-05-12", "2026-03-08", "2026-02-30", "2026-5-10", "20260510"])
    ),
    "idempotency_key": st.one_of(json_values, st.sampled_from(["", "abc\n", "has space", "x" * 129, "ключ"])),
    "source": st.one_of(json_values, st.sampled_from(["", "Bad Source", "api\n", "x" * 65])),
    "metadata": st.one_of(
        json_values,
        st.dictionaries(metadata_keys, st.one_of(metadata_values, json_values), max_size=17),
        st.dictionaries(st.sampled_from(["a", "b", "c"]), st.text(min_size=150, max_size=250), min_size=3),
    ),
}


@st.composite
def event_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A coherent event body, then a few mutations: a field dropped, given any value, or an unknown field added."""
    line, meter = draw(st.sampled_from(LINE_METERS))
    body: dict[str, Any] = {"service_line_id": line, "meter": meter, "quantity": draw(valid_quantities)}
    if draw(st.booleans()):
        body["idempotency_key"] = draw(st.sampled_from(["k-1", "k-2", "k-3", "k-4", "k-5"]))
    if draw(st.booleans()):
        body["period_date"] = draw(st.sampled_from(["2026-05-10", "2026-05-11", "2026-03-09"]))
    if draw(st.integers(0, 3)) == 0:
        body["source"] = draw(st.sampled_from(["api", "timesheets", "agent-gw.v2"]))
    if draw(st.booleans()):
        body["metadata"] = draw(st.dictionaries(metadata_keys, metadata_values, max_size=4))
    for mutation in draw(st.lists(st.sampled_from([*ANY_VALUE, "drop", "extra"]), max_size=2)):
        if mutation == "drop":
            if body:
                body.pop(draw(st.sampled_from(sorted(body))))
        elif mutation == "extra":
            body[draw(texts)] = draw(json_values)
        else:
            body[mutation] = draw(ANY_VALUE[mutation])
    return body


def dump(value: Any) -> str:
    """JSON text of a generated value (Decimals exact; NaN and Infinity spelled as JavaScript does)."""
    text: str = simplejson.dumps(value, use_decimal=True, allow_nan=True)
    return text


single_bodies = st.one_of(
    event_objects().map(dump),
    event_objects().map(dump),
    event_objects().map(dump),
    json_values.map(dump),
    st.text(max_size=40),
    st.binary(max_size=40),
)

batch_bodies = st.one_of(
    st.lists(st.one_of(event_objects(), event_objects(), json_values), max_size=6).map(
        lambda events: dump({"events": events})
    ),
    st.builds(
        lambda events, extra: dump({"events": events, **extra}),
        st.lists(event_objects(), max_size=3),
        st.dictionaries(texts, json_values, max_size=2),
    ),
    json_values.map(dump),
    st.text(max_size=40),
    st.binary(max_size=40),
)


def event_text(quantity: str = "1", extra: str = "") -> str:
    """An event body as JSON text, its quantity spelled exactly as given."""
    return '{"service_line_id": "LIN-26-084729", "meter": "talent.hours", "quantity": ' + quantity + extra + "}"


def batch_text(*events: str) -> str:
    return '{"events": [' + ", ".join(events) + "]}"


SURROGATE_VALUE = ', "metadata": {"note": "\\ud800"}'
SURROGATE_KEY = ', "metadata": {"\\udc00": 1}'
SURROGATE_FIELD = ', "\\udc00": 1'

# -- observing the store -----------------------------------------------------------------


def counts(container: Container) -> tuple[int, int]:
    """(stored events, pending batch records) in the events table."""
    events = pending = 0
    paginator = clients.dynamodb().get_paginator("scan")
    for page in paginator.paginate(
        TableName=container.events.table_name, ConsistentRead=True, ProjectionExpression="pk"
    ):
        for item in page.get("Items", []):
            pk = item["pk"]["S"]
            events += pk.startswith("EV#")
            pending += pk.startswith("PENDING#")
    return events, pending


def post(client: Any, path: str, raw: str | bytes, key: str) -> Any:
    try:
        return client.http.post(path, headers=auth(key), body=raw)
    except UnicodeEncodeError as exc:  # the test client encodes the answer as UTF-8, as any HTTP server must
        raise AssertionError(f"the answer to {raw!r} cannot be sent as UTF-8: {exc}") from None


# -- properties --------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(raw=single_bodies, key=st.sampled_from([FULL_KEY, FULL_KEY, FULL_KEY, OTHER_ORG_KEY]))
# Bodies that broke these properties when they were written, always tried first.
@example(raw=event_text("0e200"), key=FULL_KEY)
@example(raw=event_text("1." + "0" * 40), key=FULL_KEY)
@example(raw=event_text(extra=SURROGATE_VALUE), key=FULL_KEY)
@example(raw=event_text(extra=SURROGATE_KEY), key=FULL_KEY)
@example(raw=event_text(extra=SURROGATE_FIELD), key=FULL_KEY)
def test_single_event_endpoint_never_5xx_and_refusals_write_nothing(
    client: Any, container: Container, raw: str | bytes, key: str
) -> None:
    container.clock = lambda: NOW
    len(take_queued_messages(container))
    before = counts(container)

    response = post(client, EVENTS, raw, key)
    status = response.status_code
    event(f"status {status}")
    assert status < 500, (status, raw, response.body)
    after = counts(container)
    queued = len(take_queued_messages(container))
    if 400 <= status < 500:
        error = json.loads(response.body)["error"]
        assert error["code"] and error["request_id"]
        assert after == before, f"refused with {status} but the store changed: {before} -> {after}"
        assert queued == 0
    elif status == 201:
        assert after[0] == before[0] + 1
        assert queued == 1
    else:
        assert status == 200, (status, response.body)
        assert response.headers.get("Idempotent-Replayed") == "true"
        assert after == before and queued == 0


@PROPERTY_SETTINGS
@given(raw=batch_bodies, key=st.sampled_from([FULL_KEY, FULL_KEY, FULL_KEY, OTHER_ORG_KEY]))
@example(raw=batch_text(event_text(), event_text("0e200")), key=FULL_KEY)
@example(raw=batch_text(event_text(extra=SURROGATE_VALUE)), key=FULL_KEY)
@example(raw=batch_text(event_text(extra=SURROGATE_KEY)), key=FULL_KEY)
def test_batch_endpoint_never_5xx_and_writes_exactly_what_it_accepts(
    client: Any, container: Container, raw: str | bytes, key: str
) -> None:
    container.clock = lambda: NOW
    len(take_queued_messages(container))
    before = counts(container)

    response = post(client, BATCH, raw, key)
    status = response.status_code
    event(f"status {status}")
    assert status < 500, (status, raw, response.body)
    after = counts(container)
    queued = len(take_queued_messages(container))
    if status != 200:
        assert 400 <= status < 500, (status, response.body)
        assert after == before, f"refused with {status} but the store changed: {before} -> {after}"
        assert queued == 0
        return
    results = json.loads(response.body, parse_float=Decimal)["data"]
    sent = json.loads(raw, parse_float=Decimal, parse_constant=Decimal)["events"]
    assert [r["index"] for r in results] == list(range(len(sent)))
    accepted = [r for r in results if r["status"] == "accepted"]
    for result in results:
        event(f"item {result['status']}")
    for result in results:
        assert result["status"] in ("accepted", "duplicate", "conflict", "rejected")
        assert ("data" in result) == (result["status"] in ("accepted", "duplicate"))
        assert ("error" in result) == (result["status"] in ("conflict", "rejected"))
    assert after[0] == before[0] + len(accepted), "stored events must be exactly the accepted ones"
    # A pending record is written first for every batch of two or more events to write, or of an older
    # one; a single recent event goes without (services/ingest.py, the single-event path).
    pending_added = after[1] - before[1]
    recent = NOW.date() - timedelta(days=UNPENDED_DAYS_BACK)
    if not accepted:
        assert pending_added == 0
    elif (
        len(accepted) > 1 or date.fromisoformat(str(sent[accepted[0]["index"]].get("period_date", NOW.date()))) < recent
    ):
        assert pending_added == 1
    elif all(r["status"] in ("accepted", "rejected") for r in results):
        assert pending_added == 0  # the single-event path
    else:  # one accepted beside duplicates found only at the write: written as a batch or as a single
        assert pending_added in (0, 1)
    assert queued == (1 if accepted else 0)
