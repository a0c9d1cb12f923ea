"""Packed documents in the layers: what `segment_ids [B, T]` means above the ops.

A row of a batch may hold several documents one after another. `segment_ids [B, T]` (integers)
says where: a new document starts at t > 0 wherever `segment_ids[b, t] != segment_ids[b, t-1]`
(the rule of `jaxla.ops.packing`; ids may repeat later, `[0, 0, 1, 1, 0]` is three documents).
Every layer then computes each document as if it were alone in its row starting at t = 0:

* the recurrent ops restart their state at each document start (`segment_ids` passed through);
* causal convolutions read zeros for taps that reach before the document start (as at t = 0);
* softmax attention attends only within the document; rotary positions count from its start.

Packed inputs describe whole sequences: with a decode cache they are refused (`check`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxla.ops.packing import check_segment_ids, resets_from_segment_ids


def check(layer: str, segment_ids, batch: int, seq_len: int, cache) -> None:
    """Integer `[B, T]` ids for an input `[B, T, ...]`, and no decode cache with them."""
    if segment_ids is None:
        return
    if cache is not None:
        raise ValueError(f"{layer}: segment_ids cannot be combined with a decode cache "
                         f"(cache=...): packed documents are for whole sequences; decode one "
                         f"document at a time")
    check_segment_ids(segment_ids, batch, seq_len)


def document_index(segment_ids) -> jax.Array:
    """`[B, T]` int32: which document of its row each position is in (0, 1, ... per row)."""
    return jnp.cumsum(resets_from_segment_ids(segment_ids), axis=1, dtype=jnp.int32)


def document_positions(segment_ids) -> jax.Array:
    """`[B, T]` int32: each position's index within its document (0 at every document start)."""
    T = segment_ids.shape[1]
    t = jnp.arange(T, dtype=jnp.int32)[None, :]
    starts = jnp.where(resets_from_segment_ids(segment_ids), t, 0)
    return t - jax.lax.cummax(starts, axis=1)


def same_document(segment_ids) -> jax.Array:
    """`[B, T, T]` bool: query position i and key position j lie in the same document."""
    doc = document_index(segment_ids)
    return doc[:, :, None] == doc[:, None, :]
