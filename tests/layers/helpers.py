"""Helpers for the layer and model tests: jitted apply through split/merge, random parameters."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x, cache):
    module = nnx.merge(graphdef, state)
    return module(x) if cache is None else module(x, cache=cache)


def apply(module, x, cache=None):
    """`module(x)` or `module(x, cache=cache)` under jit (one compile per shape)."""
    graphdef, state = nnx.split(module)
    return _apply(graphdef, state, x, cache)


def decode_by_token(module, x, cache):
    """Feed `x [B, T, ...]` one position at a time through the cache; outputs joined on axis 1."""
    outs = []
    for t in range(x.shape[1]):
        y, cache = apply(module, x[:, t:t + 1], cache)
        outs.append(y)
    return jnp.concatenate(outs, axis=1), cache


def decode_in_pieces(module, x, cache, sizes):
    """Feed `x` in consecutive pieces of the given sizes (prefill, then more prefill or decode)."""
    assert sum(sizes) == x.shape[1], (sizes, x.shape)
    outs, start = [], 0
    for size in sizes:
        y, cache = apply(module, x[:, start:start + size], cache)
        outs.append(y)
        start += size
    return jnp.concatenate(outs, axis=1), cache


def randomize_params(module, rng: np.random.Generator, scale: float = 1.0):
    """Replace every parameter by random normals (divided by sqrt(fan-in) for matrices).

    The default inits are small (normal(0.02)) and make gates nearly constant; random weights of
    unit scale exercise strong, varied gates and large activations in the cache tests.
    """
    for _, param in nnx.iter_graph(module):
        if isinstance(param, nnx.Param):
            shape = param[...].shape
            std = scale / np.sqrt(shape[0]) if len(shape) == 2 else scale
            param[...] = jnp.asarray(std * rng.standard_normal(shape), param[...].dtype)
    return module


def float64_copy(make, module):
    """`make()`'s module (built abstractly, under jax_enable_x64 and in float64) holding the
    values of `module`'s variables, floating ones in float64: the float64 twin of `module`."""
    twin = nnx.eval_shape(make)
    nnx.update(twin, jax.tree.map(
        lambda a: jnp.asarray(np.asarray(a, np.float64 if jnp.issubdtype(a.dtype, jnp.floating)
                                         else a.dtype)), nnx.state(module)))
    return twin


def packed_documents(rng: np.random.Generator, B: int, T: int, max_docs: int = 5):
    """Random documents packed into `[B, T]` rows: `(segment_ids [B, T] int32, docs)`.

    Every row holds a 1-token document and documents of random lengths; ids repeat (cycling
    through 0, 1, 2), so a document is told by a change of id, not by its value. `docs` lists
    `(row, start, end)` for every document.
    """
    from tests.ops.harness import document_lengths

    ids, docs = [], []
    for b in range(B):
        lengths = document_lengths(rng, T, max_docs)
        rng.shuffle(lengths)  # the 1-token document anywhere, also first or last
        ids.append(np.repeat(np.arange(len(lengths)) % 3, lengths))
        ends = np.cumsum(lengths)
        docs += [(b, int(e - n), int(e)) for n, e in zip(lengths, ends, strict=True)]
    return jnp.asarray(np.stack(ids), jnp.int32), docs


def one_document_per_row(x, docs, padding):
    """`[len(docs), L, ...]`: document n of `x [B, T, ...]` at the start of row n (its own
    sequence from t = 0), followed by `padding [len(docs), L, ...]` where it is shorter than L.
    Layers are causal, so what follows a document does not change its outputs."""
    rows = []
    for n, (b, start, end) in enumerate(docs):
        rows.append(jnp.concatenate([x[b, start:end], padding[n, end - start:]], axis=0))
    return jnp.stack(rows)


def gather_documents(y, docs):
    """The positions of every document of `y [N, L, ...]` (row n holds document n from t = 0),
    concatenated in packed order."""
    return jnp.concatenate([y[n, :end - start] for n, (_, start, end) in enumerate(docs)])


def packed_positions(y, docs):
    """The positions of every document of the packed `y [B, T, ...]`, concatenated in order."""
    return jnp.concatenate([y[b, start:end] for b, start, end in docs])


def outputs_and_param_grads(module, x, cotangent, **kw):
    """`(y, d sum(y * cotangent) / d params)` of `module(x, **kw)`, jitted (a layer or a model)."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    @jax.jit
    def run(params, x, cotangent, kw):
        def loss(params):
            y = nnx.merge(graphdef, params, rest)(x, **kw)
            return jnp.sum(y * cotangent), y

        (_, y), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return y, grads

    return run(params, x, cotangent, kw)
