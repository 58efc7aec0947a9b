"""The session key a request routes by, so one conversation keeps hitting one node's KV cache.

Coding agents resend the whole conversation every turn; only the node that served the last turn
holds its prefix in cache. The key, first found wins:

1. ``x-claude-code-session-id`` (Claude Code sends it on every request of a session);
2. what the client names itself: OpenAI ``user``, Anthropic ``metadata.user_id`` (Claude Code's
   holds its session id), Responses ``prompt_cache_key``: the handler passes it as ``declared``;
3. a hash of the system prompt and the first user message: every turn of a conversation
   starts with the same two, and two different conversations rarely do.

The key is only a routing hint (router.py hashes it onto a node); it is never trusted for auth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import msgspec

from cortex.protocol import openai

SESSION_HEADER = "x-claude-code-session-id"
_encoder = msgspec.json.Encoder()


def session_key(
    headers: Mapping[str, str], declared: str | None, messages: list[openai.Message]
) -> str:
    """The affinity key of one request (a short digest: the log shows it, never raw ids).

    ``headers`` must look names up case-insensitively (aiohttp's request headers do)."""
    explicit = headers.get(SESSION_HEADER) or declared
    seed = explicit.encode() if explicit else _opening(messages)
    return hashlib.blake2b(seed, digest_size=8).hexdigest()


PROMPT_HEAD = 1024
"""Characters (or token ids) of a raw prompt that key its session: an editor's completions
resend the same file with edits near the cursor, so the file's head stays the same."""


def prompt_session_key(
    headers: Mapping[str, str], declared: str | None, prompt: str | list[int]
) -> str:
    """``session_key`` for /v1/completions: the head of the prompt stands for the opening."""
    explicit = headers.get(SESSION_HEADER) or declared
    head = prompt[:PROMPT_HEAD]
    seed = explicit.encode() if explicit else _encoder.encode(head)
    return hashlib.blake2b(seed, digest_size=8).hexdigest()


def _opening(messages: list[openai.Message]) -> bytes:
    """The leading system/developer messages and the first user message, encoded."""
    for i, message in enumerate(messages):
        if isinstance(message, openai.UserMessage):
            return _encoder.encode(messages[: i + 1])
        if not isinstance(message, openai.SystemMessage | openai.DeveloperMessage):
            break
    return _encoder.encode(messages[:1])
