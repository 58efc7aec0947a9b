"""The running batch's KV cache: right-aligned rows in buffers that grow by doubling.

transformers' DynamicLayer appends with ``torch.cat``, copying the whole cache on every decode
step; a preallocated buffer makes a step copy only the new token. Rows are right-aligned (every
row's newest token sits in the last column), so joining a batch is left padding and leaving it is
a row selection plus dropping leading columns no remaining row uses.

Every layer keeps full KV (no sliding-window truncation); sliding-window models still decode
correctly because their masks come from the model, at the cost of memory. Models with linear
attention layers (recurrent state) are not supported by this cache.

Tensors: keys/values buffers [B, kv_heads, capacity, head_dim]; the live region is [:, :, :length].
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

_MIN_CAPACITY = 64


class BufferedLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """One layer's KV, written in place into a buffer with spare capacity."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.length = 0
        self._k = torch.empty(0)
        self._v = torch.empty(0)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self._k = key_states.new_empty(b, h, _MIN_CAPACITY, d)
        self._v = value_states.new_empty(b, h, _MIN_CAPACITY, value_states.shape[-1])
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._k.shape[-2]:
            self._k = _regrow(self._k, self.length, end)
            self._v = _regrow(self._v, self.length, end)
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def set_buffers(self, k: torch.Tensor, v: torch.Tensor, length: int) -> None:
        self._k, self._v, self.length = k, v, length
        self.keys, self.values = k[:, :, :length], v[:, :, :length]
        self.is_initialized = True
        self.device = k.device


def _regrow(buf: torch.Tensor, length: int, needed: int) -> torch.Tensor:
    """A buffer with room for at least ``needed`` columns, keeping the first ``length``."""
    capacity = max(needed, 2 * buf.shape[-2], _MIN_CAPACITY)
    out = buf.new_empty(*buf.shape[:2], capacity, buf.shape[-1])
    out[:, :, :length] = buf[:, :, :length]
    return out


def new_cache() -> Cache:
    """An empty cache whose layers are created on first use (prefill)."""
    return Cache(layer_class_to_replicate=BufferedLayer)


def _layers(cache: Cache) -> list[BufferedLayer]:
    return [layer for layer in cache.layers if isinstance(layer, BufferedLayer)]


def cache_length(cache: Cache) -> int:
    layers = _layers(cache)
    return layers[0].length if layers else 0


def select_rows(cache: Cache, rows: torch.Tensor, drop_columns: int) -> None:
    """Keep ``rows`` (a LongTensor of batch indices) and drop the first ``drop_columns`` columns."""
    for layer in _layers(cache):
        length = layer.length - drop_columns
        k = layer._k[rows, :, drop_columns : layer.length].contiguous()
        v = layer._v[rows, :, drop_columns : layer.length].contiguous()
        layer.set_buffers(k, v, length)


def concat_right_aligned(a: Cache, b: Cache) -> Cache:
    """Stack ``b``'s rows under ``a``'s, left-padding the shorter one with zeros."""
    length = max(cache_length(a), cache_length(b))
    merged = Cache(layers=[BufferedLayer() for _ in _layers(a)])
    for out, la, lb in zip(_layers(merged), _layers(a), _layers(b), strict=True):
        k = _stack(la._k, la.length, lb._k, lb.length, length)
        v = _stack(la._v, la.length, lb._v, lb.length, length)
        out.set_buffers(k, v, length)
    return merged


def _stack(x: torch.Tensor, lx: int, y: torch.Tensor, ly: int, length: int) -> torch.Tensor:
    # out: [Bx + By, H, capacity, D] with x's live columns ending at `length`, y's likewise.
    capacity = length + max(_MIN_CAPACITY, length // 2)
    out = x.new_zeros(x.shape[0] + y.shape[0], x.shape[1], capacity, x.shape[-1])
    out[: x.shape[0], :, length - lx : length] = x[:, :, :lx]
    out[x.shape[0] :, :, length - ly : length] = y[:, :, :ly]
    return out
