"""Serve an aiohttp app from a daemon thread, so a blocking test can talk to it and stop it."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from tests.e2e.neuron_process import free_port


class ThreadedServer:
    """``ThreadedServer(app)``: ``.url`` on loopback until ``.stop()`` (idempotent)."""

    def __init__(self, app: web.Application) -> None:
        self._loop = asyncio.new_event_loop()
        port = free_port()
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", port).start())
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
