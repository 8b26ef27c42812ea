"""The worker's errors. Each name states the fact; the edge decides what follows from it.

``CommandRefused`` and its children are final: the command is recorded as rejected with the
message as its reason, dead-lettered, and never retried, except one that ``may_succeed_later``
(a machine reported before its request), which the worker retries a while as ``RetryLater``
first. ``ConcurrentUpdate`` means a write lost a race: the batch runs again on fresh state.
``StoreUnavailable`` is retried with backoff (its own budget), then dead-lettered.
``CacheUnavailable`` is never retried: the change is committed and the outbox projects it once
the cache answers.
"""


class HostFactoryError(Exception):
    """Base of this project's errors."""


class CommandRefused(HostFactoryError):
    """The command can never succeed as sent; retrying changes nothing."""

    kind = "refused"
    # True where a command racing ahead of another may succeed once that one is applied
    # (a machine reported before its request's CreateRequest was applied): retried a while.
    may_succeed_later = False

    @property
    def reason(self) -> str:
        return f"{self.kind}: {self}"


class InvalidCommand(CommandRefused):
    kind = "invalid_command"


class TemplateNotFound(CommandRefused):
    kind = "template_not_found"


class MaxNumberExceeded(CommandRefused):
    kind = "max_number_exceeded"


class RequestConflict(CommandRefused):
    kind = "request_conflict"


class RequestNotFound(CommandRefused):
    kind = "request_not_found"
    may_succeed_later = True


class RequestNeverPublished(RequestNotFound):
    """A launch failure names a request a provider read from the feed, which is published
    only after the request is committed: one the store does not hold is not coming, so the
    refusal is at once rather than after the wait a racing machine report gets."""

    may_succeed_later = False


class MachineLimitReached(CommandRefused):
    kind = "machine_limit_reached"


class MachineRequestMismatch(CommandRefused):
    kind = "machine_request_mismatch"


class IllegalTransition(CommandRefused):
    kind = "illegal_transition"


class RetryLater(HostFactoryError):
    """Refused for now, but may apply once earlier commands are applied; nothing recorded."""

    def __init__(self, refusal: CommandRefused) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


class ConcurrentUpdate(HostFactoryError):
    """A write found a newer version (or a row another writer inserted first)."""


class StoreUnavailable(HostFactoryError):
    """The write store could not be reached."""


class CacheUnavailable(HostFactoryError):
    """The read cache could not be reached."""
