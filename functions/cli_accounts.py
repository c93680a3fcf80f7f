"""``msr accounts``: each tenant's broker-account registry (the admin path; clients never write it).

    msr accounts add --tenant T --account A --venue alpaca --mode paper \\
        --credentials-ref projects/P/secrets/S/versions/1 [--default]
    msr accounts list --tenant T [--json]
    msr accounts set-default --tenant T --account A

The registry holds a Secret Manager *reference* to each account's keys, never the keys. The store
comes from the configuration (EXEC_STORE, EXEC_SQLITE_PATH; Firestore with the operator's own
credentials, which the security rules do not limit).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from backend.core.broker_accounts import AccountMode, AccountVenue, BrokerAccount
from backend.execution.ports import BrokerAccountRegistry
from backend.observability.logging import configure_logging, log_event

logger = logging.getLogger("msr.accounts")

EXIT_OK = 0
EXIT_REFUSED = 2

ParserFactory = Callable[..., argparse.ArgumentParser]


def add_accounts(commands: Any, parser: ParserFactory) -> None:
    """``parser``: the CLI's own sub-parser factory (the exit-code epilog on every level)."""
    accounts = parser(
        commands.add_parser,
        name="accounts",
        help="each tenant's broker accounts: add, list, set the default",
        description="Each tenant's broker accounts (tenants/{t}/broker_accounts): the venue, paper or "
        "live, and a Secret Manager reference to the account's keys (never the keys). An intent names "
        "one of its tenant's accounts or gets the default; a tenant with none trades through the "
        "deployment's own Alpaca keys (the single-firm install).",
    )
    actions = accounts.add_subparsers(title="commands", dest="accounts_command", required=True)
    add = parser(
        actions.add_parser,
        name="add",
        help="add (or replace) one of a tenant's accounts",
        description="Add or replace an account. The tenant's first account becomes its default; "
        "--default makes this one the default (the others stop being it).",
    )
    add.add_argument("--tenant", required=True)
    add.add_argument("--account", required=True, help="the account id intents name (broker_account_id)")
    add.add_argument("--venue", required=True, choices=[v.value for v in AccountVenue])
    add.add_argument("--mode", default=AccountMode.PAPER.value, choices=[m.value for m in AccountMode])
    add.add_argument(
        "--credentials-ref",
        help="projects/P/secrets/S/versions/N (or latest): where the keys are (JSON with api_key_id "
        "and secret_key); required for alpaca",
    )
    add.add_argument("--default", action="store_true", help="make it the tenant's default")
    add.set_defaults(run=_add)
    listing = parser(
        actions.add_parser, name="list", help="the tenant's accounts", description="The tenant's accounts."
    )
    listing.add_argument("--tenant", required=True)
    listing.add_argument("--json", action="store_true", help="print the accounts as one JSON array")
    listing.set_defaults(run=_list)
    default = parser(
        actions.add_parser,
        name="set-default",
        help="make one of the tenant's accounts its default",
        description="Make one of the tenant's accounts its default; exit 2 when it has no such account.",
    )
    default.add_argument("--tenant", required=True)
    default.add_argument("--account", required=True)
    default.set_defaults(run=_set_default)


def _with_registry(act: Callable[[BrokerAccountRegistry], int]) -> int:
    from backend.adapters.broker_account_stores import registry_for
    from backend.adapters.stores import build_stores
    from backend.execution.settings import ConfigurationError, load_settings

    configure_logging("INFO", sys.stderr)
    try:
        store, _ = build_stores(load_settings())
    except ConfigurationError as exc:
        print(f"msr accounts: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        return act(registry_for(store))
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def _add(args: argparse.Namespace) -> int:
    def act(registry: BrokerAccountRegistry) -> int:
        first = not registry.broker_accounts(args.tenant)
        try:
            account = BrokerAccount(
                tenant_id=args.tenant,
                account_id=args.account,
                venue=args.venue,
                mode=args.mode,
                credentials_ref=args.credentials_ref,
                is_default=args.default or first,
            )
        except ValidationError as exc:
            problems = "; ".join(e["msg"] for e in exc.errors())
            print(f"msr accounts add: {problems}", file=sys.stderr)
            return EXIT_REFUSED
        registry.put_broker_account(account)
        log_event(
            logger,
            "accounts.added",
            f"Broker account {account.account_id} of {account.tenant_id} stored",
            tenant_id=account.tenant_id,
            broker_account_id=account.account_id,
            venue=account.venue.value,
            mode=account.mode.value,
            is_default=account.is_default,
        )
        print(_line(account))
        return EXIT_OK

    return _with_registry(act)


def _list(args: argparse.Namespace) -> int:
    def act(registry: BrokerAccountRegistry) -> int:
        accounts = registry.broker_accounts(args.tenant)
        if args.json:
            print(json.dumps([a.model_dump(mode="json", exclude={"implicit"}) for a in accounts]))
        elif not accounts:
            print(f"Tenant {args.tenant} has no broker accounts: it trades through the deployment's own keys")
        else:
            print("\n".join(_line(a) for a in accounts))
        return EXIT_OK

    return _with_registry(act)


def _set_default(args: argparse.Namespace) -> int:
    def act(registry: BrokerAccountRegistry) -> int:
        try:
            registry.set_default_broker_account(args.tenant, args.account)
        except ValueError as exc:
            print(f"msr accounts set-default: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        log_event(logger, "accounts.default_set", f"Broker account {args.account} is {args.tenant}'s default",
                  tenant_id=args.tenant, broker_account_id=args.account)  # fmt: skip
        print(f"{args.account} is now tenant {args.tenant}'s default broker account")
        return EXIT_OK

    return _with_registry(act)


def _line(account: BrokerAccount) -> str:
    default = " (default)" if account.is_default else ""
    keys = account.credentials_ref or "no keys (paper venue)"
    where = f"{account.tenant_id}/{account.account_id}{default}"
    return f"{where}: {account.venue.value} {account.mode.value}, keys at {keys}"
