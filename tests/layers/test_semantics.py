"""Each layer against an independent float64 NumPy transcription of the original module.

The references read the layer's parameters and follow FLA's GatedLinearAttention, MiniMax-01's
lightning attention, mamba_ssm's Mamba (mamba_simple.py) and a RoPE softmax attention step by
step, so a wrong reshape, split order, gate or decay shows up as a large error.
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxla.layers import (
    Attention,
    GatedLinearAttention,
    LightningAttention,
    Mamba,
    RMSNorm,
    ShortConvolution,
    SwiGLU,
    apply_rope,
)
from jaxla.testing import assert_close
from tests.inputs import normal
from tests.layers.helpers import apply, randomize_params


def P(a):
    return np.asarray(a[...], np.float64)


def silu(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x):
    return np.log1p(np.exp(x))


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def np_causal_conv(x, w, b=None):
    """x [B, T, C], w [W, C]: y_t = sum_j w[W-1-j] x_{t-j}."""
    W = w.shape[0]
    y = np.zeros_like(x)
    for t in range(x.shape[1]):
        for j in range(min(W, t + 1)):
            y[:, t] += w[W - 1 - j] * x[:, t - j]
    return y if b is None else y + b


def np_linear_recurrence(q, k, v, log_decay, scale):
    """q, k [B, T, H, K], v [B, T, H, V], log_decay broadcastable to [B, T, H, K]."""
    B, T, H, K = q.shape
    S = np.zeros((B, H, K, v.shape[-1]))
    log_decay = np.broadcast_to(log_decay, q.shape)
    out = []
    for t in range(T):
        S = np.exp(log_decay[:, t])[..., None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(np.einsum("bhk,bhkv->bhv", scale * q[:, t], S))
    return np.stack(out, axis=1)


def test_rms_norm(rng):
    norm = randomize_params(RMSNorm(24, eps=1e-5), rng)
    x = normal(rng, (3, 5, 24), jnp.float32)
    assert_close(norm(x), np_rms_norm(np.float64(x), P(norm.weight), 1e-5), dtype=jnp.float32)
    assert norm(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    assert norm(x, out_dtype=jnp.float32).dtype == jnp.float32


def test_swiglu(rng):
    mlp = SwiGLU(16, 40, rngs=nnx.Rngs(1))
    x = normal(rng, (2, 3, 16), jnp.float32)
    xf = np.float64(x)
    expected = (silu(xf @ P(mlp.gate_proj.kernel)) * (xf @ P(mlp.up_proj.kernel))) @ P(mlp.down_proj.kernel)
    assert_close(mlp(x), expected, dtype=jnp.float32)


def test_short_convolution_and_its_state(rng):
    conv = randomize_params(ShortConvolution(6, 4, use_bias=True, rngs=nnx.Rngs(0)), rng)
    x = normal(rng, (2, 9, 6), jnp.float32)
    expected = silu(np_causal_conv(np.float64(x), P(conv.weight), P(conv.bias)))
    assert_close(conv(x), expected, dtype=jnp.float32)
    y1, state = conv(x[:, :2], conv.init_cache(2))  # fewer tokens than taps
    y2, state = conv(x[:, 2:], state)
    assert_close(jnp.concatenate([y1, y2], axis=1), expected, dtype=jnp.float32)
    assert_close(state, x[:, -3:], name="conv state = last W-1 inputs")


def test_rope_rotates_pairs_and_depends_on_offsets(rng):
    x = normal(rng, (1, 6, 2, 8), jnp.float32)
    pos = jnp.arange(6)
    out = np.float64(apply_rope(x, pos, theta=100.0))
    xf = np.float64(x)
    inv = 100.0 ** (-np.arange(0, 8, 2) / 8)
    ang = np.arange(6)[:, None] * inv
    cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    expected = np.concatenate([xf[..., :4] * cos - xf[..., 4:] * sin,
                               xf[..., 4:] * cos + xf[..., :4] * sin], axis=-1)
    assert_close(out, expected, dtype=jnp.float32)
    # q.k after rotation depends only on the position difference.
    q, k = normal(rng, (1, 1, 1, 8), jnp.float32), normal(rng, (1, 1, 1, 8), jnp.float32)
    dot = lambda i, j: float(jnp.sum(apply_rope(q, jnp.array([i])) * apply_rope(k, jnp.array([j]))))  # noqa: E731
    assert abs(dot(7, 3) - dot(14, 10)) < 1e-5 * (1 + abs(dot(7, 3)))


# --- mixers ------------------------------------------------------------------------------------

def np_gla(m: GatedLinearAttention, x, eps):
    B, T, _ = x.shape
    H, K, V = m.num_heads, m.head_k_dim, m.head_v_dim
    q, k, v = (x @ P(m.q_proj.kernel), x @ P(m.k_proj.kernel), x @ P(m.v_proj.kernel))
    if m.use_short_conv:
        conv = lambda c, a: silu(np_causal_conv(a, P(c.weight), None if c.bias is None else P(c.bias)))  # noqa: E731
        q, k, v = conv(m.q_conv1d, q), conv(m.k_conv1d, k), conv(m.v_conv1d, v)
    low, full = m.gk_proj.layers
    gk = log_sigmoid((x @ P(low.kernel)) @ P(full.kernel) + P(full.bias)) / m.gate_logit_normalizer
    o = np_linear_recurrence(q.reshape(B, T, H, K), k.reshape(B, T, H, K), v.reshape(B, T, H, V),
                             gk.reshape(B, T, H, K), K**-0.5)
    o = np_rms_norm(o, P(m.g_norm.weight), eps)
    if m.use_output_gate:
        o = o * silu((x @ P(m.g_proj.kernel)).reshape(B, T, H, V))
    return o.reshape(B, T, H * V) @ P(m.o_proj.kernel)


@pytest.mark.parametrize("T", [10, 70], ids=["recurrent", "chunked"])
@pytest.mark.parametrize("conv", [False, True], ids=["plain", "short_conv"])
def test_gla_layer_matches_fla_semantics(T, conv, rng):
    m = GatedLinearAttention(32, num_heads=2, expand_k=1.0, use_short_conv=conv,
                             norm_eps=1e-5, rngs=nnx.Rngs(0))
    randomize_params(m, rng)
    x = normal(rng, (2, T, 32), jnp.float32)
    assert_close(apply(m, x), np_gla(m, np.float64(x), 1e-5), dtype=jnp.float32)


def np_lightning(m: LightningAttention, x, eps, l, L):
    """The layer of depth l in an L-layer stack."""
    B, T, _ = x.shape
    H, d = m.num_heads, m.head_dim
    qkv = silu(x @ P(m.qkv_proj.kernel)).reshape(B, T, H, 3 * d)
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    h = np.arange(H)
    if m.decay == "minimax":
        log_decay = -(2.0 ** (-8.0 * (h + 1) / H)) * (1 - l / (L - 1 + 1e-5) + 1e-5)
        scale = 1.0
    else:
        log_decay = -(8.0 / H) * (1 - l / L) * h
        scale = d**-0.5
    o = np_linear_recurrence(q, k, v, log_decay[None, None, :, None], scale).reshape(B, T, H * d)
    o = np_rms_norm(o, P(m.norm.weight), eps) * sigmoid(x @ P(m.output_gate.kernel))
    return o @ P(m.out_proj.kernel)


@pytest.mark.parametrize("T", [10, 70], ids=["recurrent", "chunked"])
@pytest.mark.parametrize("decay", ["minimax", "fla"])
def test_lightning_layer_matches_minimax_semantics(T, decay, rng):
    m = LightningAttention(32, num_heads=4, layer_idx=1, num_layers=4, decay=decay,
                           norm_eps=1e-6, rngs=nnx.Rngs(0))
    randomize_params(m, rng)
    x = normal(rng, (2, T, 32), jnp.float32)
    assert_close(apply(m, x), np_lightning(m, np.float64(x), 1e-6, 1, 4), dtype=jnp.float32)


def np_mamba(m: Mamba, x):
    B, T, _ = x.shape
    Di, N, r = m.d_inner, m.d_state, m.dt_rank
    xz = x @ P(m.in_proj.kernel)
    u, z = xz[..., :Di], xz[..., Di:]
    u = silu(np_causal_conv(u, P(m.conv1d.weight), P(m.conv1d.bias)))
    dbl = u @ P(m.x_proj.kernel)
    dt, Bm, Cm = dbl[..., :r], dbl[..., r:r + N], dbl[..., r + N:]
    delta = softplus(dt @ P(m.dt_proj.kernel) + P(m.dt_proj.bias))
    A = -np.exp(P(m.A_log))
    h = np.zeros((B, Di, N))
    ys = []
    for t in range(T):
        h = np.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * Bm[:, t, None, :]
        ys.append(np.einsum("bdn,bn->bd", h, Cm[:, t]) + P(m.D) * u[:, t])
    y = np.stack(ys, axis=1) * silu(z)
    return y @ P(m.out_proj.kernel)


def test_mamba_layer_matches_mamba_simple(rng):
    m = Mamba(16, d_state=4, rngs=nnx.Rngs(0))
    x = normal(rng, (2, 12, 16), jnp.float32)
    assert_close(apply(m, x), np_mamba(m, np.float64(x)), dtype=jnp.float32, name="default init")
    randomize_params(m, rng)
    assert_close(apply(m, x), np_mamba(m, np.float64(x)), dtype=jnp.float32, name="random params")


def test_mamba_init_follows_mamba_ssm():
    m = Mamba(64, d_state=16, dt_min=1e-3, dt_max=0.1, rngs=nnx.Rngs(3))
    assert m.d_inner == 128 and m.dt_rank == 4
    np.testing.assert_allclose(P(m.A_log), np.log(np.broadcast_to(np.arange(1, 17), (128, 16))),
                               rtol=1e-6)
    np.testing.assert_array_equal(P(m.D), np.ones(128))
    dt = softplus(P(m.dt_proj.bias))
    assert np.all(dt >= 1e-3 * (1 - 1e-5)) and np.all(dt <= 0.1 * (1 + 1e-5)), (dt.min(), dt.max())
    assert np.abs(P(m.dt_proj.kernel)).max() <= 4**-0.5
    w = P(m.in_proj.kernel)
    assert abs(w.std() - 0.02) < 0.002, w.std()


def np_attention(m: Attention, x):
    B, T, _ = x.shape
    H, KVH, Dh = m.num_heads, m.num_kv_heads, m.head_dim
    q = (x @ P(m.q_proj.kernel)).reshape(B, T, H, Dh)
    k = (x @ P(m.k_proj.kernel)).reshape(B, T, KVH, Dh)
    v = (x @ P(m.v_proj.kernel)).reshape(B, T, KVH, Dh)
    inv = m.rope_theta ** (-np.arange(0, Dh, 2) / Dh)
    ang = np.arange(T)[:, None] * inv
    cos, sin = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    rot = lambda a: np.concatenate([a[..., :Dh // 2] * cos - a[..., Dh // 2:] * sin,  # noqa: E731
                                    a[..., Dh // 2:] * cos + a[..., :Dh // 2] * sin], axis=-1)
    q, k = rot(q), rot(k)
    kv_of = np.arange(H) // (H // KVH)  # query head h reads kv head h // group
    s = np.einsum("bthd,bshd->bhts", q, k[:, :, kv_of]) / math.sqrt(Dh)
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhts,bshd->bthd", p, v[:, :, kv_of])
    return o.reshape(B, T, H * Dh) @ P(m.o_proj.kernel)


def test_attention_layer_matches_rope_softmax_with_gqa(rng):
    m = randomize_params(Attention(32, num_heads=4, num_kv_heads=2, rngs=nnx.Rngs(0)), rng)
    x = normal(rng, (2, 11, 32), jnp.float32)
    assert_close(apply(m, x), np_attention(m, np.float64(x)), dtype=jnp.float32)
