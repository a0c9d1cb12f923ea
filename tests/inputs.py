"""Random inputs for the ops, shared by the op, kernel and layer tests (never zeros)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Per-step log-decay regimes: near 0 (almost no forgetting), FLA's typical gate, and very strong
# (down to -20 per step, where exp(cumsum) underflows within a chunk).
GATES = ("weak", "medium", "strong")


def log_decay(rng: np.random.Generator, shape, gate: str, dtype=jnp.float32):
    if gate == "weak":
        g = -rng.uniform(0.0, 1e-3, shape)
    elif gate == "medium":
        g = np.asarray(jax.nn.log_sigmoid(rng.standard_normal(shape)))
    elif gate == "strong":
        g = -rng.uniform(0.0, 20.0, shape)
    else:
        raise ValueError(f"unknown gate regime {gate!r}")
    return jnp.asarray(g, dtype)


def normal(rng: np.random.Generator, shape, dtype, scale: float = 1.0):
    return jnp.asarray(scale * rng.standard_normal(shape), dtype)


def gla_inputs(rng, B, T, H, K, V, *, gate="medium", dtype=jnp.float32, gate_dtype=None,
               initial_state=True, state_dtype=None):
    """q, k, v, g, h0 for `gla` (h0 None when initial_state is False)."""
    q = normal(rng, (B, T, H, K), dtype)
    k = normal(rng, (B, T, H, K), dtype)
    v = normal(rng, (B, T, H, V), dtype)
    g = log_decay(rng, (B, T, H, K), gate, gate_dtype or (jnp.float64 if dtype == jnp.float64 else jnp.float32))
    h0 = normal(rng, (B, H, K, V), state_dtype or (jnp.float64 if dtype == jnp.float64 else jnp.float32)) if initial_state else None
    return q, k, v, g, h0


def selective_scan_inputs(rng, B, T, D, N, *, groups=None, dtype=jnp.float32, param_dtype=None,
                          initial_state=True):
    """u, delta, A, B, C, D, z, delta_bias, h0 for `selective_scan` with mamba_ssm-like ranges.

    groups=None gives B, C of shape [B, T, N]; an int G gives [B, T, G, N].
    """
    pd = param_dtype or (jnp.float64 if dtype == jnp.float64 else jnp.float32)
    bc_shape = (B, T, N) if groups is None else (B, T, groups, N)
    u = normal(rng, (B, T, D), dtype)
    delta = jnp.asarray(0.5 * rng.uniform(0.0, 1.0, (B, T, D)), dtype)
    A = jnp.asarray(-rng.uniform(0.5, float(N), (D, N)), pd)  # like -exp(A_log), A_log = log(1..N)
    Bm = normal(rng, bc_shape, dtype)
    Cm = normal(rng, bc_shape, dtype)
    Dv = normal(rng, (D,), pd)
    z = normal(rng, (B, T, D), dtype)
    delta_bias = jnp.asarray(0.5 * rng.uniform(0.0, 1.0, (D,)), pd)
    h0 = normal(rng, (B, D, N), pd) if initial_state else None
    return u, delta, A, Bm, Cm, Dv, z, delta_bias, h0
