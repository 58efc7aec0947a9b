"""From a LoadRequest to a tokenizer and a model on a device, with typed errors.

Maps cortex's quantization/dtype vocabulary onto transformers' and bitsandbytes' options, and
turns library failures into InvalidRequest / InsufficientMemory with messages an operator can act
on. ``path`` is a directory of safetensors (or a hub id) or one ``.gguf`` file (gguf_source.py),
whose conversion is kept beside it after the first load and read from there after (gguf_cache.py).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import msgspec
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from cortex.config import NO_SAMPLING_DEFAULTS, SamplingDefaults
from cortex.errors import InsufficientMemory, InvalidRequest
from cortex.neuron.harness import LoadOptions
from cortex.protocol.neuron import LoadRequest
from cortex_transformers import gguf_cache, gguf_source
from cortex_transformers.cpu_quant import CPU_QUANTIZATIONS, quantize_linears
from cortex_transformers.demo import CHAT_TEMPLATE as HERMES_TEMPLATE

log = logging.getLogger(__name__)
TEMPLATE_ERRORS = (jinja2.TemplateError, ValueError, TypeError, KeyError)
_PROBE = "cortex_tool_probe"
_PROBE_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {"name": _PROBE, "parameters": {"type": "object", "properties": {}}},
    }
]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """ "auto" is bf16 on CUDA and fp32 on CPU (no bf16 matmul units: 4-6x slower prefill)."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return _DTYPES[dtype]


def quantization_config(quantization: str, device: str) -> BitsAndBytesConfig | None:
    """bitsandbytes' options for "8bit" / "4bit"; None for "none" and the CPU kernels' "int8" /
    "int4" (cpu_quant.py), which act on the loaded model instead."""
    if quantization == "none" or quantization in CPU_QUANTIZATIONS:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InvalidRequest(
            f"quantization '{quantization}' needs bitsandbytes: "
            "pip install 'cortex-harness-transformers[cuda]'",
            param="quantization",
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
    # NF4 with bf16 compute on CUDA; on CPU bf16 compute is ~8x slower than fp32.
    compute = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_use_double_quant=True,
    )


def _hub_kwargs(request: LoadRequest, options: LoadOptions) -> dict[str, Any]:
    return {
        "local_files_only": not options.allow_hub_download,
        "trust_remote_code": request.trust_remote_code,
    }


def _location(path: str, part: str) -> tuple[str, dict[str, Any]]:
    """from_pretrained's location arguments: a GGUF is its directory plus ``gguf_file``, or the
    directory holding its kept conversion of ``part`` (gguf_cache.py)."""
    if gguf_source.is_gguf(path):
        if (kept := gguf_cache.converted(path, part)) is not None:
            return str(kept), {}
        directory, name = gguf_source.split(path)
        return directory, {"gguf_file": name}
    return path, {}


def load_tokenizer(
    request: LoadRequest, path: str, options: LoadOptions
) -> PreTrainedTokenizerBase:
    location, files = _location(path, gguf_cache.TOKENIZER)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            location, **files, **_hub_kwargs(request, options)
        )
    except (OSError, ValueError) as exc:
        raise InvalidRequest(
            f"cannot load a tokenizer from {path!r}: {exc}", param="source"
        ) from exc
    if files:  # converted from a GGUF just now: keep it, before any template override
        gguf_cache.keep(path, gguf_cache.TOKENIZER, tokenizer.save_pretrained)
    if request.chat_template:
        tokenizer.chat_template = request.chat_template
    if not tokenizer.chat_template:
        raise InvalidRequest(
            f"{path!r} has no chat template; set one for this model", param="chat_template"
        )
    return tokenizer


def tools_template(tokenizer: PreTrainedTokenizerBase, tool_parser: str) -> str | None:
    """The template for requests with tools: the model's own when it renders them; else
    cortex's ChatML + hermes template (chat_template.jinja) when the entry's tool_parser is
    "hermes"; else None, and such requests are refused. Many small models' templates (SmolLM2's
    among them) silently drop ``tools``: rendering a probe tool tells them apart."""
    own = _own_template_with_tools(tokenizer)
    if own is not None:
        return own
    return HERMES_TEMPLATE if tool_parser == "hermes" else None


def _own_template_with_tools(tokenizer: PreTrainedTokenizerBase) -> str | None:
    try:
        own = tokenizer.get_chat_template(None, _PROBE_TOOLS)
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}],
            tools=_PROBE_TOOLS,  # type: ignore[arg-type]
            chat_template=own,
            add_generation_prompt=True,
            tokenize=False,
        )
    except TEMPLATE_ERRORS:
        return None  # a template that fails on tools cannot render them either
    return str(own) if _PROBE in str(rendered) else None


# What transformers itself passes to every chat template: never a request's to set.
TEMPLATE_RESERVED = frozenset(
    {
        "messages",
        "tools",
        "documents",
        "add_generation_prompt",
        "continue_final_message",
        "raise_exception",
        "strftime_now",
        "bos_token",
        "eos_token",
        "unk_token",
        "pad_token",
        "sep_token",
        "cls_token",
        "mask_token",
        "additional_special_tokens",
    }
)


def template_variables(tokenizer: PreTrainedTokenizerBase) -> frozenset[str]:
    """The variables the model's chat template reads that a request may set
    (``chat_template_kwargs``; Qwen3's ``enable_thinking``): every name the template uses
    without defining it, less what transformers passes itself. A template jinja cannot parse
    here (an extension tag) gives none, so such requests are refused rather than ignored."""
    sources = tokenizer.chat_template
    templates = list(sources.values()) if isinstance(sources, dict) else [sources]
    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do"])
    names: set[str] = set()
    for template in templates:
        try:
            names |= jinja2.meta.find_undeclared_variables(env.parse(str(template)))
        except jinja2.TemplateError as exc:
            log.warning("cannot read the chat template's variables: %s", exc)
            return frozenset()
    return frozenset(names - TEMPLATE_RESERVED)


def load_model(
    request: LoadRequest, path: str, device: str, options: LoadOptions
) -> PreTrainedModel:
    if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
        raise InvalidRequest(f"device {device!r} is not available here", param="device")
    dtype = resolve_dtype(request.dtype, device)
    part = gguf_cache.weights_part(dtype)
    location, files = _location(path, part)
    quantization = quantization_config(request.quantization, device)
    # transformers cannot quantize while it dequantises a GGUF: load it plain, then requantize.
    requantize = quantization is not None and bool(files)
    weights = files or {"use_safetensors": True}  # never a pickled checkpoint
    try:
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            location,
            dtype=dtype,
            quantization_config=None if requantize else quantization,
            device_map={"": "cpu" if requantize else device},
            **weights,
            **_hub_kwargs(request, options),
        )
        if files:  # dequantised from a GGUF just now: keep it (before any requantizing)
            gguf_cache.keep(path, part, functools.partial(gguf_cache.save_dequantised, model))
        if requantize and quantization is not None:
            model = gguf_source.requantize(model, quantization, device)
        if request.quantization in CPU_QUANTIZATIONS:
            quantize_linears(model, request.quantization)
    except torch.OutOfMemoryError as exc:
        raise InsufficientMemory(f"{request.model} does not fit on {device}: {exc}") from exc
    except (OSError, ValueError, ImportError) as exc:
        raise InvalidRequest(f"cannot load a model from {path!r}: {exc}", param="source") from exc
    model.eval()  # type: ignore[no-untyped-call]
    return model


def eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """Every id that ends a turn: the generation config's EOS ids plus the tokenizer's."""
    ids: set[int] = set()
    configured = model.generation_config.eos_token_id if model.generation_config else None
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


GENERATION_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")


def generation_defaults(path: str) -> SamplingDefaults:
    """The sampling defaults in the model directory's generation_config.json: its temperature,
    top_p, top_k and repetition_penalty, as vLLM takes them (``do_sample`` is not read: a
    server samples whenever the temperature is above 0). None for a GGUF file or a hub id; a
    file that cannot be read, or values out of the request fields' bounds, are logged and
    skipped (the model still loads, with OpenAI's defaults)."""
    file = Path(path) / "generation_config.json"
    if not file.is_file():
        return NO_SAMPLING_DEFAULTS
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        found = {key: raw[key] for key in GENERATION_KEYS if raw.get(key) is not None}
        return msgspec.convert(found, SamplingDefaults)
    except (OSError, ValueError, AttributeError, msgspec.ValidationError) as exc:
        log.warning("ignoring the sampling defaults of %s: %s", file, exc)
        return NO_SAMPLING_DEFAULTS
