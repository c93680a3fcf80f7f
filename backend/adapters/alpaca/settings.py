"""Alpaca configuration. Keys use the names Alpaca's own tools read (``APCA_API_KEY_ID``,
``APCA_API_SECRET_KEY``); ``EXEC_ALPACA_*`` names are accepted as well. The secret is a
``SecretStr``: it never appears in a repr or a log line."""

from __future__ import annotations

from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.execution.settings import ConfigurationError

MISSING_KEYS = (
    "Alpaca keys are not configured: set APCA_API_KEY_ID and APCA_API_SECRET_KEY "
    "(or EXEC_ALPACA_KEY_ID and EXEC_ALPACA_SECRET_KEY)"
)


class AlpacaSettings(BaseSettings):
    """Every setting but the keys and URLs reads ``EXEC_ALPACA_<NAME>`` (``EXEC_ALPACA_TIMEOUT_S``...)."""

    model_config = SettingsConfigDict(
        env_prefix="EXEC_ALPACA_", frozen=True, extra="ignore", populate_by_name=True
    )

    api_key_id: str | None = Field(
        None, validation_alias=AliasChoices("APCA_API_KEY_ID", "EXEC_ALPACA_KEY_ID")
    )
    secret_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("APCA_API_SECRET_KEY", "EXEC_ALPACA_SECRET_KEY")
    )
    # Base-URL overrides, for tests and proxies (one server may answer both).
    trading_url: str | None = Field(
        None, validation_alias=AliasChoices("APCA_API_BASE_URL", "EXEC_ALPACA_URL")
    )
    data_url: str | None = Field(
        None, validation_alias=AliasChoices("APCA_API_DATA_URL", "EXEC_ALPACA_DATA_URL")
    )
    paper: bool = True
    timeout_s: Annotated[float, Field(gt=0)] = 10.0
    read_attempts: Annotated[int, Field(ge=1)] = 3
    backoff_s: Annotated[float, Field(ge=0)] = 0.2
    max_wait_s: Annotated[float, Field(ge=0)] = 5.0
    # After an unconfirmed submit, how long "not found" is looked up again before it means unknown.
    lookup_grace_s: Annotated[float, Field(ge=0)] = 2.0
    # One broker call (a submit with its retries, lookups and fill polls; a lookup; a cancel) ends
    # within this many seconds, whatever the network does: what is not known by then is the order
    # lifecycle's to settle (a function has 60 s in all: quote, store and broker).
    call_budget_s: Annotated[float, Field(gt=0)] = 20.0
    # Fill tracking after placement: bounded polling of the order.
    fill_polls: Annotated[int, Field(ge=0)] = 5
    fill_poll_s: Annotated[float, Field(ge=0)] = 0.2
    # Quote cache: the cost check and the fill use the same snapshot within this lifetime.
    quote_ttl_s: Annotated[float, Field(ge=0)] = 1.0
    # Trading requests this process sends per minute at most (Alpaca allows 200 per account);
    # 0: not paced. Market data has its own, separate limit.
    trading_requests_per_minute: Annotated[int, Field(ge=0)] = 190

    @property
    def has_credentials(self) -> bool:
        return bool(self.api_key_id) and bool(self.secret_key and self.secret_key.get_secret_value())

    def credentials(self) -> dict[str, str | None]:
        return {
            "api_key": self.api_key_id,
            "secret_key": self.secret_key.get_secret_value() if self.secret_key else None,
        }

    def required_credentials(self) -> dict[str, str | None]:
        """The keys, or an error naming the variables to set (alpaca-py's own says only "You must
        supply a method of authentication")."""
        if not self.has_credentials:
            raise ConfigurationError(MISSING_KEYS)
        return self.credentials()
