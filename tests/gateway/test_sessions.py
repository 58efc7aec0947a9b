"""The session key a request routes by: header, then the client's own id, then the opening."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from cortex.gateway.sessions import PROMPT_HEAD, prompt_session_key, session_key
from cortex.protocol import openai

NONE = CIMultiDictProxy(CIMultiDict())
OPENING: list[openai.Message] = [
    openai.SystemMessage(content="You are a coding agent."),
    openai.UserMessage(content="fix the bug"),
]


def turn(*later: openai.Message) -> list[openai.Message]:
    return [*OPENING, *later]


def headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def test_claude_code_header_wins_over_everything() -> None:
    with_header = headers(X_Claude_Code_Session_Id="abc")
    assert session_key(with_header, "user-1", OPENING) == session_key(with_header, None, [])
    assert session_key(with_header, None, []) != session_key(NONE, "abc-other", [])


def test_declared_id_is_next() -> None:
    assert session_key(NONE, "user-1", OPENING) == session_key(NONE, "user-1", turn())
    assert session_key(NONE, "user-1", OPENING) != session_key(NONE, "user-2", OPENING)


def test_later_turns_of_a_conversation_share_the_opening_key() -> None:
    later = turn(
        openai.AssistantMessage(content="done"), openai.UserMessage(content="now the tests")
    )
    assert session_key(NONE, None, OPENING) == session_key(NONE, None, later)


def test_different_openings_are_different_sessions() -> None:
    other = [OPENING[0], openai.UserMessage(content="write docs")]
    assert session_key(NONE, None, OPENING) != session_key(NONE, None, other)


def test_key_is_a_short_digest_not_the_raw_id() -> None:
    key = session_key(headers(X_Claude_Code_Session_Id="secret-session"), None, [])
    assert len(key) == 16 and "secret" not in key


def test_an_editors_resent_file_keeps_its_session_while_its_head_is_unchanged() -> None:
    head = "import os\n" * (PROMPT_HEAD // 10 + 1)
    first = prompt_session_key(NONE, None, head + "def f(): pass")
    assert prompt_session_key(NONE, None, head + "def f(x): return x") == first
    assert prompt_session_key(NONE, None, "import sys\n" + head) != first
    assert prompt_session_key(NONE, "alice", head) == prompt_session_key(NONE, "alice", "x")
    assert prompt_session_key(NONE, None, list(range(5000))) == prompt_session_key(
        NONE, None, [*range(PROMPT_HEAD), 7]
    )
