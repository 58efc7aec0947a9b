"""Every exchange is counted once, with the status its client was answered with, whatever the
handler raised: CI once counted a hang-up as 200 because the relay's write found the socket
closed before aiohttp cancelled the handler."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import ClientConnectionResetError, web
from aiohttp.test_utils import make_mocked_request

from cortex import edge
from cortex.gateway.app import REQUEST_ID, _error_response, _exchange_handler, _from_http
from cortex.gateway.core import GATEWAY
from cortex.gateway.exchange import Exchange


class _Accounts:
    """Test double for the Gateway: records the exchanges it is told finished."""

    def __init__(self) -> None:
        self.finished: list[Exchange] = []

    def finish(self, exchange: Exchange, error: object = None) -> None:
        self.finished.append(exchange)


class _Transport:
    """Test double for the client's socket, open or closed by the client."""

    def __init__(self, closing: bool) -> None:
        self.closing = closing

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


CLOSED = "Cannot write to closing transport"


@pytest.mark.parametrize(
    ("raised", "client_gone", "status"),
    [
        # A relay's write can fail before aiohttp cancels the handler (CI saw a 200 counted).
        (ClientConnectionResetError(CLOSED), True, 499),
        (asyncio.CancelledError(), True, 499),
        (ConnectionResetError("upstream reset"), False, 500),
        (ValueError("a bug"), False, 500),
        (RecursionError(), False, 400),
        (web.HTTPRequestEntityTooLarge(max_size=1, actual_size=2), False, 413),
        (web.HTTPUnsupportedMediaType(), False, 400),  # the gateway answers it as a 400
    ],
)
async def test_an_exchange_is_counted_with_the_status_its_client_is_answered_with(
    raised: BaseException, client_gone: bool, status: int
) -> None:
    accounts = _Accounts()
    app = web.Application()
    app[GATEWAY] = accounts  # type: ignore[assignment]
    request = make_mocked_request(
        "POST", "/v1/responses", app=app, transport=_Transport(client_gone)
    )
    request[REQUEST_ID] = "r1"

    async def failing(*_: object) -> web.StreamResponse:
        raise raised

    handler = _exchange_handler("responses", "/v1/responses", failing)
    with pytest.raises(type(raised)):
        await handler(request)
    (exchange,) = accounts.finished
    assert exchange.status == status
    assert (exchange.error == "client closed the connection") == (status == 499)
    if status != 499:  # what the errors middleware answers, when it answers
        log = logging.getLogger("test")
        answered = edge.failure(request, raised, _error_response, _from_http, log, "internal")
        assert answered.status == status
