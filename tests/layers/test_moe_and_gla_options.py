"""SparseMoE routing, and GLA's grouped KV heads and feature map (FLA's options)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxla.layers import GatedLinearAttention, SparseMoE
from jaxla.models import LMConfig
from jaxla.testing import assert_close


def _swiglu(x, g, u, d):
    return (jax.nn.silu(x @ g) * (x @ u)) @ d


def test_sparse_moe_is_the_renormalised_top_k_mix(rng):
    D, I, E, k = 16, 24, 5, 2
    moe = SparseMoE(D, I, num_experts=E, top_k=k, rngs=nnx.Rngs(int(rng.integers(1 << 30))),
                    initializer_range=0.3)
    x = jnp.asarray(rng.standard_normal((3, 7, D)), jnp.float32)
    y = moe(x)
    xs = np.asarray(x).reshape(-1, D)
    probs = np.asarray(jax.nn.softmax(xs @ np.asarray(moe.router[...]), axis=-1))
    want = np.zeros_like(xs)
    for t in range(len(xs)):
        top = np.argsort(-probs[t])[:k]
        w = probs[t, top] / probs[t, top].sum()
        for e, we in zip(top, w, strict=True):
            want[t] += we * np.asarray(_swiglu(xs[t], moe.gate_proj[...][e], moe.up_proj[...][e],
                                               moe.down_proj[...][e]))
    assert_close(y.reshape(-1, D), want, name="moe")


def test_gla_grouped_kv_heads_equal_repeated_projections(rng):
    D, H, KVH = 64, 4, 2
    seed = int(rng.integers(1 << 30))
    grouped = GatedLinearAttention(D, num_heads=H, num_kv_heads=KVH, rngs=nnx.Rngs(seed),
                                   feature_map="relu", implementation="xla")
    full = GatedLinearAttention(D, num_heads=H, rngs=nnx.Rngs(seed), feature_map="relu",
                                implementation="xla")
    K, V, G = grouped.head_k_dim, grouped.head_v_dim, H // KVH

    def repeat(kernel, d):  # [in, KVH*d] -> [in, H*d], each kv head serving G consecutive heads
        w = np.asarray(kernel).reshape(kernel.shape[0], KVH, d)
        return jnp.asarray(np.repeat(w, G, axis=1).reshape(kernel.shape[0], H * d))

    for name in ("q_proj", "g_proj", "o_proj"):
        getattr(full, name).kernel[...] = getattr(grouped, name).kernel[...]
    full.k_proj.kernel[...] = repeat(grouped.k_proj.kernel[...], K)
    full.v_proj.kernel[...] = repeat(grouped.v_proj.kernel[...], V)
    full.gk_proj.layers[0].kernel[...] = grouped.gk_proj.layers[0].kernel[...]
    full.gk_proj.layers[1].kernel[...] = repeat(grouped.gk_proj.layers[1].kernel[...], K)
    bias = np.repeat(np.asarray(grouped.gk_proj.layers[1].bias[...]).reshape(KVH, K), G, 0)
    full.gk_proj.layers[1].bias[...] = jnp.asarray(bias.reshape(-1))
    x = jnp.asarray(rng.standard_normal((2, 70, D)), jnp.float32)
    assert_close(grouped(x), full(x), name="grouped vs repeated")
    # Decoding with the grouped layer's cache agrees with the full pass.
    cache = grouped.init_cache(2)
    y1, cache = grouped(x[:, :69], cache=cache)
    y2, _ = grouped(x[:, 69:], cache=cache)
    assert_close(jnp.concatenate([y1, y2], 1), grouped(x), name="grouped decode")


def test_gla_feature_map_applies_to_q_and_k(rng):
    seed = int(rng.integers(1 << 30))
    x = jnp.asarray(rng.standard_normal((1, 9, 32)), jnp.float32)
    plain = GatedLinearAttention(32, num_heads=2, rngs=nnx.Rngs(seed), implementation="xla")
    relu = GatedLinearAttention(32, num_heads=2, rngs=nnx.Rngs(seed), feature_map="relu",
                                implementation="xla")
    # With q, k kernels whose outputs are >= 0 everywhere, relu is the identity.
    for layer in (plain, relu):
        layer.q_proj.kernel[...] = jnp.abs(plain.q_proj.kernel[...])
        layer.k_proj.kernel[...] = jnp.abs(plain.k_proj.kernel[...])
    xp = jnp.abs(x)
    assert_close(relu(xp), plain(xp), name="relu on nonnegative q, k")
    assert not np.allclose(np.asarray(relu(x)), np.asarray(plain(x)))


def test_mamba_ssm_init_rescales_out_proj(rng):
    from jaxla.layers import Mamba

    D, L = 64, 9
    layer = Mamba(D, init="mamba_ssm", num_layers=L, rngs=nnx.Rngs(int(rng.integers(1 << 30))))
    E = layer.d_inner
    for kernel, bound in ((layer.in_proj.kernel, D**-0.5), (layer.x_proj.kernel, E**-0.5),
                          (layer.out_proj.kernel, E**-0.5 / L**0.5)):
        w = np.asarray(kernel[...])
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
        assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound  # uniform(+-bound)
    assert LMConfig.mamba_370m().mamba_init == "mamba_ssm"
