"""Every Redis key and channel this project writes, in one place.

The read cache is versioned by its prefix (``hf:v1:``): a layout change bumps it and the
worker's rebuild fills the new keys while old readers keep working.
"""

from typing import Final

PREFIX: Final = "hf:v1:"

# --- read cache: one JSON document per view ---------------------------------------------
def request_key(request_id: str) -> str:
    return f"{PREFIX}request:{request_id}"


def request_summary_key(request_id: str) -> str:
    """The request view without its machines (``?include_machines=false``)."""
    return f"{PREFIX}request-summary:{request_id}"


def history_key(request_id: str) -> str:
    """Sorted set of the request's history entries (JSON), scored by the store's sequence."""
    return f"{PREFIX}history:{request_id}"


# The outbox key of a transaction's history entries, carried in one row: never a Redis key
# itself (the projector adds each entry to its request's history set).
HISTORY_BATCH_KEY: Final = f"{PREFIX}history-batch"


def machine_key(machine_id: str) -> str:
    return f"{PREFIX}machine:{machine_id}"


def machine_name_key(name: str) -> str:
    """Host name -> ``{"version", "machine_id"}`` of the newest machine so named."""
    return f"{PREFIX}machine-name:{name}"


def command_key(command_id: str) -> str:
    return f"{PREFIX}command:{command_id}"


TEMPLATES_KEY: Final = f"{PREFIX}templates"
# What the worker made of the templates file: {"at", "source", "loaded", "refused":
# [{"where", "template_id", "problems"}], "file_problems": [...]} (readiness, metrics).
TEMPLATES_STATUS_KEY: Final = f"{PREFIX}templates-status"

# Sorted sets of request ids, scored by the store's creation sequence (stable cursors).
REQUESTS_INDEX_KEY: Final = f"{PREFIX}idx:requests"


def requests_by_status_key(status: str) -> str:
    return f"{PREFIX}idx:requests:{status}"


# --- the provider feed (docs/providers.md): what providers must act on -------------------
# A Redis Stream; entries have the fields event_id, type and event (the JSON document).
FEED_STREAM_KEY: Final = f"{PREFIX}feed"


def feed_published_key(event_id: str) -> str:
    """Set when an event was added to the feed: a re-projected outbox row adds nothing."""
    return f"{PREFIX}feed-published:{event_id}"


# The worker's mark of what the cache holds (epoch seconds, only ever raised): a mark gone or
# gone back says the cache lost writes, and the worker heals it (adapters/cache_mark.py).
CACHE_MARK_KEY: Final = f"{PREFIX}cache-mark"
# Held by the one worker healing the cache.
CACHE_HEAL_LOCK_KEY: Final = f"{PREFIX}cache-heal-lock"

# Pub/sub channel on which the projector announces every view it wrote: "<key> <version>".
VIEWS_CHANNEL: Final = f"{PREFIX}views"

# --- broker-side bookkeeping of the command worker ---------------------------------------
def gateway_key_of(command_id: str) -> str:
    """What the command gateway first sent under this Idempotency-Key: "<task> <digest>"."""
    return f"{PREFIX}gateway:idempotency:{command_id}"


# Messages the worker could not even decode wait here (raw) until moved into the store.
DEAD_LETTER_INBOX_KEY: Final = f"{PREFIX}broker:dead-letter-inbox"
# Held by the one worker moving the inbox into the store.
DEAD_LETTER_DRAIN_LOCK_KEY: Final = f"{PREFIX}broker:dead-letter-drain-lock"
# How often a message was handed back after a worker died holding it (poison detection).
REDELIVERIES_KEY: Final = f"{PREFIX}broker:redeliveries"
# Live consumers: hash consumer id -> JSON list of queue keys it blocks on.
CONSUMERS_KEY: Final = f"{PREFIX}broker:consumers"


def consumer_lease_key(consumer_id: str) -> str:
    return f"{PREFIX}broker:lease:{consumer_id}"


def inflight_key(consumer_id: str, queue_key: str) -> str:
    return f"{PREFIX}broker:inflight:{consumer_id}:{queue_key}"

