"""Step pieces: schedule, weight-decay mask, weighted cross-entropy, the FSDP rule, the mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxla.flops.report import walker
from jaxla.layers.lightning import FixedDecay
from jaxla.models import head_logits
from jaxla.testing import assert_close
from train.config import parse_args
from train.sharding import fsdp_spec, make_mesh
from train.step import (
    build_model,
    chunked_head_cross_entropy,
    cross_entropy,
    decay_mask,
    loss_sums,
    lr_schedule,
    model_constants,
    split_model,
)


def test_schedule_warms_up_linearly_then_cosine_to_the_floor():
    c = parse_args(["--lr", "0.01", "--warmup_steps", "10", "--steps", "110",
                    "--min_lr_ratio", "0.1"], backend="cpu")
    lr = lr_schedule(c)
    k = np.arange(1, 111)  # update k uses schedule(k - 1)
    got = np.array([float(lr(i - 1)) for i in k])
    np.testing.assert_allclose(got[:10], 0.01 * k[:10] / 10, rtol=1e-6)
    np.testing.assert_allclose(got[9], 0.01, rtol=1e-6)
    np.testing.assert_allclose(got[59], 0.001 + 0.5 * 0.009 * (1 + np.cos(np.pi * 0.5)), rtol=1e-5)
    np.testing.assert_allclose(got[-1], 0.001, rtol=1e-5)
    assert np.all(np.diff(got[9:]) <= 1e-9)


def test_weight_decay_only_on_matrices():
    model = build_model(parse_args(["--preset", "tiny_hybrid"], backend="cpu").model, 0)
    _, params, _ = split_model(model)
    mask = decay_mask(params)
    flat = {jax.tree_util.keystr(p): (m, x.shape) for (p, m), x in
            zip(jax.tree_util.tree_flatten_with_path(mask)[0], jax.tree.leaves(params),
                strict=True)}
    for name, (decay, shape) in flat.items():
        if "A_log" in name or "['D']" in name or len(shape) < 2:
            assert not decay, name
        else:
            assert decay, name
    assert any(d for d, _ in flat.values()) and not all(d for d, _ in flat.values())
    # The mask plugs into optax.adamw.
    tx = optax.adamw(1e-3, weight_decay=0.1, mask=decay_mask)
    tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)


def test_weighted_cross_entropy(rng):
    logits = jnp.asarray(rng.standard_normal((2, 5, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 7, (2, 5)), jnp.int32)
    weights = jnp.asarray(rng.integers(0, 2, (2, 5)), jnp.float32).at[0, 0].set(1.0)
    ce_sum, count, hits = cross_entropy(logits, targets, weights)
    x = np.asarray(logits, np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    assert_close(ce_sum, np.float32((ce * np.asarray(weights)).sum()), name="ce sum")
    assert float(count) == float(np.asarray(weights).sum())
    pred = np.asarray(logits).argmax(-1) == np.asarray(targets)
    assert float(hits) == float((pred * np.asarray(weights)).sum())


@pytest.mark.parametrize("shape,fsdp,expected", [
    ((256, 64), 4, ("fsdp", None)),
    ((64, 256), 4, (None, "fsdp")),
    ((64, 64), 4, ("fsdp", None)),   # ties: the first axis
    ((6, 10), 4, ()),               # nothing divides: replicated
    ((32,), 4, ("fsdp",)),
    ((), 4, ()),
    ((256, 64), 1, ()),
])
def test_fsdp_rule(shape, fsdp, expected):
    assert tuple(fsdp_spec(shape, fsdp)) == expected


def test_mesh_sizes():
    assert dict(make_mesh(8, -1, 4).shape) == {"data": 2, "fsdp": 4}
    assert dict(make_mesh(1).shape) == {"data": 1, "fsdp": 1}
    with pytest.raises(ValueError):
        make_mesh(8, 3, 4)
    with pytest.raises(ValueError):
        make_mesh(8, -1, 3)
    with pytest.raises(ValueError):
        make_mesh(len(jax.devices()) + 1)


def test_split_model_separates_parameters_from_constants():
    config = parse_args(["--preset", "tiny_hybrid"], backend="cpu").model
    model = build_model(config, 0)
    graphdef, params, constants = split_model(model)
    assert isinstance(params, nnx.State) and jax.tree.leaves(params)
    assert all(isinstance(v, nnx.Param) for v in jax.tree.leaves(
        params, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    # The hybrid's lightning layers hold their fixed decays outside the trained parameters, and
    # model_constants rebuilds exactly them without the model's parameters.
    const_vars = jax.tree.leaves(constants, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert const_vars and all(isinstance(v, FixedDecay) for v in const_vars)
    rebuilt = model_constants(config, 0)
    assert jax.tree.structure(rebuilt) == jax.tree.structure(constants)
    for a, b in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(constants), strict=True):
        assert isinstance(a, np.ndarray)
        np.testing.assert_array_equal(a, np.asarray(b))


def _packed_batch(rng, B, T, vocab):
    """Random tokens, 0/1 weights (some 1), two documents per row."""
    cut = rng.integers(1, T, B)
    return {"inputs": jnp.asarray(rng.integers(0, vocab, (B, T)), jnp.int32),
            "targets": jnp.asarray(rng.integers(0, vocab, (B, T)), jnp.int32),
            "weights": jnp.asarray(rng.integers(0, 2, (B, T)), jnp.float32).at[:, 0].set(1.0),
            "segment_ids": jnp.asarray(np.arange(T)[None, :] >= cut[:, None], jnp.int32)}


# T=12: chunks of 5 pad it to 15, of 64 are clipped to 12 (padding within the head + loss:
# test_chunked_head_cross_entropy_matches_the_float64_full_logits).
@pytest.mark.parametrize("tied,chunk", [(True, 5), (False, 64)])
def test_chunked_loss_equals_the_full_logits(rng, tied, chunk):
    config = parse_args(["--preset", "tiny", "--tie_embeddings" if tied else "--no-tie_embeddings"],
                        backend="cpu").model
    assert config.tie_embeddings == tied
    graphdef, params, constants = split_model(build_model(config, 0))
    batch = _packed_batch(rng, 2, 12, config.vocab_size)

    def mean_loss(params, loss_chunk):
        ce, count, hits = loss_sums(nnx.merge(graphdef, params, constants), batch, loss_chunk)
        return ce / count, (count, hits)

    grad = jax.jit(jax.value_and_grad(mean_loss, has_aux=True), static_argnums=1)
    (full, (n_full, hits_full)), g_full = grad(params, 0)
    (chunked, (n_chunked, hits_chunked)), g_chunked = grad(params, chunk)
    assert_close(chunked, full, name="loss")
    assert float(n_chunked) == float(n_full) and float(hits_chunked) == float(hits_full)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g_chunked)[0],
                            jax.tree.leaves(g_full), strict=True):
        assert_close(a, b, name=jax.tree_util.keystr(path))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_chunked_head_cross_entropy_matches_the_float64_full_logits(rng, x64, dtype):
    """Sums and the vector-Jacobian product for x, the head and the weights (random cotangents
    for all three sums; fractional weights, so d/dw is more than a count) against the full
    logits in float64, from the head as the logits use it (cast to x's dtype). T=29 in chunks
    of 4: a padded last chunk. (bf16 dx: ~2.3e-3 against the bound of 5e-3, over 150 draws at
    most 2.5e-3; the unfused step's autodiff, with a float32 cotangent of the logits: 1.7e-3.)"""
    B, T, D, V = 2, 29, 64, 40
    x = jnp.asarray(rng.standard_normal((B, T, D)), dtype)
    head = jnp.asarray(rng.standard_normal((D, V)) / np.sqrt(D), jnp.float32)
    targets = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    weights = jnp.asarray(rng.uniform(0.0, 1.0, (B, T)) * (rng.uniform(size=(B, T)) > 0.2),
                          jnp.float32)
    cotangents = tuple(jnp.asarray(rng.standard_normal(()), jnp.float32) for _ in range(3))

    def full(x, head, weights):
        return cross_entropy(head_logits(x, head), targets, weights)

    (ce, count, hits), vjp = jax.vjp(
        lambda x, h, w: chunked_head_cross_entropy(x, h, targets, w, 4), x, head, weights)
    grads = vjp(cotangents)
    f64 = lambda a: jnp.asarray(a, jnp.float64)  # noqa: E731
    (ce64, count64, hits64), vjp64 = jax.vjp(full, f64(x), f64(head.astype(dtype)),
                                             f64(weights))
    grads64 = vjp64(tuple(f64(c) for c in cotangents))
    assert_close(ce, ce64, dtype=dtype, name="ce sum")
    assert_close(count, count64, name="weight sum")
    # A bf16 x can flip a near-tie argmax: hits against the same-dtype full logits (sums of
    # fractional weights, in another order).
    assert_close(hits, full(x, head, weights)[2], dtype=jnp.float32, name="hits")
    for name, g, g64, arg in zip(("dx", "dhead", "dweights"), grads, grads64,
                                 (x, head, weights), strict=True):
        assert g.dtype == arg.dtype, name
        assert_close(g, g64, dtype=dtype, name=name)


def _head_loss_shapes(B, T, D, V):
    """Abstract float32 `(x [B, T, D], head [D, V], targets, weights [B, T])`."""
    S = jax.ShapeDtypeStruct
    return (S((B, T, D), jnp.float32), S((D, V), jnp.float32), S((B, T), jnp.int32),
            S((B, T), jnp.float32))


def test_chunked_loss_forms_each_chunk_of_logits_once():
    """The gradient of the chunked loss costs the three head matmuls of the full logits'
    (forward, d x, d head: 6 B T D V FLOPs) and no recomputed fourth (8 B T D V)."""
    B, T, D, V = 2, 64, 32, 4096
    args = _head_loss_shapes(B, T, D, V)

    def grad_flops(chunk):
        loss = lambda x, h, t, w: chunked_head_cross_entropy(x, h, t, w, chunk)[0]  # noqa: E731
        return walker.count(jax.grad(loss, argnums=(0, 1)), *args).flops

    matmuls = 2 * B * T * D * V
    assert 3 * matmuls < grad_flops(16) < 3.5 * matmuls
    assert 3 * matmuls < grad_flops(64) < 3.5 * matmuls  # one chunk: no loop at all


def test_chunked_loss_keeps_the_logits_out_of_memory():
    """XLA's memory analysis of the compiled gradient of the head + cross-entropy: with a large
    vocabulary the full `[B, T, vocab]` float32 logits (and their gradient) dominate the
    temporaries; chunks of 16 positions hold an eighth of them at a time and save at least one
    whole logits array."""
    B, T, D, V = 4, 128, 64, 8192
    args = _head_loss_shapes(B, T, D, V)
    temp = {}
    for chunk in (0, 16):
        def loss(x, head, targets, weights, chunk=chunk):
            if chunk:
                return chunked_head_cross_entropy(x, head, targets, weights, chunk)[0]
            return cross_entropy(head_logits(x, head), targets, weights)[0]

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
        temp[chunk] = compiled.memory_analysis().temp_size_in_bytes
    logits_bytes = B * T * V * 4
    assert temp[0] > 2 * logits_bytes, temp
    assert temp[16] < temp[0] - logits_bytes, temp
