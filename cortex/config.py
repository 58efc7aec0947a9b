"""The three config files (cortex.toml, models.toml, neuron.toml) as frozen msgspec Structs.

Every key has a default, unknown keys are errors (a typo must not pass silently), and a bad
file is reported as one line: ``file: key.path: what is wrong``. Durations are seconds, sizes
are gigabytes (GB = 1e9 bytes) unless a key name says otherwise.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from cortex.errors import ConfigError
from cortex.tasks import Task
from cortex.validation import MISSING, path_parts, split_error, value_at

# Upper bounds keep inf, nan and 1e300 out: they pass ge=0 and then overflow int() or timers.
MAX_SECONDS = 1e6  # 11.6 days
MAX_GIGABYTES = 1e6  # 1 PB
Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_SECONDS)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
Gigabytes = Annotated[float, msgspec.Meta(ge=0, le=MAX_GIGABYTES)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:/@-]+$")]
Quantization = Literal["4bit", "8bit", "int4", "int8", "none"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Store = Literal["huggingface", "ollama"]  # model stores a neuron can discover

GB = 1_000_000_000


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every config table: frozen, keyword-only, unknown keys rejected."""


# --------------------------------------------------------------------------- cortex.toml


def _check_listen(**addresses: str) -> None:
    """Each ``key=value`` must be what ``split_listen`` accepts, caught at load (and --check)
    with the key named, not at bind time."""
    for key, value in addresses.items():
        try:
            split_listen(value)
        except ConfigError:
            raise ValueError(
                f"{key}: expected HOST:PORT such as 127.0.0.1:31313, got {value!r}"
            ) from None


class GatewaySection(_Strict, frozen=True):
    listen: str = "127.0.0.1:31313"
    metrics_listen: str = "127.0.0.1:31314"
    models: str = "models.toml"
    state_file: str = "cortex-state.json"
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()
    poll_interval_s: PositiveSeconds = 2.0
    connect_timeout_s: PositiveSeconds = 5.0
    first_byte_timeout_s: PositiveSeconds = 300.0
    idle_timeout_s: PositiveSeconds = 120.0
    load_timeout_s: PositiveSeconds = 600.0
    keepalive_timeout_s: PositiveSeconds = 30.0
    body_timeout_s: PositiveSeconds = 60.0
    queue_depth: Annotated[int, msgspec.Meta(ge=1)] = 64
    queue_wait_s: PositiveSeconds = 600.0
    max_body_mb: Annotated[float, msgspec.Meta(gt=0, le=1e5)] = 32.0
    log_format: Literal["text", "json"] = "text"

    def __post_init__(self) -> None:
        _check_listen(listen=self.listen, metrics_listen=self.metrics_listen)


class EvictionSection(_Strict, frozen=True):
    strategy: Literal["lru", "priority"] = "lru"
    defrag_after_cycles: Annotated[int, msgspec.Meta(ge=0)] = 50
    min_resident_s: Seconds = 30.0
    default_ttl_s: Seconds = 0.0


class NeuronRef(_Strict, frozen=True):
    name: Name
    endpoint: str
    token: str = ""


class UpstreamRef(_Strict, frozen=True):
    name: Name
    endpoint: str
    api_key: str = ""


class CortexConfig(_Strict, frozen=True):
    gateway: GatewaySection = msgspec.field(default_factory=GatewaySection)
    eviction: EvictionSection = msgspec.field(default_factory=EvictionSection)
    neurons: tuple[NeuronRef, ...] = ()
    upstreams: tuple[UpstreamRef, ...] = ()

    def __post_init__(self) -> None:
        _unique("neurons", [n.name for n in self.neurons] + [u.name for u in self.upstreams])
        endpoints = [("neurons", n.endpoint) for n in self.neurons]
        endpoints += [("upstreams", u.endpoint) for u in self.upstreams]
        for kind, endpoint in endpoints:
            if not re.match(r"^https?://[^/\s]+", endpoint):
                raise msgspec.ValidationError(
                    f"expected an http:// or https:// URL, got {endpoint!r} - at `$.{kind}`"
                )


# --------------------------------------------------------------------------- models.toml


class SamplingDefaults(_Strict, frozen=True):
    """What a request gets for the sampling fields it omits (``[models.sampling]``; the bounds
    are the request fields'). Unset keys fall back to the model's own generation_config.json,
    then to OpenAI's defaults (temperature 1, top_p 1, no top_k, no repetition penalty)."""

    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] | None = None
    repetition_penalty: Annotated[float, msgspec.Meta(gt=0.0, le=10.0)] | None = None

    def over(self, base: SamplingDefaults) -> SamplingDefaults:
        """These values, each unset one taken from ``base``."""
        return SamplingDefaults(
            **{
                name: mine if (mine := getattr(self, name)) is not None else getattr(base, name)
                for name in self.__struct_fields__
            }
        )

    @property
    def empty(self) -> bool:
        return all(getattr(self, name) is None for name in self.__struct_fields__)


NO_SAMPLING_DEFAULTS = SamplingDefaults()


class ModelEntry(_Strict, frozen=True):
    id: Name
    source: Annotated[str, msgspec.Meta(min_length=1)]
    harness: Name = "transformers"
    quantization: Quantization = "none"
    dtype: DType = "auto"
    vram_gb: Gigabytes = 0.0
    context_length: Annotated[int, msgspec.Meta(ge=0)] = 0
    # A reply's length when a request gives no max_tokens; 0: cortex's default (1024).
    default_max_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0
    nodes: tuple[Name, ...] = ()
    pinned: bool = False
    priority: int = 0
    ttl_s: Seconds | None = None
    aliases: tuple[str, ...] = ()
    tool_parser: Literal["hermes", "none"] = "hermes"
    chat_template: str = ""
    trust_remote_code: bool = False
    # Decode steps through torch.compile (harnesses that say so in HarnessInfo): faster on
    # the CPU, minutes of compiling at load, logits within ~2e-4 of eager's.
    compiled_decode: bool = False
    vision: bool = False
    # "generate": chat and text completions; "embed": /v1/embeddings only.
    task: Task = "generate"
    max_output_tokens: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: see output_limit
    sampling: SamplingDefaults = NO_SAMPLING_DEFAULTS  # over the model's generation_config.json


class ModelsConfig(_Strict, frozen=True):
    models: tuple[ModelEntry, ...] = ()

    def __post_init__(self) -> None:
        _unique("models", [m.id for m in self.models])


# --------------------------------------------------------------------------- neuron.toml


class NeuronSection(_Strict, frozen=True):
    name: Name = "neuron"
    listen: str = "127.0.0.1:13131"
    token: str = ""
    model_roots: tuple[str, ...] = ("/var/lib/cortex/models",)
    allow_hub_download: bool = False
    cpu_memory_budget_gb: Gigabytes = 8.0
    harnesses: tuple[Name, ...] = ()
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=4096)] = 16
    torch_threads: Annotated[int, msgspec.Meta(ge=0, le=1024)] = 0
    # 0: the harness picks by device (the transformers harness: 2048 on a GPU, 512 on the CPU)
    max_batch_tokens: Annotated[int, msgspec.Meta(ge=0, le=1_048_576)] = 0
    kv_cache_share: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    unload_drain_s: Seconds = 10.0
    queue_depth: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 64
    heartbeat_s: PositiveSeconds = 5.0
    keepalive_timeout_s: PositiveSeconds = 30.0
    body_timeout_s: PositiveSeconds = 60.0
    models: str = ""
    log_format: Literal["text", "json"] = "text"
    # Model stores of other programs whose models this neuron offers (cortex/neuron/stores/).
    discover: tuple[Store, ...] = ()
    huggingface_cache: str = ""  # "": $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/...
    ollama_models: str = ""  # "": $OLLAMA_MODELS, else ~/.ollama/models

    def __post_init__(self) -> None:
        _check_listen(listen=self.listen)
        _unique("neuron.discover", list(self.discover))
        if 0 < self.max_batch_tokens < 16:
            raise msgspec.ValidationError(
                f"expected 0 (by device) or at least 16, got {self.max_batch_tokens}"
                " - at `$.neuron.max_batch_tokens`"
            )


class NeuronConfig(_Strict, frozen=True):
    neuron: NeuronSection = msgspec.field(default_factory=NeuronSection)
    preload: tuple[Name, ...] = ()


# --------------------------------------------------------------------------- loading

_S = TypeVar("_S", bound=msgspec.Struct)


def _unique(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise msgspec.ValidationError(f"duplicate name {name!r} - at `$.{what}`")
        seen.add(name)


def _one_line(
    path: Path, err: msgspec.ValidationError, data: Any, kind: type[msgspec.Struct]
) -> str:
    """Turn msgspec's 'msg - at `$.a.b[0]`' into 'file: a.b[0]: msg, got <value>'."""
    text, path_or_none = split_error(str(err))
    where = path_or_none or ""
    got = value_at(data, where)
    text = re.sub(r", got `\w+`$", "", text)
    if text.startswith("Object contains unknown field"):
        key = text.split("`")[1]
        close = difflib.get_close_matches(key, _known_keys(kind, where), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{path.name}: {where or '(top level)'}: unknown key {key!r}{hint}"
    if got is not MISSING and "got" not in text and "Invalid enum value" not in text:
        text = f"{text}, got {got!r}"
    text = text.replace("Expected", "expected")
    return f"{path.name}: {where or '(top level)'}: {text}"


_LITERAL = re.compile(r"Invalid enum value '(.*)'")


def load(path: str | Path, kind: type[_S]) -> _S:
    """Parse one TOML file into ``kind``; raises ConfigError with a one-line message."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path.name}: not valid TOML: {exc}") from None
    try:
        return msgspec.convert(data, kind, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain_enum(_one_line(path, exc, data, kind), kind)) from None


def _explain_enum(line: str, kind: type[msgspec.Struct]) -> str:
    """msgspec says "Invalid enum value 'fifo'"; name the allowed values as well."""
    match = _LITERAL.search(line)
    if not match:
        return line
    key_path = line.split(": ")[1]
    allowed = _allowed_values(kind, key_path)
    if not allowed:
        return line
    head = line[: match.start()]
    return f"{head}expected one of {', '.join(allowed)}, got {match.group(1)!r}"


def _known_keys(kind: type[msgspec.Struct], key_path: str) -> list[str]:
    """The keys a table at ``key_path`` may hold ([] when the path is not a table)."""
    info = _type_at(kind, key_path)
    if isinstance(info, msgspec.inspect.StructType):
        return [f.encode_name for f in info.fields]
    return []


def _allowed_values(kind: type[msgspec.Struct], key_path: str) -> list[str]:
    info = _type_at(kind, key_path)
    if isinstance(info, msgspec.inspect.LiteralType):
        return [str(v) for v in info.values]
    return []


def _type_at(kind: type[msgspec.Struct], key_path: str) -> Any:
    """The msgspec type of the value at ``key_path`` (list items unwrapped); None if none."""
    info: Any = msgspec.inspect.type_info(kind)
    for part in path_parts(key_path):
        while isinstance(info, (msgspec.inspect.VarTupleType, msgspec.inspect.ListType)):
            info = info.item_type
        if part.startswith("["):
            continue
        if not isinstance(info, msgspec.inspect.StructType):
            return None
        fields = {f.encode_name: f.type for f in info.fields}
        if part not in fields:
            return None
        info = fields[part]
    while isinstance(info, (msgspec.inspect.VarTupleType, msgspec.inspect.ListType)):
        info = info.item_type
    return info


def load_cortex(path: str | Path) -> CortexConfig:
    return load(path, CortexConfig)


def load_models(path: str | Path) -> ModelsConfig:
    return load(path, ModelsConfig)


def load_neuron(path: str | Path) -> NeuronConfig:
    return load(path, NeuronConfig)


def resolve_relative(config_path: str | Path, target: str) -> Path:
    """Paths inside a config file are relative to that file, not to the working directory."""
    p = Path(target)
    return p if p.is_absolute() else Path(config_path).resolve().parent / p


def split_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:31313' or '[::1]:31313' -> (host, port); raises ConfigError."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen address {listen!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)
