"""What models cortex may serve: the one owner of that fact (``Catalogue``) and the frozen
answer everyone reads (``CatalogueView``: lookup by id or alias, the GET /v1/models cards).

A model's entry comes from models.toml (``Settings.models``), else from what a neuron found in
its stores (discovered.py); a runtime pin or unpin (``cortex pin``, saved in the state file) and
a client's idle TTL (Ollama's ``keep_alive``) are applied over it. ``/v1/models``,
``/cortex/status`` (and /ui on it), the Loader and the fleet's snapshot all read
``Catalogue.view()``, so they cannot disagree on whether a model exists or is pinned.

Aliases are shell globs (``fnmatch``, case-sensitive) so that clients with fixed model names
(Claude Code asks for "claude-sonnet-4-...") reach a local model. An exact id always wins;
otherwise the first matching alias in declaration order does, so put narrow globs first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

import msgspec

from cortex.config import NO_SAMPLING_DEFAULTS, ModelEntry, SamplingDefaults, Store
from cortex.gateway.discovered import Found, discovered_entries
from cortex.gateway.pins import PinStore
from cortex.gateway.settings import Live, Settings
from cortex.gateway.snapshot import FleetView, Resident
from cortex.protocol.neuron import NeuronStatus
from cortex.protocol.openai import CortexModelInfo, ModelCard

__all__ = ["Catalogue", "CatalogueView", "CortexModelInfo"]

log = logging.getLogger("cortex.gateway.catalogue")

# OpenAI's (and vLLM's) wording of a context overflow, which a neuron uses too.
_WINDOW = re.compile(r"maximum context length is (\d+) tokens")


class Catalogue:
    """The one owner of the model catalogue; one per gateway, on the event loop (no locks).

    Its facts and their one writer each: models.toml's entries (``Live.settings``, swapped by
    a reload), the discovered entries (``discover``, which the Fleet calls after each poll),
    runtime pins (``set_pin``: the admin route; saved through ``PinStore`` for the next start)
    and client TTLs (``set_ttl``: the Ollama routes set one, ``Loader.unload`` clears it when no
    copy is left; not saved). Readers take ``view()``: rebuilt only after one of those changed,
    so it costs one identity check per call.
    """

    def __init__(self, live: Live, pins: PinStore | None = None) -> None:
        self._live = live
        self._pin_store = pins or PinStore(None)
        self._pins: dict[str, bool] = self._pin_store.load()
        self._ttls: dict[str, float] = {}
        self._found: dict[str, Found] = {}  # replaced, never mutated
        self._view: CatalogueView | None = None
        self._view_of: Settings | None = None

    # ------------------------------------------------------------------ reading

    def view(self) -> CatalogueView:
        """The catalogue now: models.toml's entries in declaration order, then the discovered
        ones, with runtime pins and client TTLs applied."""
        settings = self._live.settings
        if self._view is None or self._view_of is not settings:
            self._view, self._view_of = self._build(settings), settings
        return self._view

    def resolve(self, name: str) -> ModelEntry | None:
        """``view().resolve``: the entry a client's model name means."""
        return self.view().resolve(name)

    def get(self, model_id: str) -> ModelEntry | None:
        return self.view().by_id.get(model_id)

    def pinned(self, model_id: str) -> bool:
        """Pinned now (models.toml, or a runtime pin, which wins)."""
        entry = self.get(model_id)
        return entry is not None and entry.pinned

    def _build(self, settings: Settings) -> CatalogueView:
        merged = dict(settings.by_id)
        for model_id, found in self._found.items():
            merged.setdefault(model_id, found.entry)  # models.toml wins, even mid-reload
        for model_id, entry in merged.items():
            pinned = self._pins.get(model_id, entry.pinned)
            ttl_s = self._ttls.get(model_id, entry.ttl_s)
            if pinned != entry.pinned or ttl_s != entry.ttl_s:
                merged[model_id] = msgspec.structs.replace(entry, pinned=pinned, ttl_s=ttl_s)
        stores = {model_id: found.store for model_id, found in self._found.items()}
        return CatalogueView(tuple(merged.values()), settings.read_at, stores)

    # ------------------------------------------------------------------ writing

    def set_pin(self, model_id: str, pinned: bool) -> None:
        """A runtime pin or unpin: applied at once, saved for the next start."""
        self._pins[model_id] = pinned
        self._pin_store.save(self._pins)
        self._view = None

    def set_ttl(self, model_id: str, ttl_s: float | None) -> None:
        """A client's idle TTL for ``model_id`` (0 = never), or None to go back to
        models.toml's."""
        if self._ttls.get(model_id) == ttl_s:
            return  # a client repeating its keep_alive rebuilds nothing
        if ttl_s is None:
            del self._ttls[model_id]
        else:
            self._ttls[model_id] = ttl_s
        self._view = None

    def discover(self, statuses: Mapping[str, NeuronStatus | None]) -> None:
        """Recompute the discovered entries from the nodes' last statuses (node -> status, None
        for a down node); the view is rebuilt, and the change logged, only when they changed."""
        found = discovered_entries(statuses, self._live.settings.by_id)
        if found == self._found:
            return
        added = sorted(set(found) - set(self._found))
        gone = sorted(set(self._found) - set(found))
        if added or gone:
            log.info(
                "discovered models: %d (new: %s; gone: %s)",
                len(found),
                ", ".join(added) or "none",
                ", ".join(gone) or "none",
            )
        self._found = found
        self._view = None


class CatalogueView:
    """The catalogue at one moment (``Catalogue.view()``); immutable. Pure.

    ``read_at`` is the ``created`` of cards that have no load time; ``stores``: the store each
    discovered model came from.
    """

    def __init__(
        self,
        models: Sequence[ModelEntry],
        read_at: float = 0.0,
        stores: Mapping[str, Store] | None = None,
    ) -> None:
        self.models: tuple[ModelEntry, ...] = tuple(models)
        self.by_id: Mapping[str, ModelEntry] = {m.id: m for m in self.models}
        self.read_at = int(read_at)
        self.stores: Mapping[str, Store] = stores or {}

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
        self, fleet: FleetView, upstream_models: Mapping[str, list[str]]
    ) -> list[ModelCard]:
        """GET /v1/models: catalogue models some live (up or suspect) neuron may serve, in
        declaration order; then resident models outside the catalogue, by id; then each
        upstream's models (``upstream_models``: upstream name -> ids), always resident.

        A model both local and upstream is one card whose ``nodes`` name both.
        """
        live = [n.name for n in fleet.nodes if n.health != "down"]
        cards: dict[str, ModelCard] = {}
        for entry in self.models:
            copies = [c for _, c in fleet.holders(entry.id)]
            if copies or any(not entry.nodes or name in entry.nodes for name in live):
                card = _card(
                    entry.id,
                    copies,
                    entry.context_length,
                    entry.pinned,
                    self.read_at,
                    entry.sampling,
                )
                cards[entry.id] = _sized(card, entry.max_output_tokens)
        strays = {c.model_id for n in fleet.nodes for c in n.models} - set(self.by_id)
        for model_id in sorted(strays):
            copies = [c for _, c in fleet.holders(model_id)]
            if copies:
                # No entry, so nothing can pin it (`cortex pin` takes catalogue models only).
                cards[model_id] = _sized(_card(model_id, copies, 0, False, self.read_at), 0)
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
