"""Two weeks of real-shaped usage for the demo organizations through ingest, the queue and the aggregator
(over the in-memory stores): the native summary shows exactly the decimal sums of what was accepted, and
the listing every accepted event."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from chalicelib.container import Container
from chalicelib.local import workload as wl
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, auth
from tests.support import body, run_aggregator

NOW = datetime(2026, 5, 20, 14, 30, tzinfo=UTC)
KEYS = {"ORG-26-090500": FULL_KEY, "ORG-26-100200": OTHER_ORG_KEY}


def get(client: Any, path: str, params: dict[str, str], key: str) -> Any:
    response = client.http.get(f"{path}?{urlencode(params)}", headers=auth(key))
    assert response.status_code == 200, response.body
    return body(response)


def listed(client: Any, key: str, start: date, end: date) -> list[dict[str, Any]]:
    """Every event `GET /v1/usage` lists over the period, following cursors."""
    found: list[dict[str, Any]] = []
    params = {"from": start.isoformat(), "to": end.isoformat(), "limit": "100"}
    while True:
        page = get(client, "/v1/usage", params, key)
        found.extend(page["data"])
        if not page["meta"]["has_more"]:
            return found
        params["cursor"] = page["meta"]["cursor"]


def test_two_weeks_of_history_show_exactly_what_was_accepted(client: Any, container: Container) -> None:
    # a sender that flushes every 4 hours: fewer, fuller batches keep the aggregator drain short
    loaded = wl.load_history(container, days=14, now=NOW, seed=11, flush_every=timedelta(hours=4))
    exp = loaded.expected
    assert (loaded.accepted, loaded.duplicate, loaded.refused) == (exp.accepted, exp.duplicate, exp.refused)
    assert exp.duplicate > 0 and exp.refused > 0  # retries came back as duplicates; the paused line refused
    assert min(day for (_, _, _, day) in exp.totals) < loaded.workload.start.date()  # late, before the window

    run_aggregator(client, container)
    for org, key in KEYS.items():
        start, end = exp.period(org)
        summary = get(client, "/v1/usage/summary", {"from": start.isoformat(), "to": end.isoformat()}, key)["data"]
        shown = {
            (line["service_line_id"], meter["meter"]): meter["quantity"]
            for line in summary["by_service_line"]
            for meter in line["meters"]
        }
        assert shown == exp.by_line_meter(org, start, end)

        events = listed(client, key, start, end)
        assert len(events) == exp.accepted_by_organization[org]
        assert len({e["id"] for e in events}) == len(events)
        assert wl.values_of_listed(events) == shown

    [pause] = loaded.workload.pauses
    line = container.catalog.get_service_line(pause.organization_id, pause.service_line_id)
    assert line is not None and line.status == "paused"
    sent_later = [e for e in loaded.workload.events() if e.service_line_id == line.id and e.after_pause]
    assert sent_later  # the line's source kept sending after the pause ...
    kept = listed(client, KEYS[line.organization_id], *exp.period(line.organization_id))
    recorded = [datetime.fromisoformat(e["recorded_at"]) for e in kept if e["service_line_id"] == line.id]
    assert recorded and max(recorded) < pause.at  # ... and none of it was stored
