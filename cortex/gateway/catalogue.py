"""The models cortex may serve: lookup by id or alias, and the GET /v1/models listing. Pure.

Aliases are shell globs (``fnmatch``, case-sensitive) so that clients with fixed model names
(Claude Code asks for "claude-sonnet-4-...") reach a local model. An exact id always wins;
otherwise the first matching alias in declaration order does, so put narrow globs first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

from cortex.config import NO_SAMPLING_DEFAULTS, ModelEntry, SamplingDefaults
from cortex.gateway.snapshot import FleetView, Resident
from cortex.protocol.openai import CortexModelInfo, ModelCard

__all__ = ["Catalogue", "CortexModelInfo"]

# OpenAI's (and vLLM's) wording of a context overflow, which a neuron uses too.
_WINDOW = re.compile(r"maximum context length is (\d+) tokens")


class Catalogue:
    """An immutable view of models.toml, read at ``read_at`` (Unix time).

    ``read_at`` is the ``created`` of cards that have no load time (SDKs show it as a date;
    0 would read as 1970).
    """

    def __init__(self, models: Sequence[ModelEntry], read_at: float = 0.0) -> None:
        self.models: tuple[ModelEntry, ...] = tuple(models)
        self.by_id: Mapping[str, ModelEntry] = {m.id: m for m in self.models}
        self.read_at = int(read_at)

    def with_entries(self, extra: Sequence[ModelEntry]) -> Catalogue:
        """This catalogue with ``extra`` entries after its own (discovered models)."""
        return Catalogue((*self.models, *extra), self.read_at) if extra else self

    def resolve(self, name: str) -> ModelEntry | None:
        """The entry a client's model name means: exact id, then the first matching alias."""
        exact = self.by_id.get(name)
        if exact is not None:
            return exact
        for entry in self.models:
            if any(fnmatchcase(name, alias) for alias in entry.aliases):
                return entry
        return None

    def larger_windows(self, than: int) -> list[ModelEntry]:
        """Models whose declared ``context_length`` exceeds ``than`` tokens, smallest window
        first: what to suggest when a prompt does not fit."""
        bigger = (m for m in self.models if m.context_length > than)
        return sorted(bigger, key=lambda m: m.context_length)

    def too_long_hint(self, model_id: str, message: str) -> str:
        """The sentence a context-length error gains: the window the prompt overflowed and the
        catalogue's models with a larger one (or that none has one)."""
        match = _WINDOW.search(message)
        if match is None:
            return ""
        window = int(match[1])
        bigger = [m for m in self.larger_windows(window) if m.id != model_id][:3]
        if not bigger:
            return (
                f" '{model_id}' holds {window} tokens and no model here holds more: shorten the "
                "conversation or send fewer tools (docs/clients.md, fitting a small context)."
            )
        names = ", ".join(f"'{m.id}' ({m.context_length} tokens)" for m in bigger)
        return f" '{model_id}' holds {window} tokens; a model with a larger window: {names}."

    def model_cards(
        self,
        fleet: FleetView,
        upstream_models: Mapping[str, list[str]],
        pins: Mapping[str, bool] | None = None,
    ) -> list[ModelCard]:
        """GET /v1/models: catalogue models some live (up or suspect) neuron may serve, in
        declaration order; then resident models outside the catalogue, by id; then each
        upstream's models (``upstream_models``: upstream name -> ids), always resident.

        A model both local and upstream is one card whose ``nodes`` name both. ``pins``: the
        runtime pins and unpins (``Fleet.pin_overrides``), which win over models.toml's.
        """
        pins = pins or {}
        live = [n.name for n in fleet.nodes if n.health != "down"]
        cards: dict[str, ModelCard] = {}
        for entry in self.models:
            copies = [c for _, c in fleet.holders(entry.id)]
            if copies or any(not entry.nodes or name in entry.nodes for name in live):
                pinned = pins.get(entry.id, entry.pinned)
                card = _card(
                    entry.id, copies, entry.context_length, pinned, self.read_at, entry.sampling
                )
                cards[entry.id] = _sized(card, entry.max_output_tokens)
        strays = {c.model_id for n in fleet.nodes for c in n.models} - set(self.by_id)
        for model_id in sorted(strays):
            copies = [c for _, c in fleet.holders(model_id)]
            if copies:
                pinned = any(c.pinned for c in copies)  # no entry: what its node says
                cards[model_id] = _sized(_card(model_id, copies, 0, pinned, self.read_at), 0)
        for upstream in sorted(upstream_models):
            for model_id in upstream_models[upstream]:
                _add_upstream(cards, model_id, upstream, self.read_at)
        return list(cards.values())


def _card(
    model_id: str,
    copies: list[Resident],
    context_length: int,
    pinned: bool,
    read_at: int,
    sampling: SamplingDefaults = NO_SAMPLING_DEFAULTS,
) -> ModelCard:
    """One local model's card from its loading/loaded copies (none: available); created is
    the earliest load time, else when the catalogue was read. Its sampling defaults are those
    a loaded copy reports (models.toml over the model's generation_config.json), else
    ``sampling`` (models.toml's alone: the model's own are read when it loads)."""
    states = {c.state for c in copies}
    info = CortexModelInfo(
        state="resident" if "loaded" in states else "loading" if states else "available",
        nodes=sorted(c.node for c in copies),
        context_length=context_length or max((c.context_length for c in copies), default=0),
        pinned=pinned,
    )
    info.sampling = sampling_in_use(sampling, copies)
    loaded = [int(c.loaded_at) for c in copies if c.loaded_at]
    return ModelCard(id=model_id, created=min(loaded, default=read_at), cortex=info)


def sampling_in_use(
    configured: SamplingDefaults, copies: list[Resident]
) -> SamplingDefaults | None:
    """What a loaded copy reports (models.toml over the model's generation_config.json), else
    ``configured`` (models.toml's values; the model's own are read when it loads); None when
    no default is set."""
    reported = next((c.sampling for c in copies if c.sampling is not None), configured)
    return None if reported.empty else reported


def _sized(card: ModelCard, max_output_tokens: int) -> ModelCard:
    """The card with the window fields clients read (ModelCard.sized), from its context."""
    context = card.cortex.context_length if card.cortex is not None else 0
    return card.sized(context, max_output_tokens)


def _add_upstream(cards: dict[str, ModelCard], model_id: str, upstream: str, read_at: int) -> None:
    card = cards.get(model_id)
    if card is None or card.cortex is None:
        info = CortexModelInfo(state="resident", nodes=[upstream])
        cards[model_id] = ModelCard(id=model_id, created=read_at, owned_by=upstream, cortex=info)
    elif upstream not in card.cortex.nodes:
        card.cortex.nodes.append(upstream)
        card.cortex.state = "resident"
