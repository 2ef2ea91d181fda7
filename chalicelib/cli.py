"""Operator commands: load the catalog into a stage, create and revoke API keys, import and export usage.

Installed as `usage-metering` (`pip install -e .`; `make install` does it), or run as
`python -m chalicelib.cli`. Against a deployed stage, with AWS credentials in the environment:
    usage-metering --stage prod catalog load
    usage-metering --stage prod orgs create --id ORG-26-000001 --name "Acme" --plan plan_growth_annual
    usage-metering --stage prod workspaces create --org ORG-26-000001 --id WS-26-000001 --name "Platform"
    usage-metering --stage prod keys create --org ORG-26-090500 --scopes all --name billing-sync
    usage-metering --stage prod keys revoke key_0123456789abcdef
    usage-metering --stage prod keys list --org ORG-26-090500
Against `make run`'s emulated AWS instead (no AWS account), name its AWS endpoint:
    usage-metering --endpoint-url http://127.0.0.1:8001 keys create --org ORG-26-090500
    usage-metering import usage.csv --base-url URL --api-key KEY
    usage-metering export --from 2026-04-01 --to 2026-04-30 --out april.csv --base-url URL --api-key KEY
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from chalicelib import backfill
from chalicelib.config import reset_settings
from chalicelib.container import Container
from chalicelib.domain.auth import ALL_SCOPES, parse_scopes
from chalicelib.domain.models import Organization, Workspace, organization_uuid
from chalicelib.services import catalog_admin
from chalicelib.storage import clients
from chalicelib.storage.catalog_repo import IdTakenError

if TYPE_CHECKING:
    pass

PROG = "usage-metering"
EPILOG = """\
Stage commands (catalog, orgs, workspaces, keys) read and write the stage's tables with your AWS
credentials, or the local stack's emulated AWS with --endpoint-url (make run prints it: PORT + 1,
http://127.0.0.1:8001 by default). import and export call the HTTP API (--base-url, --api-key).
Every command has --help, e.g. `usage-metering keys list --help`."""


def where_options(after_command: bool) -> argparse.ArgumentParser:
    """--stage and --endpoint-url: before the command, or after it (`keys list --endpoint-url URL`)."""
    options = argparse.ArgumentParser(add_help=False)
    # After the command, an option not given must not overwrite one given before it.
    stage: str | None = argparse.SUPPRESS if after_command else None
    endpoint = argparse.SUPPRESS if after_command else os.environ.get("METERING_AWS_ENDPOINT")
    options.add_argument("--stage", default=stage, help="stage whose tables to use (default: METERING_STAGE or dev)")
    options.add_argument(
        "--endpoint-url",
        default=endpoint,
        help="send AWS requests here, e.g. the local stack's http://127.0.0.1:8001 (default: METERING_AWS_ENDPOINT)",
    )
    return options


def command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str, stage: bool = False
) -> argparse.ArgumentParser:
    """A subcommand whose --help starts with what it does; `stage`: it takes --stage and --endpoint-url too."""
    parents = [where_options(after_command=True)] if stage else []
    return sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".", parents=parents)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[where_options(after_command=False)],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cat = command(sub, "catalog", "the platform catalog").add_subparsers(dest="action", required=True)
    command(cat, "load", "write the packaged meters and plans into the stage", stage=True)
    orgs = command(sub, "orgs", "organizations").add_subparsers(dest="action", required=True)
    org_create = command(orgs, "create", "create (or update) an organization on a plan", stage=True)
    org_create.add_argument("--id", required=True, help="organization id, e.g. ORG-26-090500")
    org_create.add_argument("--name", required=True)
    org_create.add_argument("--plan", required=True, help="plan id, e.g. plan_growth_annual")
    workspaces = command(sub, "workspaces", "workspaces").add_subparsers(dest="action", required=True)
    ws_create = command(workspaces, "create", "create (or update) a workspace of an organization", stage=True)
    ws_create.add_argument("--org", required=True)
    ws_create.add_argument("--id", required=True, help="workspace id, e.g. WS-26-000101")
    ws_create.add_argument("--name", required=True)
    keys = command(sub, "keys", "API keys").add_subparsers(dest="action", required=True)
    create = command(keys, "create", "create a key bound to one organization", stage=True)
    create.add_argument("--org", required=True, help="organization id (ORG-*)")
    create.add_argument(
        "--scopes", default="all", help=f"comma-separated: all, read, or of {', '.join(sorted(ALL_SCOPES))}"
    )
    create.add_argument("--name", default="api key")
    revoke = command(keys, "revoke", "revoke a key by its id (key_...)", stage=True)
    revoke.add_argument("key_id")
    listing = command(keys, "list", "list keys (never their secrets)", stage=True)
    listing.add_argument("--org", help="only this organization's keys")
    for name, text in (
        ("import", "import a CSV or JSON Lines backfill through the batch API"),
        ("export", "export usage events to CSV"),
    ):
        http = command(sub, name, text)
        http.add_argument(
            "--base-url",
            default=os.environ.get("METERING_BASE_URL", "http://127.0.0.1:8000"),
            help="the API's base URL (default: METERING_BASE_URL, else the local stack's http://127.0.0.1:8000)",
        )
        http.add_argument("--api-key", default=os.environ.get("METERING_API_KEY"), help="or METERING_API_KEY")
        http.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one answer (default 120)")
    imp = sub.choices["import"]
    imp.add_argument("file", type=Path, help=".csv, or .jsonl/.ndjson")
    imp.add_argument(
        "--rejected", type=Path, help="where to write rejected rows (default: FILE.rejected.csv, .jsonl for JSON Lines)"
    )
    imp.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on standard error (default: only on a terminal)",
    )
    exp = sub.choices["export"]
    exp.add_argument("--out", type=Path, help="CSV file (default: standard output)")
    for flag in ("from", "to", "service_line_id", "workspace_id", "meter"):
        exp.add_argument(f"--{flag.replace('_', '-')}", dest=flag)
    exp.add_argument(
        "--hide-voided", action="store_true", help="leave out voided events and their voids (listed otherwise)"
    )
    return parser


def run_http(args: argparse.Namespace) -> int:
    """The import and export commands, which talk to the API over HTTP."""
    if not args.api_key:
        print("error: an API key is needed (--api-key or METERING_API_KEY)", file=sys.stderr)
        return 2
    client = backfill.ApiClient(args.base_url, args.api_key, timeout=args.timeout)
    if args.command == "import":
        try:
            rejected = args.rejected or backfill.default_rejects_path(args.file)
            report = backfill.import_file(client, args.file, rejected, show_progress=args.progress)
        except (OSError, ValueError, backfill.ApiError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(
            f"rows: {report.rows}  accepted: {report.accepted}  duplicate: {report.duplicate}  "
            f"rejected: {report.rejected}  already imported earlier: {report.skipped_already_imported}"
        )
        if report.rejected:
            print(f"rejected rows and reasons: {rejected}")
        return 1 if report.rejected else 0
    filters = {k: getattr(args, k) or "" for k in ("from", "to", "service_line_id", "workspace_id", "meter")}
    filters["hide_voided"] = "true" if args.hide_voided else ""
    try:
        if args.out:
            with args.out.open("w", encoding="utf-8", newline="") as fh:
                rows = backfill.export_usage(client, fh, filters)
        else:
            rows = backfill.export_usage(client, sys.stdout, filters)
    except backfill.ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {rows} events", file=sys.stderr)
    return 0


def run(argv: Sequence[str] | None, container: Container | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command in ("import", "export"):
        return run_http(args)
    if container is None:
        if args.stage:
            os.environ["METERING_STAGE"] = args.stage
            reset_settings()
            clients.reset_clients()
        clients.use_endpoint(args.endpoint_url)
        from chalicelib.config import get_settings

        container = Container.from_settings(get_settings())
    try:
        return run_stage(args, container)
    except (BotoCoreError, ClientError) as exc:
        print(f"error: {aws_error(exc, container)}", file=sys.stderr)
        return 1


def aws_error(exc: BotoCoreError | ClientError, container: Container) -> str:
    """One line saying what went wrong talking to AWS (or to the local stack's endpoint), and what to do."""
    where = clients.endpoint() or f"AWS ({container.settings.region})"
    if isinstance(exc, NoCredentialsError):
        return (
            "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for a deployed "
            "stage, or pass --endpoint-url (METERING_AWS_ENDPOINT) with the local stack's aws endpoint"
        )
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach {where}: is the local stack running (make run)?" if clients.endpoint() else str(exc)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        if code == "ResourceNotFoundException":
            return f"{container.settings.catalog_table} not found at {where}: check --stage ({message})"
        return f"{where} refused the request: {code}: {message}"
    return f"{where}: {exc}"


def run_stage(args: argparse.Namespace, container: Container) -> int:
    """The commands that read and write the stage's tables."""
    repo = container.catalog
    if args.command == "catalog":
        meters, plans = catalog_admin.load_platform_catalog(repo)
        print(f"loaded {meters} meters and {plans} plans into {repo.table_name}")
        return 0
    if args.command == "orgs":
        if repo.get_plan(args.plan) is None:
            print(f"error: no plan {args.plan} (load the catalog first)", file=sys.stderr)
            return 2
        org = Organization(
            id=args.id,
            uuid=organization_uuid(args.id),  # the same UUID every time the id is created or updated
            name=args.name,
            plan_id=args.plan,
            created_at=datetime.now(UTC),
        )
        repo.put_organization(org)
        repo.recount_active_lines(args.id)
        print(f"organization {args.id} on {args.plan} (Metronome customer id {org.uuid})")
        return 0
    if args.command == "workspaces":
        if repo.get_organization(args.org) is None:
            print(f"error: no organization {args.org}", file=sys.stderr)
            return 2
        try:
            repo.put_workspace(Workspace(id=args.id, organization_id=args.org, name=args.name))
            repo.recount_workspaces(args.org)
        except IdTakenError:
            print(f"error: workspace id {args.id} belongs to another organization", file=sys.stderr)
            return 2
        print(f"workspace {args.id} of {args.org}")
        return 0
    if args.action == "create":
        try:
            scopes = parse_scopes(args.scopes)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if not scopes:
            print("error: a key needs at least one scope", file=sys.stderr)
            return 2
        if repo.get_organization(args.org) is None:
            print(f"error: no organization {args.org} in {repo.table_name}", file=sys.stderr)
            return 2
        issued = catalog_admin.issue_key(repo, args.org, scopes, args.name)
        print(f"key id:  {issued.key.key_id}")
        print(f"scopes:  {','.join(sorted(scopes))}")
        print(f"secret:  {issued.secret}   (shown once; only its hash is stored)")
        return 0
    if args.action == "list":
        listed = repo.list_api_keys(args.org)
        print(f"{'key id':<22}  {'organization':<14}  {'status':<7}  {'created':<10}  {'name':<20}  scopes")
        for k in listed:
            created = k.created_at.date().isoformat()
            print(
                f"{k.key_id:<22}  {k.organization_id:<14}  {k.status:<7}  {created:<10}  {k.name:<20}  "
                + ",".join(sorted(k.scopes))
            )
        return 0
    if repo.revoke_api_key(args.key_id):
        print(f"revoked {args.key_id}")
        return 0
    print(f"error: no key {args.key_id}", file=sys.stderr)
    return 1


def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
