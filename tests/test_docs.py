"""The operator docs cannot silently fall behind the code.

Every key of every config Struct must appear (in backticks) in docs/configuration.md, and every
route either role registers must appear in docs/api.md. Apps are built, never started.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import msgspec
import pytest

from cortex import config
from cortex.gateway.app import make_app as make_gateway
from cortex.neuron.app import make_app as make_neuron

DOCS = Path(__file__).resolve().parent.parent / "docs"

CONFIG_STRUCTS = [
    cls
    for _, cls in inspect.getmembers(config, inspect.isclass)
    if issubclass(cls, config._Strict) and cls is not config._Strict
]


def test_every_config_struct_is_covered() -> None:
    names = {cls.__name__ for cls in CONFIG_STRUCTS}
    assert {"GatewaySection", "EvictionSection", "ModelEntry", "NeuronSection"} <= names


@pytest.mark.parametrize("struct", CONFIG_STRUCTS, ids=lambda cls: cls.__name__)
def test_config_keys_documented(struct: type[msgspec.Struct]) -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    forms = ("`{}`", "[{}]", "[[{}]]")  # a key, a table, an array of tables
    missing = [
        f.encode_name
        for f in msgspec.structs.fields(struct)
        if not any(form.format(f.encode_name) in text for form in forms)
    ]
    assert not missing, f"{struct.__name__} keys missing from docs/configuration.md: {missing}"


def _paths(app: object) -> set[str]:
    routes = app.router.routes()  # type: ignore[attr-defined]
    return {r.resource.canonical for r in routes if r.resource is not None}


def test_routes_documented() -> None:
    gateway = make_gateway(config.CortexConfig(), config.ModelsConfig())
    neuron = make_neuron(config.NeuronConfig(), config.ModelsConfig(), {})
    paths = _paths(gateway) | _paths(neuron)
    assert "/v1/chat/completions" in paths and "/models/load" in paths
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    missing = sorted(p for p in paths if f"`{p}`" not in text and f" {p}`" not in text)
    assert not missing, f"routes missing from docs/api.md: {missing}"
