"""Entitlements: whether an organization's plan allows another agent run this month (document 001).

One agent credit is one agent run: a unit of the `agent.runs` meter. Usage is always recorded,
whatever the credits say; this only answers a gateway that asks before it starts a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from chalicelib.domain.money import exact_sum
from chalicelib.errors import ErrorCode, MeteringError
from chalicelib.services.ports import CatalogRepository, RollupStore
from chalicelib.services.queries import daily_totals
from chalicelib.services.service_lines import plan_of

CREDIT_METER = "agent.runs"


@dataclass(frozen=True)
class AgentCredits:
    organization_id: str
    month: str
    limit: int | str | None  # None: no cap; "custom": set by contract, not capped here
    used: Decimal
    remaining: Decimal | None
    resets_at: datetime

    @property
    def allowed(self) -> bool:
        return self.remaining is None or self.remaining >= 1


def month_bounds(now: datetime) -> tuple[date, date, datetime]:
    """The first and last day of now's UTC month, and the instant the next month starts."""
    first = now.astimezone(UTC).date().replace(day=1)
    next_first = (first + timedelta(days=32)).replace(day=1)
    return first, next_first - timedelta(days=1), datetime.combine(next_first, datetime.min.time(), UTC)


def agent_credits(
    catalog: CatalogRepository, rollups: RollupStore, organization_id: str, now: datetime
) -> AgentCredits:
    """This month's agent credits: the plan's limit, the runs recorded (by period_date) and what is left."""
    plan = plan_of(catalog, organization_id)
    first, last, resets = month_bounds(now)
    lines = [line.id for line in catalog.list_service_lines(organization_id)]
    totals = daily_totals(rollups, organization_id, lines, first, last)
    used = exact_sum(q for (_, meter, _), q in totals.items() if meter == CREDIT_METER)
    limit = plan.limits.agent_credits_monthly
    remaining = None if limit is None or limit == "custom" else max(Decimal(0), Decimal(limit) - used)
    return AgentCredits(organization_id, first.strftime("%Y-%m"), limit, used, remaining, resets)


def require_agent_credit(credits: AgentCredits, now: datetime) -> None:
    """429 rate_limited when the month's credits do not allow another run."""
    if not credits.allowed:
        raise MeteringError(
            ErrorCode.RATE_LIMITED,
            f"The organization has used its {credits.limit} agent credits for {credits.month}.",
            details={
                "limit": "agent_credits_monthly",
                "max": credits.limit,
                "used": credits.used,
                "month": credits.month,
                "retry_after_seconds": max(1, int((credits.resets_at - now).total_seconds())),
            },
        )
