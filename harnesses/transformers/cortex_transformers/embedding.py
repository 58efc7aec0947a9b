"""Embedding models (models.toml ``task = "embed"``): BERT-style encoders and decoder models.

Pooling and normalisation follow the checkpoint's sentence-transformers files: ``modules.json``
lists the pipeline (Transformer -> Pooling -> optional Normalize) and the Pooling module's
``config.json`` its mode (``pooling_mode_cls_token``, ``_mean_tokens``, ``_max_tokens``,
``_lasttoken``). Without them: last-token pooling for decoders (e5-mistral, Qwen3-Embedding),
mean pooling for encoders, normalised either way. A pipeline holding a module cortex does not
implement (Dense, ...) is refused at load rather than embedded differently.

``dimensions`` (Matryoshka truncation) is allowed where the model's config says it was trained
for it, as vLLM decides: ``matryoshka_dimensions`` (those sizes) or ``is_matryoshka`` (any size);
the truncated vector is renormalised.

Threading: one worker thread per model runs every forward pass (``embed`` awaits it), so
concurrent requests queue rather than contend for the CPU; a request's inputs are sorted by
length and cut into batches of at most ``max_batch_tokens`` padded tokens.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from cortex.errors import ContextLengthExceeded, InsufficientMemory, InvalidRequest, Unavailable
from cortex.neuron.harness import (
    Embeddings,
    LoadedModel,
    LoadOptions,
    SamplingParams,
    TokenEvent,
)
from cortex.protocol.neuron import LoadRequest
from cortex_transformers import gguf_source
from cortex_transformers.loading import resolve_dtype

PoolingMode = Literal["cls", "mean", "max", "lasttoken"]
MAX_BATCH_INPUTS = 64
DEFAULT_BATCH_TOKENS = 8192
_ST = "sentence_transformers.models."
_KNOWN_MODULES = {_ST + "Transformer", _ST + "Pooling", _ST + "Normalize"}
_MODES: tuple[tuple[str, PoolingMode], ...] = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_lasttoken", "lasttoken"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
)


@dataclass(frozen=True)
class Pooling:
    mode: PoolingMode
    normalize: bool


def read_pooling(directory: Path, is_decoder: bool) -> Pooling:
    """The pooling the checkpoint's sentence-transformers files ask for (module doc)."""
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return Pooling("lasttoken" if is_decoder else "mean", normalize=True)
    modules: list[dict[str, Any]] = json.loads(modules_file.read_text("utf-8"))
    unknown = [m.get("type", "?") for m in modules if m.get("type") not in _KNOWN_MODULES]
    if unknown:
        raise InvalidRequest(
            f"{directory}: sentence-transformers modules {unknown} are not supported "
            "(cortex implements Transformer, Pooling and Normalize)",
            param="source",
        )
    pooling = next((m for m in modules if m["type"] == _ST + "Pooling"), None)
    mode: PoolingMode = "lasttoken" if is_decoder else "mean"
    if pooling is not None:
        config = json.loads((directory / pooling["path"] / "config.json").read_text("utf-8"))
        chosen = [name for key, name in _MODES if config.get(key)]
        if len(chosen) != 1:
            raise InvalidRequest(
                f"{directory}: pooling must use exactly one of {[k for k, _ in _MODES]}",
                param="source",
            )
        mode = chosen[0]
    normalize = any(m["type"] == _ST + "Normalize" for m in modules)
    return Pooling(mode, normalize)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: PoolingMode) -> torch.Tensor:
    """hidden: [B, S, H], mask: [B, S] (1 for real tokens, right-padded) -> [B, H]."""
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        last = mask.sum(dim=1) - 1  # [B]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # [B, S, 1]
    if mode == "max":
        return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class EmbeddingModel(LoadedModel):
    task = "embed"

    def __init__(
        self,
        request: LoadRequest,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pooling: Pooling,
        device: str,
        options: LoadOptions,
    ) -> None:
        self.model_id = request.model
        self.device = device
        config = model.config
        self.context_length = request.context_length or int(
            getattr(config, "max_position_embeddings", 0) or 512
        )
        self.bytes_used = int(model.get_memory_footprint())  # type: ignore[no-untyped-call]
        self.size = int(config.hidden_size)
        self._model: PreTrainedModel | None = model
        self._tokenizer = tokenizer
        self._pooling = pooling
        self._pad = int(tokenizer.pad_token_id or 0)
        self._batch_tokens = options.max_batch_tokens or DEFAULT_BATCH_TOKENS
        sizes = getattr(config, "matryoshka_dimensions", None)
        self._matryoshka: tuple[int, ...] | None = (
            tuple(int(d) for d in sizes)
            if sizes
            else (() if getattr(config, "is_matryoshka", False) else None)
        )
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"embed-{request.model}")

    def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        prefix: str = "",
        *,
        variables: dict[str, Any] | None = None,
    ) -> list[int]:
        raise InvalidRequest(f'model {self.model_id} has task = "embed"', param="model")

    async def generate(
        self, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncGenerator[TokenEvent, None]:
        raise InvalidRequest(f'model {self.model_id} has task = "embed"', param="model")
        yield  # unreachable: makes this an async generator, as the contract types it

    async def embed(
        self, inputs: list[str | list[int]], dimensions: int | None, *, truncate: bool = False
    ) -> Embeddings:
        self._check_dimensions(dimensions)
        ids = [self._ids(item, i, len(inputs), truncate) for i, item in enumerate(inputs)]
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._worker, self._embed_all, ids, dimensions)
        return Embeddings(vectors=vectors, prompt_tokens=sum(len(x) for x in ids))

    def _ids(self, item: str | list[int], index: int, count: int, truncate: bool) -> list[int]:
        where = "input" if count == 1 else f"input[{index}]"
        if isinstance(item, str):
            # truncation keeps the closing special tokens ([SEP], EOS) that pooling may read
            ids = list(
                self._tokenizer.encode(
                    item,
                    add_special_tokens=True,
                    truncation=truncate,
                    max_length=self.context_length if truncate else None,
                )
            )
        else:
            ids = item[: self.context_length] if truncate else item
            vocab = int(self._model.config.vocab_size) if self._model is not None else 0
            if max(ids) >= vocab:
                raise InvalidRequest(f"token ids must lie in [0, {vocab})", param=where)
        if not ids:
            raise InvalidRequest("an input encodes to no tokens", param=where)
        if len(ids) > self.context_length:
            raise ContextLengthExceeded(
                f"This model's maximum input length is {self.context_length} tokens; "
                f"{where} is {len(ids)} tokens.",
                param=where,
            )
        return ids

    def _check_dimensions(self, dimensions: int | None) -> None:
        if dimensions is None or dimensions == self.size:
            return
        if self._matryoshka is None:
            raise InvalidRequest(
                f"model {self.model_id} gives {self.size}-dimensional embeddings and was not "
                "trained for shorter ones (no matryoshka_dimensions in its config)",
                param="dimensions",
            )
        allowed = self._matryoshka or range(1, self.size + 1)
        if dimensions not in allowed:
            sizes = ", ".join(map(str, self._matryoshka)) or f"1 to {self.size}"
            raise InvalidRequest(
                f"model {self.model_id} takes dimensions {sizes}, not {dimensions}",
                param="dimensions",
            )

    def _embed_all(self, ids: list[list[int]], dimensions: int | None) -> list[list[float]]:
        """On the worker thread: batches of similar length, results back in input order."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[list[float]] = [[] for _ in ids]
        for batch in _batches(order, [len(x) for x in ids], self._batch_tokens):
            vectors = self._forward([ids[i] for i in batch], dimensions)
            for i, vector in zip(batch, vectors, strict=True):
                out[i] = vector
        return out

    def _forward(self, batch: Sequence[list[int]], dimensions: int | None) -> list[list[float]]:
        model = self._model
        if model is None:
            raise Unavailable(f"{self.model_id} is unloaded")
        width = max(len(x) for x in batch)
        input_ids = torch.full((len(batch), width), self._pad, dtype=torch.long)  # [B, S]
        mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, S]
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            vectors = pool(hidden.float(), mask, self._pooling.mode)  # [B, H]
            if dimensions is not None:
                vectors = vectors[:, :dimensions]
            if self._pooling.normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2.0, dim=-1)
        result: list[list[float]] = vectors.cpu().tolist()
        return result

    def unload(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._model = None


def _batches(order: list[int], lengths: list[int], max_tokens: int) -> list[list[int]]:
    """Consecutive runs of ``order`` (sorted by length) whose padded size stays within
    ``max_tokens`` (at least one input each) and MAX_BATCH_INPUTS."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        padded = lengths[i] * (len(current) + 1)  # sorted: this one is the longest yet
        if current and (padded > max_tokens or len(current) >= MAX_BATCH_INPUTS):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def load_embedding_model(
    request: LoadRequest, path: str, device: str, options: LoadOptions
) -> EmbeddingModel:
    """Tokenizer, encoder (or decoder body: AutoModel drops an LM head) and pooling."""
    if gguf_source.is_gguf(path):
        raise InvalidRequest("embedding models load from safetensors, not GGUF", param="source")
    if request.quantization != "none":
        raise InvalidRequest("embedding models load unquantized", param="quantization")
    if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
        raise InvalidRequest(f"device {device!r} is not available here", param="device")
    hub: dict[str, Any] = {
        "local_files_only": not options.allow_hub_download,
        "trust_remote_code": request.trust_remote_code,
    }
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **hub)
        model: PreTrainedModel = AutoModel.from_pretrained(
            path,
            dtype=resolve_dtype(request.dtype, device),
            device_map={"": device},
            use_safetensors=True,
            **hub,
        )
    except torch.OutOfMemoryError as exc:
        raise InsufficientMemory(f"{request.model} does not fit on {device}: {exc}") from exc
    except (OSError, ValueError, ImportError) as exc:
        raise InvalidRequest(
            f"cannot load an embedding model from {path!r}: {exc}", param="source"
        ) from exc
    model.eval()  # type: ignore[no-untyped-call]
    is_decoder = not getattr(model.config, "is_encoder_decoder", False) and _is_causal(model)
    pooling = read_pooling(Path(path), is_decoder)
    return EmbeddingModel(request, model, tokenizer, pooling, device, options)


def _is_causal(model: PreTrainedModel) -> bool:
    """Decoder-only bodies (Llama, Qwen, Mistral) attend causally; BERT-style encoders do not."""
    config = model.config
    return bool(getattr(config, "is_decoder", False)) or "ForCausalLM" in " ".join(
        getattr(config, "architectures", None) or ()
    )
