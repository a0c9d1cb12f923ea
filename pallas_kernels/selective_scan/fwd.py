"""Forward selective-scan kernel (Pallas-Triton): one program per (batch, channel block).

Why this shape (H100, Mamba-370M layer B=4, T=4096, D=2048, N=16, bf16 activations):
- Bytes: u, delta, z read and y written once (bf16) = 268 MB, B and C 1 MB, the saved states
  (chunk 64) 34 MB: ~0.10 ms at 3 TB/s. Exps: B*T*D*N = 537M `exp2` at 16/clk/SM on 132 SMs
  (1.75 GHz) = 0.15 ms. FLOPs (~7 per (t, d, n) in float32) are negligible. So the kernel is
  bound by the exp pipe and by latency: the recurrence `h = a*h + b` is sequential in t.
- The sequential chain per step is one FMA; everything else (loads, exp, the C.h reduction,
  the gate) does not depend on the carry. Each loop iteration therefore handles `unroll` steps
  written out in Python (independent instructions the scheduler can overlap), and with
  `prefetch` the rows of the next iteration are loaded while this one computes (Triton's
  `num_stages` pipelining does not apply: these are small non-dot loads).
- Parallelism is the scarce resource: B*D = 8192 channels * N = 131k state elements in all, so
  with `block_d` = 32 there are 256 programs of 4 warps (2 per SM, 4 state elements per thread).
  Smaller blocks give more programs but fewer independent exps per thread; the tuning script
  (`benchmarks/gpu/selective_scan_tune.py`) measures the trade-off.
- Per-channel work (softplus, silu: ~4 SFU ops per (t, d)) is repeated by every thread that
  holds a piece of the channel's N states (likely 4 at N = 16), which about doubles the SFU
  load: ~0.3 ms SFU-bound; instruction issue (~60 per thread-step, 8 warps per SM) is similar.
  Expected ~0.3 ms if latency is hidden (mamba_ssm: 0.61 ms).
- States are saved every `chunk` steps (`[B, T/chunk, D, N]` float32, 1 byte per (b, t, d) at
  N = 16, chunk = 64) for the backward, which recomputes the states inside a chunk.

Layout: u, delta, z, y `[B, T, D]`; B, C `[B, T, G, N]` (the program's channel block lies in one
group); A `[D, N]`; D, delta_bias `[D]`; states `[B, D, N]`. All dims the kernel sees are padded
by `api.py`: D to a multiple of the block within each group, N to a power of two.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

import pallas_kernels._common  # noqa: F401  (filters the Triton deprecation warning)

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


def advance(h, A2, u, dt, B_t):
    """One step of the recurrence; returns `(a, h_new)` with `a = exp(dt * A)`."""
    a = jnp.exp2(dt[:, None] * A2)
    return a, a * h + (dt * u)[:, None] * B_t[None, :]


def _fwd_kernel(*refs, T, unroll, chunk, flags: Flags, save, prefetch):
    refs = list(refs)
    u_ref, delta_ref, A_ref, B_ref, C_ref = refs[:5]
    rest = refs[5:]
    D_ref = rest.pop(0) if flags.has_D else None
    z_ref = rest.pop(0) if flags.has_z else None
    bias_ref = rest.pop(0) if flags.has_bias else None
    h0_ref = rest.pop(0) if flags.has_h0 else None
    out_ref, last_ref = rest.pop(0), rest.pop(0)
    hs_ref = rest.pop(0) if save else None

    A2 = A_ref[...].astype(F32) * LOG2E  # exp(dt A) = exp2(dt A log2 e)
    Dv = D_ref[...].astype(F32) if flags.has_D else None
    bias = bias_ref[...].astype(F32) if flags.has_bias else None
    h = h0_ref[...].astype(F32) if flags.has_h0 else jnp.zeros(A2.shape, F32)

    def load(t):
        rows = (u_ref[t, :], delta_ref[t, :], B_ref[t, :], C_ref[t, :])
        return rows + ((z_ref[t, :],) if flags.has_z else ())

    def load_block(t0, n):
        return tuple(load(t0 + k) for k in range(n))

    def step(h, raw, t):
        u = raw[0].astype(F32)
        _, dt = discretize(raw[1], bias, flags)
        _, h = advance(h, A2, u, dt, raw[2].astype(F32))
        y = jnp.sum(h * raw[3].astype(F32)[None, :], axis=1)
        if flags.has_D:
            y = y + Dv * u
        if flags.has_z:
            zt = raw[4].astype(F32)
            y = y * (zt * sigmoid(zt))
        out_ref[t, :] = y.astype(out_ref.dtype)
        return h

    n_iter, tail = divmod(T, unroll)
    per_chunk = chunk // unroll

    def body(i, carry):
        h, rows = carry if prefetch else (carry, None)
        t0 = i * unroll
        if save:

            @pl.when(lax.rem(i, per_chunk) == 0)
            def _():
                hs_ref[lax.div(i, per_chunk)] = h

        if prefetch:
            nxt = load_block(jnp.minimum(i + 1, n_iter - 1) * unroll, unroll)
        else:
            rows = load_block(t0, unroll)
        for k in range(unroll):
            h = step(h, rows[k], t0 + k)
        return (h, nxt) if prefetch else h

    if n_iter:
        init = (h, load_block(0, unroll)) if prefetch else h
        h = lax.fori_loop(0, n_iter, body, init)
        if prefetch:
            h = h[0]
    if tail:
        t0 = n_iter * unroll
        if save and t0 % chunk == 0:
            hs_ref[t0 // chunk] = h
        rows = load_block(t0, tail)
        for k in range(tail):
            h = step(h, rows[k], t0 + k)
    last_ref[...] = h


def forward(u, delta, A, B, C, D, z, bias, h0, *, flags: Flags, block_sizes, save: bool,
            interpret: bool):
    """Run the forward kernel on padded inputs.

    Args:
      u, delta, z: `[Bt, T, Dp]`; A `[Dp, Np]`; B, C `[Bt, T, G, Np]`; D, bias `[Dp]`;
        h0 `[Bt, Dp, Np]` float32 (None entries for absent options, matching `flags`).
      save: also return the chunk-start states `[Bt, ceil(T / chunk), Dp, Np]` float32.

    Returns:
      `(out [Bt, T, Dp] in u.dtype, last [Bt, Dp, Np] float32, states or None)`.
    """
    Bt, T, Dp = u.shape
    G, Np = B.shape[2], B.shape[3]
    bd, chunk = block_sizes.block_d, block_sizes.chunk
    per_group = (Dp // G) // bd  # channel blocks per group
    nc = pl.cdiv(T, chunk)
    grid = (Bt, Dp // bd)

    seq = pl.BlockSpec((None, T, bd), lambda b, j: (b, 0, j))
    bc = pl.BlockSpec((None, T, None, Np), lambda b, j: (b, 0, lax.div(j, per_group), 0))
    chan = pl.BlockSpec((bd,), lambda b, j: (j,))
    state = pl.BlockSpec((None, bd, Np), lambda b, j: (b, j, 0))
    args = [u, delta, A, B, C]
    specs = [seq, seq, pl.BlockSpec((bd, Np), lambda b, j: (j, 0)), bc, bc]
    for present, x, spec in ((flags.has_D, D, chan), (flags.has_z, z, seq),
                             (flags.has_bias, bias, chan), (flags.has_h0, h0, state)):
        if present:
            args.append(x)
            specs.append(spec)

    out_shape = [jax.ShapeDtypeStruct(u.shape, u.dtype), jax.ShapeDtypeStruct((Bt, Dp, Np), F32)]
    out_specs = [seq, state]
    if save:
        out_shape.append(jax.ShapeDtypeStruct((Bt, nc, Dp, Np), F32))
        out_specs.append(pl.BlockSpec((None, nc, bd, Np), lambda b, j: (b, 0, j, 0)))

    elems = Bt * T * Dp * Np
    io_bytes = sum(x.size * x.dtype.itemsize for x in args) + sum(
        s.size * s.dtype.itemsize for s in out_shape)
    kernel = functools.partial(
        _fwd_kernel, T=T, unroll=block_sizes.unroll, chunk=chunk, flags=flags, save=save,
        prefetch=block_sizes.prefetch,
    )
    outs = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=pltriton.CompilerParams(
            num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages),
        cost_estimate=pl.CostEstimate(
            flops=int(7 * elems + 12 * Bt * T * Dp),
            transcendentals=int(elems + 3 * Bt * T * Dp),
            bytes_accessed=int(io_bytes),
        ),
        interpret=interpret,
        name="selective_scan_fwd",
    )(*args)
    return outs[0], outs[1], (outs[2] if save else None)
