"""The backfill import and the export, against the real local stack over HTTP."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from chalicelib import backfill
from chalicelib.cli import run
from tests.conftest import FULL_KEY
from tests.e2e.localstack import running_stack


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_stack() as url:
        yield url


def exported(base_url: str, **filters: str) -> list[dict[str, str]]:
    out = io.StringIO()
    backfill.export_usage(backfill.ApiClient(base_url, FULL_KEY), out, filters)
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["service_line_id", "meter", "quantity", "period_date", "metadata"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_import_reports_counts_writes_rejections_and_reruns_create_no_duplicates(
    base_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"service_line_id": "LIN-26-084729", "meter": "talent.hours", "quantity": "1.25", "period_date": "2026-11-20"},
        {"service_line_id": "LIN-26-084729", "meter": "talent.hours", "quantity": "abc", "period_date": "2026-11-20"},
        {"service_line_id": "LIN-26-084729", "meter": "agent.runs", "quantity": "2", "period_date": "2026-11-20"},
        {"service_line_id": "LIN-26-084729", "meter": "talent.hours", "quantity": "1.25", "period_date": "2026-11-20"},
        {
            "service_line_id": "LIN-26-091100",
            "meter": "agent.runs",
            "quantity": "3",
            "period_date": "2026-11-21",
            "metadata": json.dumps({"model": "m1"}),
        },
    ]
    source = write_csv(tmp_path / "import-a.csv", rows)
    rejected = tmp_path / "rejected.csv"
    args = ["import", str(source), "--base-url", base_url, "--api-key", FULL_KEY, "--rejected", str(rejected)]
    assert run(args) == 1  # some rows were rejected
    summary = capsys.readouterr().out
    assert "rows: 5  accepted: 3  duplicate: 0  rejected: 2" in summary
    with rejected.open() as fh:
        reasons = {int(r["row"]): r["reason"] for r in csv.DictReader(fh)}
    assert set(reasons) == {2, 3}
    assert "not a number" in reasons[2] and reasons[3].startswith("meter_not_permitted")
    before = exported(base_url, service_line_id="LIN-26-084729", **{"from": "2026-11-20", "to": "2026-11-20"})
    # Two identical rows are two events (their row numbers differ): both stored.
    assert [Decimal(r["quantity"]) for r in before] == [Decimal("1.25"), Decimal("1.25")]

    (tmp_path / "import-a.csv.import-state.json").unlink()  # forget progress: a full re-run
    assert run(args) == 1
    assert "accepted: 0  duplicate: 3  rejected: 2" in capsys.readouterr().out
    after = exported(base_url, service_line_id="LIN-26-084729", **{"from": "2026-11-20", "to": "2026-11-20"})
    assert sorted(r["id"] for r in after) == sorted(r["id"] for r in before)


class FlakyClient(backfill.ApiClient):
    """Dies (like a killed process) after a number of batch requests."""

    def __init__(self, base_url: str, fail_after: int) -> None:
        super().__init__(base_url, FULL_KEY)
        self.left = fail_after

    def request(self, method: str, path: str, body: Any = None) -> Any:
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return super().request(method, path, body)


def test_an_interrupted_import_resumes_where_it_stopped(base_url: str, tmp_path: Path) -> None:
    lines = [
        json.dumps(
            {"service_line_id": "LIN-26-091100", "meter": "agent.tokens", "quantity": i, "period_date": "2026-11-19"}
        )
        for i in range(1, 251)
    ]
    source = tmp_path / "tokens.jsonl"
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(KeyboardInterrupt):
        backfill.import_file(FlakyClient(base_url, fail_after=1), source, progress=None)
    state = json.loads((tmp_path / "tokens.jsonl.import-state.json").read_text())
    assert state["rows_done"] == 100
    report = backfill.import_file(backfill.ApiClient(base_url, FULL_KEY), source, progress=None)
    assert report.skipped_already_imported == 100
    assert (report.accepted, report.duplicate, report.rejected) == (150, 0, 0)
    events = exported(base_url, meter="agent.tokens", **{"from": "2026-11-19", "to": "2026-11-19"})
    assert len(events) == 250
    assert sum(int(e["quantity"]) for e in events) == sum(range(1, 251))


def test_export_writes_every_page(base_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    assert (
        run(["export", "--base-url", base_url, "--api-key", FULL_KEY, "--meter", "agent.tokens", "--out", str(out)])
        == 0
    )
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 250
    assert list(rows[0]) == backfill.EXPORT_COLUMNS
    assert len({r["id"] for r in rows}) == len(rows)


def test_rows_rejected_before_an_interruption_stay_in_the_rejected_file(base_url: str, tmp_path: Path) -> None:
    events = [
        {"service_line_id": "LIN-26-091100", "meter": "agent.runs", "quantity": 1, "period_date": "2026-11-18"}
        for _ in range(150)
    ]
    events[4]["quantity"] = "five"  # row 5, in the first batch
    events[119]["meter"] = "talent.hours"  # row 120, in the second
    source = tmp_path / "runs.jsonl"
    source.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    rejected = tmp_path / "runs.rejected.csv"
    with pytest.raises(KeyboardInterrupt):
        backfill.import_file(FlakyClient(base_url, fail_after=1), source, rejected, progress=None)
    report = backfill.import_file(backfill.ApiClient(base_url, FULL_KEY), source, rejected, progress=None)
    assert (report.accepted, report.rejected) == (49, 1)
    with rejected.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["row"]) for r in rows] == [5, 120]
    assert rows[0]["reason"].startswith("validation_error") and rows[1]["reason"].startswith("meter_not_permitted")
