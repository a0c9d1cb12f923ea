"""Backward selective-scan kernel (Pallas-Triton): one program per (batch, channel block).

Algorithm (research/mamba_pallas.md A1/A2), per program, time walked from last to first:
  g_t = dout_t * silu(z_t);  dh_t = C_t g_t + a_{t+1} dh_{t+1}   (dh_T = d final_state)
  du_t = D g_t + dt_t (dh_t . B_t);  ddt_t = u_t (dh_t . B_t) + sum_n dh_t A a_t h_{t-1}
  dA += dh_t dt_t a_t h_{t-1};  dB_t, dC_t = per-program sums over the block's channels
The states h_{t-1} are needed in reverse order. The recurrence is never inverted (a_t = exp(dt A)
underflows): each `chunk` starts from the state the forward saved, a first pass writes the
states at sub-chunk starts to a per-program buffer (`chunk // sub` states, it stays in L2), and
each sub-chunk of `sub` steps is then recomputed into registers (Python-unrolled: no value
slicing in Pallas-Triton) and walked backwards. With `chunk == sub` the first pass disappears and
the forward's saved states are used directly (more saved memory, less recomputation).

Cost at the Mamba-370M layer (B=4, T=4096, D=2048, N=16, bf16, block_d 32):
- Bytes: u, delta, z, dout read and du, ddelta, dz written (bf16) = 470 MB; saved states 34 MB;
  dB/dC partials `[B, D/block_d, T, N]` float32 written and summed by XLA = 2 x 2 x 67 MB.
  Total ~0.8 GB -> ~0.27 ms at 3 TB/s.
- Exps: 2 per (t, d, n) (first pass + register recomputation) = 1.07G -> ~0.3 ms on the SFUs,
  plus the per-channel softplus / sigmoid / silu, repeated by the threads sharing a channel.
- Per (t, d, n) about 20 float32 ops and five reductions per step (three over N, two over
  the channel block for dB/dC, which may cross warps). Instruction issue dominates: expect
  3-4x the forward, ~1-1.5 ms (mamba_ssm: 2.44 ms backward).
- Latency: 256 programs of 4 warps leave ~8 warps per SM, so each pass needs its own
  independent work: the first pass advances `unroll` steps per iteration and prefetches the
  next rows; the second recomputes `sub` steps (the exps do not wait for the state load) and
  prefetches the rows of the sub-chunk it handles next. Registers bound `sub` (config.py).
- dA, dD, d delta_bias are per-program partials summed over the batch by XLA (deterministic,
  no atomics). Grid programs run concurrently; nothing depends on their order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.selective_scan.fwd import F32, LOG2E, Flags, advance, discretize, sigmoid


def _bwd_kernel(*refs, T, chunk, sub, unroll, flags: Flags, prefetch, interpret):
    refs = list(refs)
    u_ref, delta_ref, A_ref, B_ref, C_ref = refs[:5]
    rest = refs[5:]
    D_ref = rest.pop(0) if flags.has_D else None
    z_ref = rest.pop(0) if flags.has_z else None
    bias_ref = rest.pop(0) if flags.has_bias else None
    hs_ref, dout_ref, dlast_ref = rest.pop(0), rest.pop(0), rest.pop(0)
    du_ref, ddelta_ref = rest.pop(0), rest.pop(0)
    dz_ref = rest.pop(0) if flags.has_z else None
    dB_ref, dC_ref, dA_ref = rest.pop(0), rest.pop(0), rest.pop(0)
    dD_ref = rest.pop(0) if flags.has_D else None
    dbias_ref = rest.pop(0) if flags.has_bias else None
    dh0_ref = rest.pop(0) if flags.has_h0 else None
    per_chunk = chunk // sub
    temp_ref = rest.pop(0) if per_chunk > 1 else None

    A = A_ref[...].astype(F32)
    A2 = A * LOG2E
    Dv = D_ref[...].astype(F32) if flags.has_D else None
    bias = bias_ref[...].astype(F32) if flags.has_bias else None

    def barrier():
        # The sub-chunk buffer is written and read by different threads of the program.
        if not interpret:
            pltriton.debug_barrier()

    def load(t):
        rows = (u_ref[t, :], delta_ref[t, :], B_ref[t, :], C_ref[t, :], dout_ref[t, :])
        return rows + ((z_ref[t, :],) if flags.has_z else ())

    def load_block(t0, n):
        return tuple(load(t0 + k) for k in range(n))

    # The state pass has little independent work per step: it advances `group` sub-chunks per
    # loop iteration (`unroll` steps) and prefetches the next iteration's rows.
    group = max(1, unroll // sub)

    def chunk_pass(c, n_adv):
        """Write the states at the starts of sub-chunks 0..n_adv of chunk c to the buffer."""
        barrier()
        h = hs_ref[c]
        temp_ref[0] = h

        def load(first, n, clamp=False):  # rows of sub-chunks first .. first + n - 1 of chunk c
            ts = [c * chunk + first * sub + s for s in range(n * sub)]
            if clamp:  # the last chunk may be shorter than one group: stay inside the arrays
                ts = [jnp.minimum(t, T - 1) for t in ts]
            return tuple((u_ref[t, :], delta_ref[t, :], B_ref[t, :]) for t in ts)

        def advance_subs(h, rows, first, n):
            for g in range(n):
                for u, dl, B_t in rows[g * sub:(g + 1) * sub]:
                    _, dt = discretize(dl, bias, flags)
                    _, h = advance(h, A2, u.astype(F32), dt, B_t.astype(F32))
                temp_ref[first + g + 1] = h
            return h

        if isinstance(n_adv, int):
            n_groups = n_adv // group
        else:
            n_groups = lax.div(n_adv, group)

        def body(k, carry):
            h, rows = carry if prefetch else (carry, None)
            if prefetch:
                nxt = load(jnp.minimum(k + 1, n_groups - 1) * group, group)
            else:
                rows = load(k * group, group)
            h = advance_subs(h, rows, k * group, group)
            return (h, nxt) if prefetch else h

        h = lax.fori_loop(0, n_groups, body, (h, load(0, group, clamp=True)) if prefetch else h)
        h = h[0] if prefetch else h
        if group > 1:  # the remaining n_adv % group sub-chunks
            h = lax.fori_loop(n_groups * group, n_adv,
                              lambda k, h: advance_subs(h, load(k, 1), k, 1), h)
        barrier()

    def step_back(carry, row, dl, dt, a, h_prev, h, t):
        dh, dA, dD, dbias = carry
        u, B_t, C_t, do = (row[i].astype(F32) for i in (0, 2, 3, 4))
        if flags.has_z:
            zt = row[5].astype(F32)
            sz = sigmoid(zt)
            g = do * (zt * sz)
            y = jnp.sum(h * C_t[None, :], axis=1)
            if flags.has_D:
                y = y + Dv * u
            dz_ref[t, :] = (do * y * sz * (1.0 + zt * (1.0 - sz))).astype(dz_ref.dtype)
        else:
            g = do
        dh = dh + g[:, None] * C_t[None, :]
        dC_ref[t, :] = jnp.sum(h * g[:, None], axis=0)
        s_B = jnp.sum(dh * B_t[None, :], axis=1)
        du = dt * s_B
        if flags.has_D:
            du = du + Dv * g
            dD = dD + g * u
        du_ref[t, :] = du.astype(du_ref.dtype)
        dB_ref[t, :] = jnp.sum(dh * (dt * u)[:, None], axis=0)
        q = dh * a * h_prev
        dA = dA + q * dt[:, None]
        ddt = u * s_B + jnp.sum(q * A, axis=1)
        if flags.softplus:
            ddt = ddt * sigmoid(dl)
        if flags.has_bias:
            dbias = dbias + ddt
        ddelta_ref[t, :] = ddt.astype(ddelta_ref.dtype)
        return a * dh, dA, dD, dbias

    def sub_chunk(carry, h, rows, t0, n):
        """Recompute the n states of steps t0.. from h (registers), then walk them backwards."""
        states, decays, steps = [h], [], []
        for k in range(n):
            steps.append(discretize(rows[k][1], bias, flags))
            a, h = advance(h, A2, rows[k][0].astype(F32), steps[k][1], rows[k][2].astype(F32))
            decays.append(a)
            states.append(h)
        for k in reversed(range(n)):
            carry = step_back(carry, rows[k], *steps[k], decays[k], states[k], states[k + 1],
                              t0 + k)
        return carry

    bd, Np = A.shape
    carry = (
        dlast_ref[...].astype(F32),
        jnp.zeros((bd, Np), F32),
        jnp.zeros((bd,), F32) if flags.has_D else None,
        jnp.zeros((bd,), F32) if flags.has_bias else None,
    )
    n_full, tail = divmod(T, sub)
    n_sub = n_full + (tail > 0)

    if tail:  # the last, partial sub-chunk (static length)
        c, local = divmod(n_full, per_chunk)
        if local:
            chunk_pass(c, local)
            h = temp_ref[local]
        else:
            h = hs_ref[c]
        carry = sub_chunk(carry, h, load_block(n_full * sub, tail), n_full * sub, tail)

    def body(j, state):
        carry, rows = state if prefetch else (state, None)
        m = n_full - 1 - j
        if per_chunk > 1:
            local = lax.rem(m, per_chunk)
            first_visit = (local == per_chunk - 1) | (m + 1 == n_sub)

            @pl.when(first_visit)
            def _():
                chunk_pass(lax.div(m, per_chunk), local)

            h = temp_ref[local]
        else:
            h = hs_ref[m]
        if prefetch:
            nxt = load_block(jnp.maximum(m - 1, 0) * sub, sub)
        else:
            rows = load_block(m * sub, sub)
        carry = sub_chunk(carry, h, rows, m * sub, sub)
        return (carry, nxt) if prefetch else carry

    if n_full:
        init = (carry, load_block((n_full - 1) * sub, sub)) if prefetch else carry
        carry = lax.fori_loop(0, n_full, body, init)
        if prefetch:
            carry = carry[0]

    dh, dA, dD, dbias = carry
    dA_ref[...] = dA
    if flags.has_D:
        dD_ref[...] = dD
    if flags.has_bias:
        dbias_ref[...] = dbias
    if flags.has_h0:
        dh0_ref[...] = dh


def backward(u, delta, A, B, C, D, z, bias, states, dout, dlast, *, flags: Flags, block_sizes,
             interpret: bool):
    """Run the backward kernel on padded inputs (shapes as in `fwd.forward`).

    Args:
      states: the forward's chunk-start states `[Bt, ceil(T / chunk), Dp, Np]` float32.
      dout: `[Bt, T, Dp]` cotangent of the output; dlast: `[Bt, Dp, Np]` of the final state.

    Returns:
      `du, ddelta, dz | None, dB [Bt, T, G, Np] f32, dC, dA [Dp, Np] f32, dD | None,
      dbias | None, dh0 | None` (dB, dC, dA, dD, dbias already summed over programs).
    """
    Bt, T, Dp = u.shape
    G, Np = B.shape[2], B.shape[3]
    bd, chunk, sub = block_sizes.block_d_bwd, block_sizes.chunk, block_sizes.sub
    per_group = (Dp // G) // bd
    n_blocks = Dp // bd
    nc = states.shape[1]
    grid = (Bt, n_blocks)

    seq = pl.BlockSpec((None, T, bd), lambda b, j: (b, 0, j))
    bc = pl.BlockSpec((None, T, None, Np), lambda b, j: (b, 0, lax.div(j, per_group), 0))
    chan = pl.BlockSpec((bd,), lambda b, j: (j,))
    state = pl.BlockSpec((None, bd, Np), lambda b, j: (b, j, 0))
    part_seq = pl.BlockSpec((None, None, T, Np), lambda b, j: (b, j, 0, 0))
    part_chan = pl.BlockSpec((None, bd), lambda b, j: (b, j))

    args = [u, delta, A, B, C]
    specs = [seq, seq, pl.BlockSpec((bd, Np), lambda b, j: (j, 0)), bc, bc]
    for present, x, spec in ((flags.has_D, D, chan), (flags.has_z, z, seq),
                             (flags.has_bias, bias, chan)):
        if present:
            args.append(x)
            specs.append(spec)
    args += [states, dout, dlast]
    specs += [pl.BlockSpec((None, nc, bd, Np), lambda b, j: (b, 0, j, 0)), seq, state]

    sds = jax.ShapeDtypeStruct
    outs = [(sds(u.shape, u.dtype), seq), (sds(delta.shape, delta.dtype), seq)]
    if flags.has_z:
        outs.append((sds(z.shape, z.dtype), seq))
    outs += [(sds((Bt, n_blocks, T, Np), F32), part_seq)] * 2
    outs.append((sds((Bt, Dp, Np), F32), state))
    if flags.has_D:
        outs.append((sds((Bt, Dp), F32), part_chan))
    if flags.has_bias:
        outs.append((sds((Bt, Dp), F32), part_chan))
    if flags.has_h0:
        outs.append((sds((Bt, Dp, Np), F32), state))
    per_chunk = chunk // sub
    if per_chunk > 1:
        outs.append((sds((Bt, n_blocks, per_chunk, bd, Np), F32),
                     pl.BlockSpec((None, None, per_chunk, bd, Np), lambda b, j: (b, j, 0, 0, 0))))

    elems = Bt * T * Dp * Np
    io_bytes = sum(x.size * x.dtype.itemsize for x in args) + sum(
        s.size * s.dtype.itemsize for s, _ in outs)
    kernel = functools.partial(
        _bwd_kernel, T=T, chunk=chunk, sub=sub, unroll=block_sizes.unroll, flags=flags,
        prefetch=block_sizes.prefetch_bwd,
        interpret=interpret,
    )
    res = pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=specs,
        out_specs=[spec for _, spec in outs],
        out_shape=[s for s, _ in outs],
        compiler_params=pltriton.CompilerParams(
            num_warps=block_sizes.num_warps_bwd, num_stages=block_sizes.num_stages_bwd),
        cost_estimate=pl.CostEstimate(
            flops=int(26 * elems + 30 * Bt * T * Dp),
            transcendentals=int(2 * elems + 6 * Bt * T * Dp),
            bytes_accessed=int(io_bytes),
        ),
        interpret=interpret,
        name="selective_scan_bwd",
    )(*args)
    res = list(res)
    du, ddelta = res.pop(0), res.pop(0)
    dz = res.pop(0) if flags.has_z else None
    dB_part, dC_part, dA_part = res.pop(0), res.pop(0), res.pop(0)
    dD = res.pop(0).sum(0) if flags.has_D else None
    dbias = res.pop(0).sum(0) if flags.has_bias else None
    dh0 = res.pop(0) if flags.has_h0 else None

    def group_sum(part):  # [Bt, n_blocks, T, Np] -> [Bt, T, G, Np]
        part = part.reshape(Bt, G, per_group, T, Np).sum(2)
        return jnp.transpose(part, (0, 2, 1, 3))

    return du, ddelta, dz, group_sum(dB_part), group_sum(dC_part), dA_part.sum(0), dD, dbias, dh0
