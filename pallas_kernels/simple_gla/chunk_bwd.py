"""Chunked simple GLA backward: three sequential sweeps over the chunks, states kept on chip.

With dA = (do v^T) * scale * exp(G_i - G_j) * causal and A = (q k^T) * scale * exp(G_i - G_j) *
causal, per chunk n (S_n = state entering the chunk, dS_n = gradient of the state leaving it):
  dq = dA k + scale * exp(G) * (do S_n^T)                   forward sweep, S_{n+1} as in forward
  dk = dA^T q + exp(G_last - G) * (v dS_n^T)                backward sweep over chunks
  dv = A^T do + exp(G_last - G) * (k dS_n)                  backward sweep over chunks
  dS_{n-1} = exp(G_last) dS_n + scale * (q * exp(G))^T do,  starting from d final_state;
  d initial_state = dS before chunk 0.
Gate gradient: dL/dg_s = <exp(g_s) S_{s-1}, dS_s> (state before step s, gradient of the state
after it). Expanding both states inside s's chunk n gives a sum of pair terms with no
cancellation between large partial sums:
  dg_s = P_n + sum_{i >= s} a_i + sum_{j < s} b_j + sum_{j < s <= i} M_ij     (i, j in chunk n)
  P_n = exp(G_last) <S_n, dS_n>,  a_i = q_i.dq_i^inter,  b_j = k_j.dk_j^inter,  M = (q k^T) * dA.
The usual closed form (q.dq - k.dk reverse-summed over the sequence, or over the chunk plus a
chunk term as in FLA) subtracts sums that are much larger than dg once decays are not weak, and
loses most of dg's digits for bf16 inputs with medium or strong gates; this form keeps float32
inputs below 1e-5 against the float64 spec in every gate regime (benchmarks/RESULTS.md, "Kernel
design notes", has the measured errors). Here the dq sweep
writes a and the crossing sums (per K tile, from float32 values before any rounding) and, only
when a gate gradient is needed, its float32 states S_n [B, H, T/C, K, V]; the dk sweep, launched
after it, writes b and P_n. The chunk-local cumsums of a and b are cheap XLA ops (api.py).
16-bit inputs: the dots take bf16 operands, so the float32 states and decayed inputs are rounded
to bf16 for them. For dq, dk, dv that is harmless, but the gate gradient is a sum over a chunk
(and dg_gamma over all of B and T) of terms that share one state: a rounding of S_n in do S_n^T
(-> a), of dS_n in v dS_n^T (-> b), or of v * exp(G_last - G) and q * exp(G) in the state
updates (-> S, dS, P) leaves one error per chunk that every position repeats, so it adds up
instead of averaging out (past the bf16 bound of `jaxla.testing`). With a gate gradient, all
four are therefore split into hi + lo bf16 halves (`dot_state`: two dots, ~16 bits), which
brings dg and dg_gamma to ~1e-5 (rms over draws) and d initial_state to ~2e-6. Cost: two more
C x bk x V dots per chunk in each of the dq and dk sweeps (below); the backward without gate
gradients (no decay, or a constant g_gamma as in lightning attention) runs no split dots.

Packed documents (common.py). resets: with the masked gates every formula above holds as it
stands (a term the forward drops has a factor exp2(-inf) = 0 here too). For the gate gradient,
let e_i count the starts in s's chunk up to row i. The state before step s is zero at a start
and otherwise holds only its own document, so
  exp(g_s) S_{s-1} = [e_s == 0] exp(G_s) S_n + sum_{j < s, e_j == e_s} exp(G_s - G_j) k_j^T v_j,
  dS_s = sum_{i >= s, e_i == e_s} scale exp(G_i - G_s) q_i^T do_i
         + [e_s == e_last] exp(G_last - G_s) dS_n,
and dg_s (zero at a start) expands into the same four terms with the forward's masks: a_i is
zero unless e_i == 0 (dq^inter reads S_n only there), b_j unless e_j == e_last (dk^inter),
M_ij unless e_i == e_j (dA), P_n unless the chunk holds no start (G_last = -inf). Because e is
non-decreasing, the unmasked sums over i >= s and j < s then reach only s's own document: at a
start every term vanishes (i >= s has e_i > 0; j < s has e_j < e_s <= e_last; no pair straddles
it), and for s with e_s > 0 the a's after it and, for e_s < e_last, the b's before it are all
zero. So the kernels and the assembly in api.py are unchanged; only the gates carry masks.
docs (chunks aligned to documents): the dq sweep enters a document's first chunk with its
initial state S0 (which it stores as S_n), the dk and dv sweeps enter a document's last chunk
with d final[doc] and store dS after its first chunk as d initial[doc]. With S_{s-1} = S0 at a
document's first step, dL/dg_s = <exp(g_s) S0, dS_s> is the same expansion (no mask inside a
chunk). The hi/lo splits apply to the same operands in every packing.

Grids (bk = `block_k_dq` / `block_k_dk`, bv = `block_v_dv`):
* dq sweep: grid (K/bk, B, H), float32 state tile [bk, V] (recomputes the forward states).
  dk sweep: grid (K/bk, B, H), float32 tile of dS [bk, V] (the K split keeps dk's V-contraction
  whole). dv sweep: grid (V/bv, B, H), dS tile [K, bv]. `fuse_bwd` launches the sweeps' programs
  as one kernel, so that two or three programs share an SM and hide each other's latency (with a
  gate gradient, dq runs first on its own: dk reads the states it writes).
* Every sweep reads three of q, k, v, do (four with a gate gradient; the tiles of one head share
  them through L2) and writes one gradient; with a gate gradient the dq sweep writes the float32
  states S_n and the dk sweep reads them.
Byte and FLOP budgets and timings: benchmarks/RESULTS.md, "Kernel design notes".
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from pallas_kernels.simple_gla.common import (
    FIRST,
    LAST,
    chunk_gates,
    compiler_params,
    cost,
    dot,
    dot_precision,
    dot_state,
    gate_bytes,
    gate_flops,
    itemsize,
    loop,
    replace_state,
    side_inputs,
    state_spec,
    store_state,
)

ROLES = ("dq", "dk", "dv")


def _state(ref, index, shape):
    """A float32 state tile read from `ref` (zeros when there is none)."""
    return jnp.zeros(shape, jnp.float32) if ref is None else ref[index].astype(jnp.float32)


def _gates(gate_ref, starts_ref, n, cfg, dtype):
    starts = None if starts_ref is None else starts_ref[pl.ds(n * cfg["chunk"], cfg["chunk"])]
    return chunk_gates(gate_ref, n, mode=cfg["gate_mode"], chunk=cfg["chunk"],
                       seq_len=cfg["seq_len"], exact=jnp.dtype(dtype) == jnp.float32,
                       starts=starts)


def _crossing(qk, dA, *, chunk, dtype):
    """sum_{j < s <= i} M_ij for every row s, M = (q k^T) * dA (pairs straddling s).

    With U[s, i] = [i >= s] this is rowsum_{j < s} (U @ M)[s, j]: a sum of pair terms only, no
    difference of larger sums. M is float32; for 16-bit inputs the dot splits it into two bf16
    halves (U is exact in bf16), which keeps ~16 bits of M.
    """
    C = chunk
    row = lax.broadcasted_iota(jnp.int32, (C, C), 0)
    col = lax.broadcasted_iota(jnp.int32, (C, C), 1)
    zero, one = jnp.float32(0.0), jnp.float32(1.0)
    M = jnp.where(row > col, qk * dA, zero)
    if jnp.dtype(dtype) == jnp.float32:
        UM = dot(jnp.where(col >= row, one, zero), M, precision=lax.Precision.HIGHEST)
    else:
        U = jnp.where(col >= row, one, zero).astype(jnp.bfloat16)
        hi = M.astype(jnp.bfloat16)
        lo = (M - hi.astype(jnp.float32)).astype(jnp.bfloat16)
        UM = dot(U, hi) + dot(U, lo)
    return jnp.sum(jnp.where(col < row, UM, zero), axis=1)


def _dq_sweep(ik, q_ref, k_ref, v_ref, do_ref, gate_ref, starts_ref, edges_ref, h0_ref, dq_ref,
              ga_ref, gc_ref, states_ref, *, cfg):
    C, bk, dtype = cfg["chunk"], cfg["block_k_dq"], q_ref.dtype
    precision = dot_precision(dtype)
    cols = pl.ds(ik * bk, bk)
    Vp = v_ref.shape[-1]
    gate_grad = states_ref is not None
    split = "b" if gate_grad else None  # S and v * exp(G_rev): hi + lo for the gate gradient

    def load_initial(d):
        return h0_ref[d, cols, :]

    def body(n, S):
        rows = pl.ds(n * C, C)
        if edges_ref is not None:  # a document's first chunk enters with its initial state
            S = replace_state(edges_ref, FIRST, n, S, None if h0_ref is None else load_initial)
        k, v, do = k_ref[rows, cols], v_ref[rows, :], do_ref[rows, :]
        G, G_last, G_rev, diff = _gates(gate_ref, starts_ref, n, cfg, dtype)
        dA = dot(do, v, tb=True, precision=precision) * (jnp.exp2(diff) * cfg["scale"])
        dq_inter = dot_state(do, S, dtype=dtype, split=split, tb=True) * (
            cfg["scale"] * jnp.exp2(G))[:, None]
        dq = dot(dA.astype(dtype), k, precision=precision) + dq_inter
        dq_ref[rows, cols] = dq.astype(dq_ref.dtype)
        if gate_grad:
            q = q_ref[rows, cols]
            states_ref[n, cols, :] = S  # the state entering chunk n, for the dk sweep
            ga_ref[ik, rows] = jnp.sum(q.astype(jnp.float32) * dq_inter, axis=1)
            qk = dot(q, k, tb=True, precision=precision)
            gc_ref[ik, rows] = _crossing(qk, dA, chunk=C, dtype=dtype)
        v_decayed = v.astype(jnp.float32) * jnp.exp2(G_rev)[:, None]
        return S * jnp.exp2(G_last) + dot_state(k, v_decayed, dtype=dtype, split=split, ta=True)

    if edges_ref is not None:
        S = jnp.zeros((bk, Vp), jnp.float32)
    else:
        S = _state(h0_ref, (cols, slice(None)), (bk, Vp))
    loop(cfg["num_chunks"], body, S)


def _dk_sweep(ik, q_ref, k_ref, v_ref, do_ref, gate_ref, starts_ref, edges_ref, dht_ref,
              states_ref, dk_ref, dh0_ref, gb_ref, gp_ref, *, cfg):
    C, bk, dtype, N = cfg["chunk"], cfg["block_k_dk"], q_ref.dtype, cfg["num_chunks"]
    precision = dot_precision(dtype)
    cols = pl.ds(ik * bk, bk)
    Vp = v_ref.shape[-1]
    gate_grad = states_ref is not None  # dS and q * exp(G): hi + lo for the gate gradient

    def load_final(d):
        return dht_ref[d, cols, :]

    def store_initial(d, dS):
        dh0_ref[d, cols, :] = dS

    def body(i, dS):
        n = N - 1 - i
        rows = pl.ds(n * C, C)
        if edges_ref is not None:  # a document's last chunk: d final state of the document
            dS = replace_state(edges_ref, LAST, n, dS, None if dht_ref is None else load_final)
        q, v, do = q_ref[rows, cols], v_ref[rows, :], do_ref[rows, :]
        G, G_last, G_rev, diff = _gates(gate_ref, starts_ref, n, cfg, dtype)
        dA = dot(do, v, tb=True, precision=precision) * (jnp.exp2(diff) * cfg["scale"])
        dk_inter = dot_state(v, dS, dtype=dtype, split="b" if gate_grad else None, tb=True) * (
            jnp.exp2(G_rev)[:, None])
        dk = dot(dA.astype(dtype), q, ta=True, precision=precision) + dk_inter
        dk_ref[rows, cols] = dk.astype(dk_ref.dtype)
        if gate_grad:
            k = k_ref[rows, cols]
            gb_ref[ik, rows] = jnp.sum(k.astype(jnp.float32) * dk_inter, axis=1)
            # one axis at a time: Triton reductions take a single axis
            P = jnp.exp2(G_last) * jnp.sum(jnp.sum(states_ref[n, cols, :] * dS, axis=1), axis=0)
            gp_ref[ik, rows] = jnp.full((C,), P, jnp.float32)
        q_decayed = q.astype(jnp.float32) * (cfg["scale"] * jnp.exp2(G))[:, None]
        dS = dS * jnp.exp2(G_last) + dot_state(q_decayed, do, dtype=dtype,
                                               split="a" if gate_grad else None, ta=True)
        if edges_ref is not None:  # a document's first chunk: d initial state of the document
            store_state(edges_ref, FIRST, n, dS, store_initial)
        return dS

    if edges_ref is not None:
        loop(N, body, jnp.zeros((bk, Vp), jnp.float32))
        return
    dS = _state(dht_ref, (cols, slice(None)), (bk, Vp))
    dh0_ref[cols, :] = loop(N, body, dS)


def _dv_sweep(iv, q_ref, k_ref, do_ref, gate_ref, starts_ref, edges_ref, dht_ref, dv_ref, *,
              cfg):
    C, bv, dtype, N = cfg["chunk"], cfg["block_v_dv"], q_ref.dtype, cfg["num_chunks"]
    precision = dot_precision(dtype)
    cols = pl.ds(iv * bv, bv)
    Kp = q_ref.shape[-1]

    def load_final(d):
        return dht_ref[d, :, cols]

    def body(i, dS):
        n = N - 1 - i
        rows = pl.ds(n * C, C)
        if edges_ref is not None:  # a document's last chunk: d final state of the document
            dS = replace_state(edges_ref, LAST, n, dS, None if dht_ref is None else load_final)
        q, k, do = q_ref[rows, :], k_ref[rows, :], do_ref[rows, cols]
        G, G_last, G_rev, diff = _gates(gate_ref, starts_ref, n, cfg, dtype)
        A = dot(q, k, tb=True, precision=precision) * (jnp.exp2(diff) * cfg["scale"])
        dv = dot(A.astype(dtype), do, ta=True, precision=precision)
        dv += dot(k, dS.astype(dtype), precision=precision) * jnp.exp2(G_rev)[:, None]
        dv_ref[rows, cols] = dv.astype(dv_ref.dtype)
        do_decayed = (do.astype(jnp.float32) * (cfg["scale"] * jnp.exp2(G))[:, None]).astype(dtype)
        return dS * jnp.exp2(G_last) + dot(q, do_decayed, ta=True, precision=precision)

    if edges_ref is not None:
        dS = jnp.zeros((Kp, bv), jnp.float32)
    else:
        dS = _state(dht_ref, (slice(None), cols), (Kp, bv))
    loop(N, body, dS)


def _bwd_kernel(q_ref, k_ref, v_ref, do_ref, *refs, roles, tiles, cfg):
    """Runs the sweeps in `roles`; grid axis 0 enumerates their tiles one role after another."""
    refs = list(refs)
    gate_ref = refs.pop(0) if cfg["gate_mode"] != "none" else None
    starts_ref = refs.pop(0) if cfg["packing"] == "resets" else None
    edges_ref = refs.pop(0) if cfg["packing"] == "docs" else None
    h0_ref = refs.pop(0) if cfg["has_h0"] else None
    dht_ref = refs.pop(0) if cfg["has_dht"] else None
    states_in = refs.pop(0) if (cfg["gate_grad"] and "dk" in roles and "dq" not in roles) else None
    outs = {}
    for role in roles:
        if role == "dq":
            outs["dq"] = refs.pop(0)
            outs["ga"], outs["gc"], outs["states"] = (
                [refs.pop(0) for _ in range(3)] if cfg["gate_grad"] else [None] * 3)
        elif role == "dk":
            outs["dk"], outs["dh0"] = refs.pop(0), refs.pop(0)
            outs["gb"], outs["gp"] = (
                [refs.pop(0) for _ in range(2)] if cfg["gate_grad"] else [None] * 2)
        else:
            outs["dv"] = refs.pop(0)
    assert not refs, refs
    packed = (gate_ref, starts_ref, edges_ref)

    def run(role, i):
        if role == "dq":
            _dq_sweep(i, q_ref, k_ref, v_ref, do_ref, *packed, h0_ref, outs["dq"], outs["ga"],
                      outs["gc"], outs["states"], cfg=cfg)
        elif role == "dk":
            _dk_sweep(i, q_ref, k_ref, v_ref, do_ref, *packed, dht_ref, states_in, outs["dk"],
                      outs["dh0"], outs["gb"], outs["gp"], cfg=cfg)
        else:
            _dv_sweep(i, q_ref, k_ref, do_ref, *packed, dht_ref, outs["dv"], cfg=cfg)

    pid = pl.program_id(0)
    if len(roles) == 1:
        run(roles[0], pid)
        return
    start = 0
    for role, n in zip(roles, tiles, strict=True):
        pl.when((pid >= start) & (pid < start + n))(functools.partial(run, role, pid - start))
        start += n


def _bwd_call(roles, q, k, v, do, gate, h0, dht, states, *, scale, seq_len, gate_mode, gate_grad,
              block_sizes, interpret, starts, edges, num_docs):
    B, Tp, H, Kp = q.shape
    Vp = v.shape[-1]
    bs = block_sizes
    C = bs.chunk
    N = Tp // C
    n_tiles = {"dq": Kp // bs.block_k_dq, "dk": Kp // bs.block_k_dk, "dv": Vp // bs.block_v_dv}
    tiles = tuple(n_tiles[r] for r in roles)
    packing = "resets" if starts is not None else "docs" if edges is not None else "none"
    cfg = dict(chunk=C, seq_len=seq_len, num_chunks=N, scale=scale, gate_mode=gate_mode,
               packing=packing, has_h0=h0 is not None, has_dht=dht is not None, gate_grad=gate_grad,
               block_k_dq=bs.block_k_dq, block_k_dk=bs.block_k_dk, block_v_dv=bs.block_v_dv)
    # Every program sees the whole [Tp, K] / [Tp, V] rows of its (b, h) and slices its tile.
    def seq_spec(width):
        return pl.BlockSpec((None, Tp, None, width), lambda i, b, h: (b, 0, h, 0))

    n_states = num_docs if packing == "docs" else B  # "docs": each program holds all documents
    state = state_spec(packing, num_docs, Kp, Vp, tiled=False)
    specs, side = side_inputs(gate_mode, gate, packing, starts if packing == "resets" else edges,
                              [h0, dht], state)
    in_specs = [seq_spec(Kp), seq_spec(Kp), seq_spec(Vp), seq_spec(Vp), *specs]
    args = [q, k, v, do, *side]
    states_spec = pl.BlockSpec((None, None, N, Kp, Vp), lambda i, b, h: (b, h, 0, 0, 0))
    if gate_grad and "dk" in roles and "dq" not in roles:
        in_specs.append(states_spec)
        args.append(states)

    out_shape, out_specs = [], []
    for role, n in zip(roles, tiles, strict=True):
        width = Vp if role == "dv" else Kp
        out_shape.append(jax.ShapeDtypeStruct((B, Tp, H, width), q.dtype))
        out_specs.append(seq_spec(width))
        if role == "dk":
            out_shape.append(jax.ShapeDtypeStruct((n_states, H, Kp, Vp), jnp.float32))
            out_specs.append(state)
        if role in ("dq", "dk") and gate_grad:
            for _ in range(2):  # per K tile: (a, crossing) from dq, (b, P) from dk
                out_shape.append(jax.ShapeDtypeStruct((n, B, H, Tp), jnp.float32))
                out_specs.append(pl.BlockSpec((n, None, None, Tp), lambda i, b, h: (0, b, h, 0)))
        if role == "dq" and gate_grad:
            out_shape.append(jax.ShapeDtypeStruct((B, H, N, Kp, Vp), jnp.float32))
            out_specs.append(states_spec)

    # Per chunk and tile (jaxla.flops.kernels): each matmul once (the hi + lo halves of a split
    # operand repeat a product), the gates, the scores' decay and scale, the inter term's scale
    # and sum, the decayed operand of the state update and the update; bytes: every array the
    # sweeps read (dq: k, v, do; dk: q, v, do; dv: q, k, do; q and k both with a gate gradient)
    # and write, once.
    gates = gate_flops(C, gate_mode, jnp.dtype(q.dtype) == jnp.float32)
    flops = 0
    read = {"dq": {"k", "v", "do"}, "dk": {"q", "v", "do"}, "dv": {"q", "k", "do"}}
    if gate_grad:
        read["dq"].add("q")
        read["dk"].add("k")
    arrays = dict(q=q, k=k, v=v, do=do)
    state_bytes = 4 * n_states * H * Kp * Vp
    nbytes = itemsize(q) * sum(arrays[x].size for x in set().union(*(read[r] for r in roles)))
    nbytes += gate_bytes(gate) + (0 if packing == "none" else
                                  4 * (B * Tp if packing == "resets" else 2 * N))
    nbytes += state_bytes * (int(h0 is not None and "dq" in roles)
                             + int(dht is not None and ("dk" in roles or "dv" in roles))
                             + int("dk" in roles))  # h0 read, dht read, d initial_state written
    for role, n in zip(roles, tiles, strict=True):
        width = {"dq": bs.block_k_dq, "dk": bs.block_k_dk, "dv": bs.block_v_dv}[role]
        full = Kp if role == "dv" else Vp  # the head dim each sweep contracts whole
        other = Vp if role != "dv" else Kp
        per_chunk = (2 * C * (C * full + C * width + 2 * width * other)
                     + gates + 2 * C * C + C + 2 * width * other
                     + (2 * C * width + C * Vp if role == "dq" else 3 * C * width))
        if gate_grad and role == "dq":  # q k^T, the crossing's U @ M and masks, sum(q dq_inter)
            per_chunk += 2 * C * C * width + 2 * C**3 + 4 * C * C + 2 * C * width
        if gate_grad and role == "dk":  # sum(k dk_inter), sum(S dS)
            per_chunk += 2 * C * width + 2 * width * Vp
        flops += n * per_chunk
        nbytes += itemsize(q) * B * Tp * H * (Vp if role == "dv" else Kp)  # the gradient
        if gate_grad and role in ("dq", "dk"):  # the states (written by dq, read by dk), and
            nbytes += 4 * B * H * (N * Kp * Vp + 2 * n * Tp)  # the sweep's two gate terms
    flops *= B * H * N
    kernel = functools.partial(_bwd_kernel, roles=roles, tiles=tiles, cfg=cfg)
    return pl.pallas_call(
        kernel,
        out_shape=tuple(out_shape),
        grid=(sum(tiles), B, H),
        in_specs=in_specs,
        out_specs=tuple(out_specs),
        compiler_params=compiler_params(bs.num_warps_bwd, bs.num_stages_bwd),
        cost_estimate=cost(flops, B * H * sum(tiles) * Tp * (C + 2), nbytes),
        interpret=interpret,
        name="simple_gla_chunk_bwd_" + "_".join(roles),
    )(*args)


def chunk_bwd(q, k, v, do, gate, h0, dht, *, scale, seq_len, gate_mode, gate_grad, block_sizes,
              interpret, starts=None, edges=None, num_docs=0):
    """Gradients of the chunked forward on padded inputs (shapes and packing as `chunk_fwd`).

    do: `[B, Tp, H, Vp]` in q.dtype; dht: `[B, H, Kp, Vp]` (`[num_docs, ...]` with edges)
    float32 or None.
    Returns `(dq, dk, dv, dh0, gate_terms)`: dq, dk, dv padded like q, k, v (q.dtype); dh0
    float32 `[B or num_docs, H, Kp, Vp]`; gate_terms None unless gate_grad, else the four
    `[B, H, Tp]` float32 terms (a, b, crossing, P) of the gate gradient (module docstring).
    """
    kw = dict(scale=scale, seq_len=seq_len, gate_mode=gate_mode, gate_grad=gate_grad,
              block_sizes=block_sizes, interpret=interpret, starts=starts, edges=edges,
              num_docs=num_docs)
    args = (q, k, v, do, gate, h0, dht)
    if gate_grad:
        # The dk sweep reads the states the dq sweep writes: dq runs first, on its own.
        dq, ga, gc, states = _bwd_call(("dq",), *args, None, **kw)
        rest = (("dk", "dv"),) if block_sizes.fuse_bwd else (("dk",), ("dv",))
    else:
        states = None
        rest = (ROLES,) if block_sizes.fuse_bwd else tuple((r,) for r in ROLES)
    outs = []
    for roles in rest:
        outs += list(_bwd_call(roles, *args, states, **kw))
    if not gate_grad:
        dq = outs.pop(0)
    dk, dh0 = outs.pop(0), outs.pop(0)
    gate_terms = None
    if gate_grad:
        gb, gp = outs.pop(0), outs.pop(0)
        gate_terms = tuple(jnp.sum(x, axis=0) for x in (ga, gb, gc, gp))
    (dv,) = outs
    return dq, dk, dv, dh0, gate_terms
