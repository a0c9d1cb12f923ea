"""`selective_scan`: the Pallas forward and backward kernels behind one `jax.custom_vjp`.

Packed documents reach the kernels as int32 step flags (`fwd.py` says how they use them):
`starts [Bt, T]`, the document starting at t or -1 (0 for every start of `resets`), and in
per-document mode `ends [1, T]`, the document ending at t or -1. They are inputs of the custom
VJP without cotangents; the dense path passes none.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from pallas_kernels._common import default_interpret, next_pow2, pad_axis
from pallas_kernels.selective_scan.bwd import backward
from pallas_kernels.selective_scan.config import MAX_N, BlockSizes
from pallas_kernels.selective_scan.fwd import Flags, forward


@dataclasses.dataclass(frozen=True, slots=True)
class _Static:
    flags: Flags
    block_sizes: BlockSizes
    interpret: bool


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(static: _Static, u, delta, A, B, C, D, z, bias, h0, starts, ends):
    out, last, _ = _forward(static, u, delta, A, B, C, D, z, bias, h0, starts, ends, save=False)
    return out, last


def _forward(static: _Static, u, delta, A, B, C, D, z, bias, h0, starts, ends, *, save):
    """The kernels keep states as `[N, D]` tiles; the op's states are `[Bt | num_docs, D, N]`."""
    h0t = None if h0 is None else jnp.swapaxes(h0, 1, 2)
    out, last, states = forward(u, delta, A.T, B, C, D, z, bias, h0t, starts, ends,
                                flags=static.flags, block_sizes=static.block_sizes, save=save,
                                interpret=static.interpret)
    return out, jnp.swapaxes(last, 1, 2), states


def _scan_fwd(static: _Static, u, delta, A, B, C, D, z, bias, h0, starts, ends):
    out, last, states = _forward(static, u, delta, A, B, C, D, z, bias, h0, starts, ends,
                                 save=True)
    return (out, last), (u, delta, A, B, C, D, z, bias, h0, starts, ends, states)


def _scan_bwd(static: _Static, res, cts):
    u, delta, A, B, C, D, z, bias, h0, starts, ends, states = res
    dout, dlast = cts
    h0t = None if h0 is None or not static.flags.doc_h0 else jnp.swapaxes(h0, 1, 2)
    du, ddelta, dz, dB, dC, dA, dD, dbias, dh0 = backward(
        u, delta, A.T, B, C, D, z, bias, h0t, states, dout.astype(u.dtype),
        jnp.swapaxes(dlast.astype(jnp.float32), 1, 2), starts, ends, flags=static.flags,
        block_sizes=static.block_sizes, interpret=static.interpret,
    )
    dA = dA.T
    dh0 = None if dh0 is None else jnp.swapaxes(dh0, 1, 2)
    cast = lambda g, x: None if x is None else g.astype(x.dtype)  # noqa: E731
    return (du, ddelta, cast(dA, A), cast(dB, B), cast(dC, C), cast(dD, D), dz, cast(dbias, bias),
            cast(dh0, h0), None, None)


_scan.defvjp(_scan_fwd, _scan_bwd)


def _expand_groups(x, G: int):
    """`[Bt, T, g, N]` -> `[Bt, T, G, N]` for g dividing G (group i of G reads x's i // (G/g))."""
    Bt, T, g, N = x.shape
    if g == G:
        return x
    x = jnp.broadcast_to(x[:, :, :, None, :], (Bt, T, g, G // g, N))
    return x.reshape(Bt, T, G, N)


def _step_flags(resets, docs, num_docs: int, shape, initial_state):
    """Check the packing arguments; `(starts, ends)` int32 step flags (None where absent)."""
    Bt, T, _ = shape
    if resets is not None and docs is not None:
        raise ValueError("give resets or docs, not both")
    if docs is None and num_docs:
        raise ValueError(f"num_docs is for per-document mode (docs), got {num_docs=} without docs")
    if resets is not None:
        if tuple(resets.shape) != (Bt, T):
            raise ValueError(f"resets must be [Bt, T] = {(Bt, T)}, got {resets.shape=}")
        return jnp.where(resets, 0, -1).astype(jnp.int32), None
    if docs is None:
        return None, None
    if not isinstance(num_docs, int) or isinstance(num_docs, bool) or num_docs < 1:
        raise ValueError(f"num_docs must be an int >= 1 with docs, got {num_docs=}")
    if Bt != 1 or tuple(docs.shape) != (T,):
        raise ValueError(f"docs must be [T] = {(T,)} with a batch of 1, got {docs.shape=}, "
                         f"u.shape={shape}")
    if not jnp.issubdtype(docs.dtype, jnp.integer):
        raise TypeError(f"docs must be integers, got {docs.dtype=}")
    if initial_state is not None and initial_state.shape[0] != num_docs:
        raise ValueError(f"initial_state must be [num_docs, D, N] with {num_docs=}, got "
                         f"{initial_state.shape=}")
    # Clipped so that unchecked values never index past the states (the op validates them).
    docs = jnp.clip(docs.astype(jnp.int32), 0, num_docs - 1)
    differs = docs[1:] != docs[:-1]
    edge = jnp.ones((1,), bool)
    starts = jnp.where(jnp.concatenate([edge, differs]), docs, -1)
    ends = jnp.where(jnp.concatenate([differs, edge]), docs, -1)
    return starts[None], ends[None]


def selective_scan(u, delta, A, B, C, D=None, z=None, *, delta_bias=None,
                   delta_softplus: bool = False, initial_state=None, resets=None, docs=None,
                   num_docs: int = 0, block_sizes: BlockSizes | None = None,
                   interpret: bool | None = None):
    """Mamba's selective scan on the Pallas kernels (interpret mode without a GPU).

    Layout is time before channels (mamba_ssm uses `[B, D, L]`). Inputs are validated by
    `jaxla.ops.selective_scan`; this function checks the packing arguments, pads and
    dispatches.

    Args:
      u, delta: `[Bt, T, D]` float32/bfloat16/float16; z: optional `[Bt, T, D]`.
      A: `[D, N]`; B, C: `[Bt, T, N]` or `[Bt, T, G, N]` (G dividing D, may differ for B and C).
      D, delta_bias: optional `[D]`; initial_state: optional float32 `[Bt, D, N]`
        (`[num_docs, D, N]` in per-document mode).
      resets: optional `[Bt, T]` bool, True where a document starts (the state before that
        step is replaced by zero; never at t = 0). The row's initial state feeds its first
        document; the final state is the state after the row's last step.
      docs, num_docs: per-document mode (Bt = 1): `docs [T]` int, the document of every step
        (non-decreasing from 0); a document starts where t = 0 or docs[t] != docs[t - 1]
        (its initial state, or zero, replaces the state) and its final state is the state
        after its last step.
      block_sizes: tiling (default `BlockSizes.get_default` for this call's dims).

    Returns:
      `(out [Bt, T, D] in u.dtype, final_state [Bt, D, N] float32)` (`[num_docs, D, N]` in
      per-document mode), both differentiable.
    """
    starts, ends = _step_flags(resets, docs, num_docs, u.shape, initial_state)
    if u.dtype == jnp.float64:
        raise TypeError(
            f"the pallas selective scan computes in float32; got {u.dtype=} (use "
            "implementation='naive' or 'xla' for float64)"
        )
    Bt, T, Dm = u.shape
    N = A.shape[1]
    if not 1 <= N <= MAX_N:
        raise ValueError(f"the pallas selective scan takes N <= {MAX_N}, got {A.shape=}")
    if interpret is None:
        interpret = default_interpret()

    B4 = B[:, :, None] if B.ndim == 3 else B
    C4 = C[:, :, None] if C.ndim == 3 else C
    G = math.lcm(B4.shape[2], C4.shape[2])
    B4, C4 = _expand_groups(B4, G), _expand_groups(C4, G)
    dims = dict(state_size=N, batch=Bt, seq_len=T, channels=Dm, groups=G)
    block_sizes = (block_sizes or BlockSizes.get_default(**dims)).for_call(**dims)

    # Pad the channels of each group to a multiple of the channel blocks and N to a power of two.
    Dg = Dm // G
    block = max(block_sizes.block_d, block_sizes.block_d_bwd)
    Dg_pad = -(-Dg // block) * block
    Np = next_pow2(N)

    def pad_channels(x, axis):
        if x is None or Dg_pad == Dg:
            return x
        shape = x.shape
        x = x.reshape(shape[:axis] + (G, Dg) + shape[axis + 1:])
        x = pad_axis(x, axis + 1, Dg_pad)
        return x.reshape(shape[:axis] + (G * Dg_pad,) + shape[axis + 1:])

    def unpad_channels(x, axis):
        if Dg_pad == Dg:
            return x
        shape = x.shape
        x = x.reshape(shape[:axis] + (G, Dg_pad) + shape[axis + 1:])
        x = jax.lax.slice_in_dim(x, 0, Dg, axis=axis + 1)
        return x.reshape(shape[:axis] + (Dm,) + shape[axis + 1:])

    pad_n = lambda x, axis: x if x is None else pad_axis(x, axis, Np)  # noqa: E731
    args = (
        pad_channels(u, 2), pad_channels(delta, 2), pad_n(pad_channels(A, 0), 1),
        pad_n(B4, 3), pad_n(C4, 3), pad_channels(D, 0), pad_channels(z, 2),
        pad_channels(delta_bias, 0), pad_n(pad_channels(initial_state, 1), 2),
    )
    flags = Flags(has_D=D is not None, has_z=z is not None, has_bias=delta_bias is not None,
                  has_h0=initial_state is not None, softplus=bool(delta_softplus),
                  resets=resets is not None, num_docs=num_docs if docs is not None else 0)
    out, last = _scan(_Static(flags, block_sizes, bool(interpret)), *args, starts, ends)
    return unpad_channels(out, 2), unpad_channels(last[:, :, :N], 1)
