"""Packed documents for the simple GLA kernels: what the kernels read, and the aligned layout.

Two packings (the contract of `jaxla.ops.packing`, restated here: pallas_kernels imports no
jaxla):
* resets `[B, T]`: True where a document starts (never at t = 0); the state before that step is
  replaced by zero. The chunked kernels read `chunk_starts`, the recurrent kernel the resets.
* docs `[T]` int32 (B = 1): the document of every step, non-decreasing from 0; the state before
  a document's first step is its own initial state, its state after its last step its final
  state. The chunked kernels take inputs already aligned so that every document starts on a
  chunk boundary, with `chunk_docs [NT]` (the document of each chunk, -1 on padding chunks whose
  inputs and gates are zero); both forms read `document_edges`.
`pallas_kernels.aligned` builds that layout (for the ops, and here for the recurrent form's
backward, which runs the chunked backward kernels on it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels._common import pad_axis


def chunk_starts(resets, chunk: int, padded_len: int) -> jax.Array:
    """`[B, T]` bool starts -> `[B, Tp]` int32: for every row, the starts in its chunk up to and
    including it (Tp = padded_len, a multiple of chunk; padded rows hold no start)."""
    r = pad_axis(resets.astype(jnp.int32), 1, padded_len)
    B = r.shape[0]
    e = jnp.cumsum(r.reshape(B, padded_len // chunk, chunk), axis=-1, dtype=jnp.int32)
    return e.reshape(B, padded_len)


def document_edges(docs) -> jax.Array:
    """`[n]` int32 document of each chunk or step (-1 = padding) -> `[2, n]` int32: row 0 the
    document that starts at each position, row 1 the one that ends there, -1 elsewhere."""
    docs = docs.astype(jnp.int32)
    none = jnp.full((1,), -1, jnp.int32)
    before = jnp.concatenate([none, docs[:-1]])
    after = jnp.concatenate([docs[1:], none])
    real = docs >= 0
    first = jnp.where(real & (docs != before), docs, -1)
    last = jnp.where(real & (docs != after), docs, -1)
    return jnp.stack([first, last]).astype(jnp.int32)
