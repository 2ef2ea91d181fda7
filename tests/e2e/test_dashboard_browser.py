"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright, against the real local stack.

It signs in with the demo keys, reads a known period and checks that the page's numbers are the
API's summary, pages the events table like the API pages, downloads what it shows as CSV, shows a
read-only key, a revoked key, an unknown key and a used-up API-call quota (429 with Retry-After),
fits a phone-width screen, and saves the screenshot the README shows (docs/dashboard.png).

`make browser` (a step of `make test`) installs Debian's chromium; without /usr/bin/chromium these
tests are skipped with a loud reason.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest

from chalicelib.domain.auth import READ_SCOPES, hash_key, key_id_for
from chalicelib.domain.models import ApiKey
from chalicelib.storage.catalog_repo import DynamoCatalogRepository
from tests.conftest import FULL_KEY, OTHER_ORG_KEY, READ_KEY
from tests.e2e.localstack import ROOT, StackProcess, request, running_stack_process

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Days of demo history the stack loads besides the test's own events: none by default (rolling it up takes
# minutes on a busy machine); the README's screenshot is taken with DASHBOARD_HISTORY_DAYS=30, as `make run`.
HISTORY_DAYS = int(os.environ.get("DASHBOARD_HISTORY_DAYS") or 0)
DAYS = 10  # the known period: the test's events are on each of the last DAYS days, today included
ORG = "ORG-26-090500"
OTHER_ORG = "ORG-26-100200"
TALENT = "LIN-26-084729"
AGENT = "LIN-26-091100"
SCREENSHOT = ROOT / "docs" / "dashboard.png"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="!!! BROWSER TESTS SKIPPED: /usr/bin/chromium is missing. Run `make browser` as root "
    "(apt-get install chromium) to run the dashboard's browser tests. !!!",
)


def grouped(value: Any) -> str:
    """A decimal as the page writes it: its exact digits, the integer part grouped by thousands."""
    return format(Decimal(str(value)), ",")


def known_events() -> list[dict[str, Any]]:
    """70 events over the last DAYS days: 40 on the talent line (two pages of 20), 30 on the agent line."""
    today = datetime.now(UTC).date()
    events = []
    for n in range(DAYS):
        day = (today - timedelta(days=n)).isoformat()
        quantities = {
            (TALENT, "talent.hours"): [Decimal("2.25"), Decimal("3.5"), Decimal(n + 1) / 8],
            (TALENT, "talent.days"): [Decimal("0.5")],
            (AGENT, "agent.runs"): [Decimal(n + 1)],
            (AGENT, "agent.tokens"): [Decimal(1500 * (n + 1)) + Decimal("0.25")],
            (AGENT, "agent.run_seconds"): [Decimal("12.5") * (n + 1)],
        }
        for (line, meter), values in quantities.items():
            for k, quantity in enumerate(values):
                key = f"dashboard-e2e-{line}-{meter}-{day}-{k}"
                events.append(
                    {
                        "service_line_id": line,
                        "meter": meter,
                        "quantity": quantity,
                        "period_date": day,
                        "idempotency_key": key,
                    }
                )
    return events


@pytest.fixture(scope="module")
def stack() -> Iterator[StackProcess]:
    # The stack trusts an API key it has read for 2 s instead of 30, so a revocation shows sooner.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("METERING_CATALOG_TTL_SECONDS", "2")
        with running_stack_process("--history-days", str(HISTORY_DAYS)) as process:
            status, answer = request(f"{process.base_url}/v1/metering/events/batch", data={"events": known_events()})
            assert status == 200 and {r["status"] for r in answer["data"]} == {"accepted"}, answer
            wait_until_rolled_up(process)
            yield process


def wait_until_rolled_up(stack: StackProcess, timeout: float = 300) -> None:
    """Wait until the aggregator has taken every message (the events, the demo history) off the usage queue."""
    sqs = boto3.client(
        "sqs", endpoint_url=stack.aws_url, region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="a"
    )
    url = sqs.get_queue_url(QueueName="metering-usage-dev")["QueueUrl"]
    names: Any = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        if all(counts[name] == "0" for name in names):
            return
        time.sleep(1)
    raise AssertionError(f"the demo history was not rolled up in {timeout} s")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, stack: StackProcess) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    opened = context.new_page()
    opened.set_default_timeout(20_000)
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    urls: list[str] = []
    opened.on("request", lambda req: urls.append(req.url))
    opened.goto(f"{stack.base_url}/dashboard")
    yield opened
    context.close()
    assert not errors, errors  # no script error on the way
    assert urls and not any(FULL_KEY in u or READ_KEY in u or OTHER_ORG_KEY in u for u in urls)
    assert all(u.startswith(stack.base_url) or u.startswith(("data:", "blob:")) for u in urls), urls


def sign_in(page: Any, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#sign-in-form button[type=submit]")


def show_period(page: Any, start: str, end: str) -> None:
    page.fill("#from", start)
    page.fill("#to", end)
    page.click("#period-form button[type=submit]")
    page.wait_for_selector(f"#status:has-text('Showing {start} to {end}')")


def api(stack: StackProcess, path: str, params: dict[str, Any], key: str = FULL_KEY) -> Any:
    status, body = request(f"{stack.base_url}{path}?{urlencode(params)}", key=key)
    assert status == 200, body
    return body


def catalog_of(stack: StackProcess) -> DynamoCatalogRepository:
    """The stack's catalog table through its AWS endpoint, as an operator's tool reaches it."""
    client = boto3.client(
        "dynamodb",
        endpoint_url=stack.aws_url,
        region_name="us-east-1",
        aws_access_key_id="any",
        aws_secret_access_key="any",
    )
    return DynamoCatalogRepository("metering-catalog-dev", client=client)


# -- the numbers -------------------------------------------------------------------------------------


def test_page_shows_the_summary_of_a_known_period_and_charts_the_same_usage(page: Any, stack: StackProcess) -> None:
    today = datetime.now(UTC).date()
    start, end = (today - timedelta(days=DAYS - 1)).isoformat(), today.isoformat()
    sign_in(page, FULL_KEY)
    page.wait_for_selector("#status:has-text('Showing')")
    show_period(page, start, end)
    summary = api(stack, "/v1/usage/summary", {"from": start, "to": end})["data"]
    assert page.text_content("#total-cost") == f"{grouped(summary['total_cost_estimate'])} {summary['currency']}"
    used = [line for line in summary["by_service_line"] if line["meters"]]
    if HISTORY_DAYS == 0:  # only the test's own events: the summary is exactly what was sent
        sent: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for event in known_events():
            sent[(event["service_line_id"], event["meter"])] += event["quantity"]
        summed = {(li["service_line_id"], m["meter"]): Decimal(str(m["quantity"])) for li in used for m in li["meters"]}
        assert summed == sent
    for line in used:
        line_id = line["service_line_id"]
        cost = page.text_content(f"[data-cost='{line_id}']")
        assert cost == f"{grouped(line['cost_estimate'])} {line['currency']}"
        for meter in line["meters"]:
            shown = page.text_content(f"[data-quantity='{line_id}/{meter['meter']}']")
            assert shown == grouped(meter["quantity"]), (line_id, meter)
            # the chart's data table has one row a day, adding up to the same quantity
            rows = page.locator(f"figure[data-series='{line_id}/{meter['meter']}'] tbody tr")
            assert rows.count() == DAYS
            cells = rows.locator("td:nth-child(2)").all_text_contents()
            assert sum(Decimal(c.replace(",", "")) for c in cells) == Decimal(str(meter["quantity"]))
    assert page.locator(".uplot canvas").count() >= len(used)  # drawn, not only tabled
    captions = page.locator("figure figcaption").all_text_contents()
    assert captions and all(c.endswith(", daily") and "sum)" in c for c in captions)


def test_a_short_period_is_charted_by_hour(page: Any, stack: StackProcess) -> None:
    today = datetime.now(UTC).date().isoformat()
    sign_in(page, FULL_KEY)
    page.wait_for_selector("#status:has-text('Showing')")
    show_period(page, today, today)
    figures = page.locator("figure.chart")
    series = api(stack, "/v1/usage/timeseries", {"from": today, "to": today, "granularity": "hour"})["data"]
    assert figures.count() == len(series["series"])
    if series["series"]:
        assert page.text_content("figure.chart figcaption").endswith(", hourly")
        assert figures.first.locator("tbody tr").count() == 24
    else:
        assert page.text_content("#charts-body") == "No usage to chart in this period."


def test_limits_show_the_plan_against_its_limits(page: Any, stack: StackProcess) -> None:
    sign_in(page, FULL_KEY)
    page.wait_for_selector("#status:has-text('Showing')")
    limits = api(stack, "/v1/organization/limits", {})["data"]
    lines = limits["active_service_lines"]["used"]
    assert page.text_content("#limit-lines .value") == f"{lines} (no limit)"
    assert page.text_content("#limit-api-calls .value") == "no limit (not counted)"
    used = grouped(limits["agent_credits"]["used"])
    assert page.text_content("#limit-credits .value") == f"{used} (custom limit, by contract)"
    assert "Enterprise" in (page.text_content("#limits-body") or "")


# -- the events table ----------------------------------------------------------------------------------


def test_events_table_pages_like_the_api_and_downloads_what_it_shows(page: Any, stack: StackProcess) -> None:
    today = datetime.now(UTC).date()
    start, end = (today - timedelta(days=DAYS - 1)).isoformat(), today.isoformat()
    sign_in(page, FULL_KEY)
    page.wait_for_selector("#status:has-text('Showing')")
    page.select_option("#ev-line", TALENT)
    page.fill("#ev-from", start)
    page.fill("#ev-to", end)
    page.click("#events-form button[type=submit]")
    query = {"service_line_id": TALENT, "from": start, "to": end, "limit": 20}
    first = api(stack, "/v1/usage", query)
    second = api(stack, "/v1/usage", {**query, "cursor": first["meta"]["cursor"]})

    def shown_ids() -> list[str]:
        return [row.get_attribute("data-event") for row in page.locator("#events-body tr").all()]

    page.wait_for_function("document.querySelector('#page-info').textContent.startsWith('Page 1')")
    page.wait_for_function(f"document.querySelector('#events-body tr')?.dataset.event === '{first['data'][0]['id']}'")
    assert shown_ids() == [e["id"] for e in first["data"]]
    assert page.is_disabled("#prev") and page.is_enabled("#next")
    page.click("#next")
    page.wait_for_selector("#page-info:has-text('Page 2')")
    assert shown_ids() == [e["id"] for e in second["data"]]
    with page.expect_download() as download_info:
        page.click("#csv")
    path = download_info.value.path()
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    assert [r["id"] for r in rows] == [e["id"] for e in second["data"]]
    assert [Decimal(r["quantity"]) for r in rows] == [Decimal(str(e["quantity"])) for e in second["data"]]
    assert {r["service_line_id"] for r in rows} == {TALENT}
    page.click("#prev")
    page.wait_for_selector("#page-info:has-text('Page 1')")
    assert shown_ids() == [e["id"] for e in first["data"]]
    assert page.is_disabled("#prev")


def test_a_voided_event_is_marked_its_void_listed_and_both_can_be_hidden(page: Any, stack: StackProcess) -> None:
    today = datetime.now(UTC).date().isoformat()
    query = {"service_line_id": AGENT, "meter": "agent.tokens", "from": today, "to": today}
    (event,) = api(stack, "/v1/usage", query)["data"]
    status, void = request(
        f"{stack.base_url}/v1/metering/events/{event['id']}/void",
        data={"reason": "sent twice by the gateway", "service_line_id": AGENT},
    )
    assert status == 201, void
    wait_until_rolled_up(stack)
    sign_in(page, FULL_KEY)
    page.wait_for_selector("#status:has-text('Showing')")
    show_period(page, today, today)
    summary = api(stack, "/v1/usage/summary", {"from": today, "to": today})["data"]
    (tokens,) = [
        m
        for li in summary["by_service_line"]
        if li["service_line_id"] == AGENT
        for m in li["meters"]
        if m["meter"] == "agent.tokens"
    ]
    assert Decimal(str(tokens["quantity"])) == 0 and Decimal(str(tokens["adjusted"])) == -event["quantity"]
    assert page.text_content(f"[data-quantity='{AGENT}/agent.tokens']") == grouped(tokens["quantity"])
    row = page.locator(f"[data-quantity='{AGENT}/agent.tokens']").locator("xpath=ancestor::tr")
    assert row.locator("td").nth(4).text_content() == grouped(tokens["adjusted"])
    page.select_option("#ev-line", AGENT)
    page.select_option("#ev-meter", "agent.tokens")
    page.click("#events-form button[type=submit]")
    voided, voiding = f"tr[data-event='{event['id']}'].voided", f"tr[data-event='{void['data']['id']}']"
    deadline = time.monotonic() + 20  # the filtered list: the voided event and its void, nothing else
    while not (
        page.locator("#events-body tr").count() == 2
        and page.locator(voided).count() == page.locator(voiding).count() == 1
    ):
        assert time.monotonic() < deadline, page.text_content("#events-body")
        page.wait_for_timeout(200)
    marks = {
        r.get_attribute("data-event"): r.locator("td").nth(4).text_content()
        for r in page.locator("#events-body tr").all()
    }
    assert marks[event["id"]] == "voided"
    assert marks[void["data"]["id"]] == f"void of {event['id']}"
    page.check("#ev-hide-voided")
    page.click("#events-form button[type=submit]")
    page.wait_for_selector(f"#events-body tr[data-event='{event['id']}']", state="detached")
    assert page.text_content("#events-body") == "No events match these filters."  # the event and its void


# -- keys and errors --------------------------------------------------------------------------------------


def test_a_read_only_key_is_shown_as_read_only(page: Any) -> None:
    sign_in(page, READ_KEY)
    page.wait_for_selector("#status:has-text('Showing')")
    assert page.is_visible("#read-only")
    assert page.text_content("#read-only") == "Read-only key"
    assert "Read-only key: it can read usage" in (page.text_content("#limits-body") or "")
    assert page.text_content("#total-cost") not in ("", "\u2013")


def test_an_unknown_key_is_refused_and_forgotten(page: Any) -> None:
    sign_in(page, "mk_not_a_key_of_anyone")
    page.wait_for_selector("#error:has-text('refused')")
    assert page.is_visible("#sign-in") and not page.is_visible("#app")
    assert page.evaluate("sessionStorage.length") == 0


def test_a_key_revoked_while_signed_in_signs_the_page_out(page: Any, stack: StackProcess) -> None:
    secret = "mk_dashboard_e2e_revoked_" + os.urandom(6).hex()
    catalog = catalog_of(stack)
    catalog.put_api_key(
        ApiKey(
            key_id=key_id_for(secret),
            key_hash=hash_key(secret),
            organization_id=ORG,
            scopes=READ_SCOPES,
            name="dashboard e2e",
            created_at=datetime.now(UTC),
        )
    )
    sign_in(page, secret)
    page.wait_for_selector("#status:has-text('Showing')")
    assert page.evaluate("sessionStorage.length") == 1
    assert catalog.revoke_api_key(key_id_for(secret))
    # A server trusts a key it has read for a short while (METERING_CATALOG_TTL_SECONDS: 30 s by default,
    # 2 s in this stack): the page is refused within that, on its next request.
    deadline = time.monotonic() + 90
    while not page.is_visible("#error:has-text('unknown or has been revoked')"):
        assert time.monotonic() < deadline, "the revoked key was still accepted after 90 s"
        page.evaluate("document.getElementById('period-form').requestSubmit()")  # "Show" again
        page.wait_for_timeout(500)
    assert page.is_visible("#sign-in") and not page.is_visible("#app")
    assert page.evaluate("sessionStorage.length") == 0


def test_a_used_up_api_call_quota_says_when_to_come_back(page: Any, stack: StackProcess) -> None:
    """The starter plan's 50,000 calls a month, used up: every call is 429 with Retry-After."""
    month = datetime.now(UTC).strftime("%Y-%m")
    catalog_of(stack).add_api_calls(OTHER_ORG, month, 50_000)
    status, _ = request(f"{stack.base_url}/v1/meters", key=OTHER_ORG_KEY)
    assert status == 429
    sign_in(page, OTHER_ORG_KEY)
    error = page.wait_for_selector("#error:has-text('Too many requests')")
    text = error.text_content() or ""
    assert "API calls" in text and "Retry-After:" in text and "UTC" in text  # a month away: a date, not seconds


# -- layout ------------------------------------------------------------------------------------------------


def test_phone_width_has_no_sideways_scrolling(browser: Any, stack: StackProcess) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    phone = context.new_page()
    phone.goto(f"{stack.base_url}/dashboard")
    sign_in(phone, FULL_KEY)
    phone.wait_for_selector("#status:has-text('Showing')", timeout=20_000)
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    assert phone.evaluate("document.querySelector('.chart').getBoundingClientRect().width") <= 390
    context.close()


def test_screenshot_for_the_readme(page: Any, stack: StackProcess, tmp_path: Path) -> None:
    """DASHBOARD_SCREENSHOT=1 writes docs/dashboard.png (the README's), otherwise a temporary file."""
    target = SCREENSHOT if os.environ.get("DASHBOARD_SCREENSHOT") == "1" else tmp_path / "dashboard.png"
    sign_in(page, FULL_KEY)
    page.wait_for_selector("#status:has-text('Showing')")
    today = datetime.now(UTC).date()
    show_period(page, (today - timedelta(days=max(DAYS, HISTORY_DAYS) - 1)).isoformat(), today.isoformat())
    page.wait_for_timeout(300)  # let the charts settle
    page.screenshot(path=str(target), full_page=True)
    assert target.read_bytes().startswith(b"\x89PNG") and target.stat().st_size > 50_000
