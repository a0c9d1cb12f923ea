"""Packed documents: `segment_ids` (JAX's convention) and `cu_seqlens` (FLA's) for every op.

Two ways to say where documents start inside a `[B, T]` batch, and what they turn into:

* `segment_ids: [B, T]` integers. The state restarts wherever the id changes between t-1 and t
  (ids may repeat later: `[0, 0, 1, 1, 0]` is three documents). `initial_state` feeds each row's
  first document; the final state is each row's state after its last token (its last
  document's). Implementations see `Packing(resets=...)`: `resets[b, t]` is True where a new
  document starts at t (never at t = 0).
* `cu_seqlens: [N + 1]` int32 offsets with B = 1, FLA's varlen convention: document n is
  `[cu_seqlens[n], cu_seqlens[n + 1])`, `cu_seqlens[0] = 0`, `cu_seqlens[N] = T`, strictly
  increasing. `initial_state` and the final state hold one state per document, `[N, ...]`.
  Implementations see `Packing(docs=..., num_docs=N)`: `docs[t]` is the document of position t.
  Chunked implementations run on `align`ed copies in which every document starts on a chunk
  boundary, so that documents meet only at chunk edges: a chunk's entering state is either the
  previous chunk's end state or its document's initial state.

At a document start the state before the step is dropped: for GLA, `S_t = k_t^T v_t` (plus
`exp(g_t) S0_n` with a per-document initial state), so the gate of a document's first token
acts only on that initial state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.aligned import Aligned as Aligned
from pallas_kernels.aligned import align as align
from pallas_kernels.aligned import aligned_length as aligned_length
from pallas_kernels.aligned import from_aligned as from_aligned
from pallas_kernels.aligned import to_aligned as to_aligned


class Packing(NamedTuple):
    """What the implementations consume (exactly one of the two is set).

    resets: `[B, T]` bool, True where a document starts (segment_ids; False at t = 0).
    docs: `[T]` int32, the document of every position (cu_seqlens; B = 1), non-decreasing from 0.
    num_docs: N (static; 0 with `resets`).
    """

    resets: jax.Array | None = None
    docs: jax.Array | None = None
    num_docs: int = 0

    @property
    def per_document_states(self) -> bool:
        return self.docs is not None


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_integer(name: str, x) -> None:
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be an integer array, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got {name}.dtype={x.dtype}")


def check_segment_ids(segment_ids, batch: int, seq_len: int) -> None:
    _check_integer("segment_ids", segment_ids)
    if tuple(segment_ids.shape) != (batch, seq_len):
        raise ValueError(f"segment_ids must have shape [B, T] = {(batch, seq_len)}, "
                         f"got segment_ids.shape={tuple(segment_ids.shape)}")


def check_cu_seqlens(cu_seqlens, batch: int, seq_len: int) -> None:
    """Shape and dtype always; the values when they are known (not under jit)."""
    _check_integer("cu_seqlens", cu_seqlens)
    if cu_seqlens.ndim != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must be [N + 1] offsets with N >= 1 documents, "
                         f"got cu_seqlens.shape={tuple(cu_seqlens.shape)}")
    if batch != 1:
        raise ValueError(f"cu_seqlens packs documents into one row: the batch must be 1, "
                         f"got B={batch} (use segment_ids for a batch of packed rows)")
    if not _is_concrete(cu_seqlens):
        return
    cu = np.asarray(cu_seqlens)
    if cu[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got cu_seqlens[0]={int(cu[0])}")
    if cu[-1] != seq_len:
        raise ValueError(f"cu_seqlens must end at T={seq_len}, got cu_seqlens[-1]={int(cu[-1])}")
    steps = np.diff(cu)
    if np.any(steps <= 0):
        at = int(np.argmax(steps <= 0))
        raise ValueError(
            f"cu_seqlens must be strictly increasing (no empty documents), got "
            f"cu_seqlens[{at}]={int(cu[at])}, cu_seqlens[{at + 1}]={int(cu[at + 1])}")


def resets_from_segment_ids(segment_ids) -> jax.Array:
    """`[B, T]` bool: a new document starts at t (> 0) where the id differs from t - 1's."""
    changed = segment_ids[:, 1:] != segment_ids[:, :-1]
    return jnp.concatenate([jnp.zeros_like(changed[:, :1]), changed], axis=1)


def docs_from_cu_seqlens(cu_seqlens, seq_len: int) -> jax.Array:
    """`[T]` int32: the document of every position."""
    positions = jnp.arange(seq_len, dtype=jnp.int32)
    return (jnp.searchsorted(cu_seqlens[1:].astype(jnp.int32), positions, side="right")
            .astype(jnp.int32))


def resolve(segment_ids, cu_seqlens, batch: int, seq_len: int) -> Packing | None:
    """Validate the two arguments and describe the packing (None for unpacked rows)."""
    if segment_ids is not None and cu_seqlens is not None:
        raise ValueError("give segment_ids or cu_seqlens, not both")
    if segment_ids is not None:
        check_segment_ids(segment_ids, batch, seq_len)
        return Packing(resets=resets_from_segment_ids(jnp.asarray(segment_ids)))
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, batch, seq_len)
        return Packing(docs=docs_from_cu_seqlens(jnp.asarray(cu_seqlens), seq_len),
                       num_docs=int(cu_seqlens.shape[0]) - 1)
    return None


def state_batch(packing: Packing | None, batch: int) -> int:
    """Leading size of initial and final states: N per-document states or B per-row ones."""
    return packing.num_docs if packing is not None and packing.per_document_states else batch


def starts_and_ends(docs) -> tuple[jax.Array, jax.Array]:
    """`[T]` bool pairs: a document starts at t (t = 0 included) / ends at t (t = T-1 included)."""
    differs = docs[1:] != docs[:-1]
    edge = jnp.ones((1,), bool)
    return jnp.concatenate([edge, differs]), jnp.concatenate([differs, edge])


def chunk_edges(chunk_docs) -> tuple[jax.Array, jax.Array]:
    """`[NT]` bool pairs: chunk n is its document's first / last chunk (False on padding)."""
    real = chunk_docs >= 0
    before = jnp.concatenate([jnp.full((1,), -1, chunk_docs.dtype), chunk_docs[:-1]])
    after = jnp.concatenate([chunk_docs[1:], jnp.full((1,), -1, chunk_docs.dtype)])
    return real & (chunk_docs != before), real & (chunk_docs != after)
