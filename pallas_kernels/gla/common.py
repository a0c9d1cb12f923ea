"""Pieces shared by the GLA kernels: dots with an explicit operand dtype, index maps, gates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

F32 = jnp.float32


def operand_dtype(dtype) -> tuple[jnp.dtype, lax.Precision | None]:
    """Matmul operand dtype and precision for kernels on inputs of `dtype`.

    bfloat16 inputs multiply in bfloat16 on tensor cores (float32 accumulation); float32 inputs
    use IEEE float32 dots (`HIGHEST`), since Triton's default for float32 is TF32 (10-bit
    mantissa), which cannot meet the float32 tolerance. float16 is refused: the matmul path's
    scaled operands reach e^30, far beyond float16's range (65504).
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float32:
        return dtype, lax.Precision.HIGHEST
    if dtype == jnp.bfloat16:
        return dtype, None
    raise TypeError(f"the GLA Pallas kernels take float32 or bfloat16 inputs, got {dtype}")


def mm(a, b, *, dtype, precision, trans_a: bool = False, trans_b: bool = False, split: int = 0):
    """`a @ b` (optionally transposing either operand) with operands cast to `dtype`, float32 out.

    With 16-bit operands, `split` recovers float32-like accuracy for operands that are not exact
    in `dtype`: 1 splits `a` into hi + lo parts (2 dots; for `b` exact, e.g. a raw input), 2 splits
    both (3 dots, dropping lo x lo, relative error ~2^-16 instead of ~2^-8). Ignored for float32.
    """
    contract = ((0 if trans_a else 1,), (1 if trans_b else 0,))

    def dot(x, y):
        return lax.dot_general(x, y, (contract, ((), ())), precision=precision,
                               preferred_element_type=F32)

    if split == 0 or jnp.dtype(dtype) == jnp.float32:
        return dot(a.astype(dtype), b.astype(dtype))
    a32 = a.astype(F32)
    a_hi = a32.astype(dtype)
    a_lo = (a32 - a_hi.astype(F32)).astype(dtype)
    if split == 1:
        return dot(a_hi, b.astype(dtype)) + dot(a_lo, b.astype(dtype))
    b32 = b.astype(F32)
    b_hi = b32.astype(dtype)
    b_lo = (b32 - b_hi.astype(F32)).astype(dtype)
    return dot(a_hi, b_hi) + (dot(a_hi, b_lo) + dot(a_lo, b_hi))


def split_bh(i, H: int):
    """Grid index over B*H -> (b, h)."""
    return lax.div(i, jnp.int32(H)), lax.rem(i, jnp.int32(H))


def starts_spec(rows: int, H: int):
    """Block of the `[B, Tp]` document starts for a (V tile, row block, b*h) program grid."""
    return pl.BlockSpec((None, rows), lambda vv, n, i: (split_bh(i, H)[0], n))


def chunk_gates(g):
    """In-chunk cumulative gates. g: `[C, K]` -> (G `[C, K]`, G_last as a `[1, K]` row)."""
    g = g.astype(F32)
    return jnp.cumsum(g, axis=0), jnp.sum(g, axis=0, keepdims=True)


def suffix_sums(g):
    """`[C, K]` -> `sum_{s > t} g_s` per row t (= G_last - G_t), accurate to the suffix's size.

    The difference of two in-chunk cumsums carries an error ~eps * |G| (|G| reaches 1e3 under
    strong decay) into weights that should be ~1 near the chunk end. Instead: a strictly upper
    triangular 0/1 matrix times g split into three bf16 parts (exact: 3 x 8 bits hold a float32
    significand), three bf16 tensor-core dots with float32 accumulation of the suffix alone.
    """
    C = g.shape[0]
    upper = (lax.broadcasted_iota(jnp.int32, (C, C), 1)
             > lax.broadcasted_iota(jnp.int32, (C, C), 0)).astype(jnp.bfloat16)
    g32 = g.astype(F32)
    hi = g32.astype(jnp.bfloat16)
    rest = g32 - hi.astype(F32)
    mid = rest.astype(jnp.bfloat16)
    lo = (rest - mid.astype(F32)).astype(jnp.bfloat16)

    def dot(x):
        return lax.dot_general(upper, x, (((1,), (0,)), ((), ())), preferred_element_type=F32)

    return dot(hi) + (dot(mid) + dot(lo))


def masked_sums(mask, x):
    """`sum_t mask[s, t] * x[t]` for a `[C, C]` boolean mask and float32 `x [C, D]`, exactly
    rounded per term: x split into three bf16 parts (3 x 8 bits hold a float32 significand),
    three bf16 tensor-core dots with the 0/1 mask, float32 accumulation."""
    m = mask.astype(jnp.bfloat16)
    x32 = x.astype(F32)
    hi = x32.astype(jnp.bfloat16)
    rest = x32 - hi.astype(F32)
    mid = rest.astype(jnp.bfloat16)
    lo = (rest - mid.astype(F32)).astype(jnp.bfloat16)

    def dot(y):
        return lax.dot_general(m, y, (((1,), (0,)), ((), ())), preferred_element_type=F32)

    return dot(hi) + (dot(mid) + dot(lo))


def row_ids(C: int):
    return lax.broadcasted_iota(jnp.int32, (C, 1), 0)


def causal_mask(C: int):
    """`[C, C]` boolean, True where key j <= query i."""
    return lax.broadcasted_iota(jnp.int32, (C, C), 0) >= lax.broadcasted_iota(jnp.int32, (C, C), 1)


def pair_decay(g, rows, j):
    """`exp(G_i - G_j)` for rows i >= j of a chunk, 0 above; g: `[C, K]` float32 log-decays.

    The exponent is the cumulative sum of g over rows j+1..i, summed from zero (not the
    difference of two in-chunk cumsums), so its rounding error scales with the decay between the
    two rows rather than with the decay since the chunk start. All exponents are <= 0.
    """
    D = jnp.cumsum(jnp.where(rows > j, g, 0.0), axis=0)
    return jnp.where(rows >= j, jnp.exp(D), 0.0)


def use_matmul_path(GL, span_limit: float):
    """Scalar predicate: the chunk's largest decay span is small enough for the matmul path."""
    # Reduce one axis at a time: multi-axis reductions trip the Triton lowering (sharding error).
    return -jnp.min(GL.reshape(GL.shape[-1])) <= span_limit


def choose(pred_fn, span_limit: float, fast, exact):
    """`lax.cond(pred, fast, exact)`, or one branch when `span_limit` decides statically."""
    if span_limit == float("inf"):
        return fast()
    if span_limit < 0:
        return exact()
    return lax.cond(pred_fn(), fast, exact)


def for_each_chunk(num_chunks: int, chunk: int, body) -> None:
    """Run `body(rows, p)` for the chunks of a program's block: `rows` slices chunk p's rows.

    Several chunks per program give Triton a loop to software-pipeline (the next chunk's loads
    overlap this chunk's math) at the price of fewer programs.
    """
    def run(p):
        body(pl.ds(pl.multiple_of(p * chunk, chunk), chunk), p)

    if num_chunks == 1:
        body(pl.ds(0, chunk), 0)  # (multiple_of on a constant breaks the Triton lowering)
    else:
        lax.fori_loop(0, num_chunks, lambda p, carry: (run(p), carry)[1], 0)


def fold_tiles(num_tiles: int, tile: int, body, carry):
    """`carry = body(cols, carry)` over column tiles `cols` of width `tile` (a loop when > 1)."""
    if num_tiles == 1:
        return body(pl.ds(0, tile), carry)
    return lax.fori_loop(
        0, num_tiles, lambda t, c: body(pl.ds(pl.multiple_of(t * tile, tile), tile), c), carry)


def chunks_per_program(requested: int, num_chunks: int) -> int:
    """The largest power of two <= requested that divides the number of chunks."""
    p = 1
    while p * 2 <= requested and num_chunks % (p * 2) == 0:
        p *= 2
    return p


def itemsize(dtype) -> int:
    return jnp.dtype(dtype).itemsize


def is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)
