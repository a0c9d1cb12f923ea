"""Mamba's selective scan (Gu & Dao, 2023) with the semantics of mamba_ssm's `selective_scan_fn`."""

from __future__ import annotations

import jax.numpy as jnp

from jaxla.ops import _checks as checks
from jaxla.ops import packing as pk
from jaxla.ops._dispatch import dispatch, kernel_refusal
from jaxla.ops._sharding import batch_sharded_call
from jaxla.ops.reference.selective_scan import (
    chunk_selective_scan,
    discretize_dt,
    expand_groups,
    finish_output,
    naive_selective_scan,
)


def _validate(u, delta, A, B, C, D, z, delta_bias, initial_state, segment_ids=None,
              cu_seqlens=None):
    """Check every argument; returns (B, C as `[B, T, G, N]`, packing)."""
    checks.check_rank("u", u, 3, "[B, T, D]")
    batch, T, Dm = u.shape
    if T < 1:
        raise ValueError(f"sequence length must be >= 1, got {u.shape=}")
    checks.check_shape("delta", delta, u.shape, "[B, T, D]")
    checks.check_rank("A", A, 2, "[D, N]")
    if A.shape[0] != Dm:
        raise ValueError(f"A must be [D, N] with D = u.shape[-1], got {A.shape=}, {u.shape=}")
    N = A.shape[1]
    grouped = []
    for name, x in (("B", B), ("C", C)):
        checks.check_float(name, x)
        if x.ndim == 3:
            x = x[:, :, None, :]
        if x.ndim != 4 or x.shape[:2] != (batch, T) or x.shape[-1] != N:
            raise ValueError(
                f"{name} must be [B, T, N] or [B, T, G, N] with B, T of u and N of A, "
                f"got {name}.shape={x.shape}, {u.shape=}, {A.shape=}"
            )
        if Dm % x.shape[2]:
            raise ValueError(
                f"{name} has G={x.shape[2]} groups, which must divide D={Dm}: {name}.shape={x.shape}"
            )
        grouped.append(x)
    if D is not None:
        checks.check_shape("D", D, (Dm,), "[D]")
    if z is not None:
        checks.check_shape("z", z, u.shape, "[B, T, D]")
    if delta_bias is not None:
        checks.check_shape("delta_bias", delta_bias, (Dm,), "[D]")
    packing = pk.resolve(segment_ids, cu_seqlens, batch, T)
    states = pk.state_batch(packing, batch)
    layout = "[N_docs, D, N]" if states != batch else "[B, D, N]"
    checks.check_state("initial_state", initial_state, (states, Dm, N), layout, u.dtype)
    checks.check_finite(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                        initial_state=initial_state)
    return grouped, packing


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    *,
    delta_bias=None,
    delta_softplus: bool = False,
    initial_state=None,
    output_final_state: bool = False,
    segment_ids=None,
    cu_seqlens=None,
    implementation: checks.Implementation | None = None,
):
    """Selective scan `h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t`, `y_t = C_t h_t + D u_t`.

    Layout is time before channels, `[B, T, D]`, unlike mamba_ssm's `[B, D, L]`: it is what a
    Linear layer produces, so no transpose is needed.

    Args:
      u, delta: `[B, T, D]` input and step size (any float dtype).
      A: `[D, N]` state matrix (float32; negative for a decaying state).
      B, C: `[B, T, N]` (shared by all channels) or `[B, T, G, N]` (G groups dividing D).
      D: optional `[D]` skip; z: optional `[B, T, D]` gate, `out = y * silu(z)`.
      delta_bias: optional `[D]` added to delta; delta_softplus: apply softplus to the step.
      initial_state: optional float32 `[B, D, N]` (`[N_docs, D, N]` with cu_seqlens);
        output_final_state: also return the final one.
      segment_ids, cu_seqlens: packed documents, as in `jaxla.ops.gla`.
      implementation: "pallas" (the Pallas kernels in `pallas_kernels.selective_scan`, interpret
        mode without a GPU; float32/bfloat16/float16 inputs, N <= 256), "xla" (chunked
        associative scan), "naive" (step scan, the spec) or None: pallas on GPU (xla for inputs
        the kernel does not take), xla elsewhere.

    Returns:
      `(out [B, T, D] in u.dtype, final_state float32 or None)`, the state `[B, D, N]`
      (`[N_docs, D, N]` with cu_seqlens). Unlike mamba_ssm, the final state carries a gradient.
    """
    (B4, C4), packing = _validate(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                  segment_ids, cu_seqlens)
    kw = dict(delta_bias=delta_bias, delta_softplus=delta_softplus, initial_state=initial_state,
              packing=packing)

    def pallas():
        # Imported here: the kernels (and Pallas) load only when the pallas path is used.
        from pallas_kernels.selective_scan import selective_scan as kernel

        def per_device(u, delta, A, B, C, D, z, delta_bias, initial_state, resets, docs):
            out, final = kernel(u, delta, A, B, C, D, z, delta_bias=delta_bias,
                                delta_softplus=delta_softplus, initial_state=initial_state,
                                resets=resets, docs=docs,
                                num_docs=0 if packing is None else packing.num_docs)
            return out, (final if output_final_state else None)

        resets = None if packing is None else packing.resets
        docs = None if packing is None else packing.docs
        return batch_sharded_call(
            per_device, (u, delta, A, B4, C4, D, z, delta_bias, initial_state, resets, docs),
            (True, True, False, True, True, False, True, False, True, True, False))

    def kernel_refuses():
        dtypes = [x.dtype for x in (u, delta, B4, C4, z) if x is not None]
        widest = max(dtypes, key=lambda d: jnp.dtype(d).itemsize)
        return kernel_refusal("selective_scan", state_size=A.shape[1], dtype=widest)

    def run(fn):
        out, final = fn(u, delta, A, B4, C4, D, z, **kw)
        return out, (final if output_final_state else None)

    return dispatch("selective_scan", implementation, pallas=pallas,
                    xla=lambda: run(chunk_selective_scan), naive=lambda: run(naive_selective_scan),
                    kernel_refuses=kernel_refuses)


def selective_state_update(
    state, u, delta, A, B, C, D=None, z=None, *, delta_bias=None, delta_softplus: bool = False
):
    """One decoding step of the selective scan (mamba_ssm's `selective_state_update`).

    Args:
      state: float32 `[B, D, N]`; u, delta, z: `[B, D]`; B, C: `[B, N]` or `[B, G, N]`;
      A, D, delta_bias: as in `selective_scan`.

    Returns:
      `(out [B, D] in u.dtype, new_state [B, D, N] float32)`.
    """
    checks.check_rank("u", u, 2, "[B, D]")
    if state is None:
        raise ValueError("state is required: float32 [B, D, N]")
    add_time = lambda x: None if x is None else x[:, None]  # noqa: E731
    (B4, C4), _ = _validate(
        add_time(u), add_time(delta), A, add_time(B), add_time(C), D, add_time(z), delta_bias, state
    )
    cd = checks.compute_dtype(u.dtype, A.dtype, state.dtype)
    dt = discretize_dt(delta, delta_bias, delta_softplus, cd)
    Dm = u.shape[-1]
    new_state = jnp.exp(dt[..., None] * A.astype(cd)) * state.astype(cd) + (
        (dt * u.astype(cd))[..., None] * expand_groups(B4[:, 0].astype(cd), Dm)
    )
    y = jnp.sum(new_state * expand_groups(C4[:, 0].astype(cd), Dm), axis=-1)
    return finish_output(y, u, D, z, cd, u.dtype), new_state

