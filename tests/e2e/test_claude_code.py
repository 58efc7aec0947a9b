"""Claude Code against cortex: its request shapes replayed, then the real CLI, two turns.

Two real neurons (the transformers harness on the random-weight demo model: ``coder``, a
4096-token context, on both; ``coder-long``, 32768 tokens, on n1 for the CLI, whose first prompt
alone is ~8k demo tokens with three tools) behind one real gateway with an API key and Claude
Code's model names as aliases. The demo model answers gibberish; what is checked is that every
answer is well formed, in order, that the context budget holds (``max_tokens`` 128000 is capped
at what the context leaves, only a prompt that does not fit is refused), and that sessions stay
on their node while ``coder`` is resident on both.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.gateway_process import GatewayProcess
from tests.e2e.neuron_process import REPO_ROOT, NeuronProcess

pytestmark = pytest.mark.slow

KEY = "sk-cortex-e2e"
CONTEXT = 4096
TARGET_PROMPT = 3800  # leaves <= 296 tokens: the 128000 ceiling is capped, and decode stays short
CLAUDE = REPO_ROOT / ".venv/clients/node_modules/.bin/claude"
BILLING = "x-anthropic-billing-header: cc_version=2.1.197.123; cc_entrypoint=sdk-cli; cch={};"
FILLER = "The repository holds a gateway and a neuron; read the code before you change it. "
HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,context-1m-2025-08-07,"
    "interleaved-thinking-2025-05-14,context-management-2025-06-27,effort-2025-11-24",
    "x-app": "cli",
}
PNG = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def gateway(
    start_neuron: Any, model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """Neurons n1 (coder, coder-long) and n2 (coder, and ``scripted``: the scripted ``fake``
    harness, a test double whose answers the prompt dictates), started side by side."""
    models = [
        {"id": "coder", "source": "tiny", "harness": "transformers", "context_length": CONTEXT},
        {"id": "coder-long", "source": "tiny", "harness": "transformers", "context_length": 32768},
        {"id": "scripted", "source": "tiny", "harness": "fake", "context_length": 400_000},
    ]
    holds = {"n1": models[:2], "n2": [models[0], models[2]]}

    def start(name: str) -> NeuronProcess:
        neuron: NeuronProcess = start_neuron(
            name=name,
            model_roots=[model_root],
            models=holds[name],
            preload=[m["id"] for m in holds[name]],
            harnesses=["transformers", "fake"],
            cpu_memory_budget_gb=3.0,
            module="tests.e2e.scripted_neuron",
        )
        loaded = ["loaded"] * len(holds[name])
        neuron.wait_for(lambda s: [m["state"] for m in s["models"]] == loaded, timeout=90)
        return neuron

    with ThreadPoolExecutor(2) as pool:
        neurons = dict(zip(holds, pool.map(start, holds), strict=True))
    aliases = [
        {**models[0], "aliases": ["claude-sonnet-*", "claude-haiku-*"]},
        {**models[1], "aliases": ["claude-opus-*"]},
        models[2],
    ]
    gw = GatewayProcess.start(
        tmp_path_factory.mktemp("gw-cc"),
        neurons=neurons,
        models=aliases,
        api_keys=[KEY],
        log_format="json",
    )
    gw.wait_for(
        lambda p: (
            p.get("coder") == ["n1", "n2"]
            and p.get("coder-long") == ["n1"]
            and p.get("scripted") == ["n2"]
        )
    )
    yield gw
    gw.stop()


@pytest.fixture
async def http(gateway: GatewayProcess) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(gateway.url, headers=HEADERS) as session:
        yield session


# --------------------------------------------------------------------------- captured shapes


def tool(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"{name} a file.",
        "input_schema": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"file_path": {"type": "string"}},
            "required": ["file_path"],
            "additionalProperties": False,
        },
    }


def first_turn(filler: int, cch: str = "5a1f0") -> dict[str, Any]:
    """Claude Code 2.1's first request, as captured (text shortened, ``filler`` sentences
    added to the system prompt to reach a chosen prompt length)."""
    return {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 128000,
        "stream": True,
        "system": [
            {"type": "text", "text": BILLING.format(cch)},
            {
                "type": "text",
                "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            },
            {"type": "text", "text": "You help with software engineering. " + FILLER * filler},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "<system-reminder>Today is 2026-12-01.</system-reminder>",
                    },
                    {"type": "text", "text": "say hi", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {"role": "system", "content": "Available agent types: claude, Explore."},
        ],
        "tools": [tool(n) for n in ("Read", "Edit", "Write", "Glob")],
        "metadata": {"user_id": json.dumps({"device_id": "d0", "session_id": "s-1"})},
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "medium"},
    }


def later_turn(filler: int) -> dict[str, Any]:
    """A later turn: signed thinking in the history, tool results as a string and as an array
    holding a screenshot, an error result, ``thinking`` enabled with a budget."""
    body = first_turn(filler, cch="9c33e")
    body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    body["messages"] += [
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Read it first.", "signature": "EqQBCkYIBxgC"},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3"},
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"file_path": "a"}},
                {"type": "tool_use", "id": "toolu_02", "name": "Read", "input": {"file_path": "b"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "print(1)"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_02",
                    "is_error": True,
                    "content": [
                        {"type": "text", "text": "screenshot of the error"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                    ],
                },
                {
                    "type": "text",
                    "text": "go on",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"},
                },
            ],
        },
    ]
    return body


async def count(http: aiohttp.ClientSession, body: dict[str, Any]) -> int:
    counted = {k: body[k] for k in ("model", "system", "messages", "tools", "thinking")}
    async with http.post(
        "/v1/messages/count_tokens?beta=true", json=counted, headers={"x-api-key": KEY}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return int((await resp.json())["input_tokens"])


async def filler_for(http: aiohttp.ClientSession, build: Any, target: int) -> int:
    base, one = await count(http, build(0)), await count(http, build(1))
    return max(0, (target - base) // (one - base))


def sse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in raw.split("\n\n"):
        if frame.strip():
            name, data = frame.split("\n")
            assert name.startswith("event: ") and data.startswith("data: ")
            events.append((name[7:], json.loads(data[6:])))
    return events


def check_stream(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Anthropic's order, exactly; returns the message_delta event."""
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert all(n == e["type"] for n, e in events)
    index, open_block, inputs = -1, None, ""
    for name, event in events[1:-2]:
        if name == "ping":
            assert open_block is None
        elif name == "content_block_start":
            assert open_block is None and event["index"] == index + 1
            index, open_block, inputs = event["index"], event["content_block"]["type"], ""
        elif name == "content_block_delta":
            assert event["index"] == index and open_block is not None
            if open_block == "tool_use":
                inputs += event["delta"]["partial_json"]
        else:
            assert name == "content_block_stop" and event["index"] == index
            if open_block == "tool_use":
                assert isinstance(json.loads(inputs), dict)
            open_block = None
    assert open_block is None
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
    return delta


def check_budget(usage: dict[str, Any], prompt: int, stop_reason: str) -> None:
    """The neuron saw exactly count_tokens' prompt; max_tokens 128000 was capped, not refused."""
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == prompt
    assert prompt + usage["output_tokens"] <= CONTEXT
    if stop_reason == "max_tokens":
        assert prompt + usage["output_tokens"] == CONTEXT


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
@pytest.mark.parametrize("build", [first_turn, later_turn], ids=["first-turn", "later-turn"])
async def test_captured_claude_code_requests_are_answered_in_order(
    http: aiohttp.ClientSession, build: Any, stream: bool
) -> None:
    body = {**build(await filler_for(http, build, TARGET_PROMPT)), "stream": stream}
    prompt = await count(http, body)
    assert TARGET_PROMPT - 100 < prompt <= TARGET_PROMPT
    auth = {"x-api-key": KEY} if stream else {"authorization": f"Bearer {KEY}"}
    session = {"x-claude-code-session-id": "3f0c-replay"}
    async with http.post("/v1/messages?beta=true", json=body, headers={**auth, **session}) as resp:
        assert resp.status == 200, await resp.text()
        if stream:
            assert resp.content_type == "text/event-stream"
            delta = check_stream(sse(await resp.text()))
            check_budget(delta["usage"], prompt, delta["delta"]["stop_reason"])
        else:
            message = await resp.json()
            assert message["type"] == "message" and message["role"] == "assistant"
            assert message["stop_reason"] in ("end_turn", "max_tokens", "tool_use")
            check_budget(message["usage"], prompt, message["stop_reason"])


async def test_billing_header_does_not_change_the_count(http: aiohttp.ClientSession) -> None:
    with_header = first_turn(0)
    without = {**with_header, "system": with_header["system"][1:]}
    assert await count(http, with_header) == await count(http, without)
    assert await count(http, first_turn(0, cch="other")) == await count(http, without)


async def test_turns_differing_only_in_the_billing_header_reuse_the_cached_prefix(
    http: aiohttp.ClientSession,
) -> None:
    """The header's ``cch`` changes every request; stripped, the prefix is byte-identical, so
    the neuron's prefix cache serves the second request (cache_read_input_tokens)."""
    usages = []
    for cch in ("11111", "22222"):
        body = {**first_turn(20, cch=cch), "stream": False, "max_tokens": 4}
        async with http.post("/v1/messages", json=body, headers={"x-api-key": KEY}) as resp:
            assert resp.status == 200, await resp.text()
            usages.append((await resp.json())["usage"])
    prompt = usages[1]["input_tokens"] + usages[1]["cache_read_input_tokens"]
    assert prompt == usages[0]["input_tokens"] + usages[0]["cache_read_input_tokens"]
    assert usages[1]["cache_read_input_tokens"] > prompt // 2, usages


async def test_only_a_prompt_that_does_not_fit_is_refused(http: aiohttp.ClientSession) -> None:
    body = first_turn(await filler_for(http, first_turn, CONTEXT + 200))
    prompt = await count(http, body)  # counting a too-long prompt is no error
    assert prompt > CONTEXT
    async with http.post("/v1/messages?beta=true", json=body, headers={"x-api-key": KEY}) as resp:
        assert resp.status == 400
        assert await resp.json() == {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": f"prompt is too long: {prompt} tokens > {CONTEXT} maximum",
            },
        }


async def test_an_image_in_the_users_own_words_is_a_clear_400(
    http: aiohttp.ClientSession,
) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": [image, {"type": "text", "text": "what?"}]}],
    }
    async with http.post("/v1/messages", json=body, headers={"x-api-key": KEY}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error == {
            "type": "invalid_request_error",
            "message": "model coder does not accept images",
        }


async def test_probe_and_telemetry_routes(http: aiohttp.ClientSession) -> None:
    async with http.head("/") as resp:
        assert resp.status == 200
    async with http.get("/") as resp:
        assert resp.status == 200 and KEY not in await resp.text()
    events = {"events": [{"event_type": "ClaudeCodeInternalEvent", "event_data": {}}]}
    async with http.post("/api/event_logging/batch", json=events) as resp:
        assert resp.status == 200


# --------------------------------------------------------------------------- session affinity

SESSIONS: list[str | None] = [
    "0b7e9d2c-5b1e-4f8e-9a51-2f0c1d6e7a10",
    "5d2f8a41-93c7-4e02-8d6b-7c1e0f3a9b22",
    "a3c61e07-2d94-4b8f-b1e5-96d0c4f7e833",
    "e8f04b19-7a36-4c5d-a2f1-3b9e8d0c6f44",
    None,  # no header and no metadata: keyed by the opening messages
    None,
]
TURNS = 3


class Conversation:
    def __init__(self, i: int, session: str | None) -> None:
        self.headers = {"x-api-key": KEY}
        if session:
            self.headers["x-claude-code-session-id"] = session
        self.messages: list[dict[str, Any]] = [
            {"role": "user", "content": f"task {i}: fix the parser"}
        ]

    async def turn(self, http: aiohttp.ClientSession) -> None:
        body = {
            "model": "claude-sonnet-4-5-20250929",
            "max_tokens": 4,
            "system": [{"type": "text", "text": "You are a coding agent."}],
            "messages": self.messages,
        }
        async with http.post("/v1/messages?beta=true", json=body, headers=self.headers) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        text = "".join(b.get("text", "") for b in answer["content"]) or "ok"
        self.messages += [
            {"role": "assistant", "content": text},
            {"role": "user", "content": f"turn {len(self.messages) // 2 + 1}: go on"},
        ]


async def test_each_session_stays_on_one_node_and_both_nodes_serve(
    gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    """Six sessions, three turns each: first turns side by side, later turns one at a time.
    Least-busy routing alone would send every later turn to n1 (all idle, then by name), so
    staying put is affinity's work. Which node served shows in the gateway's request log."""
    logged = len(gateway.log_text().splitlines())
    conversations = [Conversation(i, s) for i, s in enumerate(SESSIONS)]
    await asyncio.gather(*(c.turn(http) for c in conversations))
    for _ in range(TURNS - 1):
        for c in conversations:
            await c.turn(http)
    lines = gateway.log_text().splitlines()[logged:]
    served = [json.loads(line) for line in lines if '"request"' in line]
    nodes: dict[str, set[str]] = {}
    for line in served:
        assert line["status"] == 200
        nodes.setdefault(line["session"], set()).add(line["node"])
    assert len(nodes) == len(SESSIONS) and len(served) == len(SESSIONS) * TURNS
    assert all(len(on) == 1 for on in nodes.values()), nodes
    assert set().union(*nodes.values()) == {"n1", "n2"}, nodes


# --------------------------------------------------------------------------- the real CLI


def claude(
    home: Path, gateway: GatewayProcess, *args: str, random_model: bool = True
) -> dict[str, Any]:
    """One headless run; ``args`` go after ``claude``. Returns its JSON result."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": gateway.url,
        "ANTHROPIC_API_KEY": KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    if random_model:
        # A random model rarely ends its turn, and Claude Code reports an answer that reaches
        # max_tokens as an error ("exceeded the N output token maximum"). A stop sequence
        # (Claude Code merges CLAUDE_CODE_EXTRA_BODY into each request) ends the gibberish at
        # its first "e", a few tokens in; the output ceiling only bounds a pathological run.
        env["CLAUDE_CODE_EXTRA_BODY"] = json.dumps({"stop_sequences": ["e"]})
        env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = "512"
    argv = [str(CLAUDE), *args, "--output-format", "json"]
    done = subprocess.run(argv, env=env, cwd=home, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture
def installed() -> None:
    if not CLAUDE.exists():
        pytest.skip(f"Claude Code is not installed at {CLAUDE} (run `make clients`)")


# Three tools keep the first prompt near 8k demo tokens (the default 20-odd tools make ~53k,
# which this CPU prefills in about a minute: measured in docs/clients.md, not run here).
TOOLS = ("--tools", "Bash,Read,Edit", "--max-turns", "1")


def test_real_claude_code_two_turns(
    gateway: GatewayProcess, tmp_path: Path, installed: None
) -> None:
    first = claude(tmp_path, gateway, "-p", "say hi", *TOOLS)
    assert first["is_error"] is False, first
    second = claude(tmp_path, gateway, "--continue", "-p", "and again", *TOOLS)
    assert second["is_error"] is False, second
    assert second["session_id"] == first["session_id"]
    served = [json.loads(line) for line in gateway.log_text().splitlines() if '"request"' in line]
    long_prompts = [r for r in served if r["model"] == "coder-long" and r["status"] == 200]
    assert len(long_prompts) >= 2 and min(r["prompt_tokens"] for r in long_prompts) > CONTEXT


def test_real_claude_code_runs_a_tool_and_answers_from_its_output(
    gateway: GatewayProcess, tmp_path: Path, installed: None
) -> None:
    """The scripted model calls Bash; the command prints "user: say:Done." (spelled so that
    the prompt itself does not contain it) and the fake answers from the last "user: say:" it
    sees, so "Done." can only come from the tool result of turn two. The prompt starts with
    "user: " because Claude Code puts its own reminder text first in the user message."""
    call = {
        "name": "Bash",
        "arguments": {"command": "printf 'us%sr: say:Done.' e", "description": "Print a line"},
    }
    prompt = f"user: say:<tool_call>\\n{json.dumps(call)}\\n</tool_call>"
    result = claude(
        tmp_path,
        gateway,
        "-p",
        prompt,
        "--model",
        "scripted",
        "--tools",
        "Bash",
        "--allowedTools",
        "Bash",
        "--max-turns",
        "3",
        random_model=False,
    )
    assert result["is_error"] is False, result
    assert (result["result"], result["num_turns"]) == ("Done.", 2)
