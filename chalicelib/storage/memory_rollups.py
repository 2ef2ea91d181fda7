"""Rollups, group value registers and applied-markers in memory, with the DynamoDB store's semantics.

A unit's join cells are joined first (idempotent), then its marker is put only if absent together
with its additive cells, atomically (under one lock), exactly as DynamoRollupStore does it. Reads
answer the same rows in the same key order. Used by the unit and property tests and the bench.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from chalicelib.domain.aggregation import EMPTY, MAX_GROUP_VALUES, RESERVED_PREFIX, RollupState, fold
from chalicelib.domain.models import instant
from chalicelib.domain.usage import ApplyReport, ApplyUnit, GroupSlot, Rollup, RollupDelta, RollupKey


@dataclass
class _Stored:
    state: RollupState
    version: int
    updated_at: str


class MemoryRollupStore:
    """The rollup store in a process's memory (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rollups: dict[RollupKey, _Stored] = {}
        self._markers: dict[tuple[str, int], tuple[str, ...]] = {}
        self._registers: dict[GroupSlot, set[str]] = {}
        self.max_group_values = MAX_GROUP_VALUES
        self.transactions = 0

    # -- applying --------------------------------------------------------------
    def apply(self, units: Sequence[ApplyUnit], now: datetime) -> ApplyReport:
        """Apply each unit exactly once; units whose marker exists are reported as already applied."""
        report = ApplyReport()
        stamp = instant(now)
        for unit in units:
            for rk, state in sorted(unit.deltas.items()):
                if state.has_joins:
                    self.join(rk, state.joins(), stamp)
        for unit in units:
            with self._lock:
                report.transactions += 1
                self.transactions += 1
                marker = (unit.batch_id, unit.chunk_index)
                if marker in self._markers:
                    report.already_applied.append(unit)
                    continue
                self._markers[marker] = unit.event_ids
                for rk, delta in unit.deltas.items():
                    self._merge(rk, delta.additive(), stamp)
            report.applied.append(unit)
        return report

    def join(self, rk: RollupKey, joins: RollupState, stamp: str) -> None:
        """Join cells into a rollup (one step of apply, public so tests can stop between the steps)."""
        with self._lock:
            stored = self._rollups.get(rk)
            before = stored.state if stored else EMPTY
            after = fold(before, joins)
            if stored is None or after != before:
                self._merge(rk, joins, stamp)

    def _merge(self, rk: RollupKey, delta: RollupState, stamp: str) -> None:
        stored = self._rollups.get(rk)
        if stored is None:
            self._rollups[rk] = _Stored(delta, 1, stamp)
        else:
            stored.state = fold(stored.state, delta)
            stored.version += 1
            stored.updated_at = stamp

    # -- group value registers -------------------------------------------------
    def admit_groups(self, asked: Mapping[GroupSlot, Set[str]]) -> dict[GroupSlot, frozenset[str]]:
        """Which asked values each slot keeps apart (admitted before, or now while there is room)."""
        admitted: dict[GroupSlot, frozenset[str]] = {}
        with self._lock:
            for slot, values in sorted(asked.items()):
                register = self._registers.setdefault(slot, set())
                wanted = sorted(v for v in values if not v.startswith(RESERVED_PREFIX))
                new = [v for v in wanted if v not in register]
                if len(register) + len(new) <= self.max_group_values:
                    register.update(new)
                else:
                    register.update(new[: max(self.max_group_values - len(register), 0)])
                admitted[slot] = frozenset(v for v in wanted if v in register)
        return admitted

    # -- reading ---------------------------------------------------------------
    def applied_event_ids(self, batch_id: str) -> set[str]:
        with self._lock:
            return {e for (batch, _), ids in self._markers.items() if batch == batch_id for e in ids}

    def _rows(self, wanted: object) -> list[Rollup]:
        with self._lock:
            found = [
                Rollup(rk, stored.state, stored.version, stored.updated_at)
                for rk, stored in self._rollups.items()
                if wanted(rk)  # type: ignore[operator]
            ]
        return sorted(found, key=lambda r: r.key)

    def day_rollups(
        self, organization_id: str, line_id: str, start: date, end: date, consistent: bool = False
    ) -> list[Rollup]:
        first, last = start.isoformat(), end.isoformat()
        return self._rows(
            lambda rk: (
                rk.organization_id == organization_id
                and rk.service_line_id == line_id
                and rk.grain == "D"
                and not rk.grouped
                and first <= rk.period_date <= last
            )
        )

    def hour_rollups(self, organization_id: str, line_id: str, start_hour: str, end_hour: str) -> list[Rollup]:
        return self._rows(
            lambda rk: (
                rk.organization_id == organization_id
                and rk.service_line_id == line_id
                and rk.grain == "H"
                and not rk.grouped
                and start_hour <= rk.hour < end_hour
            )
        )

    def group_day_rollups(
        self, organization_id: str, line_id: str, meter: str, group_key: str, start: date, end: date
    ) -> list[Rollup]:
        first, last = start.isoformat(), end.isoformat()
        return self._rows(
            lambda rk: (
                rk.organization_id == organization_id
                and rk.service_line_id == line_id
                and rk.meter == meter
                and rk.group_key == group_key
                and rk.grain == "D"
                and first <= rk.period_date <= last
            )
        )

    def group_hour_rollups(
        self, organization_id: str, line_id: str, meter: str, group_key: str, start_hour: str, end_hour: str
    ) -> list[Rollup]:
        return self._rows(
            lambda rk: (
                rk.organization_id == organization_id
                and rk.service_line_id == line_id
                and rk.meter == meter
                and rk.group_key == group_key
                and rk.grain == "H"
                and start_hour <= rk.hour < end_hour
            )
        )

    def rollups_of_period(
        self, organization_id: str, line_id: str, period_date: date, with_groups: bool = False
    ) -> list[Rollup]:
        day = period_date.isoformat()
        return self._rows(
            lambda rk: (
                rk.organization_id == organization_id
                and rk.service_line_id == line_id
                and rk.period_date == day
                and (with_groups or not rk.grouped)
            )
        )

    def repair(
        self, rk: RollupKey, quantity: Decimal, event_count: int, observed: Rollup | None, now: datetime
    ) -> bool:
        kept = observed.state.joins() if observed is not None else EMPTY
        return self.repair_state(rk, fold(kept, RollupDelta(quantity, event_count)), observed, now)

    def repair_state(self, rk: RollupKey, state: RollupState, observed: Rollup | None, now: datetime) -> bool:
        with self._lock:
            stored = self._rollups.get(rk)
            if (observed is None) != (stored is None):
                return False
            if stored is not None and observed is not None and stored.version != observed.version:
                return False
            version = stored.version + 1 if stored else 1
            self._rollups[rk] = _Stored(state, version, instant(now))
            return True
