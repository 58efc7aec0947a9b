"""A real neuron process with the scripted ``fake`` harness (a test double) registered.

``python -m tests.e2e.scripted_neuron --role neuron --config F`` from the repository root. A
random-weight model never emits a tool call, so the tool-calling tests replay scripted output
(tests/neuron/fakes.py: the last user message ``say:TEXT`` streams TEXT) through the real
neuron, tool parser, gateway and translator. Nothing outside the tests registers it.
"""

from collections.abc import Iterable

from cortex.cli import main
from cortex.neuron import app, registry
from cortex.neuron.harness import Harness
from tests.neuron.fakes import FakeHarness


def _discover(allow: Iterable[str] = (), extra: Iterable[type[Harness]] = ()) -> dict[str, Harness]:
    return registry.discover(allow, (*extra, FakeHarness))


app.discover = _discover
main()
