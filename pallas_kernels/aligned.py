"""The aligned layout of packed documents: every document moved to start on a chunk boundary.

The chunked per-document paths (the XLA references and the kernels of every op family) run on
this layout: B = 1, documents `docs [T]` (non-decreasing from 0), each starting on a multiple of
`chunk`, zero rows between them. Plain `jax.numpy`, no Pallas: `jaxla.ops.packing` uses it too.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Aligned(NamedTuple):
    """Where each position goes when every document starts on a chunk boundary.

    slots: `[T]` int32, the aligned position of every position.
    sources: `[Tp]` int32, the position each aligned slot holds, or T for padding (a zero row).
    chunk_docs: `[Tp / chunk]` int32, the document of every aligned chunk, -1 for padding chunks.
    """

    slots: jax.Array
    sources: jax.Array
    chunk_docs: jax.Array


def aligned_length(seq_len: int, num_docs: int, chunk: int) -> int:
    """A static bound on the aligned length: sum_n ceil(len_n / C) <= T / C + N chunks."""
    return chunk * (-(-seq_len // chunk) + num_docs)


def align(docs, num_docs: int, chunk: int) -> Aligned:
    """The aligned layout of documents `docs [T]` for chunks of `chunk` steps."""
    T = docs.shape[0]
    Tp = aligned_length(T, num_docs, chunk)
    docs = docs.astype(jnp.int32)
    lengths = jnp.zeros((num_docs,), jnp.int32).at[docs].add(1)
    chunks = (lengths + chunk - 1) // chunk
    first_chunk = jnp.cumsum(chunks, dtype=jnp.int32) - chunks  # aligned chunk of each start
    starts = jnp.cumsum(lengths, dtype=jnp.int32) - lengths  # original position of each start
    positions = jnp.arange(T, dtype=jnp.int32)
    slots = (first_chunk[docs] * chunk + positions - starts[docs]).astype(jnp.int32)
    sources = jnp.full((Tp,), T, jnp.int32).at[slots].set(positions)
    chunk_docs = jnp.full((Tp // chunk,), -1, jnp.int32).at[slots // chunk].set(docs)
    return Aligned(slots, sources, chunk_docs)


def to_aligned(x, aligned: Aligned):
    """`[1, T, ...]` -> `[1, Tp, ...]`: documents moved to chunk boundaries, zeros between."""
    padded = jnp.concatenate([x, jnp.zeros_like(x[:, :1])], axis=1)
    return jnp.take(padded, aligned.sources, axis=1)


def from_aligned(x, aligned: Aligned):
    """`[1, Tp, ...]` -> `[1, T, ...]`, the inverse of `to_aligned` on the documents' slots."""
    return jnp.take(x, aligned.slots, axis=1)
