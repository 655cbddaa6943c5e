"""The service's own errors beside ``ValueError`` (a bad field, 422): what a request names does not exist
(404), or the thing exists but its state refuses the request (409)."""

from __future__ import annotations

__all__ = ["CallerGone", "Conflict", "NotFound", "Overloaded", "TimedOut"]


class NotFound(LookupError):  # noqa: N818 (the API's word for a 404)
    """An unknown model, session, dataset or job; the message names it and, for models, lists what exists."""


class Conflict(Exception):  # noqa: N818 (the API's word for a 409)
    """A request that its target's state refuses: cancelling a finished job, deleting a dataset in use."""


class Overloaded(Exception):  # noqa: N818 (the API's word for a 503)
    """Too many calls are waiting: refused at once rather than queued without bound; retry after
    ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TimedOut(Overloaded):
    """A call that waited longer than the service's timeout, given up rather than left waiting."""


class CallerGone(Exception):  # noqa: N818 (nginx's 499: the client closed the request)
    """A call dropped because its caller disconnected while it waited; nobody reads the answer."""
