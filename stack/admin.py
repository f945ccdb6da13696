"""Operator commands on the configured database (``DUB_DATABASE_URL`` or the embedded
SQLite file):

    python -m stack.admin create-tenant acme --name "Acme Corp" --minutes 600
    python -m stack.admin issue-key acme
    python -m stack.admin grant acme 120
    python -m stack.admin revoke-key <key id>
    python -m stack.admin list

A new tenant's first API key is printed once; only its hash is stored.
"""

from __future__ import annotations

import argparse
import os
import sys

from sqlalchemy import select

from dubcore import accounts
from dubcore.db import Tenant, make_engine, make_sessionmaker
from dubcore.errors import DubbingError
from dubcore.settings import Settings, get_settings

DEMO_TENANT = "demo"


def ensure_demo_key(settings: Settings) -> str:
    """The embedded stack's API key: the demo tenant is created on first start, and its
    key kept in ``<data_dir>/demo-api-key`` (mode 0600) for the demo and the CLI."""
    path = settings.data_dir / "demo-api-key"
    sessions = make_sessionmaker(make_engine(settings))
    with sessions() as s:
        if path.is_file():
            key = path.read_text().strip()
            try:
                accounts.authenticate(s, key)
                return key
            except DubbingError:
                pass
        if s.get(Tenant, DEMO_TENANT) is None:
            _, key = accounts.create_tenant(s, DEMO_TENANT, "Embedded demo",
                                            settings.demo_tenant_minutes)
        else:
            _, key = accounts.issue_key(s, DEMO_TENANT, "embedded stack")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create-tenant", help="a tenant and its first API key")
    c.add_argument("tenant_id")
    c.add_argument("--name", default="")
    c.add_argument("--minutes", type=int, default=0)
    k = sub.add_parser("issue-key", help="another API key for a tenant")
    k.add_argument("tenant_id")
    g = sub.add_parser("grant", help="add (or remove, negative) credit minutes")
    g.add_argument("tenant_id")
    g.add_argument("minutes", type=int)
    r = sub.add_parser("revoke-key")
    r.add_argument("key_id")
    sub.add_parser("list", help="tenants and balances")
    sub.add_parser("demo-key", help="print (creating if needed) the embedded demo key")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.cmd == "demo-key":
        print(ensure_demo_key(settings))
        return 0
    sessions = make_sessionmaker(make_engine(settings))
    try:
        with sessions() as s:
            if args.cmd == "create-tenant":
                tenant, key = accounts.create_tenant(s, args.tenant_id, args.name,
                                                     args.minutes)
                print(f"tenant {tenant.id} created with {args.minutes} minutes")
                print(f"API key (shown once, store it now): {key}")
            elif args.cmd == "issue-key":
                row, key = accounts.issue_key(s, args.tenant_id, "cli")
                print(f"key {row.id} for {args.tenant_id} (shown once): {key}")
            elif args.cmd == "grant":
                print(f"balance: {accounts.grant(s, args.tenant_id, args.minutes, 'cli')}")
            elif args.cmd == "revoke-key":
                accounts.revoke_key(s, args.key_id)
                print(f"key {args.key_id} revoked")
            else:
                for t in s.scalars(select(Tenant).order_by(Tenant.id)):
                    print(f"{t.id:<24} {t.balance_minutes:>8} min  {t.name}")
    except DubbingError as e:
        print(f"{e.type_name}: {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

