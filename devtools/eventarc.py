"""Events built exactly as Eventarc delivers them to Cloud Functions, for the tests and the local
stack (which plays Eventarc's part between the emulators and the served functions)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from devtools.emulators import PROJECT


def pubsub_event(message: Any, subscription: str) -> tuple[dict[str, str], bytes]:
    """A Pub/Sub message as Eventarc delivers it (binary CloudEvent; both key spellings)."""
    published = message.publish_time.isoformat().replace("+00:00", "Z")
    body = {
        "message": {
            "data": base64.b64encode(message.data).decode(),
            "attributes": dict(message.attributes),
            "message_id": message.message_id,
            "messageId": message.message_id,
            "publish_time": published,
            "publishTime": published,
        },
        "subscription": subscription,
    }
    headers = {
        "ce-specversion": "1.0",
        "ce-id": str(uuid.uuid4()),  # random under the emulator too: deduplication uses message_id
        "ce-source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/strategy-runs",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-time": published,
        "Content-Type": "application/json",
    }
    return headers, json.dumps(body).encode()


def firestore_created_event(client: Any, path: str) -> tuple[dict[str, str], bytes]:
    """A document-created event as Eventarc delivers it: the document read back, as protobuf."""
    from google.events.cloud.firestore import Document, DocumentEventData

    name = f"projects/{PROJECT}/databases/(default)/documents/{path}"
    stored = client._firestore_api.get_document(request={"name": name}, metadata=client._rpc_metadata)
    document = Document.deserialize(type(stored).serialize(stored))
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    headers = {
        "ce-specversion": "1.0",
        "ce-id": str(uuid.uuid4()),
        "ce-source": f"//firestore.googleapis.com/projects/{PROJECT}/databases/(default)",
        "ce-type": "google.cloud.firestore.document.v1.created",
        "ce-subject": f"documents/{path}",
        "ce-time": now,
        "ce-location": "us-central1",
        "ce-project": PROJECT,
        "ce-database": "(default)",
        "ce-namespace": "(default)",
        "ce-document": path,
        "Content-Type": "application/protobuf",
    }
    return headers, DocumentEventData.serialize(DocumentEventData(value=document))
