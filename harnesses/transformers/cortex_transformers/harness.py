"""TransformersHarness: the cortex Harness for Hugging Face transformers causal LMs.

``load`` builds a ``TransformersModel``: tokenizer, weights, the paged KV pool sized from the
memory budget (kvcache.py, block_manager.py), a decode worker (scheduler.py) and a warm-up
step. ``generate`` submits a Generation to the worker and relays its events; closing the generator
cancels the sequence, which leaves the batch before the next decode step.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from cortex.errors import InsufficientMemory, InvalidRequest, Unavailable
from cortex.neuron.constraints import SamplingFeatures
from cortex.neuron.harness import (
    Harness,
    HarnessInfo,
    LoadedModel,
    LoadOptions,
    ProgressFn,
    SamplingParams,
    TokenEvent,
)
from cortex.neuron.prompt import prompt_too_long
from cortex.protocol.neuron import LoadRequest
from cortex_transformers import __version__, fim
from cortex_transformers.attention import use_cortex_sdpa
from cortex_transformers.block_manager import BLOCK_SIZE, BlockManager
from cortex_transformers.compiled import CompiledDecode, compiled_decode_refusal
from cortex_transformers.cpu_quant import CPU_QUANTIZATIONS, cpu_quantization_refusal
from cortex_transformers.embedding import load_embedding_model
from cortex_transformers.estimate import weight_bytes
from cortex_transformers.generation import Generation
from cortex_transformers.gguf_source import GGUFHeaderError
from cortex_transformers.grammar import GrammarCache
from cortex_transformers.guide import Guide
from cortex_transformers.kvcache import KVPool, bytes_per_token
from cortex_transformers.loading import (
    TEMPLATE_ERRORS,
    eos_ids,
    generation_defaults,
    load_model,
    load_tokenizer,
    resolve_dtype,
    template_variables,
    tools_template,
)
from cortex_transformers.runner import ModelRunner
from cortex_transformers.scheduler import Scheduler
from cortex_transformers.thinking import ThinkBudget, ThinkTokens

SAMPLING = SamplingFeatures(
    constraints=True,
    penalties=True,
    logit_bias=True,
    max_top_logprobs=20,
    max_n=8,
    thinking_budget=True,
)
GPU_STEP_TOKENS = 2048
CPU_STEP_TOKENS = 512


def step_tokens(device: str) -> int:
    """The default ``max_batch_tokens``. A GPU reads long prompts faster in bigger steps. A CPU
    core is as fast in 512-token steps as in 2048 (measured, bench/results), and a step is what
    running streams and newly arrived short prompts wait for: 2048 tokens of SmolLM2-135M are
    ~9 s on one core, 512 are ~2 s."""
    return CPU_STEP_TOKENS if device == "cpu" else GPU_STEP_TOKENS


class TransformersModel(LoadedModel):
    def __init__(
        self,
        request: LoadRequest,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        device: str,
        options: LoadOptions,
    ) -> None:
        self.model_id = request.model
        self.device = device
        self.context_length = request.context_length or _config_context(model)
        if device == "cpu":
            use_cortex_sdpa(model)
        weights: int = model.get_memory_footprint()  # type: ignore[no-untyped-call]
        blocks = BlockManager(_pool_blocks(options, weights, model, self.context_length))
        pool = KVPool(model, blocks.num_blocks * blocks.block_size, torch.device(device))
        # Weights plus the whole KV pool: memory does not grow with requests after this.
        self.bytes_used = weights + pool.bytes
        self._model: PreTrainedModel | None = model
        self._tokenizer = tokenizer
        self._tools_template = tools_template(tokenizer, request.tool_parser)
        self.chat_variables = template_variables(tokenizer)
        self._think = ThinkTokens.find(tokenizer)
        self._fim = fim.find(tokenizer)
        # An infill ends at the FIM family's own end tokens too (<|fim_pad|>, <EOT>, ...).
        self._eos_ids = eos_ids(model, tokenizer) | (fim.end_ids(tokenizer) if self._fim else set())
        self._vocab_size = int(model.config.get_text_config().vocab_size)
        self.grammars = GrammarCache(tokenizer, self._vocab_size)
        max_batch = max(1, options.max_concurrency)
        self._compiled = CompiledDecode(model, pool, max_batch) if request.compiled_decode else None
        self._scheduler: Scheduler | None = Scheduler(
            ModelRunner(model, pool, blocks, torch.device(device), self._compiled),
            blocks,
            max_batch=max_batch,
            max_batch_tokens=options.max_batch_tokens or step_tokens(device),
            name=request.model,
        )

    @property
    def active(self) -> int:
        """Sequences waiting or decoding (for tests and status)."""
        return self._scheduler.active if self._scheduler else 0

    def warm_up(self) -> None:
        """One prefill so lazy initialisation is not paid by the first request; with
        ``compiled_decode``, every bucket's graph compiled (compiled.py)."""
        if self._model is not None:
            with torch.inference_mode():
                ids = torch.tensor([[0, 1, 2, 3]], device=self.device)
                self._model(input_ids=ids, logits_to_keep=1)
        if self._compiled is not None:
            self._compiled.warm()

    def _decode(self, ids: Sequence[int]) -> str:
        return str(
            self._tokenizer.decode(
                list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        )

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        prefix: str = "",
        *,
        variables: dict[str, Any] | None = None,
    ) -> list[int]:
        if tools and self._tools_template is None:
            raise InvalidRequest(
                f"the chat template of {self.model_id} cannot render tools; set "
                'tool_parser = "hermes" in its models.toml entry (cortex\'s ChatML tool template) '
                "or a chat_template that renders them",
                param="tools",
            )
        try:
            text = self._tokenizer.apply_chat_template(
                messages,
                tools=tools or None,  # type: ignore[arg-type]
                chat_template=self._tools_template if tools else None,
                add_generation_prompt=True,
                tokenize=False,
                **(variables or {}),
            )
        except TEMPLATE_ERRORS as exc:
            raise InvalidRequest(f"the chat template rejected the conversation: {exc}") from exc
        # What apply_chat_template(tokenize=True) does, with the forced prefix appended first.
        return list(self._tokenizer.encode(str(text) + prefix, add_special_tokens=False))

    def encode_prompt(self, prompt: str, suffix: str | None = None) -> list[int]:
        if suffix is None:
            return list(self._tokenizer.encode(prompt, add_special_tokens=True))
        if self._fim is None:
            raise InvalidRequest(
                f"model {self.model_id} cannot fill in the middle: its tokenizer has no FIM "
                "tokens (<|fim_prefix|>, <fim_prefix>, ...); send the prompt without suffix",
                param="suffix",
            )
        return fim.encode(self._tokenizer, self._fim, prompt, suffix)

    def decode_tokens(self, ids: list[int]) -> str:
        return self._decode(ids)

    def prepare(self, params: SamplingParams) -> None:
        """Compile the constraint's grammar into the cache (a bad schema is a 400 here)."""
        if params.constraint is not None:
            self.grammars.compile(params.constraint)
        if params.logit_bias and max(params.logit_bias) >= self._vocab_size:
            raise InvalidRequest(
                f"logit_bias names token {max(params.logit_bias)}; this model's token ids lie "
                f"in [0, {self._vocab_size})",
                param="logit_bias",
            )

    def _token_bytes(self, token: int) -> bytes:
        return self.grammars.text_of(token)

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncGenerator[TokenEvent, None]:
        if self._scheduler is None:
            raise Unavailable(f"{self.model_id} is unloaded")
        if prompt_ids and not 0 <= min(prompt_ids) <= max(prompt_ids) < self._vocab_size:
            raise InvalidRequest(f"prompt token ids must lie in [0, {self._vocab_size})")
        if len(prompt_ids) >= self.context_length:  # no room for one token
            raise prompt_too_long(len(prompt_ids), self.context_length)
        if params.max_new_tokens <= 0:
            yield TokenEvent(text="", completion_tokens=0, finish_reason="length")
            return
        seq = Generation(
            prompt_ids,
            params,
            eos_ids=self._eos_ids,
            context_length=self.context_length,
            decode=self._decode,
            loop=asyncio.get_running_loop(),
            guide=(
                Guide(params.constraint, self.grammars, self._eos_ids)
                if params.constraint is not None
                else None
            ),
            token_bytes=self._token_bytes,
            think=(
                ThinkBudget(params.thinking_budget, self._think, prompt_ids)
                if params.thinking_budget is not None and self._think is not None
                else None
            ),
        )
        scheduler = self._scheduler
        scheduler.submit(seq)
        ended = False  # whether the worker sent the sequence's last item (it has ended it)
        try:
            while not ended:
                item = await seq.queue.get()
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                ended = item.finish_reason is not None
                yield item
        finally:
            if not ended:  # the consumer left early: the worker ends the sequence
                scheduler.cancel(seq)

    def unload(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is None:
            return
        scheduler.stop()
        self._model = None
        release_memory(self.device)


# Two of transformers' loads at once in one process are not safe: from_pretrained patches
# module-level state (torch's init functions among it) while it runs, and two loads at once in
# one neuron (a pinned model and one asked for on demand, in the e2e suite) left one of the two
# answering garbage. Loads in one process take turns; torch.compile's tracing, also
# process-global, is inside the turn too.
_LOADING = threading.Lock()


class TransformersHarness(Harness):
    name: ClassVar[str] = "transformers"

    def info(self) -> HarnessInfo:
        kinds = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
        return HarnessInfo(
            name=self.name,
            quantizations=("none", "8bit", "4bit", *CPU_QUANTIZATIONS),
            device_kinds=kinds,
            version=__version__,
            sampling=SAMPLING,
            compiled_decode=True,
        )

    def load(
        self,
        request: LoadRequest,
        path: str,
        device: str,
        options: LoadOptions,
        progress: ProgressFn,
    ) -> LoadedModel:
        """One load at a time in a process (``_LOADING``); the models already loaded go on
        serving meanwhile. A load this harness refuses is refused at once, not after a turn."""
        if refusal := cpu_quantization_refusal(device, request.quantization):
            raise InvalidRequest(refusal, param="quantization")
        if request.compiled_decode and (
            refusal := compiled_decode_refusal(device, request.quantization, request.task)
        ):
            raise InvalidRequest(refusal, param="compiled_decode")
        if not _LOADING.acquire(blocking=False):
            progress(0.0, "waiting for another load to finish")
            _LOADING.acquire()
        try:
            return self._load(request, path, device, options, progress)
        finally:
            _LOADING.release()

    def _load(
        self,
        request: LoadRequest,
        path: str,
        device: str,
        options: LoadOptions,
        progress: ProgressFn,
    ) -> LoadedModel:
        if options.torch_threads > 0:
            torch.set_num_threads(options.torch_threads)
        if request.task == "embed":
            progress(0.1, "weights")
            embedder = load_embedding_model(request, path, device, options)
            progress(1.0, "loaded")
            return embedder
        progress(0.0, "tokenizer")
        tokenizer = load_tokenizer(request, path, options)
        progress(0.1, "weights")
        model = load_model(request, path, device, options)
        progress(0.8, "cache")
        try:
            loaded = TransformersModel(request, model, tokenizer, device, options)
        except BaseException:
            del model
            release_memory(device)
            raise
        loaded.sampling_defaults = generation_defaults(path)
        # Compiling takes minutes on a CPU: the stage says so in /status and the log.
        progress(0.9, "compiling decode graphs" if request.compiled_decode else "warm-up")
        try:
            loaded.warm_up()
        except BaseException:
            loaded.unload()
            raise
        progress(1.0, "loaded")
        return loaded

    def estimate_bytes(self, request: LoadRequest, path: str) -> int:
        """Weights only: the KV reserve depends on the memory budget given at load time."""
        device = request.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return weight_bytes(
                Path(path), request.quantization, resolve_dtype(request.dtype, device)
            )
        except GGUFHeaderError as exc:
            raise InvalidRequest(str(exc), param="source") from None


def release_memory(device: str) -> None:
    """Return freed tensors' memory to the device once the last references are gone."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _config_context(model: PreTrainedModel) -> int:
    config = model.config.get_text_config()
    return int(getattr(config, "max_position_embeddings", 0) or 4096)


def _pool_blocks(
    options: LoadOptions, weights: int, model: PreTrainedModel, context_length: int
) -> int:
    """KV pool blocks: ``kv_cache_share`` of the budget the weights leave, at most what
    max_concurrency full contexts need, at least one full context (else InsufficientMemory)."""
    per_block = bytes_per_token(model) * BLOCK_SIZE
    one_context = -(-context_length // BLOCK_SIZE)
    most = max(1, options.max_concurrency) * one_context
    if options.memory_budget_bytes <= 0:
        return most
    share = int((options.memory_budget_bytes - weights) * options.kv_cache_share)
    if share < one_context * per_block:
        raise InsufficientMemory(
            f"weights take {weights} bytes of a {options.memory_budget_bytes}-byte budget; "
            f"kv_cache_share {options.kv_cache_share} of the rest cannot hold one "
            f"{context_length}-token context ({one_context * per_block} bytes)"
        )
    return min(most, share // per_block)
