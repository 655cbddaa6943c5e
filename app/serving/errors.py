"""The service's own errors beside ``ValueError`` (a bad field, 422): what a request names does not exist
(404), or the thing exists but its state refuses the request (409)."""

from __future__ import annotations

__all__ = ["Conflict", "NotFound"]


class NotFound(LookupError):  # noqa: N818 (the API's word for a 404)
    """An unknown model, session, dataset or job; the message names it and, for models, lists what exists."""


class Conflict(Exception):  # noqa: N818 (the API's word for a 409)
    """A request that its target's state refuses: cancelling a finished job, deleting a dataset in use."""
