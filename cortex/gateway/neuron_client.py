"""The gateway's calls to a neuron's admin API, behind one small interface.

``Fleet`` polls ``status``; ``Loader`` posts loads and unloads; the Anthropic ``count_tokens``
posts to ``/v1/tokenize``. All of it goes through a ``NeuronClient``, so the placement and
loading logic can be driven in tests by an in-memory fake (tests/gateway/fake_neurons.py)
with no HTTP server and no sleeps. Chat completions do not go through here: they are streamed
by proxy.py, which relays bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import aiohttp
import msgspec

from cortex.config import NeuronRef
from cortex.errors import from_body
from cortex.protocol.neuron import NeuronStatus

_status_decoder = msgspec.json.Decoder(NeuronStatus)


class NeuronUnreachable(Exception):
    """The neuron did not answer (connection refused or reset, timeout, a garbled body).

    Distinct from the neuron answering with an error, which raises the matching CortexError.
    """


class NeuronClient(Protocol):
    async def status(self, ref: NeuronRef, timeout_s: float) -> NeuronStatus:
        """GET /status. Raises NeuronUnreachable, or the neuron's error."""
        ...

    async def post(self, ref: NeuronRef, path: str, body: bytes, timeout_s: float) -> bytes:
        """POST a JSON body; the answer's bytes. Raises NeuronUnreachable, or the neuron's
        error (``errors.from_body``) for a 4xx/5xx."""
        ...


def neuron_headers(ref: NeuronRef) -> dict[str, str]:
    return {"authorization": f"Bearer {ref.token}"} if ref.token else {}


class HttpNeuronClient:
    """The real client, over the gateway's shared connection pool. ``connect_timeout_s`` is
    asked per call (the running config's, which a reload may change)."""

    def __init__(
        self, session: aiohttp.ClientSession, connect_timeout_s: Callable[[], float]
    ) -> None:
        self._session = session
        self._connect_timeout_s = connect_timeout_s

    async def status(self, ref: NeuronRef, timeout_s: float) -> NeuronStatus:
        raw = await self._send("GET", ref, "/status", None, timeout_s)
        try:
            return _status_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise NeuronUnreachable(f"GET /status: not a status: {exc}") from None

    async def post(self, ref: NeuronRef, path: str, body: bytes, timeout_s: float) -> bytes:
        return await self._send("POST", ref, path, body, timeout_s)

    async def _send(
        self, method: str, ref: NeuronRef, path: str, body: bytes | None, timeout_s: float
    ) -> bytes:
        headers = {"content-type": "application/json", **neuron_headers(ref)}
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=self._connect_timeout_s())
        url = ref.endpoint.rstrip("/") + path
        try:
            async with self._session.request(
                method, url, data=body, headers=headers, timeout=timeout
            ) as resp:
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NeuronUnreachable(f"{method} {path}: {exc!r}") from None
        if resp.status >= 400:
            raise from_body(resp.status, raw)
        return raw
