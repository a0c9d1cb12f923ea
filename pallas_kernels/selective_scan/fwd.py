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
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels._common import exp2, fma

LOG2E = 1.4426950408889634
F32 = jnp.float32


@dataclasses.dataclass(frozen=True, slots=True)
class Flags:
    """Which optional inputs are present (static)."""

    has_D: bool
    has_z: bool
    has_bias: bool
    has_h0: bool
    softplus: bool


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


def chunk_steps(base, T: int, chunk: int, n_total: int, step: int):
    """Loop iterations of `step` steps covering the chunk starting at `base` (static if one)."""
    if n_total == 1:
        return -(-min(chunk, T) // step)
    return (jnp.minimum(chunk, T - base) + (step - 1)) // step


def _state_kernel(*refs, chunk, unroll, flags: Flags, prefetch, ftz):
    """Pass 1: end state of chunk c from a zero state, and the chunk's sum of dt."""
    refs = list(refs)
    u_ref, delta_ref, At_ref, B_ref = refs[:4]
    rest = refs[4:]
    bias_ref = rest.pop(0) if flags.has_bias else None
    hloc_ref, dtsum_ref = rest
    base = pl.program_id(2) * chunk  # every chunk this kernel sees is full
    A2 = At_ref[...].astype(F32) * LOG2E  # exp(dt A) = exp2(dt A log2 e)
    bias = bias_ref[...].astype(F32) if flags.has_bias else None

    def load_block(t0):
        return tuple((u_ref[t, :], delta_ref[t, :], B_ref[t, :])
                     for t in (t0 + k for k in range(unroll)))

    n_iter = chunk // unroll

    def body(i, carry):
        h, s, rows = carry if prefetch else (*carry, None)
        if prefetch:
            nxt = load_block(base + jnp.minimum(i + 1, n_iter - 1) * unroll)
        else:
            rows = load_block(base + i * unroll)
        for u, dl, B_t in rows:
            _, dt = discretize(dl, bias, flags)
            h = fma(exp2(A2 * dt[None, :], ftz=ftz), h,
                    B_t.astype(F32)[:, None] * (dt * u.astype(F32))[None, :], asm=ftz)
            s = s + dt
        return (h, s, nxt) if prefetch else (h, s)

    init = (jnp.zeros(A2.shape, F32), jnp.zeros(A2.shape[1:], F32))
    if prefetch:
        init = init + (load_block(base),)
    carry = lax.fori_loop(0, n_iter, body, init)
    hloc_ref[...] = carry[0]
    dtsum_ref[...] = carry[1]


def _carry_kernel(*refs, n_total, unroll, has_h0, ftz):
    """The state entering every chunk: `h_in[0] = h0`, `h_in[k+1] = exp(A S_k) h_in[k] + h_loc[k]`.

    One program per (batch, channel block) walks the NC chunks in order; the loads of `h_loc[k]`
    and `S_k` do not depend on the carry, so the `unroll` of them in one iteration are in flight
    together and the walk is a chain of `n_total` fused multiply-adds per state element.
    """
    At_ref, *rest = refs
    h0_ref = rest.pop(0) if has_h0 else None
    hloc_ref, dtsum_ref, hin_ref = rest
    A2 = At_ref[...].astype(F32) * LOG2E
    h = h0_ref[...].astype(F32) if has_h0 else jnp.zeros(A2.shape, F32)
    hin_ref[0] = h

    def step(k, h):
        h = fma(exp2(A2 * dtsum_ref[k][None, :], ftz=ftz), h, hloc_ref[k], asm=ftz)
        hin_ref[k + 1] = h
        return h

    def body(i, h):
        for k in range(unroll):
            h = step(i * unroll + k, h)
        return h

    n_walk = n_total - 1
    h = lax.fori_loop(0, n_walk // unroll, body, h)
    for k in range(n_walk - n_walk % unroll, n_walk):
        h = step(k, h)


def _out_kernel(*refs, T, chunk, unroll, checkpoint, n_total, flags: Flags, save, prefetch,
                ftz):
    """Pass 2: chunk c's outputs (and checkpoints) from the state entering it (`_carry_kernel`,
    or h0 / zero when there is one chunk)."""
    refs = list(refs)
    u_ref, delta_ref, At_ref, B_ref, C_ref = refs[:5]
    rest = refs[5:]
    D_ref = rest.pop(0) if flags.has_D else None
    z_ref = rest.pop(0) if flags.has_z else None
    bias_ref = rest.pop(0) if flags.has_bias else None
    h0_ref = rest.pop(0) if flags.has_h0 and n_total == 1 else None
    hin_ref = rest.pop(0) if n_total > 1 else None
    out_ref, last_ref = rest.pop(0), rest.pop(0)
    states_ref = rest.pop(0) if save else None

    c = pl.program_id(2)
    base = c * chunk
    A2 = At_ref[...].astype(F32) * LOG2E
    Dv = D_ref[...].astype(F32) if flags.has_D else None
    bias = bias_ref[...].astype(F32) if flags.has_bias else None
    if n_total > 1:
        h = hin_ref[...]  # the state entering chunk c (`_carry_kernel`)
    elif flags.has_h0:
        h = h0_ref[...].astype(F32)
    else:
        h = jnp.zeros(A2.shape, F32)

    masked = T % unroll != 0  # only the last iteration of the last chunk runs past T

    def load_block(t0):
        rows = []
        for k in range(unroll):
            t = jnp.minimum(t0 + k, T - 1) if masked else t0 + k
            row = (u_ref[t, :], delta_ref[t, :], B_ref[t, :], C_ref[t, :])
            rows.append(row + ((z_ref[t, :],) if flags.has_z else ()))
        return tuple(rows)

    def step(h, raw, t):
        u = raw[0].astype(F32)
        _, dt = discretize(raw[1], bias, flags)
        if masked:
            dt = jnp.where(t < T, dt, 0.0)
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
        return h

    n_iter = chunk_steps(base, T, chunk, n_total, unroll)

    def body(i, carry):
        h, rows = carry if prefetch else (carry, None)
        t0 = base + i * unroll
        if save:

            @pl.when(lax.rem(t0, checkpoint) == 0)
            def _():
                states_ref[lax.div(t0, checkpoint)] = h

        if prefetch:
            nxt = load_block(base + jnp.minimum(i + 1, n_iter - 1) * unroll)
        else:
            rows = load_block(t0)
        for k in range(unroll):
            h = step(h, rows[k], t0 + k)
        return (h, nxt) if prefetch else h

    h = lax.fori_loop(0, n_iter, body, (h, load_block(base)) if prefetch else h)
    if prefetch:
        h = h[0]

    @pl.when(c == n_total - 1)
    def _():
        last_ref[...] = h


def _cost(args, out_shape, flops, transcendentals):
    io = sum(x.size * x.dtype.itemsize for x in args) + sum(
        s.size * s.dtype.itemsize for s in out_shape)
    return pl.CostEstimate(flops=int(flops), transcendentals=int(transcendentals),
                           bytes_accessed=int(io))


def forward(u, delta, At, B, C, D, z, bias, h0, *, flags: Flags, block_sizes, save: bool,
            interpret: bool):
    """Run the forward kernels on padded inputs.

    Args:
      u, delta, z: `[Bt, T, Dp]`; At `[Np, Dp]` (A transposed); B, C `[Bt, T, G, Np]`;
        D, bias `[Dp]`; h0 `[Bt, Np, Dp]` float32 (None entries for absent options, matching
        `flags`).
      save: also return the states every `checkpoint` steps, `[Bt, ceil(T / checkpoint), Np,
        Dp]` float32 (state before step k * checkpoint).

    Returns:
      `(out [Bt, T, Dp] in u.dtype, last [Bt, Np, Dp] float32, states or None)`.
    """
    Bt, T, Dp = u.shape
    G, Np = B.shape[2], B.shape[3]
    bs = block_sizes
    bd, chunk, unroll = bs.block_d, bs.chunk, bs.unroll
    per_group = (Dp // G) // bd  # channel blocks per group
    nc = n_chunks(T, chunk)
    params = pltriton.CompilerParams(num_warps=bs.num_warps, num_stages=bs.num_stages)
    elems = Bt * T * Dp * Np

    seq = pl.BlockSpec((None, T, bd), lambda b, j, c: (b, 0, j))
    bc = pl.BlockSpec((None, T, None, Np), lambda b, j, c: (b, 0, lax.div(j, per_group), 0))
    chan = pl.BlockSpec((bd,), lambda b, j, c: (j,))
    tile = pl.BlockSpec((Np, bd), lambda b, j, c: (0, j))
    state = pl.BlockSpec((None, Np, bd), lambda b, j, c: (b, 0, j))
    sds = jax.ShapeDtypeStruct

    hin = None
    if nc > 1:  # pass 1: the end states of chunks 0 .. nc-2
        args = [u, delta, At, B] + ([bias] if flags.has_bias else [])
        specs = [seq, seq, tile, bc] + ([chan] if flags.has_bias else [])
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
        args = [At] + ([h0] if flags.has_h0 else []) + [hloc, dtsum]
        carry_state = pl.BlockSpec((None, Np, bdc), lambda b, j: (b, 0, j))
        specs = ([pl.BlockSpec((Np, bdc), lambda b, j: (0, j))]
                 + ([carry_state] if flags.has_h0 else [])
                 + [pl.BlockSpec((None, nc - 1, Np, bdc), lambda b, j: (b, 0, 0, j)),
                    pl.BlockSpec((None, nc - 1, bdc), lambda b, j: (b, 0, j))])
        out_shape = sds((Bt, nc, Np, Dp), F32)
        hin = pl.pallas_call(
            functools.partial(_carry_kernel, n_total=nc, unroll=8, has_h0=flags.has_h0,
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
                             (flags.has_h0 and nc == 1, h0, state),
                             (nc > 1, hin, pl.BlockSpec((None, None, Np, bd),
                                                        lambda b, j, c: (b, c, 0, j)))):
        if present:
            args.append(x)
            specs.append(spec)

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
    return outs[0], outs[1], (outs[2] if save else None)
