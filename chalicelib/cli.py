"""Operator commands: load the catalog into a stage, create and revoke API keys.

Run against a deployed stage with AWS credentials in the environment:
    python -m chalicelib.cli --stage prod catalog load
    python -m chalicelib.cli --stage prod keys create --org ORG-26-090500 --scopes all --name billing-sync
    python -m chalicelib.cli --stage prod keys revoke key_0123456789abcdef
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from chalicelib.config import reset_settings
from chalicelib.container import Container
from chalicelib.domain.auth import ALL_SCOPES, parse_scopes
from chalicelib.services import catalog_admin
from chalicelib.storage import clients


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metering", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stage", help="stage whose tables to use (default: METERING_STAGE or dev)")
    sub = parser.add_subparsers(dest="command", required=True)
    cat = sub.add_parser("catalog", help="the platform catalog").add_subparsers(dest="action", required=True)
    cat.add_parser("load", help="write the repo's meters and plans into the stage")
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key bound to one organization")
    create.add_argument("--org", required=True, help="organization id (ORG-*)")
    create.add_argument(
        "--scopes", default="all", help=f"comma-separated: all, read, or of {', '.join(sorted(ALL_SCOPES))}"
    )
    create.add_argument("--name", default="api key")
    revoke = keys.add_parser("revoke", help="revoke a key by its id (key_...)")
    revoke.add_argument("key_id")
    return parser


def run(argv: Sequence[str] | None, container: Container | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if container is None:
        if args.stage:
            os.environ["METERING_STAGE"] = args.stage
            reset_settings()
            clients.reset_clients()
        from chalicelib.config import get_settings

        container = Container.from_settings(get_settings())
    repo = container.catalog
    if args.command == "catalog":
        meters, plans = catalog_admin.load_platform_catalog(repo)
        print(f"loaded {meters} meters and {plans} plans into {repo.table_name}")
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
    if repo.revoke_api_key(args.key_id):
        print(f"revoked {args.key_id}")
        return 0
    print(f"error: no key {args.key_id}", file=sys.stderr)
    return 1


def main() -> int:
    return run(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
