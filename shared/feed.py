"""The provider feed's events: how the pair signs them and how a provider proves an entry is
the pair's before acting on it (docs/providers.md, "Trusting the feed").

Anyone who can write to the read cache's Redis can ``XADD`` to the feed. A provider launches
and terminates machines on what it reads there, so it acts only on an entry whose ``sig``
is the HMAC-SHA256, under the key the worker and the providers share
(``FEED_SIGNING_KEY``), of its event id, type and document; and only when the document
agrees with the entry's fields. The standard library only: a provider in any language does
the same in a few lines.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

SIGNATURE_FIELD: Final = "sig"
_CONTEXT: Final = b"hf-feed-v1"
MIN_KEY_BYTES: Final = 32


class UnprovenEvent(Exception):
    """A feed entry the pair cannot be shown to have published (unsigned, forged, altered,
    or not a well-formed event); the message says which."""


def signature(key: bytes, event_id: str, kind: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``hf-feed-v1 NUL event_id NUL type NUL document``."""
    mac = hmac.new(key, _CONTEXT, hashlib.sha256)
    for part in (event_id.encode(), kind.encode(), body):
        mac.update(b"\0" + part)
    return mac.hexdigest()


def _text(fields: Mapping[bytes, bytes], name: str) -> str:
    value = fields.get(name.encode())
    if value is None:
        raise UnprovenEvent(f"no {name} field")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise UnprovenEvent(f"{name} is not text") from None


def verified(key: bytes, fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    """The event document of a feed entry, once proven the pair's; raises UnprovenEvent."""
    event_id, kind = _text(fields, "event_id"), _text(fields, "type")
    body = fields.get(b"event")
    if body is None:
        raise UnprovenEvent("no event field")
    given = _text(fields, SIGNATURE_FIELD) if fields.get(SIGNATURE_FIELD.encode()) else ""
    if not given:
        raise UnprovenEvent("unsigned (the worker has no FEED_SIGNING_KEY, or the entry was "
                            "not written by the pair)")
    if not hmac.compare_digest(given, signature(key, event_id, kind, body)):
        raise UnprovenEvent("bad signature: not written by the pair, or altered, or signed "
                            "with another key")
    try:
        event = json.loads(body)
    except ValueError:
        raise UnprovenEvent("the event is not JSON") from None
    if not isinstance(event, dict) or event.get("event_id") != event_id or \
            event.get("type") != kind:
        raise UnprovenEvent("the event's id or type differs from the entry's")
    return event


def load_key(value: str | None, path: Path | None) -> bytes | None:
    """The signing key from ``FEED_SIGNING_KEY`` or the file ``FEED_SIGNING_KEY_FILE``
    names (surrounding white space dropped); None when neither is set."""
    if path is not None:
        text = path.read_text().strip()
    elif value:
        text = value.strip()
    else:
        return None
    key = text.encode()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the feed signing key must be at least {MIN_KEY_BYTES} bytes "
                         "(e.g. python3 -c 'import secrets; print(secrets.token_hex(32))')")
    return key
