"""Broker accounts per tenant: which venue account a tenant's intents trade through. Pure.

A tenant's registry (``tenants/{t}/broker_accounts/{account_id}``) lists its accounts: the venue,
paper or live, and a *reference* to the account's keys in Secret Manager
(``projects/P/secrets/S/versions/V``), never the keys themselves. An intent names one of its
tenant's accounts, or none (``broker_account_id`` empty or ``"default"``) to get the tenant's
default; any other name (another tenant's account, a typo) is refused before anything is written.

A tenant with no registry entries trades through the deployment's own Alpaca keys: one implicit
account, ``IMPLICIT_ACCOUNT_ID``, for every such tenant (the single-firm install). Whatever label
such an intent carries, it resolves to that one account, so labels can never split a limit that
protects one real account.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints, field_validator, model_validator

from backend.core.reasons import ReasonCode

IMPLICIT_ACCOUNT_ID = "default"
# An intent asking for its tenant's default account names it so (or sends nothing resolvable).
DEFAULT_ACCOUNT_ALIAS = IMPLICIT_ACCOUNT_ID

# Secret Manager's resource name of one secret version (a number or "latest").
_SECRET_VERSION = re.compile(
    r"^projects/[A-Za-z0-9][A-Za-z0-9_-]{0,62}/secrets/[A-Za-z0-9_-]{1,255}/versions/(latest|[1-9][0-9]{0,18})$"
)
_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class AccountVenue(StrEnum):
    ALPACA = "alpaca"
    PAPER = "paper"  # the in-process paper venue: fills at the quote, no keys


class AccountMode(StrEnum):
    PAPER = "paper"
    LIVE = "live"


AccountId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class BrokerAccount(BaseModel):
    """One of a tenant's broker accounts. ``credentials_ref`` is None only for the implicit account
    of the single-firm install (the deployment's own keys) and for a paper-venue account."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant_id: AccountId
    account_id: AccountId
    venue: AccountVenue
    mode: AccountMode = AccountMode.PAPER
    credentials_ref: str | None = None
    is_default: bool = False
    implicit: bool = False

    @field_validator("account_id")
    @classmethod
    def _plain_id(cls, value: str) -> str:
        if not _ACCOUNT_ID.match(value):
            raise ValueError(
                "account_id: letters, digits, '_', '.', '-' (64 at most), starting with a letter or digit"
            )
        return value

    @model_validator(mode="after")
    def _not_the_implicit_name(self) -> BrokerAccount:
        """``default`` names the tenant's default (and the single-firm install's one account):
        a registered account called so would be confused with the orders of that account."""
        if self.account_id == IMPLICIT_ACCOUNT_ID and not self.implicit:
            raise ValueError(f"account_id {IMPLICIT_ACCOUNT_ID!r} is reserved for the tenant's default")
        return self

    @field_validator("credentials_ref")
    @classmethod
    def _secret_reference(cls, value: str | None) -> str | None:
        """A reference, never a key: anything but a Secret Manager version name is refused."""
        if value is not None and not _SECRET_VERSION.match(value):
            raise ValueError(
                "credentials_ref must be a Secret Manager version name "
                "(projects/PROJECT/secrets/SECRET/versions/N or latest), not the secret itself"
            )
        return value

    @model_validator(mode="after")
    def _keys_where_needed(self) -> BrokerAccount:
        if self.venue is AccountVenue.ALPACA and self.credentials_ref is None and not self.implicit:
            raise ValueError("an Alpaca account needs credentials_ref (its keys in Secret Manager)")
        if self.venue is AccountVenue.PAPER and self.mode is AccountMode.LIVE:
            raise ValueError("the paper venue has no live mode")
        return self


def implicit_account(tenant_id: str) -> BrokerAccount:
    """The single-firm install's one account: the deployment's own keys, for every tenant that has
    no registry entries."""
    return BrokerAccount(
        tenant_id=tenant_id,
        account_id=IMPLICIT_ACCOUNT_ID,
        venue=AccountVenue.ALPACA,
        credentials_ref=None,
        is_default=True,
        implicit=True,
    )


@dataclass(frozen=True, slots=True)
class AccountRefusal:
    """Why an intent may not trade through the account it names; nothing is written for it."""

    code: ReasonCode
    reason: str


class BrokerAccountRefused(ValueError):
    """Raised where a refusal must stop a call (the engine); the HTTP function answers 403."""

    def __init__(self, refusal: AccountRefusal) -> None:
        super().__init__(refusal.reason)
        self.code = refusal.code
        self.reason = refusal.reason


def default_account(accounts: Sequence[BrokerAccount]) -> BrokerAccount | None:
    """The tenant's default: the one account marked so (an only account is its tenant's default)."""
    marked = [a for a in accounts if a.is_default]
    if len(marked) == 1:
        return marked[0]
    return accounts[0] if len(accounts) == 1 and not marked else None


def resolve_account(
    tenant_id: str, requested: str | None, accounts: Sequence[BrokerAccount]
) -> BrokerAccount | AccountRefusal:
    """The account an intent of ``tenant_id`` trades through. ``accounts`` are the tenant's registry
    entries (those of another tenant are never passed, and never match).

    No entries: the implicit account, whatever was requested (single-firm install). Otherwise the
    named account when it is the tenant's, the default when none (or ``"default"``) is named, and a
    refusal for any other name. The refusal does not say whether the name exists elsewhere."""
    own = [a for a in accounts if a.tenant_id == tenant_id]
    if not own:
        return implicit_account(tenant_id)
    name = (requested or "").strip()
    for account in own:
        if account.account_id == name:
            return account
    if name in ("", DEFAULT_ACCOUNT_ALIAS):
        chosen = default_account(own)
        if chosen is not None:
            return chosen
        return AccountRefusal(
            ReasonCode.BROKER_ACCOUNT_NOT_ALLOWED,
            f"tenant {tenant_id} has no single default broker account: name one of its accounts",
        )
    return AccountRefusal(
        ReasonCode.BROKER_ACCOUNT_NOT_ALLOWED,
        f"broker account {name!r} is not one of tenant {tenant_id}'s accounts",
    )


def with_default(accounts: Sequence[BrokerAccount], account_id: str) -> list[BrokerAccount]:
    """The registry after ``account_id`` becomes the default: exactly one default, the others not."""
    if not any(a.account_id == account_id for a in accounts):
        raise ValueError(f"no broker account {account_id!r} in this tenant's registry")
    return [a.model_copy(update={"is_default": a.account_id == account_id}) for a in accounts]
