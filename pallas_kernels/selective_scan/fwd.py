"""Forward selective-scan kernels (Pallas-Triton), parallel over time chunks.

Why this shape (H100, Mamba-370M layer B=4, T=4096, D=2048, N=16, bf16 activations):
- Round one ran one program per (batch, channel block) over all T steps: 512 programs of 2
  warps, ~2 warps per scheduler to hide the latency of a 4096-step chain: 1.14 ms, ~3x its
  instruction-issue bound. Its `[block_d, N]` tile put 4 threads on each channel, so every
  per-channel op (softplus, silu, loads) ran 4 times and the readout over N needed shuffles;
  the output row (a slice of that layout) went through shared memory with 2 barriers per step.
- Time parallelism (Mamba-2's state passing): time is cut into chunks of `chunk` steps.
  Pass 1 (`_state_kernel`, grid (B, D/block_d, NC-1)) scans each chunk but the last from a zero
  state and writes only its end state `h_loc [B, NC-1, N, D]` and its sum of dt `[B, NC-1, D]`
  (the chunk's decay is exp(A sum dt): one exp per (d, n), not per step). The carry
  (`_carry_kernel`, grid (B, D/block_d_carry)) walks the chunks in order, `h_in[k+1] =
  exp(A S_k) h_in[k] + h_loc[k]`, and writes the state entering every chunk `[B, NC, N, D]`.
  Pass 2 (`_out_kernel`, grid (B, D/block_d, NC)) reruns its chunk from that state and writes
  y, the checkpoints and (last chunk) the final state. Twice the exps of one pass, NC times the
  programs. (Until 2026-12 each pass-2 program walked the chunks before its own: ~NC/2 tile steps
  per program, repeated by every program.)
- The state tile is `[N, block_d]` (channels along the fast axis). With `block_d = 4 * 32 *
  num_warps` Triton's layout gives each thread 4 channels x all N: per-channel work runs once,
  the readout over N is in-thread, the rows of u/delta/z/y (4 channels per thread) and the
  broadcast B/C rows need no layout conversion (checked offline on the compiled SASS: no
  barrier or shuffle in the loop).
- Cost: exps 2 x B*T*D*N = 1.07G exp2 at 16/clk/SM = 0.29 ms, plus softplus and silu once
  per (t, d) (~1.25 MUFU ops per state element in all); pass 2 issues ~10 instructions per
  state element (ex2, 2 mul, 2 fma, loads, converts), pass 1 ~6 -> ~0.3 ms issue; bytes: pass 1
  reads u, delta (134 MB), pass 2 reads u, delta, z and writes y (268 MB) -> 0.13 ms; with
  `save` (training) the checkpoints every 8 steps add 268 MB (0.09 ms). 255 registers, no
  spills at unroll 4 without prefetch (ptxas offline): 4 programs of 2 warps per SM, each with
  64 independent state elements per thread. Programs: B*D/block_d*NC = 4*8*16 = 512 (chunk
  256, the default at this shape). Expected ~0.4-0.5 ms (mamba_ssm: 0.61 ms).
- Measured (Nsight Compute, H100, 2026-11-25, chunk 64): pass 1 0.39 ms, pass 2 0.68 ms (0.73
  with checkpoints), at ~2x the instructions counted above (libdevice's exp2f wrapped each
  MUFU.EX2 in subnormal handling: now `exp2(ftz=True)`; `a * h + b` is FMUL + FADD, not
  contracted) and ~2 warps per scheduler (registers), half the cycles with none eligible.
  With ftz the forward takes 1.02 ms (benchmarks/RESULTS.md, round 3). The multiply-adds are
  now `fma.rn.f32` (`_common.fma`, inline PTX). H200, 2026-12-03, calls back to back as
  `do_bench` runs mamba_ssm: 0.72 ms (mamba_ssm 0.60 ms, same run). The chunk comes from the
  shape (`BlockSizes.get_default`): at every T the one that leaves ~512 pass-2 programs (one
  wave) won; longer chunks leave SMs idle, shorter ones carry more states (RESULTS.md).

Layout: u, delta, z, y `[B, T, D]`; B, C `[B, T, G, N]` (the program's channel block lies in one
group); `At` is A transposed, `[N, D]`; D, delta_bias `[D]`; states `[B, N, D]` (transposed).
All dims the kernels see are padded by `api.py`: D to a multiple of the blocks within each
group, N to a power of two. Steps past T in the last chunk are identities (dt = 0, no store).
Index arithmetic is int32 (grid ids, loop counters, constants), also under `jax_enable_x64`.

Packed documents (`Flags.resets`, `Flags.num_docs`; absent, the kernels are the dense ones):
a document start at step t replaces the state before the step, `h_{t-1}`, by zero (resets) or
by the document's initial state (per-document mode, `h0 [num_docs, N, D]`, or zero without
one). Every program loads one int32 per step, `starts[t]` (the document starting at t, else
-1), and restarts there (`restart`: a select, or for an initial state a tile load under a
branch taken only at starts). So pass 1's end state of a chunk already holds everything after
the chunk's last start (with that document's decayed initial state); a chunk that contains a
start passes nothing through it: the carry multiplies its decay by `keep` (0 for such chunks,
`chunk_keeps`). In per-document mode pass 2 also loads `ends[t]` (the document ending at t, else
-1) and writes the state after that step as the document's final state `[num_docs, N, D]`.
The checkpoints hold the state before a step, before any restart (the backward restarts too).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import exp2, fma

LOG2E = 1.4426950408889634
F32 = jnp.float32


@dataclasses.dataclass(frozen=True, slots=True)
class Flags:
    """Which optional inputs are present and how documents are packed (static).

    resets: documents restart from a zero state (`starts [B, T]`: 0 where one starts, else -1).
    num_docs: per-document mode when > 0 (B = 1; `starts`, `ends [1, T]`: the document that
      starts / ends at t, else -1); `has_h0` then says that the initial state is one per
      document, `[num_docs, N, D]`, and the final state is one per document.
    """

    has_D: bool
    has_z: bool
    has_bias: bool
    has_h0: bool
    softplus: bool
    resets: bool = False
    num_docs: int = 0

    @property
    def packed(self) -> bool:
        return self.resets or self.num_docs > 0

    @property
    def per_doc(self) -> bool:
        return self.num_docs > 0

    @property
    def row_h0(self) -> bool:
        """An initial state per batch row (fed to step 0)."""
        return self.has_h0 and not self.per_doc

    @property
    def doc_h0(self) -> bool:
        """An initial state per document (fed at each document's start)."""
        return self.has_h0 and self.per_doc


def softplus(x):
    """`log(1 + exp(x))` without overflow (jax.nn.softplus)."""
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def sigmoid(x):
    return 1.0 / (1.0 + jnp.exp(-x))


def discretize(delta_row, bias, flags: Flags):
    """Raw delta row -> (delta + bias, dt) in float32."""
    dl = delta_row.astype(F32)
    if flags.has_bias:
        dl = dl + bias
    return dl, (softplus(dl) if flags.softplus else dl)


def n_chunks(T: int, chunk: int) -> int:
    return -(-T // chunk)


def i32(x):
    """A static int as an int32 scalar (Python ints become int64 under `jax_enable_x64`)."""
    return np.int32(x)


def fori(n, body, init):
    """`lax.fori_loop(0, n, body, init)` with an int32 counter, also under `jax_enable_x64`
    (a static-length `fori_loop` counts in a Python int: int64 there). `n`: int or int32."""
    if not isinstance(n, int):
        return lax.fori_loop(i32(0), n, body, init)

    def step(carry, _):
        i, x = carry
        return (i + 1, body(i, x)), None

    (_, out), _ = lax.scan(step, (i32(0), init), None, length=n)
    return out


def chunk_keeps(starts, chunk: int):
    """`[B, NC]` int32: 1 where chunk c (of `chunk` steps) holds no document start, so that the
    state (or the backward's carry) passes through it, 0 where it does not."""
    Bt, T = starts.shape
    nc = n_chunks(T, chunk)
    start = jnp.pad(starts >= 0, ((0, 0), (0, nc * chunk - T)))
    return jnp.logical_not(start.reshape(Bt, nc, chunk).any(-1)).astype(jnp.int32)


def restart(h, doc, initial=None):
    """The state entering a step: `h`, or at a document start (`doc >= 0`) zero or, with
    per-document initial states, `initial(doc)` (a float32 tile like h, loaded only there)."""
    if initial is None:
        return jnp.where(doc >= 0, 0.0, h)
    return lax.cond(doc >= 0, lambda h: initial(doc), lambda h: h, h)


def step_flag(ref, r, t, T: int, masked: bool):
    """`ref[r]` (a document index or -1) at step t; -1 past T (a masked identity step)."""
    flag = ref[r]
    return jnp.where(t < T, flag, i32(-1)) if masked else flag


def chunk_steps(base, T: int, chunk: int, n_total: int, step: int):
    """Loop iterations of `step` steps covering the chunk starting at `base` (static if one)."""
    if n_total == 1:
        return -(-min(chunk, T) // step)
    return (jnp.minimum(chunk, T - base) + (step - 1)) // i32(step)


def _state_kernel(*refs, chunk, unroll, flags: Flags, prefetch, ftz):
    """Pass 1: end state of chunk c from a zero state, and the chunk's sum of dt."""
    refs = list(refs)
    u_ref, delta_ref, At_ref, B_ref = refs[:4]
    rest = refs[4:]
    bias_ref = rest.pop(0) if flags.has_bias else None
    starts_ref = rest.pop(0) if flags.packed else None
    h0_ref = rest.pop(0) if flags.doc_h0 else None
    hloc_ref, dtsum_ref = rest
    initial = (lambda doc: h0_ref[doc].astype(F32)) if flags.doc_h0 else None
    base = pl.program_id(2) * chunk  # every chunk this kernel sees is full
    A2 = At_ref[...].astype(F32) * LOG2E  # exp(dt A) = exp2(dt A log2 e)
    bias = bias_ref[...].astype(F32) if flags.has_bias else None

    def load_block(t0):
        return tuple((u_ref[t, :], delta_ref[t, :], B_ref[t, :])
                     + ((starts_ref[t],) if flags.packed else ())
                     for t in (t0 + k for k in range(unroll)))

    n_iter = chunk // unroll

    def body(i, carry):
        h, s, rows = carry if prefetch else (*carry, None)
        if prefetch:
            nxt = load_block(base + jnp.minimum(i + 1, n_iter - 1) * unroll)
        else:
            rows = load_block(base + i * unroll)
        for u, dl, B_t, *start in rows:
            _, dt = discretize(dl, bias, flags)
            if flags.packed:
                h = restart(h, start[0], initial)
            h = fma(exp2(A2 * dt[None, :], ftz=ftz), h,
                    B_t.astype(F32)[:, None] * (dt * u.astype(F32))[None, :], asm=ftz)
            s = s + dt
        return (h, s, nxt) if prefetch else (h, s)

    init = (jnp.zeros(A2.shape, F32), jnp.zeros(A2.shape[1:], F32))
    if prefetch:
        init = init + (load_block(base),)
    carry = fori(n_iter, body, init)
    hloc_ref[...] = carry[0]
    dtsum_ref[...] = carry[1]


def _carry_kernel(*refs, n_total, unroll, flags: Flags, ftz):
    """The state entering every chunk: `h_in[0] = h0`, `h_in[k+1] = exp(A S_k) h_in[k] + h_loc[k]`
    (packed: `keep_k exp(A S_k) h_in[k] + h_loc[k]`, nothing passing through a chunk that holds a
    document start).

    One program per (batch, channel block) walks the NC chunks in order; the loads of `h_loc[k]`
    and `S_k` do not depend on the carry, so the `unroll` of them in one iteration are in flight
    together and the walk is a chain of `n_total` fused multiply-adds per state element.
    """
    At_ref, *rest = refs
    h0_ref = rest.pop(0) if flags.row_h0 else None
    hloc_ref, dtsum_ref = rest.pop(0), rest.pop(0)
    keep_ref = rest.pop(0) if flags.packed else None
    (hin_ref,) = rest
    A2 = At_ref[...].astype(F32) * LOG2E
    h = h0_ref[...].astype(F32) if flags.row_h0 else jnp.zeros(A2.shape, F32)
    hin_ref[0] = h

    def step(k, h):
        decay = exp2(A2 * dtsum_ref[k][None, :], ftz=ftz)
        if flags.packed:
            decay = jnp.where(keep_ref[k] != 0, decay, 0.0)
        h = fma(decay, h, hloc_ref[k], asm=ftz)
        hin_ref[k + 1] = h
        return h

    def body(i, h):
        for k in range(unroll):
            h = step(i * unroll + k, h)
        return h

    n_walk = n_total - 1
    h = fori(n_walk // unroll, body, h)
    for k in range(n_walk - n_walk % unroll, n_walk):
        h = step(k, h)


def _out_kernel(*refs, T, chunk, unroll, checkpoint, n_total, flags: Flags, save, prefetch,
                ftz):
    """Pass 2: chunk c's outputs (and checkpoints) from the state entering it (`_carry_kernel`,
    or h0 / zero when there is one chunk); the final state (per document: after its last step)."""
    refs = list(refs)
    u_ref, delta_ref, At_ref, B_ref, C_ref = refs[:5]
    rest = refs[5:]
    D_ref = rest.pop(0) if flags.has_D else None
    z_ref = rest.pop(0) if flags.has_z else None
    bias_ref = rest.pop(0) if flags.has_bias else None
    h0_ref = rest.pop(0) if flags.row_h0 and n_total == 1 else None
    hin_ref = rest.pop(0) if n_total > 1 else None
    starts_ref = rest.pop(0) if flags.packed else None
    ends_ref = rest.pop(0) if flags.per_doc else None
    doc_h0_ref = rest.pop(0) if flags.doc_h0 else None
    out_ref, last_ref = rest.pop(0), rest.pop(0)
    initial = (lambda doc: doc_h0_ref[doc].astype(F32)) if flags.doc_h0 else None
    states_ref = rest.pop(0) if save else None

    c = pl.program_id(2)
    base = c * chunk
    A2 = At_ref[...].astype(F32) * LOG2E
    Dv = D_ref[...].astype(F32) if flags.has_D else None
    bias = bias_ref[...].astype(F32) if flags.has_bias else None
    if n_total > 1:
        h = hin_ref[...]  # the state entering chunk c (`_carry_kernel`)
    elif flags.row_h0:
        h = h0_ref[...].astype(F32)
    else:
        h = jnp.zeros(A2.shape, F32)

    masked = T % unroll != 0  # only the last iteration of the last chunk runs past T

    def load_block(t0):
        rows = []
        for k in range(unroll):
            t = jnp.minimum(t0 + k, T - 1) if masked else t0 + k
            row = (u_ref[t, :], delta_ref[t, :], B_ref[t, :], C_ref[t, :])
            row += (z_ref[t, :],) if flags.has_z else (None,)
            row += (step_flag(starts_ref, t, t0 + k, T, masked),) if flags.packed else (None,)
            row += (step_flag(ends_ref, t, t0 + k, T, masked),) if flags.per_doc else (None,)
            rows.append(row)
        return tuple(rows)

    def step(h, raw, t):
        u = raw[0].astype(F32)
        _, dt = discretize(raw[1], bias, flags)
        if masked:
            dt = jnp.where(t < T, dt, 0.0)
        if flags.packed:
            h = restart(h, raw[5], initial)
        h = fma(exp2(A2 * dt[None, :], ftz=ftz), h, raw[2].astype(F32)[:, None] * (dt * u)[None, :],
                asm=ftz)
        y = jnp.sum(h * raw[3].astype(F32)[:, None], axis=0)
        if flags.has_D:
            y = y + Dv * u
        if flags.has_z:
            zt = raw[4].astype(F32)
            y = y * (zt * sigmoid(zt))

        def store():
            out_ref[t, :] = y.astype(out_ref.dtype)

        if masked:
            pl.when(t < T)(store)
        else:
            store()
        if flags.per_doc:
            end = raw[6]

            @pl.when(end >= 0)
            def _():
                last_ref[end] = h

        return h

    n_iter = chunk_steps(base, T, chunk, n_total, unroll)

    def body(i, carry):
        h, rows = carry if prefetch else (carry, None)
        t0 = base + i * unroll
        if save:

            @pl.when(lax.rem(t0, i32(checkpoint)) == 0)
            def _():
                states_ref[lax.div(t0, i32(checkpoint))] = h

        if prefetch:
            nxt = load_block(base + jnp.minimum(i + 1, n_iter - 1) * unroll)
        else:
            rows = load_block(t0)
        for k in range(unroll):
            h = step(h, rows[k], t0 + k)
        return (h, nxt) if prefetch else h

    h = fori(n_iter, body, (h, load_block(base)) if prefetch else h)
    if prefetch:
        h = h[0]

    if not flags.per_doc:

        @pl.when(c == n_total - 1)
        def _():
            last_ref[...] = h


def _cost(args, out_shape, flops, transcendentals):
    io = sum(x.size * x.dtype.itemsize for x in args) + sum(
        s.size * s.dtype.itemsize for s in out_shape)
    return pl.CostEstimate(flops=int(flops), transcendentals=int(transcendentals),
                           bytes_accessed=int(io))


def forward(u, delta, At, B, C, D, z, bias, h0, starts=None, ends=None, *, flags: Flags,
            block_sizes, save: bool, interpret: bool):
    """Run the forward kernels on padded inputs.

    Args:
      u, delta, z: `[Bt, T, Dp]`; At `[Np, Dp]` (A transposed); B, C `[Bt, T, G, Np]`;
        D, bias `[Dp]`; h0 `[Bt, Np, Dp]` float32, `[num_docs, Np, Dp]` in per-document mode
        (None entries for absent options, matching `flags`).
      starts: `[Bt, T]` int32 when packed: the document starting at t (0 with resets), else -1.
      ends: `[1, T]` int32 in per-document mode: the document ending at t, else -1.
      save: also return the states every `checkpoint` steps, `[Bt, ceil(T / checkpoint), Np,
        Dp]` float32 (state before step k * checkpoint).

    Returns:
      `(out [Bt, T, Dp] in u.dtype, last [Bt | num_docs, Np, Dp] float32, states or None)`.
    """
    Bt, T, Dp = u.shape
    G, Np = B.shape[2], B.shape[3]
    bs = block_sizes
    bd, chunk, unroll = bs.block_d, bs.chunk, bs.unroll
    per_group = (Dp // G) // bd  # channel blocks per group
    nc = n_chunks(T, chunk)
    params = pltriton.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages)
    elems = Bt * T * Dp * Np
    n_docs = flags.num_docs

    seq = pl.BlockSpec((None, T, bd), lambda b, j, c: (b, 0, j))
    bc = pl.BlockSpec((None, T, None, Np),
                      lambda b, j, c: (b, 0, lax.div(j, i32(per_group)), 0))
    chan = pl.BlockSpec((bd,), lambda b, j, c: (j,))
    tile = pl.BlockSpec((Np, bd), lambda b, j, c: (0, j))
    state = pl.BlockSpec((None, Np, bd), lambda b, j, c: (b, 0, j))
    flag = pl.BlockSpec((None, T), lambda b, j, c: (b, 0))
    doc_states = pl.BlockSpec((n_docs, Np, bd), lambda b, j, c: (0, 0, j))
    sds = jax.ShapeDtypeStruct

    hin = None
    if nc > 1:  # pass 1: the end states of chunks 0 .. nc-2
        args, specs = [u, delta, At, B], [seq, seq, tile, bc]
        for present, x, spec in ((flags.has_bias, bias, chan), (flags.packed, starts, flag),
                                 (flags.doc_h0, h0, doc_states)):
            if present:
                args.append(x)
                specs.append(spec)
        out_shape = [sds((Bt, nc - 1, Np, Dp), F32), sds((Bt, nc - 1, Dp), F32)]
        hloc, dtsum = pl.pallas_call(
            functools.partial(_state_kernel, chunk=chunk, unroll=unroll, flags=flags,
                              prefetch=bs.prefetch, ftz=not interpret),
            grid=(Bt, Dp // bd, nc - 1),
            in_specs=specs,
            out_specs=[pl.BlockSpec((None, None, Np, bd), lambda b, j, c: (b, c, 0, j)),
                       pl.BlockSpec((None, None, bd), lambda b, j, c: (b, c, j))],
            out_shape=out_shape,
            compiler_params=params,
            cost_estimate=_cost(args, out_shape, 5 * elems, elems + 2 * Bt * T * Dp),
            interpret=interpret,
            name="selective_scan_fwd_states",
        )(*args)
        # the state entering each chunk, from h0 and the chunks' end states
        bdc = min(bs.block_d_carry, bd)
        args = [At] + ([h0] if flags.row_h0 else []) + [hloc, dtsum]
        carry_state = pl.BlockSpec((None, Np, bdc), lambda b, j: (b, 0, j))
        specs = ([pl.BlockSpec((Np, bdc), lambda b, j: (0, j))]
                 + ([carry_state] if flags.row_h0 else [])
                 + [pl.BlockSpec((None, nc - 1, Np, bdc), lambda b, j: (b, 0, 0, j)),
                    pl.BlockSpec((None, nc - 1, bdc), lambda b, j: (b, 0, j))])
        if flags.packed:
            args.append(chunk_keeps(starts, chunk)[:, :nc - 1])
            specs.append(pl.BlockSpec((None, nc - 1), lambda b, j: (b, 0)))
        out_shape = sds((Bt, nc, Np, Dp), F32)
        hin = pl.pallas_call(
            functools.partial(_carry_kernel, n_total=nc, unroll=8, flags=flags,
                              ftz=not interpret),
            grid=(Bt, Dp // bdc),
            in_specs=specs,
            out_specs=pl.BlockSpec((None, nc, Np, bdc), lambda b, j: (b, 0, 0, j)),
            out_shape=out_shape,
            compiler_params=pltriton.CompilerParams(num_warps=max(1, bdc // 128),
                                                    num_stages=1),
            cost_estimate=_cost(args, [out_shape], 2 * Bt * nc * Np * Dp, Bt * nc * Np * Dp),
            interpret=interpret,
            name="selective_scan_fwd_carry",
        )(*args)

    args = [u, delta, At, B, C]
    specs = [seq, seq, tile, bc, bc]
    for present, x, spec in ((flags.has_D, D, chan), (flags.has_z, z, seq),
                             (flags.has_bias, bias, chan),
                             (flags.row_h0 and nc == 1, h0, state),
                             (nc > 1, hin, pl.BlockSpec((None, None, Np, bd),
                                                        lambda b, j, c: (b, c, 0, j))),
                             (flags.packed, starts, flag), (flags.per_doc, ends, flag),
                             (flags.doc_h0, h0, doc_states)):
        if present:
            args.append(x)
            specs.append(spec)

    if flags.per_doc:  # written at each document's last step
        out_shape = [sds(u.shape, u.dtype), sds((n_docs, Np, Dp), F32)]
        out_specs = [seq, doc_states]
    else:
        out_shape = [sds(u.shape, u.dtype), sds((Bt, Np, Dp), F32)]
        out_specs = [seq, state]
    ns = n_chunks(T, bs.checkpoint)
    if save:
        out_shape.append(sds((Bt, ns, Np, Dp), F32))
        out_specs.append(pl.BlockSpec((None, ns, Np, bd), lambda b, j, c: (b, 0, 0, j)))

    kernel = functools.partial(
        _out_kernel, T=T, chunk=chunk, unroll=unroll, checkpoint=bs.checkpoint, n_total=nc,
        flags=flags, save=save, prefetch=bs.prefetch, ftz=not interpret,
    )
    outs = pl.pallas_call(
        kernel,
        grid=(Bt, Dp // bd, nc),
        in_specs=specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=params,
        cost_estimate=_cost(args, out_shape, 7 * elems + 12 * Bt * T * Dp,
                            elems + 3 * Bt * T * Dp),
        interpret=interpret,
        name="selective_scan_fwd",
    )(*args)
    last = outs[1]
    if flags.per_doc:  # a document without steps (possible only in unchecked input) keeps zero
        last = jnp.where(documents_present(starts, n_docs)[:, None, None], last, 0.0)
    return outs[0], last, (outs[2] if save else None)


def documents_present(starts, num_docs: int):
    """`[num_docs]` bool: which documents start somewhere in `starts [1, T]`."""
    index = jnp.where(starts[0] >= 0, starts[0], num_docs)
    return jnp.zeros((num_docs,), bool).at[index].set(True, mode="drop")
