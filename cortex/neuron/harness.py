"""The Harness plugin contract: what a neuron needs from an inference backend.

A harness is found through the entry point group ``cortex.harnesses`` (see registry.py). It turns
a load request into a ``LoadedModel``; the loaded model renders chat prompts with its own template
and streams tokens for a prompt. Everything above tokens (stop strings, tool-call parsing,
the OpenAI wire format, admission and cancellation) is the neuron's job, so every harness gets it
for free and behaves the same.

Threading contract: ``Harness.load`` and ``LoadedModel.unload`` block and are called in a worker
thread; ``encode_chat`` is cheap and may be called on the event loop or in a thread;
``LoadedModel.generate`` is an async generator consumed on the event loop; closing it (``aclose``
or cancelling the consuming task) must cancel the sequence within one decode step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable
from typing import Any, ClassVar, Literal

import msgspec

from cortex.config import NO_SAMPLING_DEFAULTS, SamplingDefaults
from cortex.errors import InvalidRequest
from cortex.neuron.constraints import Constraint, SamplingFeatures, TokenLogprob
from cortex.protocol.neuron import LoadRequest
from cortex.tasks import Task

ProgressFn = Callable[[float, str], None]
"""progress(fraction in [0, 1], stage description); thread-safe, cheap to call."""


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    max_new_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    seed: int | None = None
    ignore_eos: bool = False  # keep generating past EOS tokens, up to max_new_tokens
    # The rest is optional, honoured only by a harness whose HarnessInfo.sampling says so
    # (the neuron refuses the request otherwise). Defaults change nothing.
    constraint: Constraint | None = None  # the reply's grammar (constraints.py)
    frequency_penalty: float = 0.0  # OpenAI: minus this times the token's count in the reply
    presence_penalty: float = 0.0  # OpenAI: minus this once the token is in the reply
    repetition_penalty: float = 1.0  # vLLM/HF: scales logits of tokens in prompt or reply
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit
    logprobs: int | None = None  # None: no logprobs; k >= 0: the chosen token's and k more
    # At most this many tokens inside the reply's think block (<think>...</think>), then the
    # block is closed; None: no limit. A model without think tokens never thinks: nothing to do.
    thinking_budget: int | None = None


class TokenEvent(msgspec.Struct, kw_only=True):
    """Output of one decode step for one sequence.

    ``text`` is the newly decodable text, possibly empty when a multi-byte character is split
    across tokens (it is held back until complete). ``completion_tokens`` counts every token
    generated so far, EOS excluded. ``cached_tokens`` counts the prompt tokens whose KV came from
    a prefix cache instead of being computed (0 for a harness without one); the neuron reads it
    from the last event for usage and metrics. The last event has ``finish_reason`` set: "stop"
    for an EOS token, "length" for max_new_tokens or the context limit.
    """

    text: str
    completion_tokens: int
    cached_tokens: int = 0
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: list[TokenLogprob] | None = None  # the tokens of this step, when asked for


class HarnessInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    quantizations: tuple[str, ...] = ("none",)
    device_kinds: tuple[str, ...] = ("cpu",)
    vision: bool = False
    version: str = ""
    sampling: SamplingFeatures = SamplingFeatures()
    # Whether LoadRequest.compiled_decode can be honoured (on some loads: the harness's load
    # refuses the others with InvalidRequest naming compiled_decode).
    compiled_decode: bool = False


class LoadOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Neuron-wide settings a harness must respect when loading."""

    allow_hub_download: bool = False
    torch_threads: int = 0  # 0 means the library default
    max_concurrency: int = 16
    memory_budget_bytes: int = 0  # what the device may still give this model; 0 = unknown
    # Tokens one forward step may process (decode + prefill chunks); 0: the harness's default.
    max_batch_tokens: int = 0
    kv_cache_share: float = 0.5  # share of the budget left after the weights for the KV cache


class Embeddings(msgspec.Struct, kw_only=True):
    """``LoadedModel.embed``'s answer: one vector per input, in input order."""

    vectors: list[list[float]]
    prompt_tokens: int  # tokens of all inputs together


class LoadedModel(ABC):
    """A model resident on one device. Attributes are set by the harness at load time."""

    model_id: str
    device: str  # "cpu" or "cuda:N"
    bytes_used: int  # weights plus reserved cache, as measured after loading
    context_length: int
    sampling_defaults: SamplingDefaults = NO_SAMPLING_DEFAULTS
    """The model's own defaults for omitted sampling fields (the transformers harness reads
    generation_config.json); models.toml's ``[models.sampling]`` goes over them."""

    chat_variables: frozenset[str] = frozenset()
    """The extra variables its chat template reads (Qwen3's ``enable_thinking``, gpt-oss's
    ``reasoning_effort``, ...): a request may set these (``chat_template_kwargs``), the others
    are refused by name. Empty: none (the default for a harness without templates)."""

    @abstractmethod
    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        prefix: str = "",
        *,
        variables: dict[str, Any] | None = None,
    ) -> list[int]:
        """Apply the chat template (with the generation prompt), append ``prefix`` and tokenize.

        ``messages`` are chat-template dicts: role, content (str), optional tool_calls (with
        ``function.arguments`` as a dict) and tool_call_id. ``prefix`` is assistant text the
        reply starts with (a forced tool call's opening, tools.py). ``variables`` are passed to
        the template (only names in ``chat_variables``; the neuron checked them). Raises
        InvalidRequest when the template rejects the conversation or cannot render ``tools``.
        """

    @abstractmethod
    def generate(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncGenerator[TokenEvent, None]:
        """Stream decode steps for one sequence; closing the iterator cancels it."""

    def prepare(self, params: SamplingParams) -> None:
        """Check and compile what ``params`` asks of this model (a grammar) before anything is
        sent, so a bad schema is a 400, not a broken stream. Blocking, runs in a thread; raises
        InvalidRequest naming the field. The default accepts everything."""
        return None

    @abstractmethod
    def unload(self) -> None:
        """Stop workers, cancel what runs and release the memory. Blocking, idempotent."""

    # Optional: raw prompts (/v1/completions) and embeddings (/v1/embeddings). A harness that
    # does not override them has its models refuse those routes with a 400.

    task: Task = "generate"
    """What the model was loaded for (LoadRequest.task): an "embed" model serves embed() only,
    a "generate" model everything else. The neuron refuses the other routes with a 400."""

    def encode_prompt(self, prompt: str, suffix: str | None = None) -> list[int]:
        """Tokenize a raw prompt as the model's tokenizer does for plain text (BOS included
        where the tokenizer adds one). With ``suffix``, build a fill-in-the-middle prompt from
        the tokenizer's FIM tokens, or raise InvalidRequest(param="suffix") when it has none.
        Cheap; may be called on the event loop or in a thread."""
        raise InvalidRequest(
            f"model {self.model_id} does not take raw prompts (its harness has no encode_prompt)",
            param="prompt",
        )

    def decode_tokens(self, ids: list[int]) -> str:
        """Token ids back to text (special tokens dropped), for ``echo`` of a token prompt."""
        raise InvalidRequest(f"model {self.model_id} cannot decode token ids", param="prompt")

    async def embed(
        self, inputs: list[str | list[int]], dimensions: int | None, *, truncate: bool = False
    ) -> Embeddings:
        """One vector per input (strings are tokenized, token ids used as they are), pooled
        and normalised as the model is meant to be, computed as batches off the event loop.
        ``dimensions``: truncate (and renormalise) to that size where the model was trained
        for it, else InvalidRequest(param="dimensions"). An input longer than the model takes
        raises ContextLengthExceeded, or with ``truncate`` is cut to ``context_length`` tokens
        (its start kept, the tokenizer's closing special tokens too)."""
        raise InvalidRequest(f"model {self.model_id} cannot embed", param="model")


class Harness(ABC):
    """An inference backend plugin. Instantiated once per neuron with no arguments."""

    name: ClassVar[str]

    @abstractmethod
    def info(self) -> HarnessInfo:
        """What this harness supports, for /status and for rejecting loads early."""

    @abstractmethod
    def load(
        self,
        request: LoadRequest,
        path: str,
        device: str,
        options: LoadOptions,
        progress: ProgressFn,
    ) -> LoadedModel:
        """Load ``path`` (a resolved directory, or a hub id when downloads are allowed).

        Blocking; runs in a worker thread. Raises InvalidRequest for bad sources or options,
        InsufficientMemory when it does not fit.
        """

    def estimate_bytes(self, request: LoadRequest, path: str) -> int:
        """Bytes the model will take once loaded, 0 when unknown (checked before loading)."""
        return 0
