"""The CPU speed-ups of evaluation, apart from the code that teaches it.

``generate.generate_continuations`` is written first as a plain loop (``fast=False``): Hugging
Face's ``DynamicCache`` and ``sdpa`` attention, a full stable sort for the nucleus. On a CPU with
the book's small models that loop spends much of its time outside the model, so ``fast=True`` (the
default) swaps in the pieces below. Each draws the same tokens as the plain path it replaces, and
``tests/test_fast_paths.py`` checks every one against it:

- ``nucleus_sample_cpu``: ``generate.nucleus_sample``'s inverse-CDF draw, sorting with numpy only
  the tokens that can lie in the nucleus instead of the whole vocabulary;
- ``preallocate_cache``: KV caches written in place into buffers with room to grow, instead of
  ``DynamicCache``'s concatenation that copies the whole cache at every step;
- ``in_place_attention``: an attention of one query token over those buffers, used inside the
  block for models on a CPU (``sdpa`` reads the strided cache views 2-3x slower).

Together they make evaluation 2.6x as fast as batched ``model.generate`` (``benchmarks/
bench_idiomatic.py``, mini sizes, one thread). Distillation has none: there the same kind of
speed-ups bought 1.2x against ``generate`` with a logits processor, less than the 1.5x that would
pay for the code they take.
"""

from __future__ import annotations

import contextlib
import functools
import math
import types
import weakref

import numpy as np
import torch

from .forward import model_device


# --------------------------------------------------------------------------------- nucleus draw
def nucleus_sample_cpu(probs: torch.Tensor, uniforms: torch.Tensor, top_p: float) -> torch.Tensor:
    """``generate.nucleus_sample``'s tokens for CPU probabilities (rows x vocab), without a full sort.

    A small model's nucleus holds thousands of its 8,000 tokens (no top-k shortcut applies), and
    ``torch.sort`` of 256 x 8,000 took longer than the model's forward pass. ``_sorted_head`` sorts,
    with numpy and values only, just the tokens that can lie in the nucleus, and the drawn position
    is mapped back to its token as a full stable sort would have ordered it.
    """
    probs_np = probs.numpy()
    head, width = _sorted_head(probs_np, top_p)
    picks = _inverse_cdf_numpy(head, uniforms.double().cpu().numpy(), top_p)
    return torch.from_numpy(_ids_at_positions(probs_np, head, picks, width))


def _sorted_head(probs: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Each row's largest probabilities in descending order, as many as can be in its nucleus.

    Tokens are bucketed by the top bits of their float32 pattern (a monotone key of the value);
    the buckets of lowest probability whose total stays below ``1 - top_p`` (less a margin far above
    rounding) lie beyond the nucleus, and only the rest is sorted. Returns ``(head, width)``: a
    ``(rows, k)`` float32 array zero-padded on the right and the number of real entries per row.
    """
    rows, vocab = probs.shape
    limit = (1.0 - top_p) - 1e-3
    if limit <= 0 or vocab < 512:
        head = np.sort(probs, axis=-1)[:, ::-1]
        return np.ascontiguousarray(head), np.full(rows, vocab)
    keys = probs.view(np.uint32) >> 20  # sign 0, exponent, 3 mantissa bits: < 1024 for p <= 1
    offsets = (np.arange(rows, dtype=np.uint32) * 1024)[:, None]
    mass = np.bincount((keys + offsets).ravel(), weights=probs.ravel(), minlength=rows * 1024).reshape(rows, 1024)
    cut = (np.cumsum(mass, axis=1) <= limit).sum(axis=1).astype(np.uint32)  # keys below cut: tail mass <= limit
    candidate = keys >= cut[:, None]
    counts = candidate.sum(axis=1)
    parts = np.split(probs[candidate], np.cumsum(counts)[:-1])  # row by row, in order
    for part in parts:
        part.sort()
    width = np.array([len(part) for part in parts])
    head = np.zeros((rows, int(width.max())), dtype=np.float32)
    for row, part in enumerate(parts):
        head[row, : len(part)] = part[::-1]
    return head, width


def _inverse_cdf_numpy(head: np.ndarray, uniforms: np.ndarray, top_p: float) -> np.ndarray:
    """``_inverse_cdf``'s positions, computed as torch does it -- ``cumsum`` of float32 accumulates in
    float64 and rounds each sum to float32, the mask compares in float32, the CDF is float64 -- with
    one cumulative sum: the kept tokens are a prefix of the row (checked), whose CDF is that sum."""
    cumulative = np.cumsum(head, axis=-1, dtype=np.float64)
    rows, width = head.shape
    kept = np.full(rows, width)
    if top_p < 1.0:
        masked = (cumulative.astype(np.float32) - head) >= np.float32(top_p)
        kept = width - masked.sum(axis=1)
        first = np.where(masked.any(axis=1), masked.argmax(axis=1), width)
        for row in np.flatnonzero(first != kept):  # rounding made the mask no prefix: the reference's way
            cumulative[row] = np.cumsum(np.where(masked[row], np.float32(0.0), head[row]), dtype=np.float64)
            kept[row] = width
    total = cumulative[np.arange(rows), kept - 1]
    targets = uniforms * total
    # searchsorted(right=True) of [cumulative[:kept], total, total, ...]: the count of entries <= target
    below = (cumulative <= targets[:, None]).sum(axis=1)
    return np.where(total <= targets, width, np.minimum(below, kept))


def _ids_at_positions(probs: np.ndarray, descending: np.ndarray, positions: np.ndarray,
                      width: np.ndarray | None = None) -> np.ndarray:
    """The token at ``positions`` of each row's stable descending order, from the sorted values alone:
    the position holds value ``v``; the tokens before it are those above ``v`` and, among tokens equal
    to ``v``, those of smaller id -- so it is the ``(position - #above)``-th token equal to ``v``.
    ``descending`` may hold only the first ``width`` values of a row; a position past them (the
    reference's search can run off the end when the draw lands on the total) is the row's last token."""
    rows = np.arange(len(positions))
    vocab = probs.shape[1]
    if width is None:
        width = np.full(len(positions), descending.shape[1])
    past = positions >= width
    positions = np.where(past, np.minimum(width, vocab) - 1, np.minimum(positions, vocab - 1))
    value = descending[rows, positions][:, None]
    equal = probs == value
    ids = equal.argmax(axis=1)  # the first token of that value: right unless an equal one comes before
    rank = positions - (probs > value).sum(axis=1)
    for row in np.flatnonzero(rank > 0):
        ids[row] = np.flatnonzero(equal[row])[rank[row]]
    for row in np.flatnonzero(past & (width < vocab)):  # the last of the stable descending order
        low = probs[row] == probs[row].min()
        ids[row] = np.flatnonzero(low)[-1]
    return ids.astype(np.int64)



# ------------------------------------------------------------------------------ in-place KV cache
CACHE_CHUNK = 16  # KV-cache capacity grows in steps of this many positions (see preallocate_cache)
# The live buffers of converted caches by address: attention finds the dense buffer behind a view
# with it (``Tensor._base`` is not kept under ``torch.inference_mode``).
_BUFFERS: "weakref.WeakValueDictionary[int, torch.Tensor]" = weakref.WeakValueDictionary()


def preallocate_cache(cache, extra_positions: int, rows: torch.Tensor | None = None) -> bool:
    """Let every layer of a ``DynamicCache`` take ``extra_positions`` more tokens, written in place.

    ``DynamicCache`` concatenates each step's keys and values onto the whole cache, which copies
    all of it every step: on a CPU that copy cost more than the model itself (40% of the time of
    a 3 M-parameter model at 200 rows). Here each layer's tensors become views into zero-filled
    buffers whose capacity grows in chunks (``CACHE_CHUNK`` positions, or an eighth of the length
    when that is more: a copy every 16+ steps, at most 1/8 unused), up to ``extra_positions`` more
    than now, and its ``update`` writes the new step into the buffer. ``in_place_attention`` then lets
    attention read the buffer whole (a dense tensor) instead of the strided view, which CPU matrix
    products read 2-3x slower. ``rows`` (optional) selects and repeats batch rows on the way, as
    ``cache.batch_select_indices(rows)`` would, without a second copy. Layers of another kind
    (sliding windows, quantised, older ``transformers`` without ``cache.layers``) keep their own
    ``update`` (and get ``rows`` selected the usual way); returns whether every layer was converted.
    """
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # transformers 4.x: tuples of tensors, concatenation stays
        if rows is not None:
            cache.batch_select_indices(rows)
        return False
    layers = getattr(cache, "layers", None)
    if not layers:
        if rows is not None:
            cache.batch_select_indices(rows)
        return False
    converted = 0
    for layer in layers:
        if type(layer) is not DynamicLayer or not getattr(layer, "is_initialized", False) or layer.keys.dim() != 4:
            if rows is not None:
                layer.batch_select_indices(rows)
            continue
        length = layer.keys.shape[-2]
        layer._unidetox_limit = length + max(int(extra_positions), 0)
        _reserve(layer, length, length, rows)
        layer.update = types.MethodType(_update_in_place, layer)
        converted += 1
    return converted == len(layers)


def _reserve(layer, length: int, needed: int, rows: torch.Tensor | None = None) -> None:
    """Move the first ``length`` positions of ``layer`` (its ``rows``, default all) into buffers with
    room for ``needed``."""
    keys, values = layer.keys, layer.values
    batch = keys.shape[0] if rows is None else len(rows)
    chunk = max(CACHE_CHUNK, needed // 8)
    capacity = max(needed, min(-(-needed // chunk) * chunk, layer._unidetox_limit))
    key_buffer = keys.new_empty(batch, keys.shape[1], capacity, keys.shape[-1])
    value_buffer = values.new_empty(batch, values.shape[1], capacity, values.shape[-1])
    for target, source in ((key_buffer, keys), (value_buffer, values)):
        _copy_rows(target[:, :, :length], source[:, :, :length], rows)
        target[:, :, length:] = 0  # never read unmasked, but 0 * garbage could be NaN in attention
    _BUFFERS[key_buffer.data_ptr()] = key_buffer  # see _capacity_attention
    _BUFFERS[value_buffer.data_ptr()] = value_buffer
    layer.keys, layer.values = key_buffer[:, :, :length], value_buffer[:, :, :length]
    layer._unidetox_buffers = (key_buffer, value_buffer)


def _copy_rows(target: torch.Tensor, source: torch.Tensor, rows: torch.Tensor | None) -> None:
    """``target[:] = source[rows]``, as broadcast copies of each run of equal rows (the samples of one
    prompt are adjacent), without the intermediate tensor ``source[rows]`` would be."""
    if rows is None:
        target.copy_(source)
        return
    index = rows.tolist()
    start = 0
    while start < len(index):
        end = start + 1
        while end < len(index) and index[end] == index[start]:
            end += 1
        target[start:end].copy_(source[index[start] : index[start] + 1].expand(end - start, *source.shape[1:]))
        start = end


def _update_in_place(layer, key_states, value_states, *args, **kwargs):
    key_buffer, value_buffer = layer._unidetox_buffers
    start = layer.keys.shape[-2]
    end = start + key_states.shape[-2]
    if layer.keys.data_ptr() != key_buffer.data_ptr() or layer.values.data_ptr() != value_buffer.data_ptr():
        # The cache was re-indexed (its tensors replaced): back to plain concatenation.
        del layer.update, layer._unidetox_buffers
        return layer.update(key_states, value_states, *args, **kwargs)
    if end > key_buffer.shape[-2]:
        layer._unidetox_limit = max(layer._unidetox_limit, end)
        _reserve(layer, start, end)
        key_buffer, value_buffer = layer._unidetox_buffers
    key_buffer[:, :, start:end] = key_states
    value_buffer[:, :, start:end] = value_states
    layer.keys, layer.values = key_buffer[:, :, :end], value_buffer[:, :, :end]
    return layer.keys, layer.values


# ------------------------------------------------------------------------ attention over the buffers
FAST_ATTENTION = "unidetox_sdpa"


@contextlib.contextmanager
def in_place_attention(*models):
    """Within the block, models on CPU with ``sdpa`` attention use ``_capacity_attention``.

    One-token decoding steps against a cache made by ``preallocate_cache`` then multiply with
    the dense buffers (masking the positions not yet written) instead of the strided views the
    cache hands out: 3x less time in attention on a CPU, where ``sdpa`` for one query token also
    loses against two plain batched products. Every other call -- prompts, several tokens, GPUs,
    other caches -- goes to ``sdpa`` unchanged. The setting is restored on exit.
    """
    switched = []
    try:
        for model in models:
            config = getattr(model, "config", None)
            if (config is None or model_device(model).type != "cpu"
                    or getattr(config, "_attn_implementation", None) != "sdpa" or not _register_fast_attention()):
                continue
            config._attn_implementation = FAST_ATTENTION
            switched.append(config)
        yield
    finally:
        for config in switched:
            config._attn_implementation = "sdpa"


@functools.lru_cache(maxsize=None)
def _register_fast_attention() -> bool:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    AttentionInterface.register(FAST_ATTENTION, _capacity_attention)
    AttentionMaskInterface.register(FAST_ATTENTION, sdpa_mask)
    return True


def _capacity_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention of one query token over the whole KV buffer behind ``key``/``value`` (see above)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    key_buffer, value_buffer = _BUFFERS.get(key.data_ptr()), _BUFFERS.get(value.data_ptr())
    batch, heads, q_len, dim = query.shape
    usable = (
        q_len == 1 and not dropout and key_buffer is not None and value_buffer is not None
        and key.stride() == key_buffer.stride() and value.stride() == value_buffer.stride()
        and key_buffer.shape[:2] == key.shape[:2] and key_buffer.shape[-1] == key.shape[-1]
        and value_buffer.shape[:2] == value.shape[:2] and heads % key.shape[1] == 0
        and all(kwargs.get(name) is None for name in ("softcap", "sliding_window", "s_aux", "sinks", "position_bias"))
        and (attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1
                                        and attention_mask.shape[-1] == key.shape[-2]))
    )
    if not usable:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    length, kv_heads = key.shape[-2], key.shape[1]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    grouped = query.reshape(batch, kv_heads, groups, dim)  # query head h reads key head h // groups
    scores = torch.matmul(grouped, key_buffer.transpose(-1, -2)).float().mul_(scale)  # (batch, kv, groups, cap)
    scores[..., length:] = -math.inf
    if attention_mask is not None:
        visible = attention_mask[:, :, -1:, :]  # (batch, 1, 1, length)
        if visible.dtype == torch.bool:
            scores[..., :length].masked_fill_(~visible, -math.inf)
        else:
            scores[..., :length].add_(visible.float())
    weights = torch.softmax(scores, dim=-1).to(value_buffer.dtype)
    out = torch.matmul(weights, value_buffer)  # (batch, kv, groups, dim)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2), None


