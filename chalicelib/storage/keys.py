"""Every item key of the service's tables, in one place.

Anything an organization owns is keyed by the organization as well as by its
own id, so two organizations' items can never share a partition key (even if
two of their generated ids were ever to collide). The guard items make the
generated ids that appear in URLs globally unique.

Events table
- ``EV#<org>#<slot>`` / ``EV``: an event; ``by_line`` index ``<org>#<line>`` / ``<period_date>#<event id>``.
- ``PENDING#<shard>`` / ``<batch id>``: an ingest batch not yet rolled up.

Rollups table
- ``R#<org>#<line>`` / ``D#<period_date>#<meter>``: a day rollup.
- ``R#<org>#<line>`` / ``H#<hour>#<meter>#<period_date>``: an hour rollup, listed by the ``by_period``
  index under ``<org>#<line>#<period_date>`` / ``<meter>#<hour>``.
- ``APPLIED#<batch id>`` / ``<chunk index>``: the marker of an applied chunk.

Catalog table
- ``ORG#<org>`` / ``ORG``, ``WS#<id>``, ``LIN#<id>``, ``SUB#<plan>``, ``COUNTER#...``, ``CALLS#<month>``.
- ``ID#<id>`` / ``ID``: the guard that makes a generated id (service line, workspace) globally unique.
- ``KEY#<sha256>`` / ``KEY`` and ``KEYID#<key id>`` / ``KEY``: API keys.
"""

from __future__ import annotations

# -- events --------------------------------------------------------------------


def event_pk(organization_id: str, slot: str) -> str:
    return f"EV#{organization_id}#{slot}"


def event_pk_prefix(organization_id: str) -> str:
    return f"EV#{organization_id}#"


EVENT_SK = "EV"


def slot_for(idempotency_key: str | None, event_id: str) -> str:
    """Where an event lives: under its idempotency key, or its id when it has none."""
    return f"K#{idempotency_key}" if idempotency_key is not None else f"I#{event_id}"


def archive_slot(event_id: str) -> str:
    """Where an event whose key was reused after the idempotency window is moved."""
    return f"A#{event_id}"


def line_index_pk(organization_id: str, line_id: str) -> str:
    """The ``by_line`` partition of a service line's events."""
    return f"{organization_id}#{line_id}"


def line_index_sk(period_date: str, event_id: str) -> str:
    return f"{period_date}#{event_id}"


def pending_pk(shard: int) -> str:
    return f"PENDING#{shard}"


# -- rollups -------------------------------------------------------------------


def rollup_pk(organization_id: str, line_id: str) -> str:
    return f"R#{organization_id}#{line_id}"


def day_rollup_sk(period_date: str, meter: str) -> str:
    return f"D#{period_date}#{meter}"


def hour_rollup_sk(hour: str, meter: str, period_date: str) -> str:
    return f"H#{hour}#{meter}#{period_date}"


def hour_rollup_prefix(hour: str) -> str:
    """Every hour rollup sort key of an hour starts with this (a range bound for queries)."""
    return f"H#{hour}#"


def period_index_pk(organization_id: str, line_id: str, period_date: str) -> str:
    """The ``by_period`` partition of a line's hour rollups for one period_date."""
    return f"{organization_id}#{line_id}#{period_date}"


def period_index_sk(meter: str, hour: str) -> str:
    return f"{meter}#{hour}"


def marker_pk(batch_id: str) -> str:
    return f"APPLIED#{batch_id}"


def marker_sk(chunk_index: int) -> str:
    return f"{chunk_index:04d}"


# -- catalog -------------------------------------------------------------------


def org_pk(organization_id: str) -> str:
    return f"ORG#{organization_id}"


def line_sk(line_id: str) -> str:
    return f"LIN#{line_id}"


def creation_key_sk(kind: str, key: str) -> str:
    """The record of an idempotency key used to create a workspace or a service line."""
    return f"IDEM#{kind}#{key}"


def workspace_sk(workspace_id: str) -> str:
    return f"WS#{workspace_id}"


def id_guard_pk(generated_id: str) -> str:
    """The guard item of a generated id: put only if absent, in the same transaction as what it names."""
    return f"ID#{generated_id}"


ID_GUARD_SK = "ID"


def plan_subscription_sk(plan_id: str) -> str:
    return f"SUB#{plan_id}"


def api_calls_sk(month: str) -> str:
    return f"CALLS#{month}"


ACTIVE_LINES_SK = "COUNTER#active_service_lines"
WORKSPACES_SK = "COUNTER#workspaces"
ORG_SK = "ORG"


def api_key_pk(key_hash: str) -> str:
    return f"KEY#{key_hash}"


def api_key_ref_pk(key_id: str) -> str:
    return f"KEYID#{key_id}"


API_KEY_SK = "KEY"


def job_pk(job: str) -> str:
    """Where a scheduled job keeps its state between runs (a scan cursor...)."""
    return f"JOB#{job}"


JOB_CURSOR_SK = "CURSOR"
