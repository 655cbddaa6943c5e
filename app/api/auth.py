"""Who a request comes from: its ``X-API-Key`` verified against the database, then trusted for
``key_cache_seconds`` from memory, so that a busy key costs a dictionary lookup, not a query, per request."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

from anyio import to_thread
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.keys import Caller, first_admin_key, verify

__all__ = ["ANONYMOUS", "KeyCache", "start_auth"]

ANONYMOUS = Caller(id=None, name="anonymous", admin=True)
"""The caller of every request when auth is off: it owns nothing and sees everything."""
MAX_CACHED = 10_000

logger = logging.getLogger(__name__)


class KeyCache:
    """Verified keys by their sha256, each trusted until ``ttl`` seconds after it was checked; unknown or
    revoked keys are asked of the database every time."""

    def __init__(
        self, factory: sessionmaker[Session], ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._factory, self.ttl, self._clock = factory, ttl, clock
        self._known: dict[str, tuple[Caller, float]] = {}
        self._asked: dict[str, asyncio.Future[Caller | None]] = {}

    async def checked(self, key: str) -> Caller | None:
        """``cached``, else ``verified`` in a thread. Requests that find a key expired together wait for
        one query: 64 clients on one key sent 64 queries (and opened as many connections) each ``ttl``."""
        found = self.cached(key)
        if found is not None:
            return found
        digest = _digest(key)
        asked = self._asked.get(digest)
        if asked is None:
            asked = self._asked[digest] = asyncio.ensure_future(to_thread.run_sync(self.verified, key))
            asked.add_done_callback(lambda _: self._asked.pop(digest, None))
        return await asyncio.shield(asked)  # a caller that leaves does not cancel the others' query

    def cached(self, key: str) -> Caller | None:
        """The caller of ``key`` if it was verified less than ``ttl`` seconds ago, else None."""
        known = self._known.get(_digest(key))
        return known[0] if known is not None and known[1] > self._clock() else None

    def verified(self, key: str) -> Caller | None:
        """The caller of ``key`` as the database says now (a query: call it in a thread), or None when it is
        not a valid key; remembered for ``ttl`` seconds when it is one."""
        found, digest, now = verify(self._factory, key), _digest(key), self._clock()
        if len(self._known) >= MAX_CACHED:
            self._known = {d: k for d, k in self._known.items() if k[1] > now}
        if found is None:
            self._known.pop(digest, None)
        elif self.ttl > 0:
            self._known[digest] = found, now + self.ttl
        return found


def _digest(key: str) -> str:
    """What a key is remembered by: its sha256, so that no key stays in memory as it was sent."""
    return hashlib.sha256(key.encode()).hexdigest()


def start_auth(settings: Settings, factory: sessionmaker[Session]) -> None:
    """At the service's start: with auth off, say so loudly; with it on and no key yet, make the admin key
    (``first_admin_key``)."""
    if not settings.auth:
        logger.warning(
            "%s\nMETASERVE_AUTH is off: anyone who reaches this port can read, change and delete every "
            "session, dataset, job and model. Use it for local play only.\n%s",
            "!" * 100,
            "!" * 100,
        )
        return
    # Listening on every address, the machine's own is one of them.
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    first_admin_key(factory, settings.data_dir, f"http://{host}:{settings.port}")
