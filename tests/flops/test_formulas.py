"""The formulas on their own (pure Python): identities, brute-force counts, parameter counts."""

import itertools

import jax.numpy as jnp
import pytest

from jaxla.flops import formulas as F
from jaxla.flops import generation as G
from jaxla.flops import peak_flops
from jaxla.models.config import LMConfig


def test_flops_arithmetic():
    a, b = F.Flops(10, 3, 1), F.Flops(5, 2, 4)
    assert a + b == F.Flops(15, 5, 5)
    assert sum([a, b]) == a + b
    assert 3 * a == a * 3 == F.Flops(30, 9, 3)
    assert a.total == 13
    assert a.with_backward() == F.Flops(30, 9, 1)  # dot and other x3, transcendentals once


@pytest.mark.parametrize("q_len, kv_len", [(1, 1), (7, 7), (16, 16), (1, 9), (5, 12)])
def test_attention_triangle_is_a_pair_count(q_len, kv_len):
    B, H, d = 2, 3, 8
    # Query i (the i-th of the last q_len positions of kv_len) sees keys 0..kv_len-q_len+i.
    pairs = sum(kv_len - q_len + i + 1 for i in range(q_len))
    causal = F.attention_core(B, q_len, H, d, kv_len=kv_len, mask="causal", softmax_ops=False)
    full = F.attention_core(B, q_len, H, d, kv_len=kv_len, mask="full", softmax_ops=False)
    assert causal.dot == 4 * B * H * d * pairs  # QK^T and AV, 2 FLOPs per multiply-add each
    assert full.dot == 4 * B * H * d * q_len * kv_len


def test_transformer_layer_is_mambaout_eq6():
    B, L, D = 3, 100, 64
    assert F.transformer_layer(B, L, D, mask="full").total == 24 * B * L * D**2 + 4 * B * L**2 * D
    # causal triangle: MambaOut's 2BL^2D plus the diagonal
    assert (F.transformer_layer(B, L, D, mask="causal").total
            == 24 * B * L * D**2 + 2 * B * L**2 * D + 2 * B * L * D)


def test_chunked_linear_attention_reduces_to_the_classic_count():
    B, T, H, K, V, C, c = 2, 256, 3, 32, 48, 64, 16
    L = T  # a multiple of C: no padding
    classic = B * H * (2 * L * C * K + 2 * L * C * V + 4 * L * K * V)
    assert F.simple_gla_chunked(B, T, H, K, V, chunk_size=C).dot == classic
    # jaxla's XLA path computes the diagonal sub-blocks' A V once more.
    assert F.gla_chunked(B, T, H, K, V, chunk_size=C, algorithm="xla").dot == (
        classic + B * H * 2 * L * c * V)
    # FLA's kernel: only strictly-lower sub-blocks by matmul (L(C-c)K instead of 2LCK).
    assert F.gla_chunked(B, T, H, K, V, chunk_size=C, algorithm="fla").dot == (
        B * H * (L * (C - c) * K + 2 * L * C * V + 4 * L * K * V))
    # padding: T = 65 costs two chunks
    assert (F.simple_gla_chunked(1, 65, 1, K, V, chunk_size=C)
            == F.simple_gla_chunked(1, 128, 1, K, V, chunk_size=C))


def test_recurrent_forms_cost_5kv_per_token():
    B, T, H, K, V = 2, 10, 3, 16, 24
    for fn in (F.gla_recurrent, F.simple_gla_recurrent):
        f = fn(B, T, H, K, V)
        assert f.total == B * T * H * (5 * K * V + K)  # + the q scale
        assert f.dot == B * T * H * 2 * K * V


def test_selective_scan_conventions():
    B, L, D, N = 2, 64, 32, 16
    assert F.selective_scan(B, L, D, N).total == 9 * B * L * D * N + 2 * B * L * D
    assert F.selective_scan(B, L, D, N, with_d=False, with_z=False).total == 9 * B * L * D * N
    seq = F.selective_scan(B, L, D, N, algorithm="sequential", with_d=False, with_z=False,
                           delta_bias=False, delta_softplus=False)
    assert seq == F.Flops(other=6 * B * L * D * N, transcendentals=B * L * D * N)


def test_associative_scan_work():
    for n in (1, 2, 3, 8, 100, 128):
        combines, interleaved = F.associative_scan_ops(n)
        assert n - 1 <= combines <= 2 * n  # work-efficient: at most ~2n combines
        assert interleaved <= 2 * n  # n at the top level, n/2 below, ...
    assert F.associative_scan_ops(128) == (247, 254)  # 127+63+...+1 and 128+64+...+2


def test_param_counts_by_hand():
    # gla_340m, by hand: D 1024, 24 layers, 4 heads, key_dim 512, value_dim 1024, gate rank 16,
    # SwiGLU 2816, vocab 32000 tied.
    D, V, L, Kd, Vd, r, F_ = 1024, 32000, 24, 512, 1024, 16, 2816
    gla = 2 * D * Kd + 2 * D * Vd + D * r + r * Kd + Kd + Vd * D + Vd // 4
    block = gla + 3 * D * F_ + 2 * D
    assert F.param_count(LMConfig.gla_340m()) == V * D + L * block + D
    # FLA's GLA-340M has 342M parameters (anchors.md).
    assert abs(F.param_count(LMConfig.gla_340m()) / 342e6 - 1) < 0.005
    # mamba_370m: d_inner 2048, dt_rank 64, N 16, d_conv 4, 48 blocks, no MLP, vocab 50280.
    D, E, R, N, V = 1024, 2048, 64, 16, 50280
    mamba = D * 2 * E + E * 4 + E + E * (R + 2 * N) + R * E + E + E * N + E + E * D
    assert F.param_count(LMConfig.mamba_370m()) == V * D + 48 * (mamba + D) + D
    # transformer_340m: 16 heads of 64, no biases.
    D, V = 1024, 32000
    block = 4 * D * D + 3 * D * 2816 + 2 * D
    assert F.param_count(LMConfig.transformer_340m()) == V * D + 24 * block + D
    cfg = LMConfig.gla_340m(tie_embeddings=False)
    assert F.six_n(cfg) == 6 * (F.param_count(cfg) - 32000 * 1024)  # input table: no FLOPs


def test_training_per_token_grows_with_length_only_through_attention():
    L1, L2 = 1024, 2048
    cfg = LMConfig.transformer_340m()
    per_token_dot = lambda L: F.training_step(cfg, 1, L).dot / L  # noqa: E731
    # causal attention per token: 2 H d (L + 1) FLOPs, x3 for training, per layer
    expected = 3 * cfg.num_layers * 2 * cfg.num_heads * cfg.attn_head_dim * (L2 - L1)
    assert per_token_dot(L2) - per_token_dot(L1) == pytest.approx(expected)
    for name in ("gla_340m", "lightning_340m", "mamba_370m"):
        cfg = LMConfig.preset(name)
        # Equal but for per-call constants spread over more tokens (Mamba's A = -exp(A_log)).
        assert F.training_flops_per_token(cfg, L1) == pytest.approx(
            F.training_flops_per_token(cfg, L2), rel=1e-5)
    # Linear models are within a few % of 6N (the LM head, state and chunk work are the rest).
    cfg = LMConfig.gla_340m()
    assert 1.0 < F.training_flops_per_token(cfg, 2048) / F.six_n(cfg) < 1.05


def test_model_breakdown_sums_and_hybrids():
    cfg = LMConfig.tiny("hybrid")
    parts = F.model_breakdown(cfg, 2, 32, loss=True)
    assert {k for k in parts if k.startswith("mixer:")} == {
        "mixer:lightning", "mixer:gla", "mixer:mamba", "mixer:attention"}
    assert F.model_forward(cfg, 2, 32, loss=True) == sum(parts.values())
    assert F.training_step(cfg, 2, 32) == F.model_forward(cfg, 2, 32, loss=True).with_backward()


def test_peak_flops_table():
    h100 = "NVIDIA H100 80GB HBM3"
    assert peak_flops(h100, "bfloat16") == 989.4e12
    assert peak_flops(h100, jnp.bfloat16) == 989.4e12
    assert peak_flops(h100, jnp.float32) == 494.7e12  # TF32 tensor cores, JAX's default
    assert peak_flops(h100, "float32", tf32=False) == 66.9e12
    assert peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756.0e12
    assert peak_flops("NVIDIA H200", "bfloat16") == 989.4e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "bfloat16") == 312.0e12
    assert peak_flops("cpu", "float32") is None
    assert peak_flops("TFRT_CPU_0", "bfloat16") is None
    assert peak_flops(h100, "int8") is None


# ---- generation sums -----------------------------------------------------------------------


def test_generation_sums_match_closed_forms():
    D, T = 64, 50
    dense = lambda m: F.Flops(dot=24 * D * D * m)  # noqa: E731
    full = lambda m: dense(m) + F.Flops(dot=4 * D * m * m)  # noqa: E731
    step = lambda n: F.Flops(dot=24 * D * D + 4 * D * n)  # noqa: E731
    S1, S2 = T * (T + 1) // 2, T * (T + 1) * (2 * T + 1) // 6
    # research/flops.md §6.3 with an empty prompt = our prompt of 1 token
    assert G.sum_naive(full, T).dot == 24 * D * D * S1 + 4 * D * S2
    assert G.sum_cached(full, step, T).dot == 24 * D * D * T + 2 * D * T * (T + 1)
    P = 7
    assert G.sum_cached(full, step, T, prompt_len=P).dot == (
        24 * D * D * P + 4 * D * P * P
        + sum(24 * D * D + 4 * D * n for n in range(P + 1, P + T)))


def _differences(values, order):
    for _ in range(order):
        values = [b - a for a, b in itertools.pairwise(values)]
    return values


def test_generation_orders_of_growth():
    cfg = LMConfig.transformer_340m(num_layers=2)
    ts = list(range(20, 26))
    per_layer = cfg.num_layers * 4 * cfg.num_heads * cfg.attn_head_dim
    naive = [c.dot for c in G.generation_curve(cfg, ts, mode="naive")]
    cached = [c.dot for c in G.generation_curve(cfg, ts, mode="cached")]
    # naive: each pass has a triangle of 2 H d m (m + 1) attention FLOPs per layer -> cubic sum
    assert set(_differences(naive, 3)) == {per_layer}
    # KV cache: step n costs 4 H d n per layer -> quadratic sum
    assert set(_differences(cached, 2)) == {per_layer}
    lin = [c.total for c in G.generation_curve(LMConfig.gla_340m(), ts, mode="cached")]
    assert len(set(_differences(lin, 1))) == 1  # recurrent state: every step costs the same


def test_generation_curve_equals_generation_flops():
    cfg = LMConfig.tiny("hybrid")
    ts = [1, 2, 9, 16]
    for mode in G.MODES:
        curve = G.generation_curve(cfg, ts, mode=mode, prompt_len=3, batch=2)
        assert curve == [G.generation_flops(cfg, t, mode=mode, prompt_len=3, batch=2) for t in ts]
    with pytest.raises(ValueError):
        G.generation_flops(cfg, 4, mode="naive", prompt_len=0)


def test_preallocated_kv_cache_reads_every_slot():
    # jaxla's generate: P + T slots, all read by the prefill and every step. With P = 1, against
    # an exact cache (step n reads n keys): sum_{n=1..T} (1 + T - n) more keys per layer and head
    # = T(T + 1)/2, 4 d FLOPs each (q k and A v).
    cfg = LMConfig.transformer_340m(num_layers=2)
    T, cv = 37, F.Conventions(mask="full")
    exact = G.generation_flops(cfg, T, mode="cached", conventions=cv)
    pre = G.generation_flops(cfg, T, mode="cached", conventions=cv, kv_cache="preallocated")
    per_key = cfg.num_layers * cfg.num_heads * 4 * cfg.attn_head_dim
    assert pre.dot - exact.dot == per_key * T * (T + 1) // 2
    # Recurrent models have no KV cache: the same either way (GLA; Mamba differs only in its
    # one-token prefill taking the one-step path).
    gla = LMConfig.gla_340m(num_layers=2)
    assert (G.generation_flops(gla, T, mode="cached", kv_cache="preallocated")
            == G.generation_flops(gla, T, mode="cached"))
    # Greedy sampling: an argmax over the vocabulary per new token, 9 FLOPs per comparison.
    greedy = G.generation_flops(gla, T, mode="naive", sampling="greedy")
    assert greedy.other - G.generation_flops(gla, T, mode="naive").other == 9 * T * (32000 - 1)
    with pytest.raises(ValueError):
        G.generation_flops(gla, T, mode="cached", kv_cache="grow")
