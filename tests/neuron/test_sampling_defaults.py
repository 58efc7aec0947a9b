"""Defaults for omitted sampling fields, in process with the scripted FakeHarness: the
request's value, else models.toml's ``[models.sampling]`` (sent in the load), else the model's
own (its generation_config.json), else OpenAI's."""

from __future__ import annotations

import pytest

from cortex.config import SamplingDefaults
from tests.neuron.fakes import FakeHarness
from tests.neuron.test_app import (  # noqa: F401  (fixtures)
    Client,
    MakeClient,
    chat,
    load,
    model_of,
    no_gpus,
    root,
    start,
    status,
)


@pytest.fixture
def harness() -> FakeHarness:
    fake = FakeHarness()
    fake.model_defaults = SamplingDefaults(temperature=0.6, top_k=20)
    return fake


@pytest.fixture
async def client(start: MakeClient) -> Client:  # noqa: F811
    return await start()


async def test_the_models_own_defaults_fill_what_a_request_omits(
    client: Client, harness: FakeHarness
) -> None:
    await load(client)
    await chat(client, "say:a")
    await chat(client, "say:a", temperature=0, top_k=0)
    await chat(client, "say:a", top_p=0.5)
    used = [(p.temperature, p.top_p, p.top_k) for p in model_of(harness).params]
    assert used == [(0.6, 1.0, 20), (0.0, 1.0, 0), (0.6, 0.5, 20)]


async def test_models_toml_goes_over_the_models_own_and_status_shows_the_result(
    client: Client, harness: FakeHarness
) -> None:
    code, body = await load(client, sampling={"temperature": 0.2, "top_p": 0.9})
    assert code == 200
    expected = {"temperature": 0.2, "top_p": 0.9, "top_k": 20, "repetition_penalty": None}
    assert body["model"]["sampling"] == expected
    await chat(client, "say:a")
    (params,) = model_of(harness).params
    assert (params.temperature, params.top_p, params.top_k) == (0.2, 0.9, 20)
    (model,) = (await status(client))["models"]
    assert model["sampling"] == expected
    # The next load (the gateway re-sends it after editing models.toml) brings new values.
    code, body = await load(client, sampling={"temperature": 0.0})
    assert code == 200 and body["already_loaded"] is True
    assert body["model"]["sampling"]["temperature"] == 0.0


async def test_a_repetition_penalty_default_needs_a_harness_with_penalties(
    client: Client,
) -> None:
    code, body = await load(client, sampling={"repetition_penalty": 1.1})
    assert code == 400
    assert body["error"]["param"] == "sampling.repetition_penalty"


async def test_text_completions_share_the_defaults_and_the_refusals(
    client: Client, harness: FakeHarness
) -> None:
    await load(client)
    body = {"model": "tiny", "prompt": [65, 66], "max_tokens": 2}
    assert (await client.post("/v1/completions", json=body)).status == 200
    (params,) = model_of(harness).params
    assert (params.temperature, params.top_k) == (0.6, 20)
    refused = await client.post("/v1/completions", json=body | {"presence_penalty": 1.0})
    assert refused.status == 400
    assert (await refused.json())["error"]["param"] == "presence_penalty"
    refused = await client.post("/v1/completions", json=body | {"logprobs": 1})
    assert (await refused.json())["error"]["param"] == "logprobs"
