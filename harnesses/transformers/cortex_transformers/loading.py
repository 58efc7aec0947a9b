"""From a LoadRequest to a tokenizer and a model on a device, with typed errors.

Maps cortex's quantization/dtype vocabulary onto transformers' and bitsandbytes' options, and
turns library failures into InvalidRequest / InsufficientMemory with messages an operator can act
on.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from cortex.errors import InsufficientMemory, InvalidRequest
from cortex.neuron.harness import LoadOptions
from cortex.protocol.neuron import LoadRequest

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """ "auto" is bf16 on CUDA and fp32 on CPU (no bf16 matmul units: 4-6x slower prefill)."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return _DTYPES[dtype]


def quantization_config(quantization: str, device: str) -> BitsAndBytesConfig | None:
    if quantization == "none":
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


def load_tokenizer(
    request: LoadRequest, path: str, options: LoadOptions
) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **_hub_kwargs(request, options))
    except (OSError, ValueError) as exc:
        raise InvalidRequest(
            f"cannot load a tokenizer from {path!r}: {exc}", param="source"
        ) from exc
    if request.chat_template:
        tokenizer.chat_template = request.chat_template
    if not tokenizer.chat_template:
        raise InvalidRequest(
            f"{path!r} has no chat template; set one for this model", param="chat_template"
        )
    return tokenizer


def load_model(
    request: LoadRequest, path: str, device: str, options: LoadOptions
) -> PreTrainedModel:
    if device != "cpu" and not (device.startswith("cuda") and torch.cuda.is_available()):
        raise InvalidRequest(f"device {device!r} is not available here", param="device")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=resolve_dtype(request.dtype, device),
            quantization_config=quantization_config(request.quantization, device),
            device_map={"": device},
            use_safetensors=True,
            **_hub_kwargs(request, options),
        )
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
