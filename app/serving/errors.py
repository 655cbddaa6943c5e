"""The serving layer's own error: what a request names does not exist (the API answers 404)."""

from __future__ import annotations

__all__ = ["NotFound"]


class NotFound(LookupError):  # noqa: N818 (the API's word for a 404)
    """An unknown model or session; the message names it and, for models, lists what exists."""
