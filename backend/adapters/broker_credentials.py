"""Each registered broker account's own broker, built from its own keys.

The registry holds only a reference to an account's keys (a Secret Manager version name); the keys
are read here, when the account first trades in this process, and kept in memory only (never
logged, never written). Two ways to read them (``EXEC_BROKER_CREDENTIALS``):

- ``secret_manager`` (the default; deployed): Secret Manager's ``versions.access`` over its REST API
  with the function's own service account (google-auth, already a dependency of the Firestore
  client; no extra client library). The service account needs ``roles/secretmanager.secretAccessor``
  on each account's secret. The secret's payload is JSON: ``{"api_key_id": "...", "secret_key": "..."}``.
- ``local_file`` (**local runs and tests only**; refused when running deployed): a JSON file
  (``EXEC_BROKER_CREDENTIALS_FILE``) mapping each reference to such a payload.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.core.broker_accounts import AccountMode, AccountVenue, BrokerAccount
from backend.core.instruments import AssetClass
from backend.execution.ports import Broker
from backend.execution.settings import ConfigurationError

SECRET_MANAGER_URL = "https://secretmanager.googleapis.com/v1"


@dataclass(frozen=True, slots=True)
class BrokerKeys:
    api_key_id: str
    secret_key: SecretStr  # never in a repr or a log line


class CredentialResolver(Protocol):
    def keys(self, credentials_ref: str) -> BrokerKeys: ...


def parse_keys(payload: str | bytes, credentials_ref: str) -> BrokerKeys:
    """The keys in a secret's payload; an error names the reference, never the content."""
    try:
        data = json.loads(payload)
        key_id, secret = data["api_key_id"], data["secret_key"]
    except (ValueError, KeyError, TypeError):
        raise ConfigurationError(
            f"{credentials_ref}: the secret must be JSON with api_key_id and secret_key"
        ) from None
    if not (isinstance(key_id, str) and key_id and isinstance(secret, str) and secret):
        raise ConfigurationError(f"{credentials_ref}: api_key_id and secret_key must be non-empty strings")
    return BrokerKeys(key_id, SecretStr(secret))


class SecretManagerCredentials:
    """Secret Manager's ``projects/*/secrets/*/versions/*:access`` over HTTPS. ``session``: an
    authorized ``requests`` session (default: google-auth's, from the runtime's credentials)."""

    def __init__(
        self, session: Any = None, base_url: str = SECRET_MANAGER_URL, timeout_s: float = 10.0
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._lock = threading.Lock()

    def _authorized(self) -> Any:
        with self._lock:
            if self._session is None:
                import google.auth
                from google.auth.transport.requests import AuthorizedSession

                credentials, _ = google.auth.default(
                    scopes=["https://www.googleapis.com/auth/cloud-platform"]
                )
                self._session = AuthorizedSession(credentials)
            return self._session

    def keys(self, credentials_ref: str) -> BrokerKeys:
        response = self._authorized().get(
            f"{self._base_url}/{credentials_ref}:access", timeout=self._timeout_s
        )
        if response.status_code != 200:
            raise ConfigurationError(f"{credentials_ref}: Secret Manager answered {response.status_code}")
        try:
            payload = base64.b64decode(response.json()["payload"]["data"])
        except (ValueError, KeyError, TypeError):
            raise ConfigurationError(f"{credentials_ref}: Secret Manager's answer has no payload") from None
        return parse_keys(payload, credentials_ref)


class LocalFileCredentials:
    """Local runs and tests only: references mapped to keys in a JSON file on this machine."""

    def __init__(self, path: str | Path, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        if env.get("K_SERVICE"):  # set by the Cloud Functions / Cloud Run runtime
            raise ConfigurationError("EXEC_BROKER_CREDENTIALS=local_file is for local runs only")
        self._path = Path(path)

    def keys(self, credentials_ref: str) -> BrokerKeys:
        try:
            table = json.loads(self._path.read_text())
        except (OSError, ValueError):
            raise ConfigurationError(
                f"the local credentials file {self._path} cannot be read as JSON"
            ) from None
        if not isinstance(table, dict) or credentials_ref not in table:
            raise ConfigurationError(f"{credentials_ref}: not in the local credentials file")
        return parse_keys(json.dumps(table[credentials_ref]), credentials_ref)


class BrokerCredentialSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EXEC_BROKER_", frozen=True, extra="ignore")

    credentials: Literal["secret_manager", "local_file"] = "secret_manager"
    credentials_file: str | None = Field(None)


def configured_credentials(settings: BrokerCredentialSettings | None = None) -> CredentialResolver:
    settings = settings or BrokerCredentialSettings()
    if settings.credentials == "local_file":
        if not settings.credentials_file:
            raise ConfigurationError("EXEC_BROKER_CREDENTIALS=local_file needs EXEC_BROKER_CREDENTIALS_FILE")
        return LocalFileCredentials(settings.credentials_file)
    return SecretManagerCredentials()


class AccountBrokers:
    """``BrokerProvider``: one broker per registered account, built on first use and kept.

    An Alpaca account trades through an ``AlpacaBroker`` holding that account's keys (paper or live
    as registered; the deployment's URLs, timeouts and pace otherwise), behind the deployment's venue
    table (FX still goes to the paper venue or nowhere). A paper-venue account trades every asset
    class at the paper venue."""

    def __init__(
        self,
        credentials: CredentialResolver,
        alpaca: Callable[[BrokerKeys, bool], Broker],
        paper: Callable[[], Broker],
        venue_table: Mapping[str, str],
    ) -> None:
        self._credentials = credentials
        self._alpaca = alpaca
        self._paper = paper
        self._venue_table = dict(venue_table)
        self._brokers: dict[tuple[str, ...], Broker] = {}
        self._lock = threading.Lock()

    def broker_for(self, account: BrokerAccount) -> Broker:
        from backend.adapters.venues import build_venues

        identity = (
            account.tenant_id,
            account.account_id,
            account.venue,
            account.mode,
            account.credentials_ref or "",
        )
        with self._lock:
            broker = self._brokers.get(identity)
            if broker is not None:
                return broker
            if account.venue is AccountVenue.PAPER:
                broker = build_venues({c.value: "paper" for c in AssetClass}, self._paper, self._paper)
            else:
                assert account.credentials_ref is not None  # the model requires it for Alpaca
                keys = self._credentials.keys(account.credentials_ref)
                paper_mode = account.mode is AccountMode.PAPER
                broker = build_venues(self._venue_table, lambda: self._alpaca(keys, paper_mode), self._paper)
            self._brokers[identity] = broker
            return broker


def alpaca_for_keys(base: Any) -> Callable[[BrokerKeys, bool], Broker]:
    """Builds an ``AlpacaBroker`` on ``base`` (the deployment's ``AlpacaSettings``) with an account's keys."""

    def build(keys: BrokerKeys, paper_mode: bool) -> Broker:
        from backend.adapters.alpaca.broker import AlpacaBroker

        settings = base.model_copy(
            update={"api_key_id": keys.api_key_id, "secret_key": keys.secret_key, "paper": paper_mode}
        )
        return AlpacaBroker(settings)

    return build
