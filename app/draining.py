"""SIGTERM drains the service before it stops: readiness goes down and new calls get 503 with Retry-After
while the calls in flight finish, so that a load balancer sees the process leave before its port closes."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType

from starlette.datastructures import State

__all__ = ["drain_on_sigterm"]

logger = logging.getLogger(__name__)


def drain_on_sigterm(state: State, seconds: float) -> Callable[[], None]:
    """Wrap the server's SIGTERM handler (uvicorn's, which stops listening at once): a first SIGTERM sets
    ``state.ready`` to False (every route but health answers 503) and hands the signal on ``seconds`` later;
    a second one hands it on at once. Returns what puts the server's handler back. Without a handler of
    the server's (the app is not run by uvicorn in this process's main thread) nothing changes."""
    stop = signal.getsignal(signal.SIGTERM)
    if not callable(stop) or seconds <= 0:
        return lambda: None
    loop = asyncio.get_running_loop()
    signalled = False

    def drain(number: int, frame: FrameType | None) -> None:
        nonlocal signalled
        if signalled:
            stop(number, frame)
            return
        signalled, state.ready = True, False
        logger.warning("SIGTERM: refusing new calls with 503 for %g s while those in flight finish", seconds)
        loop.call_soon_threadsafe(loop.call_later, seconds, stop, number, frame)

    def undrain() -> None:
        signal.signal(signal.SIGTERM, stop)

    signal.signal(signal.SIGTERM, drain)
    return undrain
