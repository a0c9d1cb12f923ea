"""Pieces shared by the simple GLA kernels: dots, per-chunk gates, the intra-chunk decay mask,
document masks and edges, loops with an int32 index, the launches' state and side-input specs.

Gate modes (static): "g" = a `[Tp]` ref of per-step log-decays (float32, g + g_gamma, zero on
padded steps); "gamma" = a `[C]` ref holding the head's constant log-decay (no gate tensor at
all); "none" = no decay. Gates arrive in log2 units (times log2(e), as FLA does) and
the kernels use exp2 (libdevice's expf wraps the same ex2 instruction in a range reduction);
gradients stay with respect to the natural-log gates (they never differentiate G itself).

Packed documents (a static `packing` per kernel; "none" adds no input, load or operation):
* "resets": a `[Tp]` int32 ref per row holding, for every row i of its chunk, the number e_i of
  document starts in the chunk up to and including i (`packing.chunk_starts`). `chunk_gates`
  turns it into masks on the decays, so the kernels' arithmetic is unchanged: a pair (i, j)
  interacts only when e_i == e_j, row i reads the state entering the chunk only when e_i == 0,
  row j reaches the chunk's end state only when e_j == e_last, and the entering state decays
  into the end state only when the chunk holds no start (e_last == 0). A masked decay is an
  exponent of -inf (every consumer only takes exp2 of it).
* "docs": a `[2, NT]` int32 ref of document edges (`packing.document_edges`): row 0 holds the
  document entered at chunk (or step) n, row 1 the document left there, -1 elsewhere. The
  sequential loops replace their carried state there (`replace_state`, `store_state`): the
  forward enters a document's first chunk with its initial state and stores its final state
  after its last; the backward sweeps (backward in time) enter a document's last chunk with the
  final state's cotangent and store the initial state's after its first.
Every index is int32, also under `jax_enable_x64` (`loop`; the Triton lowering takes a loop's
index type from its bounds).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

GATE_MODES = ("g", "gamma", "none")
LOG2E = 1.4426950408889634
NEG_INF = np.float32(-np.inf)  # float32 also under x64 (a Python -inf would be a float64 operand)


def loop(num: int, body, init):
    """`lax.fori_loop(0, num, body, init)` with an int32 index, also under `jax_enable_x64`
    (where fori_loop's static-length path counts in int64)."""

    def step(carry, _):
        n, x = carry
        return (n + 1, body(n, x)), None

    (_, out), _ = lax.scan(step, (jnp.int32(0), init), None, length=num)
    return out


def dot(a, b, *, ta: bool = False, tb: bool = False, precision=None):
    """`a @ b` (optionally with a or b transposed) accumulated in float32. 2-D operands only."""
    dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def dot_precision(dtype):
    """float32 operands: IEEE dots (Triton's default for float32 would be TF32)."""
    return lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def dot_state(a, b, *, dtype, split: str | None, ta: bool = False, tb: bool = False):
    """`a @ b` on `dtype` operands where one of them is a float32 value (a state, or an input
    times its decays), accumulated in float32.

    16-bit `dtype`: the float32 operand is rounded to `dtype` (~8 significant bits), unless it
    is named by `split` ("a" or "b"): then it is split into hi + lo `dtype` parts
    (hi = round(x), lo = round(x - hi)) and multiplied by the other operand, exact in `dtype`,
    in two dots (~16 bits: relative error ~2^-17 instead of ~2^-9, for twice the FLOPs).
    float32 `dtype`: one IEEE dot, `split` ignored.
    """
    if split not in (None, "a", "b"):
        raise ValueError(f"split must be None, 'a' or 'b', got {split=}")
    if jnp.dtype(dtype) == jnp.float32:
        return dot(a.astype(dtype), b.astype(dtype), ta=ta, tb=tb, precision=lax.Precision.HIGHEST)
    if split is None:
        return dot(a.astype(dtype), b.astype(dtype), ta=ta, tb=tb)
    x = (a if split == "a" else b).astype(jnp.float32)
    hi = x.astype(dtype)
    lo = (x - hi.astype(jnp.float32)).astype(dtype)
    if split == "a":
        b = b.astype(dtype)
        return dot(hi, b, ta=ta, tb=tb) + dot(lo, b, ta=ta, tb=tb)
    a = a.astype(dtype)
    return dot(a, hi, ta=ta, tb=tb) + dot(a, lo, ta=ta, tb=tb)


class Gates(NamedTuple):
    """Decays of one chunk: G [C] (cumulative from the chunk start through row i, <= 0),
    G_last (whole chunk, scalar), G_rev [C] = G_last - G (from row j to the chunk end) and
    diff [C, C] = G_i - G_j below the diagonal, -inf above (so exp2(diff) is the causal mask).
    With documents inside the chunk, -inf wherever a start cuts the decay (`chunk_gates`)."""

    G: jax.Array
    G_last: jax.Array
    G_rev: jax.Array
    diff: jax.Array


def chunk_gates(gate_ref, n, *, mode: str, chunk: int, seq_len: int, exact: bool = False,
                starts=None):
    """The `Gates` of chunk `n`.

    mode "g": `gate_ref` is a `[Tp]` ref of per-step log2-decays (g + g_gamma). A difference of
    two cumulative sums loses eps * |G| (|G| reaches C * 20 with strong gates, an error of 6e-5
    in exp2(G_i - G_j) for float32); with `exact` (float32 inputs) diff and G_rev are summed
    directly over their segments by an IEEE matmul with a 0/1 matrix instead.
    starts: `[C]` int32 document starts in the chunk up to each row ("resets" packing) or None;
    the decays across a start become -inf (module docstring): G where a row does not read the
    entering state, G_rev where a row does not reach the end state, G_last when the chunk holds
    a start, diff between rows of two documents.
    """
    C = chunk
    row = lax.broadcasted_iota(jnp.int32, (C, C), 0)
    col = lax.broadcasted_iota(jnp.int32, (C, C), 1)
    causal = row >= col
    if mode == "g":
        g = gate_ref[pl.ds(n * C, C)]
        G = jnp.cumsum(g)
        G_last = jnp.min(G)  # G is non-increasing, so its minimum is its last row, exactly
        if exact:
            # diff[i, j] = sum_t [t <= i] * g_t [t > j]: only the steps in (j, i], all <= 0.
            upto = jnp.where(causal, jnp.float32(1.0), jnp.float32(0.0))  # [i, t] = [t <= i]
            after = jnp.where(row > col, g[:, None], jnp.float32(0.0))  # [t, j] = g_t [t > j]
            diff = jnp.dot(upto, after, precision=lax.Precision.HIGHEST,
                           preferred_element_type=jnp.float32)
            G_rev = jnp.sum(jnp.where(row == C - 1, diff, jnp.float32(0.0)), axis=0)
        else:
            diff = G[:, None] - G[None, :]
            G_rev = G_last - G
    elif mode == "gamma":
        gamma = gate_ref[...]  # [C], all equal to the head's decay
        # Rows past the end of the sequence (T padded up to a chunk) do not decay: the final
        # state must be the state after the last real token.
        length = jnp.minimum(seq_len - n * C, C)
        steps = jnp.minimum(lax.iota(jnp.int32, C) + 1, length)
        G = gamma * steps.astype(jnp.float32)
        G_last = jnp.min(G)
        G_rev = gamma * (length - steps).astype(jnp.float32)
        diff = gamma[:, None] * (row - col).astype(jnp.float32)
    elif mode == "none":
        G = jnp.zeros((C,), jnp.float32)
        G_last = jnp.float32(0.0)
        G_rev = G
        diff = jnp.zeros((C, C), jnp.float32)
    else:
        raise ValueError(f"unknown gate mode {mode!r}; expected one of {GATE_MODES}")
    diff = jnp.where(causal, diff, NEG_INF)
    if starts is not None:
        last = jnp.max(starts)  # starts is non-decreasing
        diff = jnp.where(starts[:, None] == starts[None, :], diff, NEG_INF)
        G = jnp.where(starts == 0, G, NEG_INF)
        G_rev = jnp.where(starts == last, G_rev, NEG_INF)
        G_last = jnp.where(last == 0, G_last, NEG_INF)
    return Gates(G, G_last, G_rev, diff)


FIRST, LAST = np.int32(0), np.int32(1)  # the rows of a document-edges ref (int32 indices)


def replace_state(edges_ref, edge, n, state, load):
    """The state a loop carries through chunk (or step) `n` ("docs" packing): `load(doc)` (zeros
    when `load` is None) where `n` is document `doc`'s `edge` (FIRST or LAST), else `state`."""
    doc = edges_ref[edge, n]
    if load is None:
        return jnp.where(doc >= 0, jnp.float32(0.0), state)
    return lax.cond(doc >= 0, lambda: load(jnp.maximum(doc, 0)), lambda: state)


def store_state(edges_ref, edge, n, state, store):
    """`store(doc, state)` where chunk (or step) `n` is document `doc`'s `edge` ("docs")."""
    doc = edges_ref[edge, n]
    pl.when(doc >= 0)(lambda: store(jnp.maximum(doc, 0), state))


def gate_flops(chunk: int, mode: str, exact: bool) -> int:
    """Elementwise FLOPs of one `chunk_gates` call, for the kernels' cost estimates (the same
    count as `jaxla.flops.kernels`)."""
    C = chunk
    if mode == "g":
        # exact: the 0/1 and gate matrices, their [C, C] x [C, C] dot, G_rev by select + sum
        return 2 * C + 5 * C * C + 2 * C**3 if exact else 3 * C + 2 * C * C
    if mode == "gamma":
        return 4 * C + 3 * C * C
    return C * C


def gate_bytes(gate) -> int:
    """Bytes of the gate operand (`[B, H, Tp]` per-step or `[H, C]` constant), 0 without one."""
    return 0 if gate is None else gate.size * jnp.dtype(gate.dtype).itemsize


def cost(flops: float, transcendentals: float, bytes_accessed: float) -> pl.CostEstimate:
    return pl.CostEstimate(
        flops=int(flops), transcendentals=int(transcendentals), bytes_accessed=int(bytes_accessed)
    )


def itemsize(x) -> int:
    return jnp.dtype(x.dtype).itemsize


def compiler_params(num_warps, num_stages):
    from jax.experimental.pallas import triton as pltriton

    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def state_spec(packing: str, num_docs: int, Kp: int, width: int, *,
               tiled: bool = True) -> pl.BlockSpec:
    """The `[Kp, width]` state block (initial state, final state or their cotangents) of the
    program at grid `(i, b, h)`: row b's V tile `i` (`tiled`) or its whole state (`width` = Vp,
    whatever i), or with "docs" packing the same of all `num_docs` documents (B = 1)."""
    def tile(i):
        return i if tiled else 0

    if packing == "docs":
        return pl.BlockSpec((num_docs, None, Kp, width), lambda i, b, h: (0, h, 0, tile(i)))
    return pl.BlockSpec((None, None, Kp, width), lambda i, b, h: (b, h, 0, tile(i)))


def side_inputs(gate_mode: str, gate, packing: str, flags, states, spec: pl.BlockSpec):
    """BlockSpecs and arrays of the inputs every simple GLA kernel takes after its sequences, in
    the order its kernel pops them (grid `(tile, b, h)`): the gate ("g": `[B, H, Tp]` per-step
    log-decays; "gamma": `[H, n]` per head; "none": nothing), the documents' flags ("resets":
    `[B, Tp]`; "docs": edges `[2, n]` shared by every program; "none": nothing), then every state
    in `states` that is not None, under `spec`."""
    specs, args = [], []
    if gate_mode == "g":
        specs.append(pl.BlockSpec((None, None, gate.shape[-1]), lambda i, b, h: (b, h, 0)))
    elif gate_mode == "gamma":
        specs.append(pl.BlockSpec((None, gate.shape[-1]), lambda i, b, h: (h, 0)))
    if gate_mode != "none":
        args.append(gate)
    if packing == "resets":
        specs.append(pl.BlockSpec((None, flags.shape[-1]), lambda i, b, h: (b, 0)))
    elif packing == "docs":
        specs.append(pl.BlockSpec(flags.shape, lambda i, b, h: (0, 0)))
    if packing != "none":
        args.append(flags)
    for state in states:
        if state is not None:
            specs.append(spec)
            args.append(state)
    return specs, args
