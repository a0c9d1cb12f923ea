"""Mixer-layer formulas against XLA counts of the layers written here in jnp over jaxla.ops.

Phase 1 stand-in for the Flax layers: each layer follows LMConfig's docstring (projections,
gates, norms, the op's XLA path). Phase 2 holds `jaxla.layers` against the same formulas.
"""

import jax
import jax.numpy as jnp
import pytest

from jaxla import ops
from jaxla.flops import formulas as F
from jaxla.flops import xla
from jaxla.models.config import LMConfig

S = jax.ShapeDtypeStruct
F32 = jnp.float32


def _rms(x, w, eps=1e-6):
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _gla(cfg, x, wq, wk, wv, wg1, wg2, bg2, wog, nw, wo):
    B, T, _ = x.shape
    H = cfg.num_heads
    heads = lambda t: t.reshape(B, T, H, -1)  # noqa: E731
    q, k, v = heads(x @ wq), heads(x @ wk), heads(x @ wv)
    gk = heads(jax.nn.log_sigmoid((x @ wg1) @ wg2 + bg2) / cfg.gate_logit_normalizer)
    if T <= 64:
        o = ops.gla_recurrent(q, k, v, gk)[0]
    else:
        o = ops.gla(q, k, v, gk, implementation="xla")[0]
    o = _rms(o, nw).reshape(B, T, -1) * jax.nn.silu(x @ wog)
    return o @ wo


def _lightning(cfg, x, wqkv, nw, wgate, wout):
    B, T, _ = x.shape
    H = cfg.num_heads
    q, k, v = jnp.split(jax.nn.silu(x @ wqkv).reshape(B, T, H, -1), 3, axis=-1)
    fn = ops.lightning_attention_recurrent if T <= 64 else ops.lightning_attention
    kw = {} if T <= 64 else {"implementation": "xla"}
    o = fn(q, k, v, layer_idx=1, num_layers=cfg.num_layers, decay=cfg.lightning_decay, **kw)[0]
    o = _rms(o.reshape(B, T, -1), nw) * jax.nn.sigmoid(x @ wgate)
    return o @ wout


def _mamba(cfg, x, w_in, conv_w, conv_b, w_x, w_dt, b_dt, A, D, w_out):
    T = x.shape[1]
    E, N, R, k = cfg.d_inner, cfg.d_state, cfg.mamba_dt_rank, cfg.d_conv
    xs, z = jnp.split(x @ w_in, 2, axis=-1)
    padded = jnp.pad(xs, ((0, 0), (k - 1, 0), (0, 0)))
    conv = padded[:, 0:T] * conv_w[0]
    for i in range(1, k):  # causal depthwise conv: k multiply-adds per channel and token
        conv = conv + padded[:, i:i + T] * conv_w[i]
    u = jax.nn.silu(conv + conv_b)
    dt, Bm, Cm = jnp.split(u @ w_x, [R, R + N], axis=-1)
    y = ops.selective_scan(u, dt @ w_dt, A, Bm, Cm, D, z, delta_bias=b_dt, delta_softplus=True,
                           implementation="xla")[0]
    del E
    return y @ w_out


def _rope(x, theta=10000.0):
    T, d = x.shape[1], x.shape[-1]
    freqs = theta ** (-jnp.arange(0, d, 2) / d)
    ang = jnp.arange(T)[:, None] * freqs[None]
    cos, sin = (jnp.concatenate([f(ang)] * 2, axis=-1)[None, :, None] for f in (jnp.cos, jnp.sin))
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def _attention(cfg, x, wq, wk, wv, wo):
    B, T, _ = x.shape
    H, KVH = cfg.num_heads, cfg.kv_heads
    q = _rope((x @ wq).reshape(B, T, H, -1))
    k = jnp.repeat(_rope((x @ wk).reshape(B, T, KVH, -1)), H // KVH, axis=2)
    v = jnp.repeat((x @ wv).reshape(B, T, KVH, -1), H // KVH, axis=2)
    s = jnp.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5
    s = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -jnp.inf)
    o = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), v)
    return o.reshape(B, T, -1) @ wo


def _params(kind, cfg):
    D, H = cfg.hidden_size, cfg.num_heads
    if kind == "gla":
        Kd, Vd, r = cfg.key_dim, cfg.value_dim, cfg.gate_low_rank_dim
        shapes = [(D, Kd), (D, Kd), (D, Vd), (D, r), (r, Kd), (Kd,), (D, Vd), (Vd // H,), (Vd, D)]
        return _gla, shapes
    if kind == "lightning":
        hd = H * cfg.attn_head_dim
        return _lightning, [(D, 3 * hd), (hd,), (D, hd), (hd, D)]
    if kind == "mamba":
        E, N, R = cfg.d_inner, cfg.d_state, cfg.mamba_dt_rank
        return _mamba, [(D, 2 * E), (cfg.d_conv, E), (E,), (E, R + 2 * N), (R, E), (E,),
                        (E, N), (E,), (E, D)]
    dh = cfg.attn_head_dim
    return _attention, [(D, H * dh), (D, cfg.kv_heads * dh), (D, cfg.kv_heads * dh),
                        (H * dh, D)]


@pytest.mark.parametrize("kind", ["gla", "lightning", "mamba", "attention"])
@pytest.mark.parametrize("T", [48, 200])
def test_mixer_layer_formula(kind, T):
    cfg = LMConfig.tiny(kind, hidden_size=64, num_heads=4, num_kv_heads=2, num_layers=4)
    B = 2
    fn, shapes = _params(kind, cfg)
    args = [S((B, T, cfg.hidden_size), F32)] + [S(s, F32) for s in shapes]
    # Compiled counts of the associative scan are fusion artefacts (~2.7x, see the report) and
    # slow to get: Mamba is checked lowered only.
    stages = ("lowered",) if kind == "mamba" else xla.STAGES
    c = xla.count_all(lambda *a: fn(cfg, *a), *args, stages=stages)
    cv = F.Conventions(mask="full", gla="xla", scan="associative")
    formula = F.mixer_layer(kind, cfg, B, T, conventions=cv)
    if kind == "attention":  # XLA computes the full matrix: + one select per score
        formula += F.Flops(other=B * cfg.num_heads * T * T)
    # Stated tolerance, per layer (what the formula does not itemise):
    # * gla chunked (T > 64): lowered counts jnp.einsum's broadcast products 2 per element
    #   (see test_gla_xla_path): up to +5%; compiled is within 2%.
    # * lightning: MiniMax's scale 1.0 is folded away (-1 per output element).
    # * attention: RoPE's cos/sin tables (T d/2 products) and the causal mask (<= 3 T^2), once.
    # * everything else: bool masks converted once per call; measured < 0.3%.
    tol_lo = 0.05 if (kind == "gla" and T > 64) else 0.01
    lo = c["lowered"]
    assert lo.flops == pytest.approx(formula.total, rel=tol_lo), (lo.flops, formula.total)
    if "compiled" in c:
        assert c["compiled"].flops == pytest.approx(formula.total, rel=0.02)


def test_model_formula_composes_the_layers():
    # A tiny hybrid CausalLM in jnp: embedding, pre-norm blocks (mixer + SwiGLU), final norm,
    # tied LM head; the four mixers above. Lowered only (it holds a Mamba layer).
    cfg = LMConfig.tiny("hybrid", hidden_size=64, num_heads=4, num_kv_heads=2)
    B, T, D, Fm = 2, 100, cfg.hidden_size, cfg.mlp_size
    kinds = cfg.mixers
    layer_shapes = [_params(kind, cfg)[1] for kind in kinds]

    def model(ids, table, *flat):
        x, i = table[ids], 0
        for kind, shapes in zip(kinds, layer_shapes):
            n1, n2, wg, wu, wd = flat[i:i + 5]
            mixer = flat[i + 5:i + 5 + len(shapes)]
            i += 5 + len(shapes)
            x = x + _params(kind, cfg)[0](cfg, _rms(x, n1), *mixer)
            h = _rms(x, n2)
            x = x + (jax.nn.silu(h @ wg) * (h @ wu)) @ wd
        return _rms(x, flat[i]) @ table.T

    flat = []
    for shapes in layer_shapes:
        flat += [S((D,), F32), S((D,), F32), S((D, Fm), F32), S((D, Fm), F32), S((Fm, D), F32)]
        flat += [S(s, F32) for s in shapes]
    flat.append(S((D,), F32))
    c = xla.count(model, S((B, T), jnp.int32), S((cfg.vocab_size, D), F32), *flat)
    cv = F.Conventions(mask="full", gla="xla", scan="associative")
    formula = F.model_forward(cfg, B, T, conventions=cv)
    formula += F.Flops(other=B * cfg.num_heads * T * T)  # the attention layer's causal select
    # Tolerance as in test_mixer_layer_formula, weighted by the layers' shares of the model
    # (GLA's einsum excess is a small part of it): 1%; measured 0.1%.
    assert c.flops == pytest.approx(formula.total, rel=0.01)
    assert c.transcendentals == pytest.approx(formula.transcendentals, rel=0.01)
