"""The neuron's own API: load, unload, status and tokenize (the gateway is its only client)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from cortex.config import (
    NO_SAMPLING_DEFAULTS,
    DType,
    Gigabytes,
    ModelEntry,
    Name,
    Quantization,
    SamplingDefaults,
    Store,
)
from cortex.protocol.openai import Message, Tool
from cortex.tasks import Task

ModelState = Literal["loading", "loaded", "unloading", "failed"]


class LoadRequest(msgspec.Struct, kw_only=True, frozen=True):
    """What to load and how. Two loads of one id with different specs conflict (409)."""

    model: Name
    # No control characters (a NUL makes the path unusable); long paths are refused by the OS.
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern=r"^[^\x00-\x1f]+$")]
    harness: Name = "transformers"
    quantization: Quantization = "none"
    dtype: DType = "auto"
    device: str | None = None
    context_length: Annotated[int, msgspec.Meta(ge=0)] = 0
    default_max_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: prompt.DEFAULT_MAX_TOKENS
    vram_gb: Gigabytes = 0.0
    chat_template: str = ""
    tool_parser: Literal["hermes", "none"] = "hermes"
    trust_remote_code: bool = False
    compiled_decode: bool = False  # refused (400) by a harness whose HarnessInfo lacks it
    task: Task = "generate"
    # models.toml's [models.sampling]: over the model's own defaults; not part of the spec
    sampling: SamplingDefaults = NO_SAMPLING_DEFAULTS

    @classmethod
    def from_entry(cls, entry: ModelEntry, device: str | None = None) -> LoadRequest:
        """The load a models.toml entry stands for (gateway loads and neuron preloads)."""
        return cls(
            model=entry.id,
            source=entry.source,
            harness=entry.harness,
            quantization=entry.quantization,
            dtype=entry.dtype,
            device=device,
            context_length=entry.context_length,
            default_max_tokens=entry.default_max_tokens,
            vram_gb=entry.vram_gb,
            chat_template=entry.chat_template,
            tool_parser=entry.tool_parser,
            trust_remote_code=entry.trust_remote_code,
            compiled_decode=entry.compiled_decode,
            task=entry.task,
            sampling=entry.sampling,
        )

    def same_spec(self, other: LoadRequest) -> bool:
        """Equal in everything that changes the loaded weights (device None means any)."""
        ignored = {"device": None, "vram_gb": 0.0, "default_max_tokens": 0}
        mine = msgspec.structs.replace(self, **ignored, sampling=NO_SAMPLING_DEFAULTS)
        theirs = msgspec.structs.replace(other, **ignored, sampling=NO_SAMPLING_DEFAULTS)
        same_device = self.device is None or other.device is None or self.device == other.device
        return mine == theirs and same_device


class UnloadRequest(msgspec.Struct, kw_only=True, frozen=True):
    model: Name
    drain_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] | None = None


class LoadProgress(msgspec.Struct, kw_only=True):
    fraction: float = 0.0
    stage: str = ""


class ModelStatus(msgspec.Struct, kw_only=True):
    id: str
    state: ModelState
    harness: str
    device: str
    source: str
    quantization: str
    bytes: int = 0
    context_length: int = 0
    loaded_at: float | None = None
    last_used: float | None = None
    in_flight: int = 0
    queued: int = 0
    error: str | None = None
    progress: LoadProgress | None = None
    # The defaults requests get for omitted sampling fields (models.toml over the model's own
    # generation_config.json); None until loaded.
    sampling: SamplingDefaults | None = None


class DeviceStatus(msgspec.Struct, kw_only=True):
    id: str  # "cuda:0" or "cpu"
    kind: Literal["cuda", "cpu"]
    index: int
    name: str
    uuid: str = ""
    total_bytes: int
    free_bytes: int
    used_bytes: int
    utilization: float | None = None


class DiscoveredModel(msgspec.Struct, kw_only=True, frozen=True):
    """A model found in another program's store on the node (neuron.toml ``discover``): what
    the gateway offers as a catalogue entry when models.toml does not name it."""

    id: str  # "org/name" (Hugging Face) or "name:tag" (Ollama), as that program names it
    source: str  # the load source: "hf-cache:org/name" or "ollama:name:tag"
    store: Store
    format: Literal["safetensors", "gguf"]
    bytes: int = 0  # the weights on disk
    context_length: int = 0  # the model's own window when the store says; 0: known once loaded
    # The store's sampling settings (Ollama's params layer), over the model's own
    sampling: SamplingDefaults = NO_SAMPLING_DEFAULTS


class NeuronStatus(msgspec.Struct, kw_only=True):
    name: str
    version: str
    harnesses: list[str]
    devices: list[DeviceStatus]
    models: list[ModelStatus]
    in_flight: int = 0
    max_concurrency: int = 0
    started_at: float = 0.0
    discovered: list[DiscoveredModel] = msgspec.field(default_factory=list)


class LoadResponse(msgspec.Struct, kw_only=True):
    model: ModelStatus
    already_loaded: bool = False


class UnloadResponse(msgspec.Struct, kw_only=True):
    model: str
    cancelled: int = 0
    freed_bytes: int = 0


class TokenizeRequest(msgspec.Struct, kw_only=True):
    model: Name
    messages: list[Message]
    tools: list[Tool] | None = None


class TokenizeResponse(msgspec.Struct, kw_only=True):
    model: str
    count: int
    max_model_len: int = 0


class HealthResponse(msgspec.Struct, kw_only=True):
    status: Literal["ok"] = "ok"
    name: str = ""
