"""The translating relay: the neuron's heartbeat comments reach Anthropic and Responses clients
as their dialect's keep-alive events, so a long prefill is not a silent stream."""

from __future__ import annotations

from cortex import sse
from cortex.gateway.dialects.anthropic.stream import AnthropicStreamTranslator
from cortex.gateway.dialects.responses.stream import ResponsesStreamTranslator
from cortex.gateway.dialects.responses.translate import response_skeleton
from cortex.gateway.exchange import Exchange
from cortex.gateway.relay import TranslatedRelay
from tests.gateway.test_translate_responses import request

ROLE = sse.frame_json(
    b'{"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
)
HEARTBEAT = sse.comment(b"queued")
TEXT = sse.frame_json(
    b'{"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}'
)


def _anthropic() -> TranslatedRelay:
    return TranslatedRelay(
        Exchange("anthropic", "/v1/messages"), AnthropicStreamTranslator("m", "msg_1")
    )


def test_heartbeats_during_prefill_become_anthropic_pings() -> None:
    relay = _anthropic()
    start = relay.batch(ROLE)
    assert start.startswith(b"event: message_start\n") and start.count(b"event: ping\n") == 1
    assert relay.batch(HEARTBEAT) == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert relay.batch(HEARTBEAT + HEARTBEAT) == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert b"content_block_delta" in relay.batch(TEXT)
    assert b"message_stop" in relay.finish()
    assert relay.batch(HEARTBEAT) == b""  # nothing after the end


def test_a_heartbeat_before_any_chunk_starts_the_anthropic_message() -> None:
    out = _anthropic().batch(HEARTBEAT)
    assert out.startswith(b"event: message_start\n") and out.count(b"event: ping\n") == 1


def test_heartbeats_during_prefill_reach_responses_clients_as_in_progress_events() -> None:
    relay = TranslatedRelay(
        Exchange("responses", "/v1/responses"),
        ResponsesStreamTranslator(response_skeleton(request(input="hi"))),
    )
    assert b"response.created" in relay.batch(ROLE)
    assert relay.batch(HEARTBEAT).startswith(b"event: response.in_progress\n")
    relay.batch(TEXT)
    assert b"response.completed" in relay.finish()
    assert relay.batch(HEARTBEAT) == b""


def test_a_batch_without_chunks_or_comments_emits_nothing() -> None:
    relay = _anthropic()
    relay.batch(ROLE)
    assert relay.batch(b"\n\n") == b""
