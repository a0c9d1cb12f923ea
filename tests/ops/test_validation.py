"""Every class of bad input raises a clear error that names the argument (and shows shapes)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxla import ops
from tests.inputs import gla_inputs, selective_scan_inputs


@pytest.fixture
def gla_args(rng):
    return gla_inputs(rng, 2, 10, 3, 16, 24)


def _raises(exc, pattern, fn, *args, **kwargs):
    with pytest.raises(exc, match=pattern):
        fn(*args, **kwargs)


def test_gla_wrong_rank(gla_args):
    q, k, v, g, _ = gla_args
    _raises(ValueError, r"q must have rank 4 .*q\.shape=\(2, 10, 48\)", ops.gla, q.reshape(2, 10, 48), k, v, g)


def test_gla_wrong_dtype(gla_args):
    q, k, v, g, _ = gla_args
    _raises(TypeError, r"v must be a floating-point array.*int32", ops.gla, q, k, v.astype(jnp.int32), g)
    _raises(TypeError, r"q, k, v must share a dtype", ops.gla, q.astype(jnp.bfloat16), k, v, g)


@pytest.mark.parametrize("which", ["B", "T", "H"])
def test_gla_mismatched_batch_time_heads(gla_args, which):
    q, k, v, g, _ = gla_args
    axis = "BTH".index(which)
    v_bad = jnp.concatenate([v, v], axis=axis)
    _raises(ValueError, r"v must match q in B, T, H: q\.shape=.*v\.shape=", ops.gla, q, k, v_bad, g)


def test_gla_mismatched_key_dim(gla_args):
    q, k, v, g, _ = gla_args
    _raises(ValueError, r"k must have the shape of q.*k\.shape=\(2, 10, 3, 8\)", ops.gla, q, k[..., :8], v, g)


def test_gla_gate_of_wrong_shape(gla_args):
    q, k, v, g, _ = gla_args
    _raises(ValueError, r"g must have the shape of q.*g\.shape=\(2, 10, 3, 1\)", ops.gla, q, k, v, g[..., :1])


def test_gla_positive_gate(gla_args):
    q, k, v, g, _ = gla_args
    _raises(ValueError, r"g holds log-decays and must be <= 0.*max\(g\)=0\.5", ops.gla, q, k, v, g.at[0, 0, 0, 0].set(0.5))


def test_gla_nan_gate(gla_args):
    q, k, v, g, _ = gla_args
    _raises(ValueError, r"g holds log-decays", ops.gla, q, k, v, g.at[1, 2, 0, 3].set(jnp.nan))


@pytest.mark.parametrize("bad", [jnp.bfloat16, jnp.float16])
def test_gla_state_not_float32(gla_args, bad):
    q, k, v, g, h0 = gla_args
    _raises(TypeError, r"initial_state must be float32", ops.gla, q, k, v, g, initial_state=h0.astype(bad))


def test_gla_state_wrong_shape(gla_args):
    q, k, v, g, h0 = gla_args
    _raises(ValueError, r"initial_state must have shape \[B, H, K, V\] = \(2, 3, 16, 24\).*\(2, 3, 24, 16\)",
            ops.gla, q, k, v, g, initial_state=jnp.swapaxes(h0, -1, -2))


@pytest.mark.parametrize("chunk_size", [48, 8, 512])
def test_chunk_size_power_of_two(gla_args, chunk_size):
    q, k, v, g, _ = gla_args
    _raises(ValueError, rf"chunk_size must be a power of two in \[16, 256\], got chunk_size={chunk_size}",
            ops.gla, q, k, v, g, chunk_size=chunk_size)


def test_chunk_size_type(gla_args):
    q, k, v, g, _ = gla_args
    _raises(TypeError, r"chunk_size must be an int", ops.gla, q, k, v, g, chunk_size=64.0)


def test_unknown_implementation(gla_args):
    q, k, v, g, _ = gla_args
    for fn in (ops.gla, ops.gla_recurrent):
        _raises(ValueError, r"unknown implementation='triton'", fn, q, k, v, g, implementation="triton")
    _raises(ValueError, r"unknown implementation='cuda'", ops.simple_gla, q, k, v, implementation="cuda")


def test_empty_sequence(gla_args):
    q, k, v, g, _ = gla_args
    _raises(ValueError, r"sequence length must be >= 1", ops.gla, q[:, :0], k[:, :0], v[:, :0], g[:, :0])


def test_non_scalar_scale(gla_args):
    q, k, v, g, _ = gla_args
    _raises(ValueError, r"scale must be a scalar", ops.gla, q, k, v, g, scale=jnp.ones(3))


def test_simple_gla_gate_shapes(gla_args):
    q, k, v, g, _ = gla_args
    _raises(ValueError, r"g must have shape \[B, T, H\] = \(2, 10, 3\), got g\.shape=\(2, 10, 3, 16\)", ops.simple_gla, q, k, v, g)
    _raises(ValueError, r"g_gamma must have shape \[H\] = \(3,\), got g_gamma\.shape=\(4,\)", ops.simple_gla, q, k, v, g_gamma=-jnp.ones(4))
    _raises(ValueError, r"g_gamma holds log-decays", ops.simple_gla, q, k, v, g_gamma=jnp.array([-1.0, 0.1, -2.0]))


def test_lightning_arguments(gla_args):
    q, k, v, _, _ = gla_args
    _raises(ValueError, r"layer_idx must be in \[0, num_layers\), got layer_idx=4, num_layers=4",
            ops.lightning_attention, q, k, v, layer_idx=4, num_layers=4)
    _raises(ValueError, r"decay must be one of \('minimax', 'fla'\), got decay='alibi'",
            ops.lightning_attention, q, k, v, layer_idx=0, num_layers=4, decay="alibi")
    _raises(TypeError, r"layer_idx must be an int", ops.lightning_decay, 4, 1.0, 4)


@pytest.fixture
def ssm_args(rng):
    return selective_scan_inputs(rng, 2, 10, 8, 4, groups=2)


def test_selective_scan_wrong_rank(ssm_args):
    u, delta, A, Bm, Cm, *_ = ssm_args
    _raises(ValueError, r"u must have rank 3 \(\[B, T, D\]\), got u\.shape=\(20, 8\)", ops.selective_scan, u.reshape(20, 8), delta, A, Bm, Cm)


def test_selective_scan_mismatched_shapes(ssm_args):
    u, delta, A, Bm, Cm, Dv, z, bias, h0 = ssm_args
    _raises(ValueError, r"delta must have shape \[B, T, D\]", ops.selective_scan, u, delta[:, :5], A, Bm, Cm)
    _raises(ValueError, r"A must be \[D, N\] with D = u\.shape\[-1\], got A\.shape=\(4, 4\)", ops.selective_scan, u, delta, A[:4], Bm, Cm)
    _raises(ValueError, r"B must be \[B, T, N\] or \[B, T, G, N\].*B\.shape=\(2, 10, 2, 3\)", ops.selective_scan, u, delta, A, Bm[..., :3], Cm)
    _raises(ValueError, r"C has G=3 groups, which must divide D=8", ops.selective_scan, u, delta, A, Bm, jnp.concatenate([Cm, Cm[:, :, :1]], axis=2))
    _raises(ValueError, r"D must have shape \[D\] = \(8,\)", ops.selective_scan, u, delta, A, Bm, Cm, Dv[:3])
    _raises(ValueError, r"z must have shape \[B, T, D\]", ops.selective_scan, u, delta, A, Bm, Cm, Dv, z[:1])
    _raises(ValueError, r"delta_bias must have shape \[D\]", ops.selective_scan, u, delta, A, Bm, Cm, delta_bias=bias[:2])
    _raises(ValueError, r"initial_state must have shape \[B, D, N\] = \(2, 8, 4\)", ops.selective_scan, u, delta, A, Bm, Cm, initial_state=h0[:1])
    _raises(TypeError, r"initial_state must be float32", ops.selective_scan, u, delta, A, Bm, Cm, initial_state=h0.astype(jnp.bfloat16))


def test_selective_scan_wrong_dtype(ssm_args):
    u, delta, A, Bm, Cm, *_ = ssm_args
    _raises(TypeError, r"u must be a floating-point array", ops.selective_scan, u.astype(jnp.int32), delta, A, Bm, Cm)
    _raises(TypeError, r"A must be an array", ops.selective_scan, u, delta, np.asarray(A).tolist(), Bm, Cm)


def test_selective_state_update_needs_state(ssm_args):
    u, delta, A, Bm, Cm, *_ = ssm_args
    _raises(ValueError, r"state is required", ops.selective_state_update, None, u[:, 0], delta[:, 0], A, Bm[:, 0], Cm[:, 0])


def test_messages_name_the_argument_first(gla_args):
    """The argument's name leads the message, so a user sees at once which input is wrong."""
    q, k, v, g, _ = gla_args
    with pytest.raises(ValueError) as info:
        ops.gla(q, k, v, g, chunk_size=24)
    assert re.match(r"chunk_size ", str(info.value))


# --- packed documents ------------------------------------------------------------------------

PACKED_OPS = {
    "gla": lambda q, k, v, g, **kw: ops.gla(q, k, v, g, **kw),
    "simple_gla": lambda q, k, v, g, **kw: ops.simple_gla(q, k, v, g[..., 0], **kw),
    "lightning": lambda q, k, v, g, **kw: ops.lightning_attention(q, k, v, layer_idx=0,
                                                                  num_layers=2, **kw),
    "selective_scan": lambda q, k, v, g, **kw: ops.selective_scan(
        q[..., 0, :], -g[..., 0, :], -jnp.ones((16, 4)), q[..., 0, :4], k[..., 0, :4], **kw),
}
ONE_ROW = np.array([0, 3, 10], np.int32)  # T = 10


@pytest.mark.parametrize("op", list(PACKED_OPS))
@pytest.mark.parametrize("bad,pattern,exc", [
    (dict(segment_ids=jnp.zeros((2, 9), jnp.int32)),
     r"segment_ids must have shape \[B, T\] = \(2, 10\), got segment_ids.shape=\(2, 9\)",
     ValueError),
    (dict(segment_ids=jnp.zeros((2, 10), jnp.float32)),
     r"segment_ids must be an integer array, got segment_ids.dtype=float32", TypeError),
    (dict(cu_seqlens=jnp.asarray(ONE_ROW)),
     r"cu_seqlens packs documents into one row: the batch must be 1, got B=2", ValueError),
    (dict(segment_ids=jnp.zeros((2, 10), jnp.int32), cu_seqlens=jnp.asarray(ONE_ROW)),
     r"give segment_ids or cu_seqlens, not both", ValueError),
])
def test_packing_arguments(gla_args, op, bad, pattern, exc):
    q, k, v, g, _ = gla_args
    _raises(exc, pattern, PACKED_OPS[op], q, k, v, g, **bad)


@pytest.mark.parametrize("op", list(PACKED_OPS))
@pytest.mark.parametrize("cu,pattern", [
    ([1, 3, 10], r"cu_seqlens must start at 0, got cu_seqlens\[0\]=1"),
    ([0, 3, 9], r"cu_seqlens must end at T=10, got cu_seqlens\[-1\]=9"),
    ([0, 5, 5, 10], r"strictly increasing .* cu_seqlens\[1\]=5, cu_seqlens\[2\]=5"),
    ([0, 6, 4, 10], r"strictly increasing .* cu_seqlens\[1\]=6, cu_seqlens\[2\]=4"),
    ([10], r"cu_seqlens must be \[N \+ 1\] offsets with N >= 1"),
])
def test_cu_seqlens_values(gla_args, op, cu, pattern):
    q, k, v, g, _ = (x[:1] for x in gla_args)
    _raises(ValueError, pattern, PACKED_OPS[op], q, k, v, g, cu_seqlens=jnp.asarray(cu, jnp.int32))


def test_per_document_state_of_the_wrong_leading_size(gla_args):
    q, k, v, g, h0 = (x[:1] for x in gla_args)
    cu = jnp.asarray(ONE_ROW)
    _raises(ValueError, r"initial_state must have shape \[N, H, K, V\] = \(2, 3, 16, 24\), got "
            r"initial_state.shape=\(1, 3, 16, 24\)", ops.gla, q, k, v, g, cu_seqlens=cu,
            initial_state=h0)
    _raises(ValueError, r"initial_state must have shape \[N_docs, D, N\] = \(2, 16, 4\)",
            PACKED_OPS["selective_scan"], q, k, v, g, cu_seqlens=cu,
            initial_state=jnp.zeros((1, 16, 4)))


@pytest.mark.parametrize("scale,exc,pattern", [
    ("0.5", TypeError, r"scale must be a real number or a scalar array, got str '0.5'"),
    (jnp.ones(2), ValueError, r"scale must be a scalar, got scale.shape=\(2,\)"),
    (float("nan"), ValueError, r"scale must be finite, got scale=nan"),
    (True, TypeError, r"scale must be a real number"),
])
def test_scale(gla_args, scale, exc, pattern):
    q, k, v, g, _ = gla_args
    _raises(exc, pattern, ops.gla, q, k, v, g, scale=scale)


def test_checked_mode_catches_bad_values_under_jit(gla_args):
    """Under jit the values are unknown while tracing: `ops.checking()` checks them on the host."""
    q, k, v, g, _ = gla_args
    unchecked = jax.jit(lambda q, g: ops.gla(q, k, v, g, implementation="xla")[0])
    unchecked(q, g.at[0, 0, 0, 0].set(0.5))  # passes silently
    # The flag is read while tracing: a function traced inside the block keeps its checks.
    run = lambda q, g: ops.gla(q, k, v, g, implementation="xla")[0]  # noqa: E731
    with ops.checking():
        unchecked(q, g.at[0, 0, 0, 0].set(0.5))  # traced before: still unchecked
        with pytest.raises(Exception, match=r"g holds log-decays and must be <= 0 everywhere, "
                           r"got max\(g\)=0.5"):
            jax.block_until_ready(jax.jit(run)(q, g.at[0, 0, 0, 0].set(0.5)))
        with pytest.raises(Exception, match=r"q must be finite \(no NaN/Inf\), got 1 NaN/Inf"):
            jax.block_until_ready(jax.jit(run)(q.at[1, 2, 0, 3].set(jnp.nan), g))
        jax.block_until_ready(jax.jit(run)(q, g))  # good values pass
    with ops.checking():  # concrete values are checked eagerly, NaN included
        _raises(ValueError, r"v has 1 NaN/Inf values", ops.gla, q, k,
                v.at[0, 0, 0, 0].set(jnp.inf), g)
