"""Cloud Functions entry points, discovered by the Firebase CLI (``firebase deploy``).

Only the Firebase Functions SDK is imported here; each function imports what it needs on its
first invocation (see ``functions/cloud.py``), which keeps cold starts short.

- ``execute``: HTTPS, ``POST`` an OrderIntent with a Firebase ID token; public, authenticated in code.
- ``orders``: HTTPS, ``GET`` one order of the caller's tenant, ``POST /cancel`` to cancel it; the same
  authentication (it asks the broker, so it holds the broker keys).
- ``schedule_strategy_runs``: Cloud Scheduler tick; publishes one message per enabled strategy.
- ``run_strategy``: Pub/Sub ``strategy-runs`` (retried on failure); runs one strategy once.
- ``fan_out_ledger_trade``: Firestore ``tenants/{tenant_id}/ledger_trades/{trade_id}`` created.
- ``redrive_portfolio``: scheduled; fans out ledger rows the trigger missed (it is not retried).
- ``settle_orders``: scheduled; settles open orders no delivery came back for, from the broker.
- ``check_positions``: scheduled; compares Alpaca's positions with the ledger's and logs the drift.

The scheduled functions run their work only for Cloud Scheduler's requests (``functions/scheduled.py``).
"""

from __future__ import annotations

import base64
import os

from firebase_functions import firestore_fn, https_fn, pubsub_fn, scheduler_fn
from firebase_functions.params import SecretParam

from functions.scheduled import scheduler_only

STRATEGY_RUNS_TOPIC = "strategy-runs"  # also functions.app.STRATEGY_RUNS_TOPIC
# Read when the CLI discovers the functions: set them in a .env next to main.py to change them.
STRATEGY_SCHEDULE = os.environ.get("STRATEGY_SCHEDULE", "every 5 minutes")
REDRIVE_SCHEDULE = os.environ.get("REDRIVE_SCHEDULE", "every 30 minutes")
SWEEP_SCHEDULE = os.environ.get("SWEEP_SCHEDULE", "every 5 minutes")
POSITION_CHECK_SCHEDULE = os.environ.get("POSITION_CHECK_SCHEDULE", "every 60 minutes")

if os.environ.get("FIRESTORE_EMULATOR_HOST"):
    # Under the emulators the SDK's own Firestore trigger would initialise firebase-admin with
    # credentials a developer machine does not have; give it the emulator's anonymous ones first.
    from functions.app import firebase_app

    firebase_app()

ALPACA_KEY_ID = SecretParam("APCA_API_KEY_ID")
ALPACA_SECRET_KEY = SecretParam("APCA_API_SECRET_KEY")
BROKER_SECRETS = [ALPACA_KEY_ID, ALPACA_SECRET_KEY]


@https_fn.on_request(secrets=BROKER_SECRETS, timeout_sec=60)
def execute(req: https_fn.Request) -> https_fn.Response:
    from functions.cloud import execute_http

    return execute_http(req)  # type: ignore[no-any-return]


@https_fn.on_request(secrets=BROKER_SECRETS, timeout_sec=60)
def orders(req: https_fn.Request) -> https_fn.Response:
    from functions.cloud import orders_http

    return orders_http(req)  # type: ignore[no-any-return]


@scheduler_fn.on_schedule(schedule=STRATEGY_SCHEDULE, timezone=scheduler_fn.Timezone("UTC"))
@scheduler_only  # a health probe or a stray request does not run the work
def schedule_strategy_runs(event: scheduler_fn.ScheduledEvent) -> None:
    from functions.cloud import schedule_tick

    schedule_tick(event.schedule_time)


@pubsub_fn.on_message_published(
    topic=STRATEGY_RUNS_TOPIC, retry=True, secrets=BROKER_SECRETS, timeout_sec=300
)
def run_strategy(event: pubsub_fn.CloudEvent[pubsub_fn.MessagePublishedData]) -> None:
    from functions.cloud import run_message

    message = event.data.message  # data arrives base64-encoded
    run_message(message.message_id, base64.b64decode(message.data or ""))


@firestore_fn.on_document_created(document="tenants/{tenant_id}/ledger_trades/{trade_id}")
def fan_out_ledger_trade(event: firestore_fn.Event[firestore_fn.DocumentSnapshot | None]) -> None:
    from functions.cloud import ledger_created

    snapshot = event.data
    ledger_created(snapshot.to_dict() if snapshot is not None else None, event.document)


@scheduler_fn.on_schedule(schedule=REDRIVE_SCHEDULE, timezone=scheduler_fn.Timezone("UTC"))
@scheduler_only
def redrive_portfolio(event: scheduler_fn.ScheduledEvent) -> None:
    from functions.cloud import redrive_portfolio as redrive

    redrive()


@scheduler_fn.on_schedule(
    schedule=SWEEP_SCHEDULE, timezone=scheduler_fn.Timezone("UTC"), secrets=BROKER_SECRETS, timeout_sec=300
)
@scheduler_only
def settle_orders(event: scheduler_fn.ScheduledEvent) -> None:
    from functions.cloud import settle_orders as sweep

    sweep()


@scheduler_fn.on_schedule(
    schedule=POSITION_CHECK_SCHEDULE,
    timezone=scheduler_fn.Timezone("UTC"),
    secrets=BROKER_SECRETS,
    timeout_sec=300,
)
@scheduler_only
def check_positions(event: scheduler_fn.ScheduledEvent) -> None:
    from functions.cloud import check_positions as check

    check()
