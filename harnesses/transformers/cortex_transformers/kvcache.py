"""The paged KV pool and the per-forward transformers ``Cache`` view over it.

Every layer's keys and values live in one preallocated pool of token slots
(``[kv_heads, num_slots, head_dim]``, slots grouped in blocks by block_manager.py). A forward
pass gets a ``Cache`` whose layers, on ``update``, write the new tokens' K/V into their slots and
return the K/V of every token the rows attend to, gathered from their slots into
``[B, kv_heads, W, head_dim]`` in the column order runner.py chose (rows right-aligned; padding
columns read slot 0, finite and masked). Joining or leaving the batch copies nothing; a step's
only copy is the gather (``index_select``: several times faster on CPU than advanced indexing),
and a single row whose slots form one range (consecutive blocks, block_manager.py) is not even
gathered: its K/V are a view of the pool. At 22k tokens of context the gather was half of a
decode step on the CPU. A compiled decode step where cortex's CPU kernels run gathers nothing
(``view(in_place=True)``): its layers hand attention the pool, and paged_decode.cpp reads each
row's slots from it.

Heads first: each head's keys of consecutive slots are contiguous, so attention reads them as
whole rows. With the slot-major layout (``[num_slots, kv_heads * head_dim]``) SDPA's CPU kernel
took 4x as long to attend one query to 16k keys (15 ms against 3.8 ms a layer, 64M demo), and
gathers were up to 2.4x slower.

Every layer keeps full KV (no sliding-window truncation); sliding-window models still decode
correctly because their masks come from the model. Models with linear attention layers
(recurrent state) are not supported.
"""

from __future__ import annotations

import math
import mmap

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer


def kv_layout(model: PreTrainedModel) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of ``model``'s attention."""
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return int(config.num_hidden_layers), int(kv_heads), int(head_dim)


def bytes_per_token(model: PreTrainedModel) -> int:
    """KV bytes one token takes across all layers (keys and values)."""
    layers, kv_heads, head_dim = kv_layout(model)
    return 2 * layers * kv_heads * head_dim * (torch.finfo(model.dtype).bits // 8)


class KVPool:
    """The slots of every layer. Owned by the decode worker; allocated once at load."""

    def __init__(self, model: PreTrainedModel, num_slots: int, device: torch.device) -> None:
        layers, kv_heads, head_dim = kv_layout(model)
        # Zeros, not empty: padding columns read slot contents, and NaN * 0 is NaN.
        # One slot past the blocks' slots, owned by no block: the padding rows of a compiled
        # decode step (compiled.py) write their K/V there.
        self.scratch = num_slots
        shape = (kv_heads, num_slots + 1, head_dim)
        self.keys = [zeros(shape, model.dtype, device) for _ in range(layers)]
        self.values = [zeros(shape, model.dtype, device) for _ in range(layers)]
        self.bytes = bytes_per_token(model) * (num_slots + 1)

    def view(
        self,
        write: torch.Tensor,
        read: torch.Tensor,
        span: int | None = None,
        in_place: bool = False,
    ) -> Cache:
        """A cache for one forward pass.

        write: [B, Q] slots for the new tokens' K/V; read: [B, W] slots each row attends to, in
        order, the new ones included (the last Q columns); span: when B is 1 and ``read`` is the
        range span..span+W, its first slot (the K/V are read in place); in_place: the layers
        hand attention the whole pool (``[1, kv_heads, slots, head_dim]``), for
        ``attention.paged_decode`` to read ``read``'s slots from it, and gather nothing.
        """
        layers = [
            PagedLayer(k, v, write, read, span, in_place)
            for k, v in zip(self.keys, self.values, strict=True)
        ]
        return Cache(layers=layers)  # type: ignore[arg-type]


def zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed tensor. On the CPU its memory is an anonymous private mapping: the kernel hands
    out zero pages as slots are first written, so a pool of any size costs nothing at load
    (``torch.zeros`` wrote all of it: ~0.6-1.2 s for SmolLM2's 1.7 GB pool on this CPU, a
    sixth of a restart) and the process's resident memory grows with the slots used, up to
    the pool. Freed (unmapped) when the last tensor viewing it goes."""
    count = math.prod(shape)
    if device.type != "cpu" or count == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    pages = mmap.mmap(-1, count * dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(pages, dtype=dtype, count=count).view(shape)


def gather(pool: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """The slots ``read`` [B, W] of one layer's ``pool`` [H, slots, D], as [B, H, W, D]
    (``index_select``: several times faster on the CPU than advanced indexing)."""
    rows, width = read.shape
    picked = pool.index_select(1, read.reshape(-1))  # [H, B*W, D]
    return picked.view(pool.shape[0], rows, width, -1).transpose(0, 1)


class PagedLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """One layer's window onto the pool for one forward pass."""

    def __init__(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        write: torch.Tensor,
        read: torch.Tensor,
        span: int | None,
        in_place: bool = False,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._pool_k, self._pool_v = keys, values
        self._write, self._read, self._span = write, read, span
        self._in_place = in_place
        self.is_initialized = True
        self.device = keys.device

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # the pool exists already

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, q, d = key_states.shape  # [B, H, Q, D] -> pool [H, B*Q, D]
        slots = self._write.reshape(-1)
        self._pool_k.index_copy_(1, slots, key_states.transpose(0, 1).reshape(h, b * q, d))
        self._pool_v.index_copy_(1, slots, value_states.transpose(0, 1).reshape(h, b * q, -1))
        # Not kept on the layer (DynamicLayer's ``keys``): in a compiled step every tensor kept
        # on an attribute becomes one more graph output, so each layer's K/V would stay
        # allocated to the step's end.
        if self._in_place:  # attention reads the slots from the pool itself
            return self._pool_k[None], self._pool_v[None]
        if self._span is not None:  # one row in one slot range: a view, nothing copied
            end = self._span + self._read.shape[1]
            return self._pool_k[None, :, self._span : end], self._pool_v[None, :, self._span : end]
        return gather(self._pool_k, self._read), gather(self._pool_v, self._read)

    def get_seq_length(self) -> int:
        """Columns before the new tokens, which the model adds to its query positions when it
        builds the causal mask. Read off the shapes, not kept as an int, so a compiled step
        sees a symbolic size (one graph for every width), not a constant to recompile for."""
        return self._read.shape[1] - self._write.shape[1]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0
