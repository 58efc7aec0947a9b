"""Reload on SIGHUP, for both roles: one reload at a time, for the application's life."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

log = logging.getLogger("cortex.reload")

Reload = Callable[[web.Application], Awaitable[bool]]


def reload_on_sighup(reload: Reload) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx: SIGHUP runs ``reload(app)``; a second SIGHUP waits for the first."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        lock = asyncio.Lock()
        tasks: set[asyncio.Task[bool]] = set()

        async def serialised() -> bool:
            async with lock:
                return await reload(app)

        def handler() -> None:
            log.info("SIGHUP: re-reading the config")
            task = loop.create_task(serialised())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_signal_handler(signal.SIGHUP, handler)
        yield
        loop.remove_signal_handler(signal.SIGHUP)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    return ctx
