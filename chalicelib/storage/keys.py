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
- ``R#<org>#<line>`` / ``GD#<meter>#<group key>#<period_date>#<value>`` and
  ``GH#<meter>#<group key>#<hour>#<period_date>#<value>``: day and hour rollups of one group value
  (also listed by ``by_period``, under ``<meter>#<D|H><hour>#<group key>#<value>``).
- ``R#<org>#<line>`` / ``V#<period_date>#<meter>#<group key>``: the admitted values of a group key.
- ``APPLIED#<batch id>`` / ``<chunk index>``: the marker of an applied chunk.

Catalog table
- ``ORG#<org>`` / ``ORG``, ``WS#<id>``, ``LIN#<id>``, ``SUB#<plan>``, ``COUNTER#...``, ``CALLS#<month>``.
- ``ID#<id>`` / ``ID``: the guard that makes a generated id (service line, workspace) globally unique.
- ``KEY#<sha256>`` / ``KEY`` and ``KEYID#<key id>`` / ``KEY``: API keys.
"""

from __future__ import annotations

import hashlib

# -- events --------------------------------------------------------------------


def event_pk(organization_id: str, slot: str) -> str:
    return f"EV#{organization_id}#{slot}"


def event_pk_prefix(organization_id: str) -> str:
    return f"EV#{organization_id}#"


EVENT_SK = "EV"
# An event's slot (K#<idempotency key>, I#<event id>, A#<event id> once moved aside) is what makes a key
# unique, so the domain defines it: domain/pipeline.slot_for and archive_slot.


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


def group_token(group_value: str) -> str:
    """A group value as it ends a sort key: itself, or its SHA-256 when long (sort keys hold 1,024 bytes)."""
    if len(group_value.encode("utf-8")) <= 200:
        return group_value
    return "#sha256:" + hashlib.sha256(group_value.encode("utf-8")).hexdigest()


def group_day_rollup_sk(meter: str, group_key: str, period_date: str, group_value: str) -> str:
    return f"GD#{meter}#{group_key}#{period_date}#{group_token(group_value)}"


def group_day_range(meter: str, group_key: str, first: str, last: str) -> tuple[str, str]:
    """BETWEEN bounds of the group day rollups of a meter's key with first <= period_date <= last."""
    return f"GD#{meter}#{group_key}#{first}#", f"GD#{meter}#{group_key}#{last}$"


def group_hour_rollup_sk(meter: str, group_key: str, hour: str, period_date: str, group_value: str) -> str:
    return f"GH#{meter}#{group_key}#{hour}#{period_date}#{group_token(group_value)}"


def group_hour_range(meter: str, group_key: str, start_hour: str, end_hour: str) -> tuple[str, str]:
    """BETWEEN bounds of the group hour rollups of a meter's key with start_hour <= hour < end_hour."""
    return f"GH#{meter}#{group_key}#{start_hour}#", f"GH#{meter}#{group_key}#{end_hour}#"


def group_index_sk(meter: str, grain: str, hour: str, group_key: str, group_value: str) -> str:
    """The ``by_period`` sort key of a group rollup (day or hour)."""
    return f"{meter}#{grain}{hour}#{group_key}#{group_token(group_value)}"


def group_register_sk(period_date: str, meter: str, group_key: str) -> str:
    """The register of the admitted values of a line's meter's group key on one period_date."""
    return f"V#{period_date}#{meter}#{group_key}"


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
