"""Backward selective-scan kernels (Pallas-Triton), parallel over time chunks.

Algorithm (research/mamba_pallas.md A1/A2), time walked from last to first:
  g_t = dout_t * silu(z_t);  dh_t = C_t g_t + a_{t+1} dh_{t+1}   (a_T dh_T = d final_state)
  du_t = D g_t + dt_t (dh_t . B_t);  ddt_t = u_t (dh_t . B_t) + sum_n dh_t A a_t h_{t-1}
  dA += dh_t dt_t a_t h_{t-1};  dB_t, dC_t = per-program sums over the block's channels
with a_t h_{t-1} = h_t - dt_t u_t B_t (mamba_ssm's identity: only h_t is needed per step).
Time is cut into chunks of `chunk_bwd` steps, one program each, as in the forward:
- Pass 1 (`_dstate_kernel`, grid (B, D/block_d, NC-1), the forward's `[N, block_d]` tiling):
  chunk c >= 1 runs the reverse recurrence from a zero carry and writes the carry it would pass
  to chunk c-1, `dh_loc [B, NC-1, N, D]`, and its sum of dt (the chunk's decay is exp(A sum dt)).
  No reductions: per step one exp2 and two fmas per state element.
- Pass 2 (`_bwd_kernel`, grid (B, D/block_d_bwd, NC)): first walks the chunks after its own
  from the final-state cotangent, `dh = exp(A S_k) dh + dh_loc[k]`, then walks its chunk
  backwards in sub-chunks of `sub` steps: the sub-chunk's states are recomputed into registers
  (Python-unrolled: no value slicing in Pallas-Triton) from the state the forward saved every
  `checkpoint` steps (advancing to the sub-chunk start when `checkpoint > sub`), then the
  reverse steps run. The recurrence is never inverted (a_t = exp(dt A) underflows).
- Tiles `[N, block_d_bwd]` with one channel per thread (`block_d_bwd = 32 * num_warps_bwd`):
  the sums over N (y, dh.B, sum_n A q) are in-thread and per-channel work runs once. The sums
  over channels (dB_t, dC_t: 2N values per step) are warp shuffles; one warp per program keeps
  them free of shared memory. With 32 channels and Np <= 16 they are one transposed butterfly
  (`_channel_sums`: 2 Np - 1 shuffles for all 2 Np sums, where `jnp.sum` per value takes 5
  each) whose result is one row of 32 lanes, stored as it lies. 2-D tiles are read and written
  as N rows: a 2-D load or store in the loop makes Triton pick its vectorised layout (4
  channels x 4 lanes on N) for the loop, which costs a shared-memory round trip and a barrier
  per row per step (round one's compiled backward has 68 barriers in its loops; this one has 2
  per step, for the dB/dC row stores; checked on the SASS compiled offline for sm_90).

Cost at the Mamba-370M layer (B=4, T=4096, D=2048, N=16, bf16; defaults: chunk_bwd 256,
checkpoint 8, sub 4, 1 warp):
- Exps: pass 1 one per (t, d, n); pass 2 the recomputation (1.5: half the sub-chunks advance
  from the checkpoint first) and a_t again in the reverse step (1): ~3.5 x 537M = 1.9G at
  16/clk/SM -> ~0.5 ms, plus per-channel softplus / sigmoids.
- Instructions: ~55 per (t, d, n) in pass 2 with a 5-level shuffle sum per dB/dC value (a
  third of them; the butterfly removes most of that), ~8 in pass 1 -> ~1.1 ms issue-bound on
  132 SMs. `a * b + c` is one `fma.rn.f32` (Triton does not contract it). Programs:
  4 * 64 * 16 = 4096 one-warp programs.
- Bytes: u, delta, z, dout, B, C read and du, ddelta, dz written (bf16) = 470 MB; pass 1 reads
  delta, z, dout again (200 MB); checkpoints every 8 steps (268 MB, written by the forward);
  dB/dC partials `[B, D/32, T, N]` float32 written and summed by XLA = 2 x 2 x 67 MB.
  Total ~1.2 GB -> ~0.4 ms at 3 TB/s.
- Expected ~1-1.5 ms (round one: 3.8 ms; mamba_ssm's backward: 2.44 ms). Measured (Nsight
  Compute, H100, 2026-11-25, chunk_bwd 256): pass 1 0.32 ms, pass 2 2.12 ms at 66 instructions
  per (t, d, n), 2 warps per scheduler, half the issue slots idle; fwd+bwd 3.51 ms with the
  ftz exp2 (benchmarks/RESULTS.md, round 3). With the fmas and the butterfly sums (H200,
  2026-12-03): fwd+bwd 3.53 -> 3.09 ms (synchronised calls); back to back, as `do_bench` runs
  mamba_ssm: fwd+bwd 2.56 ms against 2.94, the backward ~1.84 ms against mamba_ssm's ~2.34.
  chunk_bwd comes from the shape: the one that leaves ~4096 programs (`BlockSizes.get_default`).
- dA, dD, d delta_bias are per-program partials summed by XLA (deterministic, no atomics).
  Grid programs run concurrently; nothing depends on their order.

Packed documents (`Flags.resets`, `Flags.num_docs`; see `fwd.py`): a start at step t means that
step read zero or its document's initial state S0 instead of h_{t-1}. So the reverse carry out
of step t, a_t dh_t, is dropped there (per-document mode: it is d S0 of that document, stored
by the program holding the start), a chunk that holds a start passes no carry through it
(`keep`, as in the forward), and every recomputation (`advance`) restarts as the forward did.
In dA and ddt the term a_t h_{t-1} becomes 0 or a_t S0, which mamba_ssm's identity
h_t - dt_t u_t B_t gives in both cases (used at starts when h_{t-1} is in registers). In
per-document mode the final state's cotangent of a document enters dh at its last step (both
passes load `ends[t]`; the walk of pass 2 starts from zero).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import exp2, fma, lane_xor, sum_products
from pallas_kernels.selective_scan.fwd import (
    F32,
    LOG2E,
    Flags,
    _cost,
    chunk_keeps,
    chunk_steps,
    discretize,
    documents_present,
    fori,
    i32,
    n_chunks,
    restart,
    sigmoid,
    step_flag,
)


def butterfly_sums(Np: int, block_d: int, num_warps: int) -> bool:
    """Whether the backward sums dB, dC over channels with `_channel_sums` (else `jnp.sum`)."""
    return block_d == 32 and num_warps == 1 and Np <= 16


def _channel_sums(dh, dtu, h, g, *, asm):
    """Sums over the 32 channels (lanes) of dB = dh dtu and dC = h g (`[Np, 32]` tiles of
    `[Np, 32] x [32]` products, Np <= 16) -> `[32]`.

    A transposed butterfly: at each shuffle level a lane keeps one half of its values and hands
    its partner the other, so the 2 Np sums take 2 Np - 1 shuffles and adds (Np = 16: 31 of each
    and 62 selects) where a sum per value takes 5 levels each (160 shuffles and adds). Lane l ends
    with row `l % Np` of dB (l < 16) or dC (l >= 16), each sum held by 16 / Np lanes; the result
    is a row of one value per lane, stored without a layout conversion.
    """
    Np, L = dh.shape

    def upper_lanes(shape, offset):
        return (lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1) & offset) != 0

    def exchange(lo, hi, offset):
        upper = upper_lanes(lo.shape, offset)
        send = jnp.where(upper, lo, hi)
        return jnp.where(upper, hi, lo) + lane_xor(send, offset, asm=asm)

    # The first level picks factors before multiplying (per-lane selects of dtu, g are cheap).
    upper, upper_row = upper_lanes(dh.shape, L // 2), upper_lanes((L,), L // 2)
    send = jnp.where(upper, dh, h) * jnp.where(upper_row, dtu, g)[None, :]
    x = fma(jnp.where(upper, h, dh), jnp.where(upper_row, g, dtu)[None, :],
            lane_xor(send, L // 2, asm=asm), asm=asm)
    offset = L // 4
    while offset >= Np:  # more lanes than values: plain butterfly levels
        x = x + lane_xor(x, offset, asm=asm)
        offset //= 2
    while offset >= 1:  # halve the values held per lane
        lo, hi = jnp.split(x, 2, axis=0)
        x = exchange(lo, hi, offset)
        offset //= 2
    return x.reshape(L)


def _dstate_kernel(*refs, T, chunk, unroll, flags: Flags, prefetch, ftz):
    """Pass 1: the reverse carry out of chunk c + 1 from a zero carry, and its sum of dt."""
    refs = list(refs)
    delta_ref, At_ref, C_ref = refs[:3]
    rest = refs[3:]
    z_ref = rest.pop(0) if flags.has_z else None
    bias_ref = rest.pop(0) if flags.has_bias else None
    dout_ref = rest.pop(0)
    starts_ref = rest.pop(0) if flags.packed else None
    ends_ref, dlast_ref = (rest.pop(0), rest.pop(0)) if flags.per_doc else (None, None)
    dloc_ref, dtsum_ref = rest
    base = (pl.program_id(2) + 1) * chunk
    A2 = At_ref[...].astype(F32) * LOG2E
    bias = bias_ref[...].astype(F32) if flags.has_bias else None
    masked = T % unroll != 0
    n_iter = (jnp.minimum(chunk, T - base) + (unroll - 1)) // i32(unroll)

    def enter_final(dh, end):
        """At a document's last step (end >= 0) its final state's cotangent enters."""
        return lax.cond(end >= 0, lambda d: d + dlast_ref[end], lambda d: d, dh)

    def load_block(t0):
        rows = []
        for k in range(unroll):
            t = jnp.minimum(t0 + k, T - 1) if masked else t0 + k
            row = (delta_ref[t, :], C_ref[t, :], dout_ref[t, :])
            row += (z_ref[t, :],) if flags.has_z else (None,)
            row += (step_flag(starts_ref, t, t0 + k, T, masked),) if flags.packed else (None,)
            row += (step_flag(ends_ref, t, t0 + k, T, masked),) if flags.per_doc else (None,)
            rows.append(row)
        return tuple(rows)

    def body(i, carry):
        dh, s, rows = carry if prefetch else (*carry, None)
        t0 = base + (n_iter - 1 - i) * unroll
        if prefetch:
            nxt = load_block(base + jnp.maximum(n_iter - 2 - i, 0) * unroll)
        else:
            rows = load_block(t0)
        for k in reversed(range(unroll)):
            row = rows[k]
            _, dt = discretize(row[0], bias, flags)
            g = row[2].astype(F32)
            if flags.has_z:
                zt = row[3].astype(F32)
                g = g * (zt * sigmoid(zt))
            if masked:
                valid = t0 + k < T
                dt, g = jnp.where(valid, dt, 0.0), jnp.where(valid, g, 0.0)
            if flags.per_doc:
                dh = enter_final(dh, row[5])
            a = exp2(A2 * dt[None, :], ftz=ftz)
            if flags.packed:  # nothing flows back past a document start
                a = jnp.where(row[4] >= 0, 0.0, a)
            dh = a * fma(row[1].astype(F32)[:, None], g[None, :], dh, asm=ftz)
            s = s + dt
        return (dh, s, nxt) if prefetch else (dh, s)

    init = (jnp.zeros(A2.shape, F32), jnp.zeros(A2.shape[1:], F32))
    if prefetch:
        init = init + (load_block(base + (n_iter - 1) * unroll),)
    carry = fori(n_iter, body, init)
    dloc_ref[...] = carry[0]
    dtsum_ref[...] = carry[1]


def _bwd_kernel(*refs, T, checkpoint, chunk, sub, n_total, flags: Flags, butterfly, ftz):
    refs = list(refs)
    u_ref, delta_ref, At_ref, B_ref, C_ref = refs[:5]
    rest = refs[5:]
    D_ref = rest.pop(0) if flags.has_D else None
    z_ref = rest.pop(0) if flags.has_z else None
    bias_ref = rest.pop(0) if flags.has_bias else None
    hs_ref, dout_ref, dlast_ref = rest.pop(0), rest.pop(0), rest.pop(0)
    if n_total > 1:
        dloc_ref, dtsum_ref = rest.pop(0), rest.pop(0)
        keep_ref = rest.pop(0) if flags.packed else None
    starts_ref = rest.pop(0) if flags.packed else None
    ends_ref = rest.pop(0) if flags.per_doc else None
    doc_h0_ref = rest.pop(0) if flags.doc_h0 else None
    du_ref, ddelta_ref = rest.pop(0), rest.pop(0)
    dz_ref = rest.pop(0) if flags.has_z else None
    if butterfly:
        dBC_ref = rest.pop(0)
    else:
        dB_ref, dC_ref = rest.pop(0), rest.pop(0)
    dA_ref = rest.pop(0)
    dD_ref = rest.pop(0) if flags.has_D else None
    dbias_ref = rest.pop(0) if flags.has_bias else None
    dh0_ref = rest.pop(0) if flags.has_h0 else None
    per_chunk = checkpoint // sub

    Np, bd = At_ref.shape
    c = pl.program_id(2)
    base = c * chunk
    row_of = lax.broadcasted_iota(jnp.int32, (Np, bd), 0)

    def tile_in(row):
        """`[Np, bd]` from N row loads (a 2-D load would impose its vectorised layout)."""
        return sum(jnp.where(row_of == n, row(n).astype(F32)[None, :], 0.0) for n in range(Np))

    def tile_out(ref, x):
        for n in range(Np):
            ref[n, :] = jnp.sum(jnp.where(row_of == n, x, 0.0), axis=0)

    A2 = tile_in(lambda n: At_ref[n, :]) * LOG2E
    Dv = D_ref[...].astype(F32) if flags.has_D else None
    bias = bias_ref[...].astype(F32) if flags.has_bias else None
    masked = T % sub != 0  # only the last sub-chunk of the last chunk runs past T

    def row_index(t):
        return jnp.minimum(t, T - 1) if masked else t

    def step_rows(t):
        """u, delta + bias, dt, B_t and (packed) the document starting at step t (dt = 0 and no
        start past T: an identity step)."""
        r = row_index(t)
        dl, dt = discretize(delta_ref[r, :], bias, flags)
        if masked:
            dt = jnp.where(t < T, dt, 0.0)
        start = step_flag(starts_ref, r, t, T, masked) if flags.packed else None
        return u_ref[r, :].astype(F32), dl, dt, B_ref[r, :].astype(F32), start

    def initial(doc):  # a document's initial state, as N row loads
        return tile_in(lambda n: doc_h0_ref[doc, n, :])

    def advance(h, u, dt, B_t, start):
        if flags.packed:
            h = restart(h, start, initial if flags.doc_h0 else None)
        return fma(exp2(A2 * dt[None, :], ftz=ftz), h, B_t[:, None] * (dt * u)[None, :], asm=ftz)

    def saved_state(k):
        return tile_in(lambda n: hs_ref[k, n, :])

    def enter_final(dh, t):
        """At a document's last step its final state's cotangent enters (per-document mode)."""
        end = step_flag(ends_ref, row_index(t), t, T, masked)
        return lax.cond(end >= 0, lambda d: d + tile_in(lambda n: dlast_ref[end, n, :]),
                        lambda d: d, dh)

    def step_back(carry, t, u, dl, dt, start, h, h_prev):
        """Step t backwards from the state after it (h) and, when still in registers, before it."""
        dh, dA, dD, dbias = carry
        r = row_index(t)
        B_t = B_ref[r, :].astype(F32)  # reloaded (L1): keeping sub rows of N live spills
        C_t = C_ref[r, :].astype(F32)
        do = dout_ref[r, :].astype(F32)
        valid = t < T
        if flags.has_z:
            zt = z_ref[r, :].astype(F32)
            sz = sigmoid(zt)
            g = do * (zt * sz)
            y = jnp.sum(h * C_t[:, None], axis=0)
            if flags.has_D:
                y = y + Dv * u
            dz = do * y * sz * (1.0 + zt * (1.0 - sz))
        else:
            g = do
        if masked:
            g = jnp.where(valid, g, 0.0)
        if flags.per_doc:
            dh = enter_final(dh, t)
        dh = fma(C_t[:, None], g[None, :], dh, asm=ftz)
        s_B = jnp.sum(dh * B_t[:, None], axis=0)
        du = dt * s_B
        if flags.has_D:
            du = du + Dv * g
            dD = dD + g * u
        dtu = dt * u
        a = exp2(A2 * dt[None, :], ftz=ftz)  # recomputed: cheaper than keeping sub decays live
        a_dh = a * dh  # the carry into step t - 1
        # q = dh a_t h_{t-1}, with h_{t-1} the state the step read (packed: zero or the
        # document's initial state at a start, which the identity below gives).
        if h_prev is None:  # a_t h_{t-1} = h_t - dt_t u_t B_t (mamba_ssm's identity)
            q = dh * (h - B_t[:, None] * dtu[None, :])
        elif flags.doc_h0:
            q = jnp.where(start >= 0, dh * (h - B_t[:, None] * dtu[None, :]), a_dh * h_prev)
        elif flags.packed:
            q = a_dh * jnp.where(start >= 0, 0.0, h_prev)
        else:
            q = a_dh * h_prev
        dA = fma(q, dt[None, :], dA, asm=ftz)
        ddt = u * s_B + sum_products(q, A2, asm=ftz) * (1.0 / LOG2E)
        if flags.softplus:
            ddt = ddt * sigmoid(dl)
        if masked:
            ddt = jnp.where(valid, ddt, 0.0)
        if flags.has_bias:
            dbias = dbias + ddt

        def store():
            if flags.has_z:
                dz_ref[t, :] = dz.astype(dz_ref.dtype)
            du_ref[t, :] = du.astype(du_ref.dtype)
            ddelta_ref[t, :] = ddt.astype(ddelta_ref.dtype)
            if butterfly:
                dBC_ref[t, :] = _channel_sums(dh, dtu, h, g, asm=ftz)
            else:
                dB_ref[t, :] = jnp.sum(dh * dtu[None, :], axis=1)
                dC_ref[t, :] = jnp.sum(h * g[None, :], axis=1)

        if masked:
            pl.when(valid)(store)
        else:
            store()
        if flags.packed:  # nothing flows back past a document start: it goes to its h0
            if flags.doc_h0:

                @pl.when(start >= 0)
                def _():
                    for n in range(Np):
                        dh0_ref[start, n, :] = jnp.sum(jnp.where(row_of == n, a_dh, 0.0), axis=0)

            a_dh = jnp.where(start >= 0, 0.0, a_dh)
        return a_dh, dA, dD, dbias

    def sub_chunk(carry, h, t0, n):
        """Recompute the n states of steps t0.. from h (registers), then walk them backwards."""
        states, rows = [], []
        for k in range(n):
            u, dl, dt, B_t, start = step_rows(t0 + k)
            h = advance(h, u, dt, B_t, start)
            rows.append((u, dl, dt, start))
            states.append(h)
        for k in reversed(range(n)):
            # the state before step t0 (the sub-chunk's start) is not kept: 16 more registers
            carry = step_back(carry, t0 + k, *rows[k], states[k], states[k - 1] if k else None)
        return carry

    if flags.per_doc:  # the final states' cotangents enter at each document's last step
        dh = jnp.zeros((Np, bd), F32)
    else:
        dh = tile_in(lambda n: dlast_ref[n, :])
    if n_total > 1:
        # The carry entering this chunk from the chunks after it (pass 1 holds chunk k at k - 1).
        def walk(i, dh):
            k = n_total - 2 - i
            decay = exp2(A2 * dtsum_ref[k][None, :], ftz=ftz)
            if flags.packed:
                decay = jnp.where(keep_ref[k] != 0, decay, 0.0)
            return fma(decay, dh, tile_in(lambda n: dloc_ref[k, n, :]), asm=ftz)

        dh = fori(n_total - 1 - c, walk, dh)
    carry = (
        dh,
        jnp.zeros((Np, bd), F32),
        jnp.zeros((bd,), F32) if flags.has_D else None,
        jnp.zeros((bd,), F32) if flags.has_bias else None,
    )
    n_sub = chunk_steps(base, T, chunk, n_total, sub)
    first_interval = lax.div(base, i32(checkpoint))

    def body(j, carry):
        m = n_sub - 1 - j
        interval = first_interval + lax.div(m, i32(per_chunk))
        h = saved_state(interval)
        if per_chunk > 1:  # advance from the checkpoint to the start of this sub-chunk

            def skip(i, h):
                for s in range(sub):
                    u, _, dt, B_t, start = step_rows(interval * checkpoint + i * sub + s)
                    h = advance(h, u, dt, B_t, start)
                return h

            h = fori(lax.rem(m, i32(per_chunk)), skip, h)
        return sub_chunk(carry, h, base + m * sub, sub)

    dh, dA, dD, dbias = fori(n_sub, body, carry)
    tile_out(dA_ref, dA)
    if flags.has_D:
        dD_ref[...] = dD
    if flags.has_bias:
        dbias_ref[...] = dbias
    if flags.row_h0:

        @pl.when(c == 0)
        def _():
            tile_out(dh0_ref, dh)


def backward(u, delta, At, B, C, D, z, bias, h0, states, dout, dlast, starts=None, ends=None, *,
             flags: Flags, block_sizes, interpret: bool):
    """Run the backward kernels on padded inputs (shapes as in `fwd.forward`).

    Args:
      At: `[Np, Dp]`, A transposed.
      h0: the per-document initial states `[num_docs, Np, Dp]` (read at document starts) when
        `flags.doc_h0`, else unused (a row's initial state is in `states`).
      states: the forward's states every `checkpoint` steps, `[Bt, ceil(T / checkpoint), Np,
        Dp]` float32.
      dout: `[Bt, T, Dp]` cotangent of the output; dlast: `[Bt, Np, Dp]` of the final state
        (`[num_docs, Np, Dp]` in per-document mode).
      starts, ends: as in `fwd.forward`.

    Returns:
      `du, ddelta, dz | None, dB [Bt, T, G, Np] f32, dC, dA [Np, Dp] f32, dD | None,
      dbias | None, dh0 [Bt | num_docs, Np, Dp] | None` (dB, dC, dA, dD, dbias summed over
      programs).
    """
    Bt, T, Dp = u.shape
    G, Np = B.shape[2], B.shape[3]
    bs = block_sizes
    bd, chunk, sub = bs.block_d_bwd, bs.chunk_bwd, bs.sub
    per_group = (Dp // G) // bd
    n_blocks = Dp // bd
    nc = n_chunks(T, chunk)
    ns = states.shape[1]
    n_docs = flags.num_docs
    sds = jax.ShapeDtypeStruct
    elems = Bt * T * Dp * Np
    flag = pl.BlockSpec((None, T), lambda b, j, c: (b, 0))

    extra_args, extra_specs = [], []
    if nc > 1:  # pass 1: the reverse carries out of chunks 1 .. nc-1
        bd1 = bs.block_d
        pg1 = (Dp // G) // bd1
        seq1 = pl.BlockSpec((None, T, bd1), lambda b, j, c: (b, 0, j))
        bc1 = pl.BlockSpec((None, T, None, Np),
                           lambda b, j, c: (b, 0, lax.div(j, i32(pg1)), 0))
        args = [delta, At, C]
        specs = [seq1, pl.BlockSpec((Np, bd1), lambda b, j, c: (0, j)), bc1]
        if flags.has_z:
            args.append(z)
            specs.append(seq1)
        if flags.has_bias:
            args.append(bias)
            specs.append(pl.BlockSpec((bd1,), lambda b, j, c: (j,)))
        args.append(dout)
        specs.append(seq1)
        if flags.packed:
            args.append(starts)
            specs.append(flag)
        if flags.per_doc:
            args += [ends, dlast]
            specs += [flag, pl.BlockSpec((n_docs, Np, bd1), lambda b, j, c: (0, 0, j))]
        out_shape = [sds((Bt, nc - 1, Np, Dp), F32), sds((Bt, nc - 1, Dp), F32)]
        extra_args = pl.pallas_call(
            functools.partial(_dstate_kernel, T=T, chunk=chunk, unroll=bs.unroll, flags=flags,
                              prefetch=bs.prefetch, ftz=not interpret),
            grid=(Bt, Dp // bd1, nc - 1),
            in_specs=specs,
            out_specs=[pl.BlockSpec((None, None, Np, bd1), lambda b, j, c: (b, c, 0, j)),
                       pl.BlockSpec((None, None, bd1), lambda b, j, c: (b, c, j))],
            out_shape=out_shape,
            compiler_params=pltriton.CompilerParams(num_warps=bs.num_warps,
                                                    num_stages=bs.num_stages),
            cost_estimate=_cost(args, out_shape, 5 * elems, elems + 3 * Bt * T * Dp),
            interpret=interpret,
            name="selective_scan_bwd_states",
        )(*args)
        extra_specs = [pl.BlockSpec((None, nc - 1, Np, bd), lambda b, j, c: (b, 0, 0, j)),
                       pl.BlockSpec((None, nc - 1, bd), lambda b, j, c: (b, 0, j))]
        if flags.packed:  # chunk k + 1's keep flag beside its carry at k
            extra_args = list(extra_args) + [chunk_keeps(starts, chunk)[:, 1:]]
            extra_specs.append(pl.BlockSpec((None, nc - 1), lambda b, j, c: (b, 0)))

    seq = pl.BlockSpec((None, T, bd), lambda b, j, c: (b, 0, j))
    bc = pl.BlockSpec((None, T, None, Np),
                      lambda b, j, c: (b, 0, lax.div(j, i32(per_group)), 0))
    chan = pl.BlockSpec((bd,), lambda b, j, c: (j,))
    state = pl.BlockSpec((None, Np, bd), lambda b, j, c: (b, 0, j))
    doc_states = pl.BlockSpec((n_docs, Np, bd), lambda b, j, c: (0, 0, j))

    def part_seq(width):  # per-program partial sums over the block's channels, [Bt, nb, T, width]
        return pl.BlockSpec((None, None, T, width), lambda b, j, c: (b, j, 0, 0))

    part_chan = pl.BlockSpec((None, None, bd), lambda b, j, c: (b, c, j))

    args = [u, delta, At, B, C]
    specs = [seq, seq, pl.BlockSpec((Np, bd), lambda b, j, c: (0, j)), bc, bc]
    for present, x, spec in ((flags.has_D, D, chan), (flags.has_z, z, seq),
                             (flags.has_bias, bias, chan)):
        if present:
            args.append(x)
            specs.append(spec)
    args += [states, dout, dlast] + list(extra_args)
    specs += [pl.BlockSpec((None, ns, Np, bd), lambda b, j, c: (b, 0, 0, j)), seq,
              doc_states if flags.per_doc else state]
    specs += extra_specs
    for present, x, spec in ((flags.packed, starts, flag), (flags.per_doc, ends, flag),
                             (flags.doc_h0, h0, doc_states)):
        if present:
            args.append(x)
            specs.append(spec)

    outs = [(sds(u.shape, u.dtype), seq), (sds(delta.shape, delta.dtype), seq)]
    if flags.has_z:
        outs.append((sds(z.shape, z.dtype), seq))
    butterfly = butterfly_sums(Np, bd, bs.num_warps_bwd)
    if butterfly:
        outs.append((sds((Bt, n_blocks, T, 32), F32), part_seq(32)))
    else:
        outs += [(sds((Bt, n_blocks, T, Np), F32), part_seq(Np))] * 2
    outs.append((sds((Bt, nc, Np, Dp), F32),
                 pl.BlockSpec((None, None, Np, bd), lambda b, j, c: (b, c, 0, j))))
    if flags.has_D:
        outs.append((sds((Bt, nc, Dp), F32), part_chan))
    if flags.has_bias:
        outs.append((sds((Bt, nc, Dp), F32), part_chan))
    if flags.row_h0:
        outs.append((sds((Bt, Np, Dp), F32), state))
    elif flags.doc_h0:  # written at each document's start
        outs.append((sds((n_docs, Np, Dp), F32), doc_states))

    kernel = functools.partial(
        _bwd_kernel, T=T, checkpoint=bs.checkpoint, chunk=chunk, sub=sub, n_total=nc,
        flags=flags, butterfly=butterfly, ftz=not interpret,
    )
    res = pl.pallas_call(
        kernel,
        grid=(Bt, n_blocks, nc),
        in_specs=specs,
        out_specs=[spec for _, spec in outs],
        out_shape=[s for s, _ in outs],
        compiler_params=pltriton.CompilerParams(
            num_warps=bs.num_warps_bwd, num_stages=bs.num_stages_bwd),
        cost_estimate=_cost(args, [s for s, _ in outs], 26 * elems + 30 * Bt * T * Dp,
                            2 * elems + 6 * Bt * T * Dp),
        interpret=interpret,
        name="selective_scan_bwd",
    )(*args)
    res = list(res)
    du, ddelta = res.pop(0), res.pop(0)
    dz = res.pop(0) if flags.has_z else None
    if butterfly:  # [.., T, 32]: lanes (B or C, copy, n) -> dB, dC (first copy)
        part = res.pop(0).reshape(Bt, n_blocks, T, 2, 16 // Np, Np)
        dB_part, dC_part = part[..., 0, 0, :], part[..., 1, 0, :]
    else:
        dB_part, dC_part = res.pop(0), res.pop(0)
    dA_part = res.pop(0)
    dD = res.pop(0).sum((0, 1)) if flags.has_D else None
    dbias = res.pop(0).sum((0, 1)) if flags.has_bias else None
    dh0 = res.pop(0) if flags.has_h0 else None
    if flags.doc_h0:  # a document without steps (possible only in unchecked input) gets zero
        dh0 = jnp.where(documents_present(starts, n_docs)[:, None, None], dh0, 0.0)

    def group_sum(part):  # [Bt, n_blocks, T, Np] -> [Bt, T, G, Np]
        part = part.reshape(Bt, G, per_group, T, Np).sum(2)
        return jnp.transpose(part, (0, 2, 1, 3))

    return (du, ddelta, dz, group_sum(dB_part), group_sum(dC_part), dA_part.sum((0, 1)), dD,
            dbias, dh0)
