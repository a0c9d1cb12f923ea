"""Pure-JAX Mamba selective scan: the step-by-step spec and a chunked associative-scan form.

Inputs are validated by `jaxla.ops.selective_scan`. Layout is time before channels:
u, delta, z `[B, T, D]`; A `[D, N]`; B, C `[B, T, G, N]` (G groups, channel d uses group
d // (D/G)); D, delta_bias `[D]`; state `[B, D, N]`. Semantics of mamba_ssm's `selective_scan_ref`:

    dt = softplus(delta + delta_bias)            (bias and softplus optional)
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t
    y_t = C_t . h_t + D u_t;   out_t = y_t * silu(z_t)   (D and z optional)

With a `Packing` (`jaxla.ops.packing`), `h_{t-1}` is replaced at a document start by zero
(segment_ids) or by the document's initial state (cu_seqlens: states `[N, D, N_state]`, the final
state holding each document's state after its last step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxla.ops import packing as pk
from jaxla.ops._checks import compute_dtype
from jaxla.ops.reference.gla import pad_time

SCAN_CHUNK = 128  # time steps per associative scan in the chunked form


def discretize_dt(delta, delta_bias, delta_softplus: bool, dtype):
    """`dt = softplus(delta + delta_bias)` in `dtype` (bias and softplus optional)."""
    dt = delta.astype(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.astype(dtype)
    if delta_softplus:
        dt = jax.nn.softplus(dt)
    return dt


def expand_groups(x, D: int):
    """`[..., G, N]` -> `[..., D, N]`: channel d reads group d // (D/G)."""
    G, N = x.shape[-2:]
    x = jnp.broadcast_to(x[..., :, None, :], x.shape[:-2] + (G, D // G, N))
    return x.reshape(x.shape[:-3] + (D, N))


def finish_output(y, u, D, z, dtype, out_dtype):
    """Add the skip `D * u`, gate with `silu(z)`, cast."""
    if D is not None:
        y = y + u.astype(dtype) * D.astype(dtype)
    if z is not None:
        y = y * jax.nn.silu(z.astype(dtype))
    return y.astype(out_dtype)


def _dtypes(u, A, initial_state):
    return compute_dtype(u.dtype, A.dtype, None if initial_state is None else initial_state.dtype)


def _initial_states(initial_state, packing, batch, Dm, N, cd):
    """(h0 for the rows, per-document initial states or None)."""
    if packing is not None and packing.per_document_states:
        shape = (packing.num_docs, Dm, N)
        s0 = jnp.zeros(shape, cd) if initial_state is None else initial_state.astype(cd)
        return jnp.zeros((batch, Dm, N), cd), s0
    h0 = jnp.zeros((batch, Dm, N), cd) if initial_state is None else initial_state.astype(cd)
    return h0, None


def _step_flags(packing, batch, T):
    """`[B, T]` resets (start from zero), `[B, T]` starts from a document's initial state and
    `[B, T]` ends, the `[T]` documents (zeros without per-document states); None unpacked."""
    if packing is None:
        return None
    none = jnp.zeros((batch, T), bool)
    if packing.per_document_states:
        starts, ends = pk.starts_and_ends(packing.docs)
        return none, starts[None], ends[None], packing.docs
    return packing.resets, none, none, jnp.zeros((T,), jnp.int32)


def naive_selective_scan(
    u, delta, A, B, C, D=None, z=None, *, delta_bias=None, delta_softplus=False,
    initial_state=None, packing=None,
):
    """The spec: a `lax.scan` over time with a `[B, D, N]` state."""
    batch, T, Dm = u.shape
    N = A.shape[-1]
    cd = _dtypes(u, A, initial_state)
    dt = discretize_dt(delta, delta_bias, delta_softplus, cd)
    A = A.astype(cd)
    h0, s0 = _initial_states(initial_state, packing, batch, Dm, N, cd)
    flags = _step_flags(packing, batch, T)
    xs = [jnp.moveaxis(x, 1, 0) for x in (u.astype(cd), dt, B.astype(cd), C.astype(cd))]
    if flags is not None:
        resets, starts, ends, docs = flags
        xs += [jnp.moveaxis(x, 1, 0) for x in (resets, starts, ends)] + [docs]

    def step(carry, x):
        h, finals = carry
        u_t, dt_t, B_t, C_t = x[:4]
        if flags is not None:
            reset, start, end, doc = x[4:]
            h = jnp.where(reset[:, None, None], 0.0, h)
        if s0 is not None:
            h = jnp.where(start[:, None, None], s0[doc][None], h)
        h = jnp.exp(dt_t[..., None] * A) * h + (dt_t * u_t)[..., None] * expand_groups(B_t, Dm)
        if s0 is not None:
            finals = finals.at[doc].set(jnp.where(end[0], h[0], finals[doc]))
        return (h, finals), jnp.sum(h * expand_groups(C_t, Dm), axis=-1)

    finals = None if s0 is None else jnp.zeros_like(s0)
    (h, finals), y = lax.scan(step, (h0, finals), xs)
    final = h if s0 is None else finals
    return finish_output(jnp.moveaxis(y, 0, 1), u, D, z, cd, u.dtype), final


def _combine(left, right):
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r


def chunk_selective_scan(
    u, delta, A, B, C, D=None, z=None, *, delta_bias=None, delta_softplus=False,
    initial_state=None, packing=None,
):
    """Chunks of SCAN_CHUNK steps, each an associative scan over `[B, c, D, N]` pairs (a, b).

    A `lax.scan` carries the state from chunk to chunk; its body is rematerialised in the
    backward pass, so memory stays linear in T with a `[B, c, D, N]` working set. A document
    start sets its step's decay a to 0 and, with per-document states, adds the decayed initial
    state to b.
    """
    batch, T, Dm = u.shape
    N = A.shape[-1]
    cd = _dtypes(u, A, initial_state)
    c = min(SCAN_CHUNK, T)
    # Padding goes after the softplus: a padded step must have dt = 0 (no decay, no input).
    dt = pad_time(discretize_dt(delta, delta_bias, delta_softplus, cd), c)
    n = dt.shape[1] // c
    chunks = lambda x: jnp.moveaxis(x.reshape(batch, n, c, *x.shape[2:]), 1, 0)  # noqa: E731
    flags = _step_flags(packing, batch, T)
    xs = (chunks(pad_time(u.astype(cd), c)), chunks(dt),
          chunks(pad_time(B.astype(cd), c)), chunks(pad_time(C.astype(cd), c)))
    if flags is not None:
        resets, starts, ends, docs = flags
        xs += (chunks(pad_time(resets, c)), chunks(pad_time(starts, c)),
               chunks(pad_time(ends, c)), jnp.moveaxis(pad_time(docs[None], c).reshape(1, n, c),
                                                       1, 0))
    A = A.astype(cd)
    h0, s0 = _initial_states(initial_state, packing, batch, Dm, N, cd)

    @jax.checkpoint
    def chunk(carry, x):
        h, finals = carry
        u_c, dt_c, B_c, C_c = x[:4]  # [B, c, ...]
        a = jnp.exp(dt_c[..., None] * A)
        b = (dt_c * u_c)[..., None] * expand_groups(B_c, Dm)
        if flags is not None:
            reset, start, end, doc = x[4:]
            if s0 is not None:
                b = b + jnp.where(start[..., None, None], a * s0[doc[0]][None], 0.0)
            a = jnp.where((reset | start)[..., None, None], 0.0, a)
        a_cum, b_cum = lax.associative_scan(_combine, (a, b), axis=1)
        hs = a_cum * h[:, None] + b_cum
        if s0 is not None:
            last = jnp.where(end[0], doc[0], s0.shape[0])  # out of range where no end: dropped
            finals = finals.at[last].set(hs[0], mode="drop")
        return (hs[:, -1], finals), jnp.sum(hs * expand_groups(C_c, Dm), axis=-1)

    finals = None if s0 is None else jnp.zeros_like(s0)
    (h, finals), y = lax.scan(chunk, (h0, finals), xs)
    y = jnp.moveaxis(y, 0, 1).reshape(batch, n * c, Dm)[:, :T]
    final = h if s0 is None else finals
    return finish_output(y, u, D, z, cd, u.dtype), final
